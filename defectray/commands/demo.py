"""The whole product on a laptop, in a few minutes: train a small model on a built-in sample of real
magnetic-tile photographs (normal images only), score the sample's test archive with the real Ray Data
scoring pipeline, evaluate it against the real defect masks, and write the HTML morning report.

Everything runs on an embedded local Ray and local folders; nothing is downloaded. The output folder gets:
  model/model.safetensors   the trained, calibrated model (load with defectray.load_model)
  scores/                   Parquet table, one row per image, and scores/masks/ with the anomaly maps
  evaluation/               metrics.json, roc.png, cases.png, scores.csv
  report.html               the morning report (open it in a browser)
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

EXAMPLES = """examples:
  defectray demo                          # under 5 minutes on 2 CPU cores, writes ./defectray-demo
  defectray demo --out /tmp/demo --minutes 5
"""

MARKER = ".defectray-demo"


def sample_dir() -> Path:
    """The magnetic-tile sample shipped inside the package (MVTec layout)."""
    return Path(__file__).resolve().parents[1] / "sample" / "magnetic-tile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="defectray-demo", help="output folder (default ./defectray-demo)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget in minutes (default 3)")
    parser.add_argument("--max-steps", type=int, help="stop training after this many steps (quick checks)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the whole run (default 0)")


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            from defectray.cli import CommandError

            raise CommandError(f"{out} exists and was not written by `defectray demo`; choose another --out")
        shutil.rmtree(out)  # a previous demo: start fresh so the run is the same every time
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by defectray demo; safe to delete\n")


def _step(n: int, text: str) -> None:
    print(f"\n== [{n}/4] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from defectray.cli import CommandError

    if args.minutes <= 0:
        raise CommandError("--minutes must be positive")
    data = sample_dir()
    if not (data / "train" / "good").is_dir():
        raise CommandError(f"the built-in sample is missing at {data} (broken install?)")
    out = Path(args.out).resolve()
    _prepare_out(out)

    import ray

    from defectray.config import get_config
    from defectray.evaluate import evaluate
    from defectray.report import write_report
    from defectray.score import format_summary, score_archive
    from defectray.train import train

    started = time.monotonic()
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        # address="local": always a fresh embedded Ray, never a cluster that happens to run on this machine
        ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False)

    _step(1, f"training on {len(list((data / 'train' / 'good').glob('*.jpg')))} normal sample images "
             f"for up to {args.minutes:g} minutes (Ray Train, synthesis in Ray Data)")
    config = get_config("cpu-small", max_minutes=args.minutes, max_steps=args.max_steps, seed=args.seed)
    result = train(config, str(data), str(out / "model"), workers=1)
    print(result.summary(), flush=True)

    _step(2, "scoring the sample archive (test/: normal and defective images) with Ray Data")
    summary = score_archive(result.model_uri, str(data / "test"), str(out / "scores"))
    print(format_summary(summary), flush=True)

    _step(3, "evaluating against the real defect masks")
    metrics = evaluate(result.model_uri, str(data), str(out / "evaluation"))
    keys = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_f1max")
    print("  " + "  ".join(f"{k} {metrics[k]:.3f}" for k in keys if metrics.get(k) is not None), flush=True)

    _step(4, "writing the morning report")
    report = write_report(str(out / "scores"), str(out / "report.html"), title="defectray demo: magnetic tiles")

    minutes = (time.monotonic() - started) / 60
    print(f"\nDone in {minutes:.1f} min. Everything is in {out}:")
    print(f"  model       {result.model_uri}")
    print(f"  scores      {out / 'scores'}  (Parquet, one row per image; masks in scores/masks/)")
    print(f"  evaluation  {out / 'evaluation'}  (metrics.json, roc.png, cases.png)")
    print(f"  report      {report}  (open in a browser)")
    print("This sample is tiny and the budget short: `defectray train` on your own normal images, for longer, "
          "is what makes a useful model.")
    return 0
