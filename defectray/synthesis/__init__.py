"""Anomaly synthesis: functions that paint a synthetic defect onto a normal image.

Each method is ``fn(image, rng, sources) -> (damaged, mask)``: ``image`` uint8 (H, W) or (H, W, 3) of any
size, ``rng`` a numpy Generator (the only source of randomness, so a seed gives byte-identical output),
``sources`` the banks it may take appearance from. ``damaged`` has the image's shape and dtype and equals
it exactly wherever ``mask`` is 0; ``mask`` is float32 (H, W) in [0, 1] and never empty. Methods register
by name so training picks one by config, or a mix by weight (``"realistic:0.7,nsa:0.3"``: each defect
is painted by one of them; registry.get_synthesizer). Pure numpy/OpenCV: no Ray, no torch needed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from defectray.synthesis.banks import load_bank
from defectray.synthesis.foreground import foreground_mask
from defectray.synthesis.perlin import perlin_mask, perlin_noise
from defectray.synthesis.registry import (
    SYNTHESIZERS,
    SynthesisSources,
    get_synthesizer,
    list_synthesizers,
    register,
)

# Importing the method modules registers them.
from defectray.synthesis import cutpaste, draem, fpi, nsa, realistic  # noqa: E402,F401

__all__ = [
    "SYNTHESIZERS",
    "SynthesisSources",
    "foreground_mask",
    "get_synthesizer",
    "list_synthesizers",
    "load_bank",
    "perlin_mask",
    "perlin_noise",
    "register",
    "synthesize_batch",
]


def _rotation_turns(image: np.ndarray, rng: np.random.Generator) -> int:
    """DRAEM's training-image rotation without resampling: k quarter turns (k in 1..3) for square images, a
    half turn for non-square ones (a quarter turn would change the shape)."""
    h, w = image.shape[:2]
    return int(rng.integers(1, 4)) if h == w else 2


def synthesize_batch(
    images: np.ndarray,
    method: str,
    rng: np.random.Generator,
    sources: SynthesisSources,
    anomaly_prob: float = 0.5,
    rotate_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (B, H, W) or (B, H, W, C) -> (damaged, clean, masks float32 (B, H, W)).

    Each clean image is first rotated with probability ``rotate_prob`` (an ROI mask in
    ``sources.foreground`` turns with it); then with probability ``anomaly_prob`` a defect is painted on it,
    else damaged == clean and the mask is all zero."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"expected uint8 images (B, H, W) or (B, H, W, C), got {images.dtype} {images.shape}")
    synthesize = get_synthesizer(method)
    clean = images.copy()
    damaged = images.copy()
    masks = np.zeros(images.shape[:3], np.float32)
    roi = sources.foreground if isinstance(sources.foreground, np.ndarray) else None
    for i in range(len(images)):
        row_sources = sources
        if rng.random() < rotate_prob:
            turns = _rotation_turns(images[i], rng)
            clean[i] = np.rot90(images[i], turns)
            if roi is not None:  # else defects land where the ROI was before the turn
                row_sources = dataclasses.replace(sources, foreground=np.ascontiguousarray(np.rot90(roi, turns)))
        if rng.random() < anomaly_prob:
            image = clean[i][..., 0] if clean.ndim == 4 and clean.shape[3] == 1 else clean[i]
            out, mask = synthesize(image, rng, row_sources)
            damaged[i] = out.reshape(damaged[i].shape)
            masks[i] = mask
        else:
            damaged[i] = clean[i]
    return damaged, clean, masks
