"""Perlin noise and DRAEM's Perlin defect mask, vectorised over the whole image.

The noise is built cell-block-wise: the image is viewed as (cells_y, pixels_per_cell_y, cells_x,
pixels_per_cell_x), so the gradient of each lattice corner is broadcast against the in-cell offsets
without materialising repeated gradient grids. Any size works: the lattice covers the next multiple of
the cell size and the result is cropped (the bug anomalib had with non-powers of two, PR #490).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _lattice_gradients(scale: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    angles = (2 * np.pi) * rng.random((scale[0] + 1, scale[1] + 1))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient noise of ``shape`` (H, W) with ``scale`` = (periods along y, periods along x); float32 in
    about [-1, 1]. Consumes exactly one ``rng.random((sy + 1, sx + 1))`` draw."""
    h, w = int(shape[0]), int(shape[1])
    sy, sx = max(1, int(scale[0])), max(1, int(scale[1]))
    gx, gy = _lattice_gradients((sy, sx), rng)
    dy, dx = math.ceil(h / sy), math.ceil(w / sx)  # pixels per cell
    ty = (np.arange(dy, dtype=np.float32) / dy)[None, :, None, None]  # in-cell offset, y
    tx = (np.arange(dx, dtype=np.float32) / dx)[None, None, None, :]  # in-cell offset, x

    def corner(oy: int, ox: int) -> np.ndarray:
        cgx = gx[oy : oy + sy, ox : ox + sx][:, None, :, None]
        cgy = gy[oy : oy + sy, ox : ox + sx][:, None, :, None]
        return cgx * (tx - ox) + cgy * (ty - oy)

    u, v = _fade(tx), _fade(ty)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    noise = (top + v * (bottom - top)) * np.float32(math.sqrt(2))
    return noise.reshape(sy * dy, sx * dx)[:h, :w]


def perlin_noise_reference(shape: tuple[int, int], scale: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The same noise, one pixel at a time in plain Python: the benchmark's and the tests' reference."""
    h, w = int(shape[0]), int(shape[1])
    sy, sx = max(1, int(scale[0])), max(1, int(scale[1]))
    gx, gy = _lattice_gradients((sy, sx), rng)
    dy, dx = math.ceil(h / sy), math.ceil(w / sx)
    out = np.zeros((h, w), np.float32)
    for y in range(h):
        cy, fy = divmod(y, dy)
        ty = fy / dy
        v = ty * ty * ty * (ty * (ty * 6 - 15) + 10)
        for x in range(w):
            cx, fx = divmod(x, dx)
            tx = fx / dx
            u = tx * tx * tx * (tx * (tx * 6 - 15) + 10)
            n00 = gx[cy, cx] * tx + gy[cy, cx] * ty
            n01 = gx[cy, cx + 1] * (tx - 1) + gy[cy, cx + 1] * ty
            n10 = gx[cy + 1, cx] * tx + gy[cy + 1, cx] * (ty - 1)
            n11 = gx[cy + 1, cx + 1] * (tx - 1) + gy[cy + 1, cx + 1] * (ty - 1)
            top = n00 + u * (n01 - n00)
            bottom = n10 + u * (n11 - n10)
            out[y, x] = (top + v * (bottom - top)) * math.sqrt(2)
    return out


def rotate_about_centre(image: np.ndarray, angle_deg: float, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle_deg, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_REFLECT_101)


def _threshold_mask(shape, rng, threshold, min_scale_exp, max_scale_exp, rotate):
    ky, kx = rng.integers(min_scale_exp, max_scale_exp, size=2)
    noise = perlin_noise(shape, (2**int(ky), 2**int(kx)), rng)
    if rotate:
        noise = rotate_about_centre(noise, float(rng.uniform(-90, 90)))
    return noise, noise > threshold


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    threshold: float = 0.5,
    min_scale_exp: int = 0,
    max_scale_exp: int = 6,
    rotate: bool = True,
) -> np.ndarray:
    """DRAEM's defect mask: Perlin noise at scale 2^k per axis (k uniform in [min_scale_exp, max_scale_exp)),
    rotated by U(-90°, 90°), thresholded. float32 0/1 of ``shape``, never empty (retries, then keeps the
    noise's top 1% so a degenerate draw still gives a small blob)."""
    shape = (int(shape[0]), int(shape[1]))
    for _ in range(8):
        noise, mask = _threshold_mask(shape, rng, threshold, min_scale_exp, max_scale_exp, rotate)
        if mask.any():
            return mask.astype(np.float32)
    mask = noise >= np.quantile(noise, 0.99)
    return mask.astype(np.float32)
