"""Accuracy of a named config on an MVTec-layout category: train, evaluate, append a row to BENCHMARKS.md.

    python benchmarks/accuracy.py --profile cpu-small --max-steps 1000                 # Ray (product path)
    python benchmarks/accuracy.py --profile cpu-small --set large_kernel=false --max-steps 300 --engine local
    python benchmarks/accuracy.py --model runs/x/model.safetensors --filter-sizes 1,3,5,11   # re-score only

--engine ray (default) is `defectray train` + `defectray evaluate` as library calls (the CLI is a thin shell
over the same functions). --engine local is a single-process TrainStep loop on the same synthesis, held-out
split and lr schedule (no Ray start-up, one process to pin to one thread): for screening options quickly.
Each run appends one row to the "## Accuracy on magnetic-tile" table of BENCHMARKS.md (``--no-append`` to skip)
and writes metrics.json etc. to OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

DEFAULT_DATA = "/work/shared/datasets/magnetic-tile"
SCORING_FIELDS = ("score_filter_size", "score_top_k", "flip_average")  # may change on a trained model (--model)
SECTION = "## Accuracy on magnetic-tile"
TABLE_HEADER = ("| run | engine | config (vs profile) | steps | train min | img AUROC | pix AUROC | AUPRO | pix AP "
                "| img AUROC per class | machine |")


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def train_local(cfg, data: str, out: str, threads: int, device: str = "cpu") -> tuple[str, int]:
    """Single-process twin of defectray.train.train: same hold-out split, sources, synthesis and schedule."""
    import torch

    from defectray import io
    from defectray.models.modelfile import calibrate, save_model
    from defectray.models.train_step import TrainStep, budget_progress
    from defectray.synthesis import synthesize_batch
    from defectray.synthesis.augment import vary_exposure
    from defectray.train import (_load_many, build_sources, sources_for_view, split_holdout, steps_per_epoch_for,
                                 training_view, view_size)

    torch.set_num_threads(threads)
    train_paths, held_out = split_holdout(io.training_images(data), cfg.val_fraction, cfg.seed)
    fitted = _load_many(train_paths, cfg)
    sources = build_sources(cfg, train_paths)
    steps_per_epoch = steps_per_epoch_for(len(train_paths), cfg.batch_size)
    step = TrainStep(cfg, device=device)
    size = view_size(cfg)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    started = time.time()
    epoch = 0
    while epoch < cfg.epochs:
        order = rng.permutation(len(fitted))
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) < cfg.batch_size:
                idx = np.concatenate([idx, order[: cfg.batch_size - len(idx)]])
            picked = [training_view(fitted[i], size, rng) for i in idx]
            picked = [(vary_exposure(v, rng, cfg.exposure_jitter), y, x) for v, y, x in picked]
            if isinstance(sources.foreground, np.ndarray):  # a user ROI: each view its own window of it
                rows = [synthesize_batch(v[None], cfg.synthesis, rng, sources_for_view(sources, y, x, size),
                                         cfg.anomaly_prob, cfg.rotate_prob) for v, y, x in picked]
                damaged, clean, masks = (np.concatenate(parts) for parts in zip(*rows))
            else:
                views = np.stack([v for v, _, _ in picked])
                damaged, clean, masks = synthesize_batch(views, cfg.synthesis, rng, sources, cfg.anomaly_prob,
                                                         cfg.rotate_prob)
            from defectray.models import images_to_tensor

            losses = step(images_to_tensor(damaged), images_to_tensor(clean), torch.from_numpy(masks))
            minutes = (time.time() - started) / 60
            step.set_progress(budget_progress(cfg, epoch + (b + 1) / steps_per_epoch, step.step, minutes))
            if step.step % 50 == 0:
                print(json.dumps({"step": step.step, "min": round(minutes, 2), "lr": step.lr,
                                  **{k: round(v, 4) for k, v in losses.items()}}), flush=True)
            if (cfg.max_steps is not None and step.step >= cfg.max_steps) or (
                    cfg.max_minutes and minutes >= cfg.max_minutes):
                epoch = cfg.epochs
                break
        else:
            epoch += 1
    held = _load_many(held_out, cfg)
    uri = os.path.join(out, "model.safetensors")
    save_model(uri, step.net, cfg, calibrate(step.net, cfg, held))
    return uri, step.step


def filter_sweep(model_uri: str, data: str, sizes: list[int], scoring: dict | None = None) -> dict:
    """Image AUROC (all and per class) at several score filter sizes (pixels at model resolution), from one
    inference pass: the filter only changes the image score, not the maps. ``scoring``: config fields to
    change on the loaded model (as in main)."""
    from sklearn.metrics import roc_auc_score

    from defectray.io import load_image, mvtec_test_items
    from defectray.models.modelfile import load_model
    from defectray.models.scoring import image_scores

    det = load_model(model_uri)
    det.config = det.config.replace(**(scoring or {}))
    items = mvtec_test_items(data)
    maps = []
    for i in range(0, len(items), 16):
        chunk = items[i:i + 16]
        maps.extend(det.infer(det.preprocess([load_image(it.image, det.config.channels) for it in chunk])))
    labels = np.array([it.is_anomalous for it in items])
    kinds = np.array([it.defect_class for it in items])
    result = {}
    for size in sizes:
        s = np.array([image_scores(m, size, det.top_k)[-1] for m in maps])  # the score head's map, if any
        row = {"all": round(float(roc_auc_score(labels, s)), 4)}
        for k in sorted(set(kinds[labels])):
            sel = (kinds == k) | ~labels
            row[k] = round(float(roc_auc_score(labels[sel], s[sel])), 4)
        result[size] = row
        print(f"filter {size:>3}: {json.dumps(row)}", flush=True)
    return result


def append_row(path: str, row: str) -> None:
    text = open(path).read() if os.path.exists(path) else ""
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{TABLE_HEADER}\n|{'---|' * 11}\n{row}\n"
    else:
        lines = text.split("\n")
        start = next(i for i, line in enumerate(lines) if line.strip() == SECTION)
        header = next(i for i in range(start, len(lines)) if lines[i].startswith(TABLE_HEADER[:20]))
        end = header + 2
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines.insert(end, row)
        text = "\n".join(lines)
    with open(path, "w") as f:
        f.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--profile", default="cpu-small")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="config override, repeatable")
    ap.add_argument("--max-steps", type=int, help="step budget (comparable rows); sets max_steps")
    ap.add_argument("--max-minutes", type=float, help="wall-clock cap; with --max-steps the profile's cap is "
                    "dropped unless this is given (a shared box's load must not decide where a row stops)")
    ap.add_argument("--engine", choices=("ray", "local"), default="ray")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --engine local")
    ap.add_argument("--workers", type=int, default=1, help="Ray Train workers for --engine ray (data-parallel; "
                    "batch_size is per worker)")
    ap.add_argument("--device", default="cpu", help="torch device for --engine local (e.g. cuda)")
    ap.add_argument("--out", help="run folder (default runs/accuracy/<name>)")
    ap.add_argument("--name", help="row name (default: the overrides)")
    ap.add_argument("--model", help="skip training: evaluate this model file (--set changes its scoring fields: "
                    + ", ".join(SCORING_FIELDS) + ")")
    ap.add_argument("--filter-sizes", help="comma list: also report image AUROC at these score filter sizes")
    ap.add_argument("--score-filter-size", type=int, help="with --model: evaluate it with this score_filter_size "
                    "(256 px reference, as in the config) instead of the one stored in the model")
    ap.add_argument("--steps", type=int, help="with --model: the steps it was trained for (for the row)")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--benchmarks", default=os.path.join(os.path.dirname(__file__), "..", "BENCHMARKS.md"))
    args = ap.parse_args()

    from defectray.config import get_config
    from defectray.evaluate import evaluate

    overrides = parse_overrides(args.set)
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    elif args.max_steps is not None and "max_minutes" not in overrides:
        overrides["max_minutes"] = None
    cfg = get_config(args.profile, **overrides)
    name = args.name or (" ".join(args.set) or "profile")
    out = args.out or os.path.join("runs", "accuracy", name.replace(" ", "_").replace("=", "-").replace("/", "_"))
    os.makedirs(out, exist_ok=True)

    t0 = time.time()
    steps = None
    if args.model:
        model_uri, engine, steps = args.model, "given model", args.steps
    elif args.engine == "local":
        model_uri, steps = train_local(cfg, args.data, out, args.threads, args.device)
        engine = f"local {args.device if args.device != 'cpu' else f'{args.threads}t'}"
    else:
        from defectray.train import train

        result = train(cfg, args.data, out, workers=args.workers)
        model_uri, engine = result.model_uri, "ray" if args.workers == 1 else f"ray x{args.workers}"
        steps = getattr(result, "steps", None) or result.to_dict().get("steps")
    train_min = (time.time() - t0) / 60
    model = model_uri
    if args.score_filter_size is not None:
        overrides["score_filter_size"] = args.score_filter_size
    scoring = {k: overrides[k] for k in SCORING_FIELDS if k in overrides}
    if scoring:  # a model file given, or --score-filter-size after training
        from defectray.models.modelfile import load_model

        model = load_model(model_uri)
        model.config = model.config.replace(**scoring)  # the Detector reads its filter and top-k from it
    if args.model:
        train_min = 0.0
    metrics = evaluate(model, args.data, os.path.join(out, "eval"), progress=False)
    sweep = filter_sweep(model_uri, args.data, [int(s) for s in args.filter_sizes.split(",")],
                         scoring) \
        if args.filter_sizes else None
    per_class = {k: v["image_auroc"] for k, v in metrics["per_class"].items()}
    summary = {"name": name, "engine": engine, "profile": args.profile, "overrides": overrides, "steps": steps,
               "train_minutes": round(train_min, 1), **{k: metrics[k] for k in
               ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")}, "per_class_image_auroc": per_class,
               "per_class": metrics["per_class"], "filter_sweep": sweep, "load_avg": os.getloadavg()[0]}
    with open(os.path.join(out, "accuracy.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    if not args.no_append:
        f3 = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        cls = " / ".join(f"{k} {v:.3f}" for k, v in per_class.items())
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "—"
        machine = f"2-core CPU sandbox, no GPU ({platform.machine()}, load {os.getloadavg()[0]:.1f})"
        if args.engine == "local" and args.device.startswith("cuda"):
            import torch

            machine = f"{torch.cuda.get_device_name(args.device)}, {os.cpu_count()} CPU cores"
        append_row(args.benchmarks, f"| {name} | {engine} | {args.profile}: {shown} | {steps} | {train_min:.1f} | "
                   f"{f3(metrics['image_auroc'])} | {f3(metrics['pixel_auroc'])} | {f3(metrics['pixel_aupro'])} | "
                   f"{f3(metrics['pixel_ap'])} | {cls} | {machine} |")


if __name__ == "__main__":
    main()
