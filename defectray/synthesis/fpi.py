"""FPI, foreign patch interpolation (Tan et al., 2020): a patch of another normal image, at the same place,
linearly interpolated with the image by a factor alpha ~ U(0, 1); the label is alpha itself, a soft mask."""

from __future__ import annotations

import numpy as np

from defectray.synthesis.augment import match_channels, random_crop_resize
from defectray.synthesis.registry import SynthesisSources, register

MIN_ALPHA = 0.05  # alpha near 0 changes nothing; the mask must stay non-empty


@register("fpi")
def fpi(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    bank = sources.normal_images or sources.textures
    if bank:
        foreign = random_crop_resize(match_channels(bank[int(rng.integers(len(bank)))], image), (h, w), rng)
    else:
        foreign = image[::-1, ::-1]  # no other image: the point-mirrored image is foreign enough
    ph = max(1, int(h * rng.uniform(0.1, 0.5)))
    pw = max(1, int(w * rng.uniform(0.1, 0.5)))
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    alpha = np.float32(rng.uniform(MIN_ALPHA, 1.0))
    mask = np.zeros((h, w), np.float32)
    mask[y0 : y0 + ph, x0 : x0 + pw] = alpha
    region = (slice(y0, y0 + ph), slice(x0, x0 + pw))
    out = image.copy()
    a = image[region].astype(np.float32)
    b = foreign[region].astype(np.float32)
    out[region] = np.clip((1 - alpha) * a + alpha * b + 0.5, 0, 255).astype(np.uint8)
    return out, mask
