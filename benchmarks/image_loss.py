"""Where a model's image AUROC goes: each defect's share of it, by class and by distance to the frame.

A defect's loss is the share of good images that score above it (ties count half); their sum over the defects,
divided by the number of defects, is exactly 1 - image AUROC. Grouping that sum by how close each ground-truth
mask comes to the image's frame shows whether the misses are at the frame or inside the part (BENCHMARKS.md,
session 46). Reads only an evaluation's `scores.csv` and the category's masks: no model, no training.

    python benchmarks/image_loss.py runs/NAME/eval --data /work/shared/datasets/magnetic-tile [--worst 12]
    python benchmarks/image_loss.py --data DIR --synthetic 600   # the same distances for `realistic` masks
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from defectray import io  # noqa: E402

# Where a mask is: its nearest pixel's distance to the frame, as a fraction of the image's short side.
BUCKETS = ("touches the frame", "within 2 %", "within 4 %", "further in")


def frame_distance(mask: np.ndarray) -> float:
    """The mask's nearest pixel's distance to the frame over the image's short side; inf for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return float("inf")
    h, w = mask.shape[:2]
    return min(ys.min(), xs.min(), h - 1 - ys.max(), w - 1 - xs.max()) / min(h, w)


def bucket(distance: float) -> str:
    if distance == 0:
        return BUCKETS[0]
    return BUCKETS[1] if distance < 0.02 else BUCKETS[2] if distance < 0.04 else BUCKETS[3]


def image_losses(rows: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """(good scores, defect rows each with its ``loss``) for scores.csv rows (image, defect_class, score)."""
    good = np.array([float(r["score"]) for r in rows if r["defect_class"] == "good"])
    if len(good) == 0:
        raise SystemExit("scores.csv has no good images: image AUROC is undefined")
    defects = []
    for r in rows:
        if r["defect_class"] == "good":
            continue
        s = float(r["score"])
        defects.append({**r, "score": s, "loss": float((good > s).mean() + 0.5 * (good == s).mean())})
    return good, defects


def report_scores(eval_dir: str, data: str, worst: int) -> None:
    with open(os.path.join(eval_dir, "scores.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    good, defects = image_losses(rows)
    n = len(defects)
    # The evaluation wrote each image as io.mvtec_test_items names it, so the same call finds its mask.
    masks = {item.image: item.mask for item in io.mvtec_test_items(data)}
    unknown = [d["image"] for d in defects if d["image"] not in masks]
    if unknown:
        raise SystemExit(f"{len(unknown)} images of scores.csv are not in {data}/test, e.g. {unknown[0]}")
    table: dict[tuple[str, str], list[float]] = {}
    for d in defects:
        path = masks[d["image"]]
        where = bucket(frame_distance(io.load_image(path, channels=1) > 0)) if path else "no mask"
        d["where"] = where
        table.setdefault((d["defect_class"], where), []).append(d["loss"])
    total = sum(d["loss"] for d in defects) / n
    print(f"{eval_dir}: image AUROC {1 - total:.4f} ({len(good)} good, {n} defects); lost {total:.4f}")
    print(f"{'class':<12}{'where':<20}{'defects':>8}{'lost':>9}")
    for (cls, where), losses in sorted(table.items()):
        print(f"{cls:<12}{where:<20}{len(losses):>8}{sum(losses) / n:>9.4f}")
    for where in [*BUCKETS, "no mask"]:
        losses = [d["loss"] for d in defects if d["where"] == where]
        if losses:
            print(f"{'all':<12}{where:<20}{len(losses):>8}{sum(losses) / n:>9.4f}")
    print(f"worst {worst} defects (share of good images above each, score):")
    for d in sorted(defects, key=lambda d: -d["loss"])[:worst]:
        name = os.path.basename(d["image"])
        print(f"  {d['loss']:.3f}  {name:<26}{d['defect_class']:<10}{d['where']:<20}{d['score']:.3f}")
    print(f"good images: median {np.median(good):.3f}, 90th percentile {np.quantile(good, 0.9):.3f}")


def report_synthetic(data: str, samples: int, seed: int) -> None:
    """How close `realistic` masks come to the border of cpu-small training views (every sample with a defect)."""
    import glob

    from defectray.config import get_config
    from defectray.synthesis import synthesize_batch
    from defectray.train import build_sources, load_fitted, training_view, view_size

    config = get_config("cpu-small")
    paths = sorted(glob.glob(os.path.join(data, "train", "good", "*")))
    if not paths:
        raise SystemExit(f"no training images under {data}/train/good")
    sources = build_sources(config, paths)
    rng = np.random.default_rng(seed)
    size = view_size(config)
    counts: dict[str, int] = {}
    for _ in range(samples):
        view, _, _ = training_view(load_fitted(paths[int(rng.integers(len(paths)))], config), size, rng)
        _, _, masks = synthesize_batch(view[None], config.synthesis, rng, sources, 1.0, config.rotate_prob)
        where = bucket(frame_distance(masks[0] > 0))
        counts[where] = counts.get(where, 0) + 1
    print(f"`{config.synthesis}` masks on {samples} {size}-px training views (distance to the view's border):")
    for where in BUCKETS:
        print(f"  {where:<20}{counts.get(where, 0) / samples:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", nargs="?", help="an evaluation's output folder (holds scores.csv)")
    parser.add_argument("--data", required=True, help="the MVTec-layout category the evaluation read")
    parser.add_argument("--worst", type=int, default=12)
    parser.add_argument("--synthetic", type=int, default=0, help="also measure this many `realistic` masks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.eval_dir and not args.synthetic:
        parser.error("give an evaluation folder, --synthetic N, or both")
    if args.eval_dir:
        report_scores(args.eval_dir, args.data, args.worst)
    if args.synthetic:
        report_synthetic(args.data, args.synthetic, args.seed)


if __name__ == "__main__":
    main()
