"""Numbers behind BENCHMARKS.md's capacity plan (10 million images a night).

    python benchmarks/capacity.py [--uris 1000000]

1. Forward FLOPs per image of each profile's inference network (torch.utils.flop_counter), the unit the
   GPU-hours are computed from (no GPU here to time it).
2. CPU time per image of scoring's image work (JPEG decode, resize to the model, full-size map, mask PNG)
   at three image sizes, single thread, per second of process CPU time (robust to a shared machine).
3. (run first) The driver's cost of planning a night: N URIs -> mask paths -> Ray Data rows (time, peak RSS).
"""

from __future__ import annotations

import argparse
import resource
import time

import cv2
import numpy as np


def flops() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from defectray.config import get_config
    from defectray.models import build_model

    for profile in ("cpu-small", "paper"):
        cfg = get_config(profile)
        model = build_model(cfg, feature_extractor=False).eval()
        x = torch.rand(1, cfg.channels, cfg.image_size, cfg.image_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{profile}: {cfg.image_size} px x {cfg.channels} ch, {counter.get_total_flops() / 1e9:.2f} GFLOP "
              f"per image forward, {params:.1f} M parameters")


def image_work(seconds: float) -> None:
    from defectray.io import decode_image
    from defectray.score import _encode_mask

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    for h, w in [(400, 400), (1024, 1024), (2048, 2448)]:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        texture = cv2.GaussianBlur(rng.normal(0, 18, (h, w)).astype(np.float32), (0, 0), 1.2)
        img = np.clip(110 + 30 * np.sin(xx / w * np.pi) + texture, 0, 255).astype(np.uint8)
        jpg = cv2.imencode(".jpg", img)[1].tobytes()
        anomaly_map = cv2.GaussianBlur(rng.random((256, 256)).astype(np.float32), (0, 0), 8)
        n, t0 = 0, time.process_time()
        while time.process_time() - t0 < seconds:
            image = decode_image(jpg)
            cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
            full = np.clip(cv2.resize(anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
            png = _encode_mask(full)
            n += 1
        per_image = (time.process_time() - t0) / n
        print(f"{h}x{w} ({h * w / 1e6:.2f} Mpx): {per_image * 1000:.1f} ms CPU per image, "
              f"JPEG {len(jpg) / 1e3:.0f} kB, mask PNG {len(png) / 1e3:.0f} kB")


def driver_plan(n: int) -> None:
    from defectray.score import mask_paths

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    images = [f"s3://factory/2026-11-25/line{i % 40:02d}/cam{i % 8}/{i:09d}.jpg" for i in range(n)]
    masks_of = mask_paths(images, "s3://results/masks/2026-11-25", "s3://factory/2026-11-25")
    rows = [{"image_path": u, "mask_path": masks_of[u]} for u in images]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"driver plan for {len(rows):,} URIs: {seconds:.1f} s, peak RSS {before:.0f} -> {peak:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uris", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    driver_plan(args.uris)  # first, before the models inflate the process's peak
    flops()
    image_work(args.seconds)
