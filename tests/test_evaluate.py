"""`defectray evaluate` and defectray.evaluate end to end on tiny MVTec-layout sets, checked against
scikit-learn on the very scores and maps the detector produced; the OpenCV pictures."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import make_mvtec
from defectray.cli import main
from defectray.evaluate import THUMBNAIL_SIDE, CaseKeeper, evaluate
from defectray import io as dio
from defectray.io import load_image, mvtec_test_items
from defectray.plots import heatmap_overlay, image_grid, roc_curve_image


class DarkSpotDetector:
    """A stand-in with the Detector API: dark-against-surroundings is a defect (the fixtures' defects are
    darkened). Records what it was asked, so the test can recompute every metric independently."""

    model_id = "fake-dark"
    threshold = 0.5
    config = None

    def __init__(self):
        self.seen: dict[int, tuple[float, np.ndarray]] = {}
        self.calls = []

    def predict(self, images):
        self.calls.append(len(images))
        scores, maps = [], []
        for img in images:
            gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            g = gray.astype(np.float32)
            amap = np.clip((cv2.GaussianBlur(g, (0, 0), 6) - cv2.GaussianBlur(g, (0, 0), 1)) / 60, 0, 1)
            maps.append(amap.astype(np.float32))
            scores.append(float(amap.max()))
            self.seen[len(self.seen)] = (scores[-1], maps[-1])
        return np.array(scores), maps


def test_evaluate_writes_files_and_matches_sklearn(tiny_mvtec, tmp_path, capsys):
    detector = DarkSpotDetector()
    out = tmp_path / "eval"
    metrics = evaluate(detector, str(tiny_mvtec), str(out), batch_size=5)
    assert detector.calls == [5, 5, 2]

    items = mvtec_test_items(str(tiny_mvtec))
    labels = np.array([it.is_anomalous for it in items])
    scores = np.array([detector.seen[i][0] for i in range(len(items))])
    masks = [np.zeros(detector.seen[i][1].shape, bool) if it.mask is None else load_image(it.mask, 1) > 0
             for i, it in enumerate(items)]
    pixel_labels = np.concatenate([m.ravel() for m in masks])
    pixel_scores = np.concatenate([detector.seen[i][1].ravel() for i in range(len(items))])

    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(pixel_labels, pixel_scores), abs=1e-3)
    assert metrics["pixel_ap"] == pytest.approx(average_precision_score(pixel_labels, pixel_scores), abs=1e-3)
    assert 0 < metrics["pixel_aupro"] <= 1
    assert metrics["pixel_auroc"] > 0.8  # the stand-in does find the darkened defects
    assert (metrics["n_images"], metrics["n_good"], metrics["n_defective"], metrics["n_masks"]) == (12, 6, 6, 6)
    assert metrics["model_id"] == "fake-dark" and metrics["model_threshold"] == 0.5
    assert sum(metrics["at_model_threshold"].values()) == 12

    saved = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_f1max", "per_class"):
        assert key in saved
    assert saved == json.loads(json.dumps(metrics))
    scratch = saved["per_class"]["scratch"]
    assert scratch["image_auroc"] == saved["image_auroc"] and scratch["n_masks"] == 6  # one class: same set
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [it.image for it in items]
    assert np.allclose([float(r["score"]) for r in rows], scores, atol=1e-6)
    for name in ("roc.png", "cases.png"):
        picture = load_image(str(out / name))
        assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 400
        assert picture.std() > 10  # not blank
    assert "evaluate: 12/12 images" in capsys.readouterr().err


def test_batch_size_does_not_change_results(tiny_mvtec):
    a = evaluate(DarkSpotDetector(), str(tiny_mvtec), batch_size=1, progress=False)
    b = evaluate(DarkSpotDetector(), str(tiny_mvtec), batch_size=64, progress=False)
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_f1max", "per_class"):
        assert a[key] == b[key]


def test_classes_without_masks_count_at_image_level_only(tmp_path):
    root = make_mvtec(tmp_path / "cat", n_train=1, n_good=4, n_bad=4, seed=3)
    (root / "test" / "dent").mkdir()
    for i, src in enumerate(sorted((root / "test" / "scratch").iterdir())[:3]):
        shutil.copy(src, root / "test" / "dent" / f"d{i}.png")  # a class with no ground_truth folder
    (root / "ground_truth" / "scratch" / "000_mask.png").unlink()  # one missing mask in a masked class
    metrics = evaluate(DarkSpotDetector(), str(root), progress=False)
    assert set(metrics["per_class"]) == {"dent", "scratch"}
    dent = metrics["per_class"]["dent"]
    assert dent["pixel_auroc"] is None and dent["pixel_aupro"] is None and dent["n_masks"] == 0
    assert dent["image_auroc"] is not None and dent["n_anomalous"] == 3
    assert metrics["per_class"]["scratch"]["n_masks"] == 3
    assert metrics["n_without_mask"] == {"scratch": 1}
    assert metrics["pixel_auroc"] is not None and metrics["n_defective"] == 7

    shutil.rmtree(root / "ground_truth")
    metrics = evaluate(DarkSpotDetector(), str(root), progress=False)
    assert metrics["pixel_auroc"] is None and metrics["pixel_aupro"] is None and metrics["pixel_ap"] is None
    assert metrics["image_auroc"] is not None


def test_bad_inputs_give_clear_errors(tmp_path, tiny_mvtec):
    good_only = make_mvtec(tmp_path / "good_only", n_train=1, n_good=3, n_bad=0)
    shutil.rmtree(good_only / "test" / "scratch")
    with pytest.raises(ValueError, match="both test/good and at least one defect class"):
        evaluate(DarkSpotDetector(), str(good_only), progress=False)

    class WrongSize(DarkSpotDetector):
        def predict(self, images):
            return np.zeros(len(images)), [np.zeros((8, 8), np.float32) for _ in images]

    with pytest.raises(ValueError, match="the model's map is"):
        evaluate(WrongSize(), str(tiny_mvtec), progress=False)

    broken = make_mvtec(tmp_path / "broken", n_train=1, n_good=2, n_bad=2)
    (broken / "test" / "good" / "000.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="000.png: not a decodable image"):
        evaluate(DarkSpotDetector(), str(broken), progress=False)


def test_case_keeper_keeps_only_extremes_as_thumbnails():
    keeper = CaseKeeper(k=2)
    rng = np.random.default_rng(0)
    big = np.zeros((1000, 700), np.uint8)
    for i, score in enumerate([0.5, 0.9, 0.1, 0.7, 0.3]):
        item = dio.TestItem(f"img{i}.png", "good", None)
        keeper.offer(item, score, big, rng.random((1000, 700)).astype(np.float32), None)
    assert [c[1] for c in keeper.ranked(False, "high")] == [0.9, 0.7]
    assert [c[1] for c in keeper.ranked(False, "low")] == [0.1, 0.3]
    assert keeper.ranked(True, "high") == []
    for case in keeper.ranked(False, "high") + keeper.ranked(False, "low"):
        assert max(case[2].shape) == THUMBNAIL_SIDE and case[3].shape == case[2].shape


def test_cli_with_a_real_tiny_model(tiny_mvtec, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from defectray.config import get_config
    from defectray.models import build_model
    from defectray.models.modelfile import save_model

    torch.manual_seed(0)
    config = get_config("cpu-small", image_size=32, channels=1, recon_base_width=8, recon_depth=3,
                        seg_base_width=8, seg_depth=4)
    model_path = tmp_path / "tiny.safetensors"
    model_id = save_model(str(model_path), build_model(config, feature_extractor=False), config)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(model_path), "--data", str(tiny_mvtec), "--out", str(out),
               "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "image_auroc" in printed and "scratch" in printed and str(out) in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model_id"] == model_id
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_f1max"):
        assert saved[key] is not None and 0 <= saved[key] <= 1  # untrained: any value, but a number
    assert (out / "roc.png").exists() and (out / "cases.png").exists()

    rc = main(["evaluate", "--model", str(model_path), "--data", str(tmp_path / "nowhere"), "--out", str(out)])
    assert rc == 2 and "error" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(model_path), "--data", str(tiny_mvtec), "--out", str(out),
               "--batch-size", "0"])
    assert rc == 2


def test_heatmap_overlay_and_pictures():
    gray = np.full((40, 60), 128, np.uint8)
    amap = np.zeros((20, 30), np.float32)
    amap[5:10, 5:10] = 1.0
    over = heatmap_overlay(gray, amap, alpha=0.5)
    assert over.shape == (40, 60, 3) and over.dtype == np.uint8
    hot, cold = over[15, 15], over[35, 55]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # red where the map is 1, blue where it is 0
    assert np.array_equal(heatmap_overlay(gray, amap, alpha=0.0), np.dstack([gray] * 3))
    rgb = heatmap_overlay(np.dstack([gray] * 3), np.zeros((40, 60), np.float32))
    assert rgb.shape == (40, 60, 3)

    fpr = np.linspace(0, 1, 50)
    chart = roc_curve_image({"all": (fpr, np.sqrt(fpr), 0.67), "none": (fpr, fpr, None)}, "ROC")
    assert chart.ndim == 3 and chart.dtype == np.uint8 and chart.shape[0] > 300

    grid = image_grid([[gray, over], [over]], labels=["a", "b"], cell=50, captions=[["x", "y"], ["z"]])
    assert grid.shape[1] == 6 + 2 * 56 and grid.dtype == np.uint8
    with pytest.raises(ValueError, match="labels"):
        image_grid([[gray]], labels=["a", "b"])


def test_evaluate_reads_and_writes_object_storage(tiny_mvtec, s3_server, s3_bucket):
    import s3fs

    bucket = s3_bucket("evaluate")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.put(str(tiny_mvtec), f"{bucket}/cat", recursive=True)
    local = evaluate(DarkSpotDetector(), str(tiny_mvtec), progress=False)
    remote = evaluate(DarkSpotDetector(), f"s3://{bucket}/cat", f"s3://{bucket}/eval", progress=False)
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "per_class"):
        assert remote[key] == local[key]
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{bucket}/eval")) == [
        "cases.png", "metrics.json", "roc.png", "scores.csv"]
    assert json.loads(fs.cat(f"{bucket}/eval/metrics.json"))["pixel_auroc"] == local["pixel_auroc"]
