"""CutPaste and CutPaste-Scar (Li et al., CVPR 2021): a colour-jittered piece of the same image, a
rectangle or a thin rotated strip, pasted somewhere else. Sizes are fractions of the image, so the
recipe means the same at any resolution (the paper's numbers are for 256 px)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from defectray.synthesis.augment import colour_jitter, ensure_nonempty
from defectray.synthesis.registry import SynthesisSources, register


def paste_rotated(
    image: np.ndarray, rng: np.random.Generator, size_hw: tuple[float, float], angle: float, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Copy a (h, w) rectangle rotated by ``angle`` from one place of ``image`` to another."""
    h, w = image.shape[:2]
    ph, pw = size_hw
    half_diag = 0.5 * math.hypot(ph, pw)
    def centre():
        return (rng.uniform(min(half_diag, w / 2), max(w - half_diag, w / 2)),
                rng.uniform(min(half_diag, h / 2), max(h - half_diag, h / 2)))
    src_c, dst_c = centre(), centre()
    box = cv2.boxPoints((dst_c, (pw, ph), angle)).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    mask = ensure_nonempty(mask, rng)
    # Translate so that the source centre lands on the destination centre.
    matrix = np.float32([[1, 0, dst_c[0] - src_c[0]], [0, 1, dst_c[1] - src_c[1]]])
    moved = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out = image.copy()
    inside = mask.astype(bool)
    out[inside] = colour_jitter(moved[inside], rng, jitter, jitter, jitter, rgb=image.ndim == 3)
    return out, mask.astype(np.float32)


@register("cutpaste")
def cutpaste(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    area = rng.uniform(0.02, 0.15) * h * w
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
    ph = min(h * 0.9, math.sqrt(area * aspect))
    pw = min(w * 0.9, math.sqrt(area / aspect))
    return paste_rotated(image, rng, (max(1.0, ph), max(1.0, pw)), 0.0, 0.1)


@register("cutpaste-scar")
def cutpaste_scar(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    unit = min(h, w) / 256  # the paper's scar: width 2-16 px, length 10-25 px at 256 px
    width = max(1.0, rng.uniform(2, 16) * unit)
    length = max(2.0, rng.uniform(10, 25) * unit)
    angle = rng.uniform(-45, 45)
    return paste_rotated(image, rng, (length, width), angle, 0.1)
