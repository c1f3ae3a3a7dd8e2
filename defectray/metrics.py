"""Anomaly-detection metrics: image AUROC / AP / F1-max (exact) and pixel AUROC / AP / AUPRO (streaming).

Image-level metrics see one score per image, so they are computed exactly from the sorted scores
(ties count half, as in scikit-learn). Pixel-level metrics would need every pixel of every test map;
``PixelMetrics`` instead folds each map into fixed-size score histograms as it arrives, so memory stays
a few MB whatever the test set, and the histograms of several accumulators simply add up (per-class
breakdowns, several workers).

Histogram bins follow the float32 representation of the distance of a score to the nearer end of
[0, 1]: a bin is at most ``2**-resolution_bits`` (default 2**-12 = 2.4e-4) times that distance wide.
Sigmoid outputs crowd next to 0 and 1, exactly where uniform bins would merge the normal and the
anomalous pixels (benchmarks/metrics.py: 0.25 AUROC error with 100k uniform bins on confident maps);
here a score of 1e-6 still gets bins 2.4e-10 wide. Scores below 2**-80 (8e-25) share one bin; near 1,
float32 itself has no finer steps than these bins. Exactly 0 and exactly 1 have bins of their own.

Error bound: inside one bin, the exact curve is replaced by the straight chord between the bin's end
points, so AUROC is off by at most ``0.5 * sum_b dFPR_b * dTPR_b`` and the normalised AUPRO by at most
``0.5 * sum_b dFPR_b * dPRO_b / 0.3`` (sums over bins below the 0.3 limit; the bins of exactly 0 and
exactly 1 hold true ties, ranked as scikit-learn ranks ties, so they add nothing).
``PixelMetrics.error_bounds()`` returns both for the data actually seen; on realistic maps they are
~1e-7..1e-6. AP has no such simple bound; tests check it against scikit-learn within 1e-3.

Degenerate input: the image-level functions raise ValueError unless both classes are present.
``PixelMetrics.compute()`` returns None for every value while it has not seen both anomalous and normal
pixels (a test set without masks is a normal situation, not an error).

AUPRO follows the MVTec AD benchmark (Bergmann et al., IJCV 2021): connected regions of each ground
truth mask (8-connectivity); at each threshold PRO = mean over all regions of the fraction of the
region's pixels scoring >= threshold, plotted against the FPR over all pixels outside the ground truth
in all images; the area under PRO(FPR) for FPR in [0, 0.3] (linearly interpolated at 0.3), divided by
0.3, so that 1.0 is perfect.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

AUPRO_FPR_LIMIT = 0.3
_LOW_FLOOR_EXP = 127 - 80  # biased float32 exponent of 2**-80: scores below it share one bin
_HIGH_FLOOR_EXP = 127 - 24  # 1 - x for float32 x < 1 is never below 2**-24
_HALF_EXP = 127 - 1  # biased exponent of 0.5


# ---- image level (exact) ---------------------------------------------------------------------------


def _check_binary(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
        labels = labels.astype(bool)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(
            f"need both normal and anomalous samples, got {labels.size - n_pos} normal and {n_pos} anomalous"
        )
    return labels, scores


def _binary_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) when predicting "anomalous" for score >= each distinct
    threshold, thresholds descending."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[last_of_each].astype(np.float64)
    fps = (last_of_each + 1) - tps
    return fps, tps, scores[last_of_each]


def _auc_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return float(np.trapezoid(tpr, fpr))


def _ap_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    # scikit-learn's definition: sum over thresholds of (R_n - R_{n-1}) * P_n, no interpolation
    recall = tps / tps[-1]
    precision = tps / np.maximum(tps + fps, 1e-300)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf."""
    labels, scores = _check_binary(labels, scores)
    fps, tps, thresholds = _binary_curve(labels, scores)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thresholds]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; equals sklearn.metrics.roc_auc_score."""
    labels, scores = _check_binary(labels, scores)
    fps, tps, _ = _binary_curve(labels, scores)
    return _auc_from_counts(fps, tps)


def average_precision(labels, scores) -> float:
    """Average precision; equals sklearn.metrics.average_precision_score."""
    labels, scores = _check_binary(labels, scores)
    fps, tps, _ = _binary_curve(labels, scores)
    return _ap_from_counts(fps, tps)


def f1_max(labels, scores) -> tuple[float, float]:
    """The best F1 over all thresholds and that threshold (predict anomalous when score >= threshold)."""
    labels, scores = _check_binary(labels, scores)
    fps, tps, thresholds = _binary_curve(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    f1 = np.where(tps > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def image_metrics(labels, scores) -> dict:
    """{"image_auroc", "image_ap", "image_f1max", "image_f1max_threshold", "n_normal", "n_anomalous"}."""
    labels, scores = _check_binary(labels, scores)
    fps, tps, thresholds = _binary_curve(labels, scores)
    f1, threshold = f1_max(labels, scores)
    return {
        "image_auroc": _auc_from_counts(fps, tps),
        "image_ap": _ap_from_counts(fps, tps),
        "image_f1max": f1,
        "image_f1max_threshold": threshold,
        "n_normal": int(labels.size - labels.sum()),
        "n_anomalous": int(labels.sum()),
    }


# ---- pixel level (streaming) -----------------------------------------------------------------------


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the polyline (x, y) (x ascending) for x in [x[0], x_max], interpolating y at x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and (inside == 0 or xs[-1] < x_max):
        x0, x1 = (x[inside - 1], x[inside]) if inside > 0 else (x[0], x[0])
        y0, y1 = (y[inside - 1], y[inside]) if inside > 0 else (y[0], y[0])
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.trapezoid(ys, xs))


class PixelMetrics:
    """Streaming pixel AUROC, AP and AUPRO (FPR limit 0.3) over anomaly maps in [0, 1].

    ``update(map, gt_mask)`` per test image, at that image's own resolution (``gt_mask`` None for a
    normal image); ``compute()`` at the end. Memory: three histograms of ``102 * 2**bits + 4`` values
    (10 MB at the default 12 bits), independent of the number and size of the maps.
    ``merge(other)`` adds another accumulator's counts (per-class sets, parallel workers).
    """

    def __init__(self, resolution_bits: int = 12) -> None:
        if not 4 <= resolution_bits <= 20:
            raise ValueError("resolution_bits must be between 4 and 20")
        self.resolution_bits = resolution_bits
        b = resolution_bits
        self._n_low = ((_HALF_EXP - _LOW_FLOOR_EXP) << b) + 1  # bins for 0 < score <= 0.5
        self._n_high = ((_HALF_EXP - _HIGH_FLOOR_EXP) << b) + 1  # bins for 0.5 < score < 1
        self.n_bins = self._n_low + self._n_high + 2  # + one bin for exactly 0, one for exactly 1
        self.normal_counts = np.zeros(self.n_bins, np.int64)  # pixels outside the ground truth
        self.anomalous_counts = np.zeros(self.n_bins, np.int64)  # pixels inside the ground truth
        self.region_weights = np.zeros(self.n_bins, np.float64)  # sum of 1/region_area of region pixels
        self.n_regions = 0
        self.n_images = 0

    def bin_index(self, scores: np.ndarray) -> np.ndarray:
        """Histogram bin of each score (monotone: a higher score never lands in a lower bin)."""
        x = np.asarray(scores, dtype=np.float32)
        flat = x.reshape(-1)
        b, floor = self.resolution_bits, np.float32(2.0 ** (_LOW_FLOOR_EXP - 127))
        # distance to the nearer end; 1 - x is exact in float32 for x >= 0.5 (Sterbenz)
        distance = np.subtract(np.float32(1.0), flat)
        np.minimum(distance, flat, out=distance)
        np.maximum(distance, floor, out=distance)
        # exponent and top b mantissa bits of a positive float32 grow with its value
        key = (distance.view(np.int32) >> (23 - b)).astype(np.intp)
        key -= (_LOW_FLOOR_EXP << b) - 1  # scores <= 0.5: bins 1 .. n_low
        top = self._n_low + self._n_high + (_HIGH_FLOOR_EXP << b) - (_LOW_FLOOR_EXP << b) + 1
        np.subtract(top, key, out=key, where=flat > np.float32(0.5))  # scores > 0.5: bins n_low+1 .. (reversed)
        at_floor = np.flatnonzero(distance <= floor)
        if at_floor.size:  # exactly 0 and exactly 1 (clipped or saturated maps): bins of their own, true ties
            values = flat[at_floor]
            key[at_floor[values <= 0]] = 0
            key[at_floor[values >= 1]] = self.n_bins - 1
        return key.reshape(x.shape)

    def update(self, anomaly_map: np.ndarray, gt_mask: np.ndarray | None) -> None:
        """Add one image: ``anomaly_map`` float (h, w) in [0, 1]; ``gt_mask`` (h, w), nonzero = defect,
        or None for a normal image."""
        amap = np.asarray(anomaly_map)
        if amap.ndim != 2:
            raise ValueError(f"anomaly map must be 2-D (h, w), got shape {amap.shape}")
        lo, hi = float(amap.min()), float(amap.max())
        if math.isnan(lo) or math.isnan(hi) or lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"anomaly map values must lie in [0, 1], got [{lo}, {hi}]")
        if lo < 0 or hi > 1:
            amap = np.clip(amap, 0.0, 1.0)
        key = self.bin_index(amap).ravel()
        self.n_images += 1
        if gt_mask is None or not np.any(gt_mask):
            if gt_mask is not None and np.shape(gt_mask) != amap.shape:
                raise ValueError(f"mask shape {np.shape(gt_mask)} differs from map shape {amap.shape}")
            self.normal_counts += np.bincount(key, minlength=self.n_bins)
            return
        gt = np.asarray(gt_mask)
        if gt.shape != amap.shape:
            raise ValueError(f"mask shape {gt.shape} differs from map shape {amap.shape}")
        gt = (gt > 0).astype(np.uint8)
        n_labels, regions = cv2.connectedComponents(gt, connectivity=8)
        regions = regions.ravel()
        inside = regions > 0
        both = np.bincount(key + self.n_bins * inside, minlength=2 * self.n_bins)
        self.normal_counts += both[: self.n_bins]
        self.anomalous_counts += both[self.n_bins :]
        areas = np.bincount(regions, minlength=n_labels).astype(np.float64)
        inv_area = np.divide(1.0, areas, out=np.zeros_like(areas), where=areas > 0)
        inv_area[0] = 0.0
        self.region_weights += np.bincount(key, weights=inv_area[regions], minlength=self.n_bins)
        self.n_regions += n_labels - 1

    def merge(self, other: PixelMetrics) -> PixelMetrics:
        """Add ``other``'s counts into this accumulator (same resolution); returns self."""
        if other.n_bins != self.n_bins:
            raise ValueError("cannot merge PixelMetrics of different resolution_bits")
        self.normal_counts += other.normal_counts
        self.anomalous_counts += other.anomalous_counts
        self.region_weights += other.region_weights
        self.n_regions += other.n_regions
        self.n_images += other.n_images
        return self

    @property
    def defined(self) -> bool:
        return bool(self.anomalous_counts.any() and self.normal_counts.any())

    def _curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (fps, tps, pro) from the top bin down, only at bins holding pixels."""
        occupied = np.flatnonzero(self.normal_counts[::-1] + self.anomalous_counts[::-1])
        fps = np.cumsum(self.normal_counts[::-1])[occupied].astype(np.float64)
        tps = np.cumsum(self.anomalous_counts[::-1])[occupied].astype(np.float64)
        pro = np.cumsum(self.region_weights[::-1])[occupied] / max(self.n_regions, 1)
        return fps, tps, np.minimum(pro, 1.0)

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel (fpr, tpr), from (0, 0), one point per occupied bin."""
        fps, tps, _ = self._curves()
        return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(fpr, pro) from (0, 0) to (1, 1), as in the MVTec AD evaluation code."""
        fps, _, pro = self._curves()
        return np.r_[0.0, fps / fps[-1], 1.0], np.r_[0.0, pro, 1.0]

    def compute(self) -> dict:
        """{"pixel_auroc", "pixel_aupro", "pixel_ap"}: floats, or None until both anomalous and normal
        pixels have been seen."""
        if not self.defined:
            return {"pixel_auroc": None, "pixel_aupro": None, "pixel_ap": None}
        fps, tps, _ = self._curves()
        fpr, pro = self.pro_curve()
        return {
            "pixel_auroc": _auc_from_counts(fps, tps),
            "pixel_aupro": _trapezoid_up_to(fpr, pro, AUPRO_FPR_LIMIT) / AUPRO_FPR_LIMIT,
            "pixel_ap": _ap_from_counts(fps, tps),
        }

    def error_bounds(self) -> dict:
        """Largest possible difference between the histogram value and the exact value of pixel AUROC
        and AUPRO, for the pixels seen (pixels tied in one bin may be ordered either way)."""
        if not self.defined:
            return {"pixel_auroc": None, "pixel_aupro": None}
        n_normal = self.normal_counts.sum()
        d_fpr = self.normal_counts[::-1] / n_normal
        d_tpr = self.anomalous_counts[::-1] / self.anomalous_counts.sum()
        d_pro = self.region_weights[::-1] / max(self.n_regions, 1)
        below_limit = np.r_[0.0, np.cumsum(d_fpr)[:-1]] < AUPRO_FPR_LIMIT
        below_limit[[0, -1]] = False  # the bins of exactly 1 and exactly 0 hold true ties
        return {
            "pixel_auroc": float(0.5 * np.sum((d_fpr * d_tpr)[1:-1])),
            "pixel_aupro": float(0.5 * np.sum((d_fpr * d_pro)[below_limit]) / AUPRO_FPR_LIMIT),
        }
