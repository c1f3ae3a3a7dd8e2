"""The synthesizer registry and the sources a synthesizer may draw defect appearance from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# fn(image, rng, sources) -> (damaged uint8 same shape as image, mask float32 (H, W) in [0, 1], never empty)
Synthesizer = Callable[[np.ndarray, np.random.Generator, "SynthesisSources"], tuple[np.ndarray, np.ndarray]]

SYNTHESIZERS: dict[str, Synthesizer] = {}


def register(name: str) -> Callable[[Synthesizer], Synthesizer]:
    def decorator(fn: Synthesizer) -> Synthesizer:
        if name in SYNTHESIZERS:
            raise ValueError(f"synthesizer {name!r} registered twice")
        SYNTHESIZERS[name] = fn
        return fn

    return decorator


def get_synthesizer(name: str) -> Synthesizer:
    try:
        return SYNTHESIZERS[name]
    except KeyError:
        raise ValueError(f"unknown synthesis method {name!r}; known: {', '.join(list_synthesizers())}") from None


def list_synthesizers() -> list[str]:
    return sorted(SYNTHESIZERS)


@dataclass
class SynthesisSources:
    """Where defect appearance may come from. Built from training images only, never test images.

    Images may have any size; methods resize/crop what they take. An empty bank is fine: methods fall back
    to other banks, then to the image's own (shuffled/transformed) content."""

    normal_images: list[np.ndarray] = field(default_factory=list)  # other normal training images
    textures: list[np.ndarray] = field(default_factory=list)  # texture bank (DTD or the user's)
    defects: list[np.ndarray] = field(default_factory=list)  # real defect crops
    foreground: str | np.ndarray = "otsu"  # "otsu" | "full" | ROI mask (H, W) bool/uint8
