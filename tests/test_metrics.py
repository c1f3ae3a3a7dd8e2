"""Metrics against scikit-learn, against an exact (sort every pixel) AUPRO, and a hand-worked AUPRO case."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from defectray.metrics import PixelMetrics, average_precision, f1_max, image_metrics, roc_auc, roc_curve


def exact_aupro(maps, masks, fpr_limit=0.3):
    """The MVTec AD reference computation: sort every pixel, one curve point per distinct score."""
    scores, fp_change, pro_change, n_regions = [], [], [], 0
    for amap, mask in zip(maps, masks):
        labeled, n = ndimage.label(mask > 0, structure=np.ones((3, 3), int))
        n_regions += n
        weights = np.zeros(amap.shape)
        for k in range(1, n + 1):
            region = labeled == k
            weights[region] = 1.0 / region.sum()
        scores.append(amap.ravel().astype(np.float64))
        fp_change.append((labeled == 0).ravel())
        pro_change.append(weights.ravel())
    scores, fp_change, pro_change = map(np.concatenate, (scores, fp_change, pro_change))
    order = np.argsort(-scores, kind="mergesort")
    scores = scores[order]
    fpr = np.cumsum(fp_change[order]) / fp_change.sum()
    pro = np.cumsum(pro_change[order]) / n_regions
    keep = np.r_[np.diff(scores) != 0, True]
    fpr, pro = np.r_[0.0, fpr[keep], 1.0], np.r_[0.0, pro[keep], 1.0]
    i = np.searchsorted(fpr, fpr_limit, side="right")
    y_at = pro[i - 1] + (pro[i] - pro[i - 1]) * (fpr_limit - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
    return np.trapezoid(np.r_[pro[:i], y_at], np.r_[fpr[:i], fpr_limit]) / fpr_limit


def test_image_metrics_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 300))
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        labels[:2] = [True, False]
        scores = np.round(rng.random(n) + labels * rng.uniform(0, 1), int(rng.integers(1, 4)))  # many ties
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        f1, threshold = f1_max(labels, scores)
        assert f1 == pytest.approx(f1_score(labels, scores >= threshold), abs=1e-12)
        predicted = scores[None, :] >= np.unique(scores)[:, None]  # every threshold at once
        tp = (predicted & labels).sum(1)
        best_brute = np.max(2 * tp / (predicted.sum(1) + labels.sum()))
        assert f1 == pytest.approx(best_brute, abs=1e-12)
        fpr, tpr, _ = roc_curve(labels, scores)
        assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_image_metrics_dict_and_perfect_separation():
    out = image_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert out["image_auroc"] == 1.0 and out["image_ap"] == 1.0 and out["image_f1max"] == 1.0
    assert out["image_f1max_threshold"] == 0.8
    assert (out["n_normal"], out["n_anomalous"]) == (2, 2)
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0


@pytest.mark.parametrize("fn", [roc_auc, average_precision, f1_max, image_metrics])
def test_degenerate_image_input_raises_clear_error(fn):
    with pytest.raises(ValueError, match="both normal and anomalous"):
        fn([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length"):
        fn([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1], [0.1, float("nan")])


def test_aupro_hand_worked():
    # Anomalous image: region A = the two top-left pixels (scores 0.9, 0.8), region B = one pixel (0.55).
    # Normal pixels overall (8): 0.7, 0.6, 0.5, 0.3, 0.2, 0.15, 0.1, 0.05.
    # Threshold 0.9 -> PRO (1/2 + 0)/2 = .25;  0.8 -> PRO .5;  0.7 -> FPR 1/8;  0.6 -> FPR 2/8;
    # 0.55 -> PRO 1 at FPR .25;  0.5 -> FPR 3/8 = .375 (past the limit: PRO 1 interpolated at .3).
    # Area for FPR in [0, .3] = .25 * .5 + .05 * 1 = .175; normalised: .175 / .3 = 7/12.
    amap = np.array([[0.9, 0.8, 0.1, 0.2], [0.7, 0.3, 0.6, 0.55]], np.float32)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], np.uint8) * 255
    good = np.array([[0.5, 0.05, 0.15]], np.float32)
    pm = PixelMetrics()
    pm.update(amap, mask)
    pm.update(good, None)
    assert pm.n_regions == 2
    assert pm.compute()["pixel_aupro"] == pytest.approx(7 / 12, abs=1e-9)
    assert exact_aupro([amap, good], [mask, np.zeros_like(good)]) == pytest.approx(7 / 12, abs=1e-12)


def test_regions_are_8_connected():
    pm = PixelMetrics()
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = 1  # one diagonal region
    mask[5, 0] = 1  # a second one
    pm.update(np.zeros((6, 6), np.float32), mask)
    assert pm.n_regions == 2


def random_case(rng, n_images=12):
    maps, masks = [], []
    for i in range(n_images):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))  # each image its own resolution
        mask = np.zeros((h, w), np.uint8)
        if i % 3:
            for _ in range(int(rng.integers(1, 4))):
                cv2.circle(mask, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 9)), 255, -1)
        maps.append(np.clip(rng.random((h, w)) * 0.8 + (mask > 0) * rng.random((h, w)) * 0.4, 0, 1).astype(np.float32))
        masks.append(mask)
    return maps, masks


def realistic_case(rng, n_images=12):
    """Maps like a trained network's: sigmoid outputs saturated near 0 and 1, smooth blobs, misses."""
    maps, masks = [], []
    for i in range(n_images):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        mask = np.zeros((h, w), np.uint8)
        if i % 2:
            cv2.line(mask, (int(rng.integers(0, w)), 0), (int(rng.integers(0, w)), h - 1), 255, 2)
            cv2.circle(mask, (w // 2, h // 2), int(rng.integers(3, 10)), 255, -1)
        found = cv2.GaussianBlur((mask > 0).astype(np.float32), (0, 0), 2.0) * rng.uniform(0.3, 1.5)
        noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3.0)
        logits = 14 * found - 9 + 3 * noise
        maps.append((1 / (1 + np.exp(-logits))).astype(np.float32))
        masks.append(mask)
    return maps, masks


def confident_case(rng, n_images=12):
    """As realistic_case with logits x4: normal pixels at 1e-16..1e-6, where uniform bins see one value."""
    maps, masks = realistic_case(rng, n_images)
    out = []
    for m in maps:
        p = np.clip(m.astype(np.float64), 1e-7, 1 - 1e-7)
        out.append((1 / (1 + np.exp(-4 * np.log(p / (1 - p))))).astype(np.float32))
    return out, masks


@pytest.mark.parametrize("case", [random_case, realistic_case, confident_case])
def test_pixel_metrics_match_exact_within_1e3(case):
    rng = np.random.default_rng(1)
    maps, masks = case(rng)
    pm = PixelMetrics()
    for amap, mask in zip(maps, masks):
        pm.update(amap, mask if mask.any() else None)
    got = pm.compute()
    labels = np.concatenate([m.ravel() > 0 for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    exact = {
        "pixel_auroc": roc_auc_score(labels, scores),
        "pixel_ap": average_precision_score(labels, scores),
        "pixel_aupro": exact_aupro(maps, masks),
    }
    bounds = pm.error_bounds()
    for key in exact:
        assert got[key] == pytest.approx(exact[key], abs=1e-3), key
    assert abs(got["pixel_auroc"] - exact["pixel_auroc"]) <= bounds["pixel_auroc"] + 1e-12
    assert abs(got["pixel_aupro"] - exact["pixel_aupro"]) <= bounds["pixel_aupro"] + 1e-12
    assert bounds["pixel_auroc"] < 1e-3 and bounds["pixel_aupro"] < 1e-3
    assert 0.5 < got["pixel_auroc"] < 1 and 0 < got["pixel_aupro"] < 1  # a non-trivial case


def test_uniform_bins_would_fail_the_realistic_case_but_these_do_not():
    # Scores of 1e-7..1e-3 hold most pixels of a saturated sigmoid map; their order must survive binning.
    pm = PixelMetrics()
    lows = np.array([1e-7, 2e-7, 1e-6, 3e-6, 1e-5, 1e-4, 5e-4, 1e-3], np.float32)
    keys = pm.bin_index(lows)
    assert np.all(np.diff(keys) > 0)
    highs = np.float32(1) - lows[::-1]
    assert np.all(np.diff(pm.bin_index(highs)) > 0) and pm.bin_index(highs)[0] > pm.bin_index(np.float32(0.5))
    grid = np.linspace(0, 1, 200001, dtype=np.float32)
    k = pm.bin_index(grid)
    assert np.all(np.diff(k) >= 0) and k[0] == 0 and k[-1] == pm.n_bins - 1


def test_merge_equals_one_accumulator_and_streams_in_any_order():
    rng = np.random.default_rng(2)
    maps, masks = random_case(rng)
    whole, a, b = PixelMetrics(), PixelMetrics(), PixelMetrics()
    for i, (amap, mask) in enumerate(zip(maps, masks)):
        whole.update(amap, mask)
        (a if i % 2 else b).update(amap, mask)
    assert a.merge(b).compute() == whole.compute()
    assert a.n_images == len(maps)


def test_pixel_degenerate_and_bad_input():
    pm = PixelMetrics()
    assert pm.compute() == {"pixel_auroc": None, "pixel_aupro": None, "pixel_ap": None}
    pm.update(np.full((8, 8), 0.2, np.float32), None)
    assert pm.compute()["pixel_auroc"] is None  # normal pixels only: undefined, not an error
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pm.update(np.full((4, 4), 3.0, np.float32), None)
    with pytest.raises(ValueError, match="NaN|\\[0, 1\\]"):
        pm.update(np.full((4, 4), np.nan, np.float32), None)
    with pytest.raises(ValueError, match="differs from map shape"):
        pm.update(np.zeros((4, 4), np.float32), np.ones((5, 4), np.uint8))
    pm.update(np.full((8, 8), 0.9, np.float32), np.ones((8, 8), np.uint8))
    assert pm.compute()["pixel_auroc"] == 1.0


def test_exact_zeros_and_ones_are_true_ties_with_zero_error_bound():
    # clipped maps put many pixels at exactly 0 or 1; scikit-learn ranks such ties as half, and so do we
    rng = np.random.default_rng(3)
    maps, masks = random_case(rng)
    maps = [np.clip((m - 0.5) * 3, 0, 1).astype(np.float32) for m in maps]
    pm = PixelMetrics()
    for amap, mask in zip(maps, masks):
        pm.update(amap, mask)
    labels = np.concatenate([m.ravel() > 0 for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    assert (scores == 0).mean() > 0.3 and (scores == 1).mean() > 0.002
    got = pm.compute()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-3)
    assert got["pixel_aupro"] == pytest.approx(exact_aupro(maps, masks), abs=1e-4)
    assert pm.error_bounds()["pixel_auroc"] < 1e-4
