"""Where on the image a defect may go: the object, not the background.

Otsu splits the grey levels in two; the object is the class that touches the image border less. Flat
textured surfaces (a tile, a fabric) fill the whole frame and have no bimodal histogram, so Otsu would cut
the surface itself in two: when the split is weak (Otsu's effectiveness metric below 0.8, i.e. the two
classes explain under 80% of the grey-level variance) or the object would cover almost nothing or almost
everything, the whole frame is the foreground, less any dark background showing at its border.

That last part matters for parts photographed close up: the part fills the frame except for dark wedges at
its corners and ends, too small for Otsu to split. Counted as foreground, those wedges receive synthetic
chips whose labels cover background, and the detector learns "dark at the image border is a defect": on
magnetic-tile 11 of the 15 highest-scoring good images peaked on such a corner (BENCHMARKS.md, session 20).
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_SEPARATION = 0.8  # between-class / total variance for a real object/background split
MIN_FOREGROUND = 0.05  # a foreground below this fraction of the frame is noise, not the object
DARK_BACKGROUND = 0.4  # background around a frame-filling part: darker than this fraction of the median grey
MAX_BACKGROUND = 0.5  # more "background" than this is the scene's own content, not a border around a part


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
    if h < 8 or w < 8:
        return np.ones((h, w), bool)
    small = cv2.GaussianBlur(gray, (0, 0), 1.0)
    total_var = float(small.var())
    if total_var < 1.0:
        return np.ones((h, w), bool)

    def whole_frame() -> np.ndarray:  # only when Otsu finds no object: it costs more than the split
        return ~_dark_border_background(small)

    threshold, binary = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = binary.astype(bool)
    p_high = high.mean()
    if p_high in (0.0, 1.0):
        return whole_frame()
    mean_high, mean_low = small[high].mean(), small[~high].mean()
    between_var = p_high * (1 - p_high) * (mean_high - mean_low) ** 2
    if between_var / total_var < MIN_SEPARATION:
        return whole_frame()
    border = np.concatenate([high[0], high[-1], high[:, 0], high[:, -1]])
    fg = ~high if border.mean() > 0.5 else high
    k = max(3, (min(h, w) // 32) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel).astype(bool)
    if not MIN_FOREGROUND <= fg.mean() <= 0.98:
        return whole_frame()
    return fg


def _dark_border_background(gray: np.ndarray) -> np.ndarray:
    """bool: pixels far darker than the surface (below DARK_BACKGROUND x the median grey level) that connect
    to the image border, grown by a pixel for the blurred edge; none if that would be most of the frame.
    Textures (measured: scikit-image's gravel, grass and brick) have no such region: their dark pits are not
    that dark relative to the median, or do not reach the border as one piece."""
    dark = (gray < DARK_BACKGROUND * float(np.median(gray))).astype(np.uint8)
    n, labels = cv2.connectedComponents(dark, connectivity=8)
    if n <= 1:
        return np.zeros(gray.shape, bool)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, touching[touching > 0])
    background = cv2.dilate(background.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return background if background.mean() <= MAX_BACKGROUND else np.zeros(gray.shape, bool)


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
