"""How an image of any shape meets a network trained on ``image_size`` squares.

Two rules (``Config.fit``):

- ``"tiles"`` (default): keep the aspect ratio. The image is resized so its SHORT side is ``image_size``, then
  cut into ``image_size`` squares along the long side (evenly spaced, overlapping where the length is not a
  multiple); the maps of the squares are stitched back (mean where they overlap). Training crops random
  squares from the same resized image, so the network sees exactly the scale it is used at.
- ``"stretch"``: squeeze the whole image into one ``image_size`` square (DRAEM's rule; identical to "tiles"
  for square images such as MVTec AD's).

Why tiles are the default: stretching a 600 x 150 tile to a square shrinks it 4.7x across and 1.2x down, so a
vertical hairline crack falls below a pixel and a round blowhole becomes a sliver. Measured on magnetic-tile
(stretch, cpu-small): crack image AUROC 0.18 on its wide images against 0.83 on its tall ones (BENCHMARKS.md).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from defectray.io import convert_channels

FITS = ("tiles", "stretch")


def fitted_size(h: int, w: int, size: int, fit: str) -> tuple[int, int]:
    """(height, width) the image is resized to before tiling."""
    if fit == "stretch":
        return size, size
    if fit != "tiles":
        raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))


def fit_image(img: np.ndarray, size: int, channels: int, fit: str, auto_levels: bool = False) -> np.ndarray:
    """uint8 image of any size -> uint8 (H', W') or (H', W', 3) by the ``fit`` rule, then ``auto_levels``."""
    img = convert_channels(np.asarray(img), channels)
    h, w = img.shape[:2]
    fh, fw = fitted_size(h, w, size, fit)
    interp = cv2.INTER_AREA if fh < h and fw < w else cv2.INTER_LINEAR
    img = cv2.resize(img, (fw, fh), interpolation=interp)
    return stretch_levels(img) if auto_levels else img


def stretch_levels(img: np.ndarray, low: float = 0.01, high: float = 0.99, min_range: int = 16) -> np.ndarray:
    """Map the image's ``low``..``high`` grey-level quantiles (all channels together) to 0..255.

    Why: exposure varies from part to part and camera to camera; on magnetic-tile the model's scores follow image
    brightness (Spearman 0.2-0.3 on normal images), and faint cracks on dark, low-contrast tiles score below
    normal bright tiles. Quantiles, not min/max, so a few hot pixels or a small defect barely move the levels;
    a nearly flat image (range < ``min_range``) is left alone rather than amplifying its noise."""
    hist = np.bincount(img.reshape(-1), minlength=256).cumsum()
    lo = int(np.searchsorted(hist, low * hist[-1]))
    hi = int(np.searchsorted(hist, high * hist[-1]))
    if hi - lo < min_range:
        return img
    lut = np.clip((np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def tile_offsets(length: int, size: int) -> list[int]:
    """Start offsets of ``size`` windows covering ``length`` (>= size), evenly spaced, first 0, last length-size."""
    n = math.ceil(length / size)
    if n <= 1:
        return [0]
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def tile_windows(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """(y, x) of every ``size`` square covering an (h, w) image."""
    return [(y, x) for y in tile_offsets(h, size) for x in tile_offsets(w, size)]


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


def stitch(tile_maps: np.ndarray, windows: list[tuple[int, int]], h: int, w: int) -> np.ndarray:
    """(T, S, S) maps of the windows -> (h, w) map, the mean where windows overlap."""
    size = tile_maps.shape[-1]
    if len(windows) == 1 and (h, w) == (size, size):
        return np.asarray(tile_maps[0], np.float32)
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for m, (y, x) in zip(tile_maps, windows):
        total[y:y + size, x:x + size] += m
        count[y:y + size, x:x + size] += 1.0
    return total / count
