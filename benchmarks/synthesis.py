"""Synthesis throughput: samples/s on ONE core for every method at 256×256, and the vectorised Perlin
mask against a per-pixel pure-Python reference of the same mask, in the same run.

    python benchmarks/synthesis.py [--size 256] [--seconds 2]

Gray images are magnetic-tile train/good when the data set is present (else procedural tiles); RGB
images are procedural. Sources: 32 other normal images, 8 procedural textures, as a training worker has.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectray import io  # noqa: E402
from defectray.synthesis import SynthesisSources, get_synthesizer, list_synthesizers, synthesize_batch  # noqa: E402
from defectray.synthesis.perlin import perlin_mask, perlin_noise, perlin_noise_reference, rotate_about_centre  # noqa: E402

MAGNETIC_TILE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic-tile"


def single_thread() -> None:
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def gray_images(n: int, size: int, rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    good = MAGNETIC_TILE / "train" / "good"
    if good.is_dir():
        paths = io.list_images(str(good))[:n]
        return [cv2.resize(io.load_image(p, 1), (size, size), interpolation=cv2.INTER_AREA) for p in paths], "magnetic-tile"
    from tests.conftest import tile_image

    return [tile_image(rng, size, size) for _ in range(n)], "procedural tiles"


def textures(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        planes = [perlin_noise((size, size), (8, 8), rng) + 0.5 * perlin_noise((size, size), (32, 32), rng) for _ in range(3)]
        out.append(np.clip((np.stack(planes, -1) + 1.5) * 85, 0, 255).astype(np.uint8))
    return out


def rate(fn, seconds: float, min_calls: int = 20) -> float:
    """Calls per second of this process's CPU time: on one thread that is the rate one core sustains, and
    unlike wall time it does not drop when other processes share the machine."""
    for _ in range(5):
        fn()
    calls, start = 0, time.process_time()
    while calls < min_calls or time.process_time() - start < seconds:
        fn()
        calls += 1
    return calls / (time.process_time() - start)


def reference_perlin_mask(shape, rng, threshold=0.5):
    """perlin_mask's recipe with the per-pixel noise (same draws, so the same mask)."""
    ky, kx = rng.integers(0, 6, size=2)
    noise = perlin_noise_reference(shape, (2**int(ky), 2**int(kx)), rng)
    noise = rotate_about_centre(noise, float(rng.uniform(-90, 90)))
    return (noise > threshold).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    single_thread()
    size = args.size
    rng = np.random.default_rng(0)
    gray, gray_name = gray_images(40, size, rng)
    tex = textures(8, size, rng)
    rgb = [tex[i % 8][::-1].copy() for i in range(40)]
    sources = {
        1: SynthesisSources(normal_images=gray[8:], textures=[cv2.cvtColor(t, cv2.COLOR_RGB2GRAY) for t in tex]),
        3: SynthesisSources(normal_images=rgb[8:], textures=tex),
    }
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}, opencv {cv2.__version__}, single thread, {size}x{size}, gray = {gray_name}")
    print("| method | gray samples/s/core | RGB samples/s/core | ms/sample (gray) |")
    print("|---|---:|---:|---:|")
    for method in list_synthesizers():
        synthesize = get_synthesizer(method)
        results = []
        for channels, images in ((1, gray), (3, rgb)):
            g = np.random.default_rng(1)
            counter = iter(range(10**9))
            results.append(rate(lambda: synthesize(images[next(counter) % 8], g, sources[channels]), args.seconds))
        print(f"| {method} | {results[0]:.0f} | {results[1]:.0f} | {1000 / results[0]:.2f} |")

    batch = np.stack(gray[:8])
    g = np.random.default_rng(2)
    batch_rate = 8 * rate(lambda: synthesize_batch(batch, "realistic", g, sources[1], 0.5, 0.3), args.seconds, 5)
    print(f"\nsynthesize_batch(realistic, anomaly_prob=0.5, rotate_prob=0.3), batch 8 gray: {batch_rate:.0f} samples/s/core")

    g1 = np.random.default_rng(3)
    fast = rate(lambda: perlin_mask((size, size), g1), args.seconds)
    g2 = np.random.default_rng(3)
    slow = rate(lambda: reference_perlin_mask((size, size), g2), args.seconds, min_calls=3)
    same = np.array_equal(perlin_mask((size, size), np.random.default_rng(9)),
                          reference_perlin_mask((size, size), np.random.default_rng(9)))
    print(f"\nPerlin mask {size}x{size}: vectorised {fast:.0f} masks/s, per-pixel Python reference {slow:.2f} masks/s, "
          f"speed-up x{fast / slow:.0f} (same mask for the same seed: {same})")


if __name__ == "__main__":
    main()
