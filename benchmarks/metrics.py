"""Pixel metrics: the streaming histogram accumulator (defectray.metrics.PixelMetrics) against the exact
computation that holds every pixel (scikit-learn roc_auc_score + average_precision_score, and the MVTec
AD reference AUPRO that sorts all pixels), on realistic saturated-sigmoid maps. Also the error that plain
uniform 100k-bin histograms would make on the same maps.

    python benchmarks/metrics.py [--maps 24] [--size 1024]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402
from test_metrics import exact_aupro, realistic_case  # noqa: E402

from defectray.metrics import PixelMetrics, _auc_from_counts  # noqa: E402


def make_maps(n: int, size: int):
    import cv2

    rng = np.random.default_rng(0)
    small_maps, small_masks = realistic_case(rng, n)
    maps = [cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in small_maps]
    masks = [cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in small_masks]
    return maps, masks


def uniform_auroc(maps, masks, bins=100_000):
    neg, pos = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    for amap, mask in zip(maps, masks):
        idx = np.minimum((amap * bins).astype(np.int64), bins - 1).ravel()
        inside = mask.ravel() > 0
        pos += np.bincount(idx[inside], minlength=bins)
        neg += np.bincount(idx[~inside], minlength=bins)
    return _auc_from_counts(np.cumsum(neg[::-1]).astype(float), np.cumsum(pos[::-1]).astype(float))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--maps", type=int, default=24)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    maps, masks = make_maps(args.maps, args.size)
    n_pixels = sum(m.size for m in maps)
    print(f"{args.maps} maps of {args.size}x{args.size} = {n_pixels / 1e6:.1f} M pixels")

    tracemalloc.start()
    t0 = time.perf_counter()
    pm = PixelMetrics()
    for amap, mask in zip(maps, masks):
        pm.update(amap, mask if mask.any() else None)
    t_update = time.perf_counter() - t0
    streamed = pm.compute()
    t_stream = time.perf_counter() - t0
    _, peak_stream = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    tracemalloc.start()
    t0 = time.perf_counter()
    labels = np.concatenate([m.ravel() > 0 for m in masks])
    scores = np.concatenate([m.ravel() for m in maps])
    exact = {"pixel_auroc": roc_auc_score(labels, scores), "pixel_ap": average_precision_score(labels, scores)}
    t_sklearn = time.perf_counter() - t0
    exact["pixel_aupro"] = exact_aupro(maps, masks)
    t_exact = time.perf_counter() - t0
    _, peak_exact = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print(f"streaming: {t_stream:.2f} s ({t_update / len(maps) * 1000:.0f} ms per map, "
          f"{n_pixels / t_update / 1e6:.0f} M pixels/s), peak extra memory {peak_stream / 2**20:.0f} MiB "
          f"(maps already in memory not counted)")
    print(f"exact:     {t_exact:.2f} s (sklearn AUROC+AP {t_sklearn:.2f} s, sort-based AUPRO "
          f"{t_exact - t_sklearn:.2f} s), peak extra memory {peak_exact / 2**20:.0f} MiB")
    print(f"speed-up {t_exact / t_stream:.1f}x, memory {peak_exact / peak_stream:.1f}x less")
    bounds = pm.error_bounds()
    for key in ("pixel_auroc", "pixel_aupro", "pixel_ap"):
        print(f"{key:12s} streaming {streamed[key]:.6f}  exact {exact[key]:.6f}  "
              f"|diff| {abs(streamed[key] - exact[key]):.1e}  bound {bounds.get(key, float('nan')):.1e}")
    u = uniform_auroc(maps, masks)
    print(f"uniform 100k bins: pixel_auroc {u:.6f}, |diff| {abs(u - exact['pixel_auroc']):.1e}")

    # A more confident network: the same logits x4 (normal pixels ~1e-16..1e-6, as trained focal-loss
    # networks give). Uniform bins put almost every pixel in bin 0; the float-exponent bins do not.
    sharp = []
    for m in maps:
        logit = np.log(np.clip(m, 1e-7, 1 - 1e-7) / (1 - np.clip(m, 1e-7, 1 - 1e-7)))
        sharp.append((1 / (1 + np.exp(-4 * logit.astype(np.float64)))).astype(np.float32))
    labels = np.concatenate([m.ravel() > 0 for m in masks])
    scores = np.concatenate([m.ravel() for m in sharp])
    exact_sharp = roc_auc_score(labels, scores)
    pm = PixelMetrics()
    for amap, mask in zip(sharp, masks):
        pm.update(amap, mask)
    u = uniform_auroc(sharp, masks)
    print(f"sharper maps: exact pixel_auroc {exact_sharp:.6f}; streaming |diff| "
          f"{abs(pm.compute()['pixel_auroc'] - exact_sharp):.1e} (bound {pm.error_bounds()['pixel_auroc']:.1e}); "
          f"uniform 100k bins |diff| {abs(u - exact_sharp):.1e}")


if __name__ == "__main__":
    main()
