"""Where on the image a defect may go: the object, not the background.

Otsu splits the grey levels in two; the object is the class that touches the image border less. Flat
textured surfaces (a tile, a fabric) fill the whole frame and have no bimodal histogram, so Otsu would cut
the surface itself in two: when the split is weak (Otsu's effectiveness metric below 0.8, i.e. the two
classes explain under 80% of the grey-level variance) or the object would cover almost nothing or almost
everything, the whole frame is the foreground.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_SEPARATION = 0.8  # between-class / total variance for a real object/background split
MIN_FOREGROUND = 0.05  # a foreground below this fraction of the frame is noise, not the object


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


WORK_SIZE = 128  # the object/background split is decided on a copy this large: cheap, and enough


def _otsu_foreground(image: np.ndarray) -> np.ndarray:
    full_size = image.shape[:2]
    fg = _otsu_foreground_small(image)
    if fg.shape != full_size:
        fg = cv2.resize(fg.astype(np.uint8), full_size[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    return fg


def _otsu_foreground_small(image: np.ndarray) -> np.ndarray:
    gray = _gray(image)
    h, w = gray.shape
    if max(h, w) > WORK_SIZE:
        scale = WORK_SIZE / max(h, w)
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        h, w = gray.shape
    full = np.ones((h, w), bool)
    if h < 8 or w < 8:
        return full
    small = cv2.GaussianBlur(gray, (0, 0), 1.0)
    total_var = float(small.var())
    if total_var < 1.0:
        return full
    threshold, binary = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = binary.astype(bool)
    p_high = high.mean()
    if p_high in (0.0, 1.0):
        return full
    mean_high, mean_low = small[high].mean(), small[~high].mean()
    between_var = p_high * (1 - p_high) * (mean_high - mean_low) ** 2
    if between_var / total_var < MIN_SEPARATION:
        return full
    border = np.concatenate([high[0], high[-1], high[:, 0], high[:, -1]])
    fg = ~high if border.mean() > 0.5 else high
    k = max(3, (min(h, w) // 32) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel).astype(bool)
    if not MIN_FOREGROUND <= fg.mean() <= 0.98:
        return full
    return fg


def foreground_mask(image: np.ndarray, mode: str | np.ndarray = "otsu") -> np.ndarray:
    """bool (H, W): where defects may be painted. ``mode``: "otsu", "full", or an ROI mask (any size,
    resized to the image; non-zero = allowed)."""
    h, w = image.shape[:2]
    if isinstance(mode, np.ndarray):
        roi = mode.astype(np.uint8)
        if roi.ndim == 3:
            roi = roi.max(axis=2)
        if roi.shape != (h, w):
            roi = cv2.resize(roi, (w, h), interpolation=cv2.INTER_NEAREST)
        fg = roi > 0
        if not fg.any():
            raise ValueError("the foreground ROI mask is empty")
        return fg
    if mode == "full":
        return np.ones((h, w), bool)
    if mode == "otsu":
        return _otsu_foreground(image)
    raise ValueError(f"foreground must be 'otsu', 'full' or a mask array, not {mode!r}")
