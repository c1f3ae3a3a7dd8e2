"""Measure a model on the test split of an MVTec-layout category.

Reads DATA/test/good, DATA/test/<class> and the masks DATA/ground_truth/<class>/<stem>_mask.png (classes
without masks count at image level only) and writes to OUT:
  metrics.json  image AUROC / AP / F1-max (+ its threshold), pixel AUROC / AUPRO (FPR <= 0.3) / AP,
                a per_class breakdown (each defect class vs the good images), counts and timing
  roc.png       image- and pixel-level ROC curves, all classes and each class
  cases.png     the best and worst cases with heat-map overlays and ground-truth outlines
  scores.csv    one row per test image: image, defect_class, score
Pixel metrics are null when there are no masks. Runs in this process (no Ray); the test set is
streamed, so memory does not grow with its size.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  defectray evaluate --model model.safetensors --data /data/magnetic-tile --out eval/
  defectray evaluate --model s3://models/tiles.safetensors --data s3://datasets/magnetic-tile \\
      --out s3://results/eval-tiles/ --batch-size 32
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI", help="model file written by `defectray train`")
    parser.add_argument("--data", required=True, metavar="DIR_OR_URI",
                        help="an MVTec-layout category (folder or object-store prefix with test/ and ground_truth/)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder (local or URI) for the results")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (default: 16)")
    parser.add_argument("--device", help="torch device for the model, e.g. cpu, cuda, cuda:1 (default: cuda if "
                        "available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    from defectray.cli import CommandError

    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1")

    from defectray.evaluate import evaluate

    metrics = evaluate(args.model, args.data, args.out, batch_size=args.batch_size, progress=not args.quiet,
                       device=args.device)
    columns = ("image_auroc", "image_f1max", "pixel_auroc", "pixel_aupro", "pixel_ap")
    rows = [("all", metrics["n_good"] + metrics["n_defective"], metrics)]
    rows += [(cls, m["n_anomalous"], m) for cls, m in metrics["per_class"].items()]
    name_width = max(8, *(len(name) for name, _, _ in rows))
    print(f"{'class':<{name_width}} {'images':>6} " + " ".join(f"{c:>11}" for c in columns))
    for name, n, m in rows:
        print(f"{name:<{name_width}} {n:>6} " + " ".join(f"{_fmt(m[c]):>11}" for c in columns))
    print(f"({metrics['n_good']} good images in every row; image F1-max at score >= "
          f"{metrics['image_f1max_threshold']:.4f}; {metrics['images_per_s']:.1f} images/s)")
    print(f"wrote metrics.json, roc.png, cases.png and scores.csv to {args.out}")
    return 0
