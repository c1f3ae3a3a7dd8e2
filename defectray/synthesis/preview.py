"""A preview sheet a person can judge at a glance: for each sample, the clean image, the damaged image,
the mask, and the damaged image with the mask's outline drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

PANELS = ("clean", "damaged", "mask", "overlay")


def _rgb(x: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(x, cv2.COLOR_GRAY2RGB) if x.ndim == 2 else x


def _fit(x: np.ndarray, cell: int, interpolation: int) -> np.ndarray:
    h, w = x.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    x = cv2.resize(x, size, interpolation=interpolation)
    canvas = np.full((cell, cell, 3), 32, np.uint8)
    y0, x0 = (cell - x.shape[0]) // 2, (cell - x.shape[1]) // 2
    canvas[y0 : y0 + x.shape[0], x0 : x0 + x.shape[1]] = x
    return canvas


def overlay(damaged: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The damaged image, faintly tinted red inside the mask, with the mask outline in red, so the
    defect itself stays visible under the label."""
    rgb = _rgb(damaged).copy()
    binary = (mask > 0).astype(np.uint8)
    tint = rgb.astype(np.float32)
    tint[binary > 0] = 0.8 * tint[binary > 0] + 0.2 * np.array([255, 0, 0], np.float32)
    rgb = tint.astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (255, 0, 0), max(1, min(rgb.shape[:2]) // 200))
    return rgb


def preview_sheet(
    clean: list[np.ndarray], damaged: list[np.ndarray], masks: list[np.ndarray], title: str = "",
    cell: int = 160, columns: int = 2,
) -> np.ndarray:
    """RGB uint8 sheet: samples in ``columns`` columns, each a row of the four PANELS."""
    n = len(damaged)
    rows = -(-n // columns)
    gap, header = 4, 22
    block_w = len(PANELS) * (cell + gap) + 3 * gap
    sheet = np.full((header + rows * (cell + gap) + gap, columns * block_w, 3), 16, np.uint8)
    cv2.putText(sheet, title, (gap, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    for i in range(n):
        r, c = divmod(i, columns)
        mask_u8 = (np.clip(masks[i], 0, 1) * 255).astype(np.uint8)
        panels = [
            _fit(_rgb(clean[i]), cell, cv2.INTER_AREA),
            _fit(_rgb(damaged[i]), cell, cv2.INTER_AREA),
            _fit(_rgb(mask_u8), cell, cv2.INTER_NEAREST),
            _fit(overlay(damaged[i], masks[i]), cell, cv2.INTER_AREA),
        ]
        y = header + r * (cell + gap)
        for j, panel in enumerate(panels):
            x = c * block_w + j * (cell + gap) + gap
            sheet[y : y + cell, x : x + cell] = panel
        cv2.putText(sheet, f"{i:05d}", (c * block_w + gap + 3, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 0), 1, cv2.LINE_AA)
    return sheet
