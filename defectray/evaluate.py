"""Measure a model on the test split of an MVTec-layout category: metrics.json, roc.png, cases.png, scores.csv.

The test set is streamed: images are read one batch ahead (threads, so object-store latency overlaps
inference), each full-resolution map is folded into the pixel accumulators and dropped, and only small
thumbnails of the few best and worst cases survive for the picture sheet.

Pixel metrics use every image at its own resolution (maps come back from ``predict`` at image size).
Defect classes without ground-truth masks count at image level only; a defect image whose mask file is
missing in a class that has masks is left out of the pixel metrics and counted in ``n_without_mask``.
"""

from __future__ import annotations

import csv
import heapq
import io as _io
import itertools
import json
import posixpath
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from defectray.io import TestItem, join, load_image, mvtec_test_items, save_image, write_bytes
from defectray.metrics import PixelMetrics, image_metrics, roc_curve
from defectray.plots import (colorbar_strip, draw_mask_outline, heatmap_overlay, hstack, image_grid, roc_curve_image,
                             vstack)

PIXEL_KEYS = ("pixel_auroc", "pixel_aupro", "pixel_ap")
THUMBNAIL_SIDE = 256  # cases kept for the sheet are stored this small, never at full resolution


def _load(item: TestItem) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        image = load_image(item.image)
    except ValueError as e:
        raise ValueError(f"{item.image}: {e}") from None
    mask = None
    if item.mask is not None:
        try:
            mask = load_image(item.mask, channels=1) > 0
        except ValueError as e:
            raise ValueError(f"{item.mask}: {e}") from None
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{item.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                             f"{image.shape[1]}x{image.shape[0]}")
    return image, mask


def _thumbnail(array: np.ndarray, interpolation: int) -> np.ndarray:
    h, w = array.shape[:2]
    scale = THUMBNAIL_SIDE / max(h, w)
    if scale >= 1:
        return array.copy()
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=interpolation)


class CaseKeeper:
    """The k highest- and k lowest-scoring images of each kind (defect / good), as thumbnails."""

    def __init__(self, k: int):
        self.k = k
        self.heaps: dict[tuple[bool, str], list] = {(a, end): [] for a in (True, False) for end in ("high", "low")}
        self._tiebreak = itertools.count()

    def offer(self, item: TestItem, score: float, image: np.ndarray, amap: np.ndarray, mask) -> None:
        for end in ("high", "low"):
            heap = self.heaps[(item.is_anomalous, end)]
            key = score if end == "high" else -score
            if len(heap) < self.k or key > heap[0][0]:
                case = (item, score, _thumbnail(image, cv2.INTER_AREA), _thumbnail(amap, cv2.INTER_AREA),
                        None if mask is None else _thumbnail(mask.astype(np.uint8) * 255, cv2.INTER_NEAREST))
                entry = (key, next(self._tiebreak), case)
                (heapq.heappush if len(heap) < self.k else heapq.heapreplace)(heap, entry)

    def ranked(self, anomalous: bool, end: str) -> list:
        return [case for _, _, case in sorted(self.heaps[(anomalous, end)], key=lambda e: (-e[0], e[1]))]


def case_sheet(cases: CaseKeeper, cell: int = 160) -> np.ndarray:
    """Rows of (image with ground-truth outline | heat-map overlay) pairs for the best and worst cases."""
    rows, labels, captions = [], [], []
    plan = [
        (True, "high", "Defect images scored highest (best detected)"),
        (True, "low", "Defect images scored lowest (worst: missed defects)"),
        (False, "high", "Good images scored highest (worst: false alarms)"),
        (False, "low", "Good images scored lowest (best)"),
    ]
    for anomalous, end, label in plan:
        ranked = cases.ranked(anomalous, end)
        if not ranked:
            continue
        row, caption = [], []
        for item, score, image, amap, mask in ranked:
            overlay = heatmap_overlay(image, amap)
            if mask is not None:
                image = draw_mask_outline(image, mask, (0, 255, 0))
                overlay = draw_mask_outline(overlay, mask, (255, 255, 255))
            stem = posixpath.splitext(posixpath.basename(item.image))[0]
            row += [image, overlay]
            caption += [f"{item.defect_class}/{stem}", f"score {score:.3f}"]
        rows.append(row)
        labels.append(label)
        captions.append(caption)
    grid = image_grid(rows, labels, cell=cell, captions=captions)
    legend = colorbar_strip(grid.shape[1], "Each case: image with ground-truth outline | anomaly map overlay.  Map:")
    return vstack([legend, grid])


class Progress:
    def __init__(self, total: int, enabled: bool, every_s: float = 2.0):
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every_s and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(f"evaluate: {done}/{self.total} images, {rate:.1f} images/s, ETA {eta:.0f} s",
              file=sys.stderr, flush=True)


def _round(value):
    return None if value is None else round(float(value), 6)


def evaluate(model: str | object, data: str, out_dir: str | None = None, batch_size: int = 16,
             progress: bool = True, cases_per_row: int = 4, device: str | None = None) -> dict:
    """Run ``model`` (a URI or a detector with ``predict``) over ``data``'s test split; return the metrics
    dict and, with ``out_dir``, write metrics.json, roc.png, cases.png and scores.csv there.
    ``device`` applies to a model URI: None picks cuda when available, else cpu."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if isinstance(model, str):
        import torch

        from defectray.models.modelfile import load_model

        detector = load_model(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        detector = model
    items = mvtec_test_items(data)
    defect_classes = sorted({it.defect_class for it in items if it.is_anomalous})
    n_good = sum(not it.is_anomalous for it in items)
    if n_good == 0 or not defect_classes:
        raise ValueError(f"{data}: the test split needs both test/good and at least one defect class, found "
                         f"{n_good} good images and classes {defect_classes or 'none'}")
    classes_with_masks = {it.defect_class for it in items if it.mask is not None}

    pixel = {cls: PixelMetrics() for cls in ["good", *defect_classes]}
    scores = np.zeros(len(items), np.float64)
    cases = CaseKeeper(cases_per_row)
    n_without_mask: dict[str, int] = {}
    meter = Progress(len(items), progress)
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = [pool.submit(_load, it) for it in batches[0]]
        done = 0
        for b, batch in enumerate(batches):
            loaded = [f.result() for f in pending]
            if b + 1 < len(batches):
                pending = [pool.submit(_load, it) for it in batches[b + 1]]
            images = [image for image, _ in loaded]
            batch_scores, maps = detector.predict(images)
            if len(batch_scores) != len(batch) or len(maps) != len(batch):
                raise ValueError(f"the model returned {len(batch_scores)} scores and {len(maps)} maps "
                                 f"for {len(batch)} images")
            for j, (item, (image, mask), amap) in enumerate(zip(batch, loaded, maps)):
                if amap.shape != image.shape[:2]:
                    raise ValueError(f"{item.image}: the model's map is {amap.shape}, the image {image.shape[:2]}")
                score = float(batch_scores[j])
                scores[done + j] = score
                if not item.is_anomalous:
                    pixel["good"].update(amap, None)
                elif mask is not None:
                    pixel[item.defect_class].update(amap, mask)
                elif item.defect_class in classes_with_masks:
                    n_without_mask[item.defect_class] = n_without_mask.get(item.defect_class, 0) + 1
                cases.offer(item, score, image, amap, mask)
            done += len(batch)
            meter.update(done)
    elapsed = time.perf_counter() - meter.start

    labels = np.array([it.is_anomalous for it in items])
    classes = np.array([it.defect_class for it in items])
    overall_pixel = PixelMetrics().merge(pixel["good"])
    for cls in defect_classes:
        overall_pixel.merge(pixel[cls])
    result = {**image_metrics(labels, scores), **overall_pixel.compute()}
    per_class, image_curves, pixel_curves = {}, {}, {}
    fpr, tpr, _ = roc_curve(labels, scores)
    image_curves["all"] = (fpr, tpr, result["image_auroc"])
    if overall_pixel.defined:
        pixel_curves["all"] = (*overall_pixel.roc_curve(), result["pixel_auroc"])
    for cls in defect_classes:
        chosen = (classes == cls) | ~labels
        metrics = image_metrics(labels[chosen], scores[chosen])
        cls_pixel = PixelMetrics().merge(pixel["good"]).merge(pixel[cls])
        metrics.update(cls_pixel.compute())
        metrics["n_masks"] = pixel[cls].n_images
        per_class[cls] = {k: (_round(v) if isinstance(v, float) else v) for k, v in metrics.items()}
        fpr, tpr, _ = roc_curve(labels[chosen], scores[chosen])
        image_curves[cls] = (fpr, tpr, metrics["image_auroc"])
        if cls_pixel.defined:
            pixel_curves[cls] = (*cls_pixel.roc_curve(), metrics["pixel_auroc"])

    out = {k: _round(result[k]) for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_f1max",
                                          "image_f1max_threshold", "image_ap")}
    threshold = getattr(detector, "threshold", None)
    predicted = scores >= threshold if threshold is not None else None
    out.update({
        "per_class": per_class,
        "n_images": len(items),
        "n_good": n_good,
        "n_defective": int(labels.sum()),
        "n_masks": sum(pixel[c].n_images for c in defect_classes),
        "n_without_mask": n_without_mask,
        "pixel_error_bound": {k: _round(v) for k, v in overall_pixel.error_bounds().items()},
        "model_id": getattr(detector, "model_id", None),
        "model_threshold": threshold,
        "at_model_threshold": None if predicted is None else {
            "true_positives": int((predicted & labels).sum()), "false_positives": int((predicted & ~labels).sum()),
            "true_negatives": int((~predicted & ~labels).sum()), "false_negatives": int((~predicted & labels).sum()),
        },
        "data": data,
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(items) / max(elapsed, 1e-9), 2),
    })
    if n_without_mask and progress:
        print(f"evaluate: warning: defect images without a mask file, left out of the pixel metrics: "
              f"{n_without_mask}", file=sys.stderr)

    if out_dir is not None:
        write_bytes(join(out_dir, "metrics.json"), (json.dumps(out, indent=2) + "\n").encode())
        panels = [roc_curve_image(image_curves, "Image-level ROC (each class vs good)")]
        if pixel_curves:
            panels.append(roc_curve_image(pixel_curves, "Pixel-level ROC (each class vs good)"))
        save_image(join(out_dir, "roc.png"), hstack(panels))
        save_image(join(out_dir, "cases.png"), case_sheet(cases))
        table = _io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["image", "defect_class", "score"])
        for item, score in zip(items, scores):
            writer.writerow([item.image, item.defect_class, f"{score:.6f}"])
        write_bytes(join(out_dir, "scores.csv"), table.getvalue().encode())
    return out
