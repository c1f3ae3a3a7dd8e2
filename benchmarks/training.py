"""What the training pipeline costs: samples/s of Ray Train fed by Ray Data synthesis vs the same TrainStep fed
from a pre-synthesised in-memory batch, plus the Ray Data read+synthesis stream alone.

    python benchmarks/training.py [--data ../shared/datasets/magnetic-tile] [--profile cpu-small] [--epochs 3]

All three run in one process on one local Ray (``ray.init(num_cpus=N)``, N = all cores by default), with the
same config, the same torch thread count as the training worker, one training worker. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic-tile"


def in_memory_rate(config, images: np.ndarray, steps: int, threads: int) -> float:
    """TrainStep on one pre-synthesised batch, repeated: the training step's own speed, no data pipeline."""
    import torch

    from defectray.models import images_to_tensor
    from defectray.models.train_step import TrainStep
    from defectray.synthesis import SynthesisSources, synthesize_batch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    damaged, clean, masks = synthesize_batch(images[: config.batch_size], config.synthesis, rng,
                                             SynthesisSources(normal_images=list(images)), config.anomaly_prob,
                                             config.rotate_prob)
    batch = images_to_tensor(damaged), images_to_tensor(clean), torch.from_numpy(masks)
    step = TrainStep(config)
    step(*batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    return steps * config.batch_size / (time.perf_counter() - t0)


def pipeline_only_rate(config, train_paths: list[str], sources, epochs: int = 1) -> float:
    """The Ray Data read -> decode -> resize -> synthesis stream, consumed without training."""
    from defectray.train import build_dataset

    ds, rows_per_epoch = build_dataset(train_paths, config, sources, config.batch_size, epochs)
    t0 = time.perf_counter()
    n = sum(len(b["mask"]) for b in ds.iter_batches(batch_size=config.batch_size, batch_format="numpy"))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--profile", default="cpu-small")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the Ray run (the last one is timed)")
    parser.add_argument("--steps", type=int, default=30, help="steps of the in-memory baseline")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import ray

    from defectray import io
    from defectray.config import get_config
    from defectray.models.tiling import center_crop
    from defectray.train import build_sources, load_fitted, plan_resources, split_holdout, train

    config = get_config(args.profile, epochs=args.epochs, max_minutes=None)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    threads = max(1, int(plan_resources(1, False, None, args.cpus)))
    paths = io.training_images(args.data)
    train_paths, _ = split_holdout(paths, config.val_fraction, config.seed)
    images = np.stack([center_crop(load_fitted(p, config), config.image_size) for p in train_paths[:64]])

    baseline = in_memory_rate(config, images, args.steps, threads)
    sources = build_sources(config, train_paths)
    stream = pipeline_only_rate(config, train_paths, sources)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, args.data, os.path.join(tmp, "out"), workers=1, use_gpu=False)
    ray.shutdown()

    summary = {
        "data": args.data, "profile": args.profile, "image_size": config.image_size,
        "batch_size": config.batch_size, "cpus": args.cpus, "torch_threads": threads,
        "train_images": len(train_paths),
        "in_memory_samples_per_s": round(baseline, 2),
        "ray_data_stream_samples_per_s": round(stream, 2),
        "ray_train_with_synthesis_samples_per_s": round(result.samples_per_s, 2),
        "ray_train_vs_in_memory": round(result.samples_per_s / baseline, 3),
        "ray_train_total_minutes": round(result.minutes, 2),
        "ray_train_epochs": result.epochs, "ray_train_steps": result.steps,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
