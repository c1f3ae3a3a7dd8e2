"""Shared steps of the synthesizers: fitting a source image to the target, geometric and colour
augmentation, and blending under a mask with the pixels outside it left exactly as they were."""

from __future__ import annotations

import math

import cv2
import numpy as np


def match_channels(source: np.ndarray, like: np.ndarray) -> np.ndarray:
    if source.ndim == like.ndim:
        return source
    if like.ndim == 2:
        return cv2.cvtColor(source, cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(source, cv2.COLOR_GRAY2RGB)


def vary_exposure(image: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Half the time, the whole image as if under another exposure: its grey levels times a gain drawn
    log-uniformly from 1/(1 + jitter) to 1 + jitter, the top capped so that the 99th percentile stays within 255
    (a brighter copy of a bright image would only clip). uint8 in and out; the image itself (no draw) at 0."""
    if jitter <= 0 or rng.random() >= 0.5:
        return image
    lo = 1 / (1 + jitter)
    hi = max(lo, min(1 + jitter, 255.0 / max(1.0, float(np.percentile(image, 99)))))
    gain = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return np.clip(image.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def random_affine(
    source: np.ndarray,
    shape: tuple[int, int],
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.5, 1.5),
    max_angle: float = 180.0,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """``source`` rotated, scaled, possibly mirrored and shifted, filling an (H, W) frame (reflected at
    its borders). The scale is relative to covering the frame, so any source size works. ``window`` =
    (y0, y1, x0, x1) computes only that part of the frame (the same pixels, cheaper for small defects)."""
    h, w = shape
    sh, sw = source.shape[:2]
    cover = max(h / sh, w / sw)
    scale = cover * math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    angle = rng.uniform(-max_angle, max_angle)
    matrix = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, scale)
    if rng.random() < 0.5:
        matrix[0, :2] *= -1  # mirror
    # Put a random point of the source at the frame's centre.
    cx, cy = rng.uniform(0.25, 0.75) * sw, rng.uniform(0.25, 0.75) * sh
    mapped = matrix[:, :2] @ np.array([cx, cy])
    matrix[:, 2] = np.array([w / 2, h / 2]) - mapped
    size = (w, h)
    if window is not None:
        y0, y1, x0, x1 = window
        matrix[:, 2] -= np.array([x0, y0])
        size = (x1 - x0, y1 - y0)
    return cv2.warpAffine(source, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def random_crop_resize(source: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random window of ``source`` with the target's aspect ratio, resized to (H, W)."""
    h, w = shape
    sh, sw = source.shape[:2]
    fit = min(sh / h, sw / w)
    crop_h, crop_w = max(1, int(h * fit)), max(1, int(w * fit))
    y0 = int(rng.integers(0, sh - crop_h + 1))
    x0 = int(rng.integers(0, sw - crop_w + 1))
    crop = source[y0 : y0 + crop_h, x0 : x0 + crop_w]
    if crop.shape[:2] == (h, w):
        return crop
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


def colour_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    rgb: bool = False,
) -> np.ndarray:
    """CutPaste-style jitter: brightness and contrast factors in 1 ± x, saturation for RGB; uint8 out.
    Works on an image or on gathered pixels ((N,) gray, (N, 3) with ``rgb=True``)."""
    out = image.astype(np.float32)
    out *= rng.uniform(1 - brightness, 1 + brightness)
    mean = out.mean()
    out = (out - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    if rgb or out.ndim == 3:
        gray = (out[..., 0:1] + out[..., 1:2] + out[..., 2:3]) * np.float32(1 / 3)
        out = (out - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
    return np.clip(out, 0, 255).astype(np.uint8)


def _gamma(x, rng):
    return 255.0 * (x / 255.0) ** rng.uniform(0.5, 2.0)


def _brightness_contrast(x, rng):
    return (x - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-30, 30)


def _sharpen(x, rng):
    blurred = cv2.GaussianBlur(x, (0, 0), 1.0)
    return x + rng.uniform(0.5, 2.0) * (x - blurred)


def _solarize(x, rng):
    t = rng.uniform(32, 128)
    return np.where(x >= t, 255.0 - x, x)


def _posterize(x, rng):
    step = float(2 ** int(rng.integers(4, 7)))  # keep 4..2 bits
    return np.floor(x / step) * step


def _equalize(x, rng):
    u8 = np.clip(x, 0, 255).astype(np.uint8)
    if u8.ndim == 2:
        return cv2.equalizeHist(u8).astype(np.float32)
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(u8[..., c])) for c in range(3)], axis=-1).astype(np.float32)


def _invert(x, rng):
    return 255.0 - x


def _channel_shuffle(x, rng):
    return x[..., rng.permutation(3)] if x.ndim == 3 else x + rng.uniform(-40, 40)


DRAEM_AUGMENTATIONS = (_gamma, _brightness_contrast, _sharpen, _solarize, _posterize, _equalize, _invert, _channel_shuffle)


def draem_augment(source: np.ndarray, rng: np.random.Generator, n: int = 3) -> np.ndarray:
    """DRAEM applies 3 of its colour augmentations (chosen at random) to the texture: float32 [0, 255]."""
    x = source.astype(np.float32)
    for i in rng.choice(len(DRAEM_AUGMENTATIONS), size=n, replace=False):
        x = np.clip(DRAEM_AUGMENTATIONS[i](x, rng), 0, 255).astype(np.float32)
    return x


def blend(image: np.ndarray, source: np.ndarray, mask: np.ndarray, strength: float | np.ndarray) -> np.ndarray:
    """``image`` where ``mask`` is 0, else (1 - mask·strength)·image + mask·strength·source, rounded.

    Only the masked pixels are computed; the others are copied, so they stay byte-identical."""
    inside = mask > 0
    original = image[inside].astype(np.float32)
    weight = (mask[inside] * strength).astype(np.float32)
    if image.ndim == 3:
        weight = weight[:, None]
    mixed = original + weight * (source[inside].astype(np.float32) - original)
    result = image.copy()
    result[inside] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return result


def mask_window(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the bounding box of the mask's non-zero pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def ensure_nonempty(mask: np.ndarray, rng: np.random.Generator, allowed: np.ndarray | None = None) -> np.ndarray:
    """A last-resort blob (a small disc inside ``allowed``) for a mask that came out empty."""
    if mask.any():
        return mask
    h, w = mask.shape
    if allowed is not None and allowed.any():
        ys, xs = np.nonzero(allowed)
        i = int(rng.integers(len(ys)))
        cy, cx = int(ys[i]), int(xs[i])
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    out = np.zeros((h, w), np.uint8)
    cv2.circle(out, (cx, cy), max(1, min(h, w) // 32), 1, -1)
    if allowed is not None and (out.astype(bool) & allowed).any():
        out &= allowed.astype(np.uint8)
    out[cy, cx] = 1
    return out.astype(mask.dtype)
