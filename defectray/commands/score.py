"""Score an image archive with Ray Data: one Parquet row per input file (score, is_anomalous, mask_path,
status, error, size, model_id, scored_at) and one 8-bit PNG anomaly map per image.

Input is a local folder, a glob, an object-store prefix (s3://, read with the standard AWS_* environment
including AWS_ENDPOINT_URL) or a .txt manifest with one URI per line; png, jpg, bmp and tif files, searched
recursively. Files that cannot be read or decoded get status=error and a message; the job still finishes.
Runs on the Ray cluster at RAY_ADDRESS, or on an embedded local Ray when there is none.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  defectray score --model model.safetensors --input ./images --output ./scores
  defectray score --model s3://models/tiles.safetensors --input s3://factory/2024-06-01/ \\
      --output s3://results/2024-06-01/ --batch-size 32 --actors 1,4
  defectray score --model model.safetensors --input 'shots/**/*.png' --output out --threshold 0.6
  defectray score --model model.safetensors --input todo.txt --output out --resume   # after a crash
"""


def _actors(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two integers), not {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX with 1 <= MIN <= MAX, not {text!r}")
    return parts[0], parts[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI", help="model file written by `defectray train`")
    parser.add_argument("--input", required=True, metavar="URI",
                        help="folder, glob, object-store prefix, or .txt manifest (one URI per line)")
    parser.add_argument("--output", required=True, metavar="URI", help="Parquet dataset to write")
    parser.add_argument("--masks", metavar="URI", help="where mask PNGs go (default: <output>/masks/)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="is_anomalous = score > T (default: the model's calibrated threshold)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per batch (default 16)")
    parser.add_argument("--actors", type=_actors, metavar="MIN,MAX",
                        help="model actor pool size, autoscaled between MIN and MAX "
                             "(default: 1 to the number of GPUs, counting those the autoscaler may add, or to the "
                             "number of CPUs on a cluster without GPUs)")
    parser.add_argument("--resume", action="store_true",
                        help="score only the images without an ok row at --output (after a crash)")
    parser.add_argument("--gpus-per-actor", type=float, metavar="G",
                        help="GPUs per model actor (default: 1 if the cluster has GPUs now or its autoscaler "
                             "config has GPU nodes, else 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from defectray.score import format_summary, score_archive

    summary = score_archive(
        model=args.model,
        input=args.input,
        output=args.output,
        masks=args.masks,
        threshold=args.threshold,
        batch_size=args.batch_size,
        actors=args.actors,
        resume=args.resume,
        progress=not args.quiet,
        gpus_per_actor=args.gpus_per_actor,
    )
    print(format_summary(summary))
    return 0
