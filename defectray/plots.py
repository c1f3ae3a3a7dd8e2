"""Pictures drawn with OpenCV (no plotting library): heat-map overlays, ROC curves, labelled grids.

Every function returns a uint8 RGB array; save it with ``defectray.io.save_image``.
"""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
# distinct, colour-blind-friendly line colours (Okabe-Ito), RGB
PALETTE = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
           (120, 120, 120), (240, 228, 66)]


def to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return image


def heatmap_colors(anomaly_map: np.ndarray) -> np.ndarray:
    """RGB colours of a [0, 1] map on a fixed scale (blue 0 ... red 1), so pictures compare across images."""
    levels = (np.clip(anomaly_map, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with its anomaly map ([0, 1], fixed colour scale) blended on top; uint8 RGB at the image's
    size (the map is resized if it differs)."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(rgb, 1.0 - alpha, heatmap_colors(amap), alpha, 0.0)


def draw_mask_outline(image: np.ndarray, mask: np.ndarray, color=(0, 255, 0), thickness: int = 1) -> np.ndarray:
    """A copy of the RGB image with the outline of the nonzero mask regions drawn on it."""
    out = to_rgb(image).copy()
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if m.shape != out.shape[:2]:
        m = cv2.resize(m, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, thickness, cv2.LINE_AA)
    return out


def fit_in_box(image: np.ndarray, width: int, height: int, background: int = 255) -> np.ndarray:
    """The RGB image scaled (aspect kept) and centred in a width x height box."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
    box = np.full((height, width, 3), background, np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    box[y : y + nh, x : x + nw] = resized
    return box


def put_text(image: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, color=(0, 0, 0),
             thickness: int = 1) -> None:
    cv2.putText(image, text, org, FONT, scale, color, thickness, cv2.LINE_AA)


def fit_text(text: str, width: int, scale: float) -> str:
    """``text`` shortened with '..' until it fits ``width`` pixels."""
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        text = text[:-3] + ".." if len(text) > 3 else text[:-1]
    return text


def image_grid(rows: list[list[np.ndarray]], labels: list[str] | None = None, cell: int = 160,
               captions: list[list[str]] | None = None) -> np.ndarray:
    """A sheet of images, ``cell`` x ``cell`` each (aspect kept, white margins).

    ``labels``: one title per row, written above it. ``captions``: one line under each image, same
    nesting as ``rows``. Rows may differ in length.
    """
    if not rows or not any(rows):
        raise ValueError("image_grid needs at least one image")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    pad, title_h = 6, (22 if labels else 0)
    caption_h = 18 if captions else 0
    n_cols = max(len(r) for r in rows)
    width = pad + n_cols * (cell + pad)
    row_h = title_h + cell + caption_h + pad
    sheet = np.full((pad + len(rows) * row_h, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y0 = pad + r * row_h
        if labels:
            put_text(sheet, fit_text(labels[r], width - 2 * pad, 0.55), (pad, y0 + 16), 0.55, (20, 20, 20))
        for c, img in enumerate(row):
            x0 = pad + c * (cell + pad)
            sheet[y0 + title_h : y0 + title_h + cell, x0 : x0 + cell] = fit_in_box(img, cell, cell, 235)
            if captions and r < len(captions) and c < len(captions[r]):
                put_text(sheet, fit_text(captions[r][c], cell, 0.4), (x0 + 1, y0 + title_h + cell + 13), 0.4)
    return sheet


def roc_curve_image(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str,
                    size: int = 480) -> np.ndarray:
    """ROC curves (name -> (fpr, tpr, auc)) on one square chart with axes, grid, chance line and a legend."""
    left, right, top, bottom = 52, 14, 34, 44
    plot = size - left - right
    height = top + plot + bottom
    img = np.full((height, size, 3), 255, np.uint8)

    def to_px(fpr, tpr):
        x = left + np.asarray(fpr, np.float64) * plot
        y = top + (1.0 - np.asarray(tpr, np.float64)) * plot
        return np.stack([x, y], axis=-1)

    for i in range(11):
        v = i / 10
        (x, y0), (_, y1) = to_px([v, v], [0, 1])
        cv2.line(img, (int(x), int(y1)), (int(x), int(y0)), (232, 232, 232), 1)
        (x0, y), (x1, _) = to_px([0, 1], [v, v])
        cv2.line(img, (int(x0), int(y)), (int(x1), int(y)), (232, 232, 232), 1)
        if i % 2 == 0:
            put_text(img, f"{v:.1f}", (int(x) - 10, top + plot + 16), 0.38, (60, 60, 60))
            put_text(img, f"{v:.1f}", (left - 28, int(y) + 4), 0.38, (60, 60, 60))
    cv2.rectangle(img, (left, top), (left + plot, top + plot), (0, 0, 0), 1)
    (a, b) = to_px([0, 1], [0, 1])
    cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (170, 170, 170), 1, cv2.LINE_AA)
    put_text(img, "false positive rate", (left + plot // 2 - 70, height - 10), 0.45)
    ylabel = np.full((20, 140, 3), 255, np.uint8)
    put_text(ylabel, "true positive rate", (2, 14), 0.45)
    ylabel = cv2.rotate(ylabel, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y_mid = top + plot // 2 - 70
    img[y_mid : y_mid + 140, 2:22] = ylabel
    put_text(img, fit_text(title, size - 20, 0.55), (left, 22), 0.55, (0, 0, 0), 1)

    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = to_px(fpr, tpr)
        # a pixel-level curve has a point per histogram bin: keep one per 1/16 pixel step, the drawing's grid
        pts = np.round(pts * 16).astype(np.int32)
        moved = np.r_[True, np.any(np.diff(pts, axis=0) != 0, axis=1)]
        cv2.polylines(img, [pts[moved]], False, color, 2, cv2.LINE_AA, shift=4)
    # legend, bottom right inside the plot, where ROC curves rarely are
    n, lx = len(curves), left + plot - 190
    if n:
        cv2.rectangle(img, (lx - 6, top + plot - 10 - (n - 1) * 18 - 13), (left + plot - 4, top + plot - 5),
                      (255, 255, 255), -1)
        cv2.rectangle(img, (lx - 6, top + plot - 10 - (n - 1) * 18 - 13), (left + plot - 4, top + plot - 5),
                      (190, 190, 190), 1)
    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        ly = top + plot - 10 - (n - 1 - i) * 18
        cv2.line(img, (lx, ly - 4), (lx + 20, ly - 4), color, 3, cv2.LINE_AA)
        auc_text = "n/a" if auc is None or auc != auc else f"{auc:.3f}"
        put_text(img, fit_text(f"{name}  {auc_text}", 160, 0.42), (lx + 26, ly), 0.42)
    return img


def colorbar_strip(width: int, text_left: str = "", height: int = 30) -> np.ndarray:
    """A white strip: ``text_left``, then the heat-map colour scale from 0 to 1 with its end labels."""
    strip = np.full((height, width, 3), 255, np.uint8)
    x = 6
    if text_left:
        put_text(strip, text_left, (x, height // 2 + 5), 0.45)
        x += cv2.getTextSize(text_left, FONT, 0.45, 1)[0][0] + 14
    bar_w = min(240, max(0, width - x - 60))
    if bar_w > 20:
        put_text(strip, "0", (x, height // 2 + 5), 0.45)
        ramp = heatmap_colors(np.tile(np.linspace(0, 1, bar_w, dtype=np.float32), (12, 1)))
        y = height // 2 - 6
        strip[y : y + 12, x + 14 : x + 14 + bar_w] = ramp
        put_text(strip, "1", (x + 20 + bar_w, height // 2 + 5), 0.45)
    return strip


def vstack(images: list[np.ndarray], pad: int = 0) -> np.ndarray:
    """Images one under the other on white, left-aligned."""
    w = max(im.shape[1] for im in images)
    h = sum(im.shape[0] for im in images) + pad * (len(images) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    y = 0
    for im in images:
        out[y : y + im.shape[0], : im.shape[1]] = to_rgb(im)
        y += im.shape[0] + pad
    return out


def hstack(images: list[np.ndarray], pad: int = 8) -> np.ndarray:
    """Images side by side on white, top-aligned."""
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + pad * (len(images) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for im in images:
        out[: im.shape[0], x : x + im.shape[1]] = to_rgb(im)
        x += im.shape[1] + pad
    return out
