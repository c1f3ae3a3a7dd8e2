"""The synthesizer registry and the sources a synthesizer may draw defect appearance from."""

from __future__ import annotations

import math
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


def _named(name: str) -> Synthesizer:
    try:
        return SYNTHESIZERS[name]
    except KeyError:
        raise ValueError(f"unknown synthesis method {name!r}; known: {', '.join(list_synthesizers())}") from None


def parse_mix(spec: str) -> list[tuple[str, float]]:
    """``"realistic"`` -> [("realistic", 1.0)]; ``"realistic:0.7,nsa:0.3"`` -> [("realistic", 0.7), ("nsa", 0.3)].
    Names are checked against the registry; weights must be positive (they need not sum to 1)."""
    items = [item.strip() for item in spec.split(",")]
    if len(items) == 1 and ":" not in items[0]:
        _named(items[0])
        return [(items[0], 1.0)]
    parts: list[tuple[str, float]] = []
    for item in items:
        name, _, weight = item.partition(":")
        name = name.strip()
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"synthesis mix {spec!r}: {item!r} needs a positive weight, as in 'realistic:0.7,nsa:0.3'")
        if name in (n for n, _ in parts):
            raise ValueError(f"synthesis mix {spec!r} names {name!r} twice")
        _named(name)
        parts.append((name, w))
    return parts


def get_synthesizer(spec: str) -> Synthesizer:
    """The method named ``spec``, or a mix of methods (``"realistic:0.7,nsa:0.3"``, see parse_mix): each call
    paints its defect with one of them, drawn with those weights from the call's own rng, so a seed still
    gives byte-identical output."""
    parts = parse_mix(spec)  # checks every name
    methods = [SYNTHESIZERS[name] for name, _ in parts]
    if len(methods) == 1:
        return methods[0]
    cdf = np.cumsum([w for _, w in parts])
    cdf = cdf / cdf[-1]

    def mixed(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
        # cdf[-1] is exactly 1.0 and rng.random() < 1, so the index is always a method's
        return methods[int(np.searchsorted(cdf, rng.random(), side="right"))](image, rng, sources)

    return mixed


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
