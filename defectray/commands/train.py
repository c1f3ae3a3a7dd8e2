"""Train a defect detector on normal (defect-free) images with Ray Train, synthetic defects made on the fly
in Ray Data.

DATA is an MVTec-style category (its train/good is used) or any folder, prefix or glob of images, local or
fsspec (s3://... with the standard AWS_* environment, AWS_ENDPOINT_URL included). A seeded fraction of the
images (config val_fraction) is held out and used to calibrate the model's default threshold.
Checkpoints go to --storage-path every epoch; running the same command again (same --name, or the same
--data and --out) resumes the run instead of starting over. The model file is written to OUT/model.safetensors
(or to OUT itself when it ends in .safetensors) and loads with defectray.load_model.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # a laptop: the CPU profile, 20 minutes
  defectray train --data datasets/magnetic-tile --out models/tile --profile cpu-small --max-minutes 20

  # a quick smoke run
  defectray train --data datasets/magnetic-tile --out /tmp/m --profile cpu-small --epochs 1 --max-steps 5

  # a GPU cluster (RAY_ADDRESS set): 4 workers, one GPU each, data and checkpoints in S3
  defectray train --data s3://factory/tiles/ --out s3://models/tiles/ --profile paper --workers 4 \\
      --storage-path s3://models/runs/ --name tiles-v1 --validation s3://factory/tiles-val/

  # everything else from a JSON config (see defectray.config.Config)
  defectray train --data DIR --out DIR --config my_config.json --seed 3
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder/prefix/glob of normal images, or an MVTec category")
    parser.add_argument("--out", required=True, help="folder/prefix for model.safetensors, or a *.safetensors URI")
    parser.add_argument("--profile", default="cpu-small", help="config profile: cpu-small (default) or paper")
    parser.add_argument("--config", help="JSON config file/URI (replaces --profile; flags below override it)")
    parser.add_argument("--workers", type=int, default=1, help="data-parallel training workers (default 1)")
    parser.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto",
                        help="one GPU per worker: auto (when the cluster has, or its autoscaler can add, "
                             "enough), yes, no")
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs per training worker (default: fit the cluster, "
                                                              "leaving one CPU for synthesis)")
    parser.add_argument("--epochs", type=int, help="epochs (overrides the config)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (whole run)")
    parser.add_argument("--max-minutes", type=float, help="stop after this many minutes of this call")
    parser.add_argument("--no-max-minutes", action="store_true", help="drop the profile's time budget")
    parser.add_argument("--seed", type=int, help="seed for the held-out split, data order and synthesis")
    parser.add_argument("--validation", help="MVTec-layout folder whose test/ split is scored every epoch "
                                             "(image AUROC, pixel AUROC where masks exist)")
    parser.add_argument("--storage-path", help="checkpoint storage, local or URI (default OUT/checkpoints)")
    parser.add_argument("--name", help="run name; the same name resumes (default: derived from --data and --out)")
    parser.add_argument("--max-failures", type=int, default=3, help="worker failures to recover from (default 3)")


def build_config(args: argparse.Namespace):
    from defectray.config import get_config, load_config

    config = load_config(args.config) if args.config else get_config(args.profile)
    overrides = {}
    for flag, name in (("epochs", "epochs"), ("max_steps", "max_steps"), ("max_minutes", "max_minutes"),
                       ("seed", "seed")):
        if getattr(args, flag) is not None:
            overrides[name] = getattr(args, flag)
    if args.no_max_minutes:
        overrides["max_minutes"] = None
    return config.replace(**overrides) if overrides else config


def run(args: argparse.Namespace) -> int:
    from defectray.cli import CommandError

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    for flag in ("epochs", "max_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise CommandError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise CommandError("--max-minutes must be positive")
    config = build_config(args)

    from defectray.train import train

    train(config, args.data, args.out, workers=args.workers,
          use_gpu={"auto": None, "yes": True, "no": False}[args.gpu], storage_path=args.storage_path,
          run_name=args.name, validation=args.validation, cpus_per_worker=args.cpus_per_worker,
          max_failures=args.max_failures)
    return 0
