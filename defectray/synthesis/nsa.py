"""NSA, natural synthetic anomalies (Schlüter et al., ECCV 2022): a patch of another normal image
Poisson-blended (seamless cloning) into the image. Cloning keeps the source's gradients
and the target's boundary, so the patch has no hard edge and may nearly vanish on a uniform surface; the
label is therefore where the result really differs from the original, not the whole patch, as in NSA.
The blend is solved by defectray.synthesis.poisson (exact, deterministic), not cv2.seamlessClone, whose
OpenCV 5.0.0 build gives different results for identical calls (see that module)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from defectray.synthesis.augment import match_channels, random_affine
from defectray.synthesis.foreground import foreground_mask
from defectray.synthesis.poisson import poisson_clone
from defectray.synthesis.registry import SynthesisSources, register

MIN_DIFFERENCE = 8  # grey levels (locally averaged): NSA's label is where the blend visibly changed the image


def _patch_box(foreground: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, x0, ph, pw): a rectangle of 1-8% of the frame, centred on the foreground, one pixel clear of
    the border (the Poisson blend takes its boundary values there)."""
    h, w = foreground.shape
    area = rng.uniform(0.01, 0.08) * h * w
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
    ph = int(np.clip(math.sqrt(area * aspect), 1, h - 2))
    pw = int(np.clip(math.sqrt(area / aspect), 1, w - 2))
    ys, xs = np.nonzero(foreground)
    i = int(rng.integers(len(ys)))
    y0 = int(np.clip(ys[i] - ph // 2, 1, h - 1 - ph))
    x0 = int(np.clip(xs[i] - pw // 2, 1, w - 1 - pw))
    return y0, x0, ph, pw


@register("nsa")
def nsa(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    if h < 3 or w < 3:  # no room for a blending border: invert one pixel
        mask = np.zeros((h, w), np.float32)
        mask[int(rng.integers(h)), int(rng.integers(w))] = 1
        out = image.copy()
        out[mask > 0] = 255 - out[mask > 0]
        return out, mask
    foreground = foreground_mask(image, sources.foreground)
    bank = sources.normal_images or sources.textures
    donor = match_channels(bank[int(rng.integers(len(bank)))], image) if bank else image
    y0, x0, ph, pw = _patch_box(foreground, rng)
    box = np.zeros((h, w), bool)
    box[y0 : y0 + ph, x0 : x0 + pw] = True
    box &= foreground  # object-aware: the blend is kept on the object only (non-empty: centred on it)
    # Blending keeps only the donor's gradients, so a patch of the same kind of surface can vanish: the
    # donor is rotated (a texture running the wrong way) and its contrast changed, more on each retry,
    # until the blend changes the image enough to outline.
    changed = np.zeros((h, w), bool)
    cloned = image
    for attempt in range(3):
        moved = random_affine(donor, (h, w), rng, scale_range=(0.7, 1.4), max_angle=180)
        x = moved.astype(np.float32)
        x = (x - x.mean()) * rng.uniform(1.0, 2.5) * (1 + attempt) + x.mean()
        moved = np.clip(x, 0, 255).astype(np.uint8)
        cloned = poisson_clone(image, moved, y0, x0, ph, pw)
        diff = np.abs(cloned.astype(np.float32) - image.astype(np.float32))
        if diff.ndim == 3:
            diff = diff.max(axis=2)
        # Smoothed, so that a textured change is one region rather than speckle.
        diff = cv2.GaussianBlur(diff, (0, 0), max(1.0, min(h, w) / 128))
        changed = (diff >= MIN_DIFFERENCE) & box
        if changed.sum() >= 0.3 * box.sum():
            break
    k = max(3, (min(h, w) // 64) | 1)
    changed = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((k, k), np.uint8)).astype(bool)
    changed &= box
    if not changed.any():
        changed = box
    mask = changed.astype(np.float32)
    out = image.copy()
    out[changed] = cloned[changed]
    return out, mask
