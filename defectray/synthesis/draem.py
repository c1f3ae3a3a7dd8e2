"""DRAEM (Zavrtanik et al., ICCV 2021) and MemSeg (Yang et al., 2023): Perlin-shaped defects filled with a
texture. DRAEM paints anywhere; MemSeg keeps to the foreground and may fill with the image's own content
cut into a grid and shuffled ("structure" anomalies)."""

from __future__ import annotations

import cv2
import numpy as np

from defectray.synthesis.augment import blend, draem_augment, ensure_nonempty, match_channels, random_crop_resize
from defectray.synthesis.foreground import foreground_mask
from defectray.synthesis.perlin import perlin_mask, rotate_about_centre
from defectray.synthesis.registry import SynthesisSources, register


def texture_source(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> np.ndarray:
    """A texture of the image's size: from the texture bank, else another normal image, else the image
    itself rotated (so an empty bank degrades gracefully instead of failing)."""
    bank = sources.textures or sources.normal_images
    if bank:
        source = match_channels(bank[int(rng.integers(len(bank)))], image)
        return random_crop_resize(source, image.shape[:2], rng)
    return rotate_about_centre(image, float(rng.uniform(30, 330)))


@register("draem")
def draem(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
    mask = perlin_mask(image.shape[:2], rng)
    texture = draem_augment(texture_source(image, rng, sources), rng)
    keep_original = rng.uniform(0.0, 0.8)  # DRAEM's code: beta ~ U(0, 0.8) of the original shows through
    return blend(image, texture, mask, 1.0 - keep_original), mask


def grid_shuffle(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image cut into a grid of up to 8×8 cells with the cells shuffled (and square cells turned by
    k·90°): self-structure that breaks the part's regularity."""
    h, w = image.shape[:2]
    g = int(rng.integers(2, 9))
    gy, gx = min(g, h), min(g, w)
    if gy * gx < 2:
        return image[::-1, ::-1].copy()
    ys = np.linspace(0, h, gy + 1).astype(int)
    xs = np.linspace(0, w, gx + 1).astype(int)
    cells = [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(gy) for j in range(gx)]
    out = np.empty_like(image)
    order = rng.permutation(len(cells))
    for (y0, y1, x0, x1), k in zip(cells, order):
        sy0, sy1, sx0, sx1 = cells[k]
        patch = image[sy0:sy1, sx0:sx1]
        if patch.shape[0] == patch.shape[1]:
            patch = np.rot90(patch, int(rng.integers(4)))
        if patch.shape[:2] != (y1 - y0, x1 - x0):
            patch = cv2.resize(np.ascontiguousarray(patch), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        out[y0:y1, x0:x1] = patch
    return out


@register("memseg")
def memseg(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
    foreground = foreground_mask(image, sources.foreground)
    mask = None
    for _ in range(4):
        mask = perlin_mask(image.shape[:2], rng).astype(bool) & foreground
        if mask.any():
            break
    mask = ensure_nonempty(mask, rng, foreground).astype(np.float32)
    if sources.textures and rng.random() < 0.5:
        source = draem_augment(texture_source(image, rng, sources), rng)
    else:
        source = grid_shuffle(image, rng)
    strength = rng.uniform(0.15, 1.0)
    return blend(image, source, mask, strength), mask
