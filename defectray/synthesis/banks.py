"""Banks of images that synthetic defects take their appearance from (textures, defect crops, other
normal images), read from a local folder, a glob, a manifest or any fsspec URI."""

from __future__ import annotations

import cv2
import numpy as np

from defectray import io


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = size / min(h, w)
    if scale == 1:
        return image
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def load_bank(
    uri: str | None, channels: int | None = None, size: int | None = None, limit: int | None = None
) -> list[np.ndarray]:
    """uint8 images under ``uri`` (sorted; the first ``limit``), converted to ``channels`` and resized so
    the short side is ``size``. None or "" gives []. A location without images, or a file that does not
    decode, raises (FileNotFoundError / ValueError naming the file) rather than silently shrinking the bank."""
    if not uri:
        return []
    paths = io.list_images(uri)
    if not paths:
        raise FileNotFoundError(f"no images (png, jpg, bmp, tif) under {uri}")
    if limit is not None:
        paths = paths[:limit]
    bank = []
    for path in paths:
        try:
            image = io.load_image(path, channels)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        bank.append(resize_short_side(image, size) if size else image)
    return bank
