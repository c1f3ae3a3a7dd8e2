"""The model file: save/load round trips (local and S3), refusing foreign files, the Detector, calibration."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch

import defectray
from conftest import with_trained_batchnorm
from defectray.config import get_config
from defectray.models import build_model, images_to_tensor
from defectray.models.modelfile import (Detector, NotADefectrayModelError, calibrate, load_model, model_id_of,
                                        save_model, _inference_state)
from defectray.models.scoring import filter_size_for, image_scores, top_k_for

torch.set_num_threads(2)


def tiny_config(**kw):
    # float32 inference on every CPU, so that outputs compare to a float32 forward (bf16: its own test)
    # BatchNorm, not the profile's GroupNorm: its running statistics are what a round trip or folding can get wrong
    base = dict(image_size=32, channels=1, recon_base_width=8, recon_depth=3, seg_base_width=8, seg_depth=4,
                cpu_bf16="off", norm="batch")
    base.update(kw)
    return get_config("cpu-small", **base)


def trained_ish(cfg):
    """A model whose BN statistics and weights are not the initial ones (so the round trip means something)."""
    torch.manual_seed(0)
    return with_trained_batchnorm(build_model(cfg), (4, cfg.channels, cfg.image_size, cfg.image_size), bias=0.3,
                                  passes=2)


def images(rng, channels=1):
    shapes = [(32, 32), (45, 71), (200, 130), (7, 9)]
    return [rng.integers(0, 256, s + ((3,) if channels == 3 else ()), dtype=np.uint8) for s in shapes]


def drop_stored_config_field(path, field: str):
    """Rewrite a model file as one written before ``field`` existed: its stored config without it. Returns the
    value it had."""
    import json
    import struct

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    stored = json.loads(header["__metadata__"]["config"])
    value = stored.pop(field)
    header["__metadata__"]["config"] = json.dumps(stored)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data[8 + n:])
    return value


def test_round_trip_local(tmp_path):
    cfg = tiny_config(flip_average=False)  # one pass, to compare with the training-form model's forward
    model = trained_ish(cfg)
    calibration = {"threshold": 0.42, "normal_scores": [0.1, 0.2], "rule": "test"}
    path = str(tmp_path / "sub" / "model.safetensors")
    model_id = save_model(path, model, cfg, calibration)
    assert model_id.startswith("dr-") and len(model_id) == 19
    det = load_model(path)
    assert isinstance(det, Detector) and det.model_id == model_id
    assert det.config == cfg and det.threshold == 0.42 and det.calibration == calibration
    assert det.model.feature_extractor is None
    # the loaded (re-parameterised) model agrees with the saved training-form model
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(model(x)[1], 1)[:, 1]
    np.testing.assert_allclose(det.infer(x.numpy()), expected.numpy(), atol=1e-5)
    # the same weights and config give the same id; other weights another
    assert save_model(str(tmp_path / "again.safetensors"), model, cfg) == model_id
    with torch.no_grad():
        model.prediction.head.bias.add_(1e-3)
    assert save_model(str(tmp_path / "other.safetensors"), model, cfg) != model_id
    assert defectray.load_model(path).model_id == model_id


def test_round_trip_without_a_reconstruction_network(tmp_path):
    cfg = tiny_config(recon_base_width=0, feature_extractor="none", flip_average=False)
    model = trained_ish(cfg)
    path = str(tmp_path / "model.safetensors")
    save_model(path, model, cfg)
    det = load_model(path)
    assert det.model.reconstruction is None
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x)[1], 1)[:, 1]
    np.testing.assert_allclose(det.infer(x.numpy()), expected.numpy(), atol=1e-5)


def test_cpu_bf16_inference_follows_the_config(tmp_path):
    """cpu_bf16="on" runs the Detector under bf16 autocast on CPU: maps near float32's, not equal to them;
    "off" is the float32 forward exactly as before."""
    cfg = tiny_config(flip_average=False)
    path = str(tmp_path / "m.safetensors")
    save_model(path, trained_ish(cfg), cfg)
    full, half = load_model(path), load_model(path)
    half.cpu_bf16 = True
    assert full.cpu_bf16 is False and "float32" in repr(full) and "bf16" in repr(half)
    x = torch.rand(6, 1, 32, 32).numpy()
    a, b = np.stack(full.infer(x)), np.stack(half.infer(x))
    assert 0 < np.abs(a - b).max() < 0.05
    on = tiny_config(cpu_bf16="on")
    save_model(str(tmp_path / "on.safetensors"), trained_ish(on), on)
    assert load_model(str(tmp_path / "on.safetensors")).cpu_bf16 is True


def test_round_trip_s3(s3_bucket, tmp_path):
    cfg = tiny_config(channels=3)
    model = trained_ish(cfg)
    uri = f"s3://{s3_bucket('models')}/runs/a/model.safetensors"
    model_id = save_model(uri, model, cfg, {"threshold": 0.5})
    det = defectray.load_model(uri)
    assert det.model_id == model_id and det.threshold == 0.5 and det.config.channels == 3
    local = str(tmp_path / "m.safetensors")
    save_model(local, model, cfg)
    rng = np.random.default_rng(0)
    imgs = images(rng, 3)
    s3_scores, s3_maps = det.predict(imgs)
    scores, maps = load_model(local).predict(imgs)
    np.testing.assert_array_equal(s3_scores, scores)


def test_predict_any_sizes_and_stages_agree(tmp_path):
    cfg = tiny_config(score_top_k=256)  # the mean of the 4 highest pixels at 32 px
    path = str(tmp_path / "m.safetensors")
    save_model(path, trained_ish(cfg), cfg)
    det = load_model(path)
    rng = np.random.default_rng(1)
    imgs = images(rng, 1) + [rng.integers(0, 256, (50, 40, 3), dtype=np.uint8),
                             rng.integers(0, 256, (30, 30, 1), dtype=np.uint8)]
    scores, maps = det.predict(imgs)
    assert scores.shape == (len(imgs),) and scores.dtype == np.float32
    for img, m in zip(imgs, maps):
        assert m.shape == img.shape[:2] and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    batch = det.preprocess(imgs)
    # "tiles": the short side becomes image_size, the aspect ratio stays
    assert [b.shape[1:] for b in batch] == [(32, 32), (32, 50), (49, 32), (32, 41), (40, 32), (32, 32)]
    assert all(b.dtype == np.float32 and 0 <= b.min() and b.max() <= 1 for b in batch)
    raw = det.infer(batch)
    assert [r.shape for r in raw] == [b.shape[1:] for b in batch]
    s2, m2 = det.postprocess(raw, [i.shape[:2] for i in imgs])
    np.testing.assert_array_equal(s2, scores)  # the pipeline's split stages give exactly predict()'s output
    for a, b in zip(m2, maps):
        np.testing.assert_array_equal(a, b)
    assert top_k_for(cfg) == 4
    np.testing.assert_array_equal(scores, [image_scores(r, filter_size_for(cfg), 4)[0] for r in raw])
    assert np.all(scores < [r.max() for r in raw])  # not the plain max
    # full [0, 1] range: a white 32x32 image reaches the model as 1.0, not ImageNet-normalised
    white = det.preprocess([np.full((32, 32), 255, np.uint8)])[0]
    assert white.max() == 1.0 and white.min() == 1.0
    np.testing.assert_array_equal(det.preprocess([imgs[0]])[0], images_to_tensor(imgs[0][None]).numpy()[0])
    assert det.predict([]) == (pytest.approx(np.zeros(0)), [])
    with pytest.raises(ValueError, match="uint8"):
        det.predict([np.zeros((8, 8), np.float32)])


def test_map_gate_scales_each_map_by_its_image_score_and_leaves_the_scores(tmp_path):
    cfg = tiny_config(map_gate=0.0)
    model = trained_ish(cfg)
    plain = Detector(model, cfg, "plain")
    gated = Detector(trained_ish(cfg), cfg.replace(map_gate=2.0), "gated")
    rng = np.random.default_rng(3)
    imgs = images(rng, 1)
    s0, m0 = plain.predict(imgs)
    s2, m2 = gated.predict(imgs)
    np.testing.assert_array_equal(s2, s0)  # the score is read from the map as it was
    assert len(set(np.round(s0, 4))) > 1  # different scores, so the test tells a gate from a constant factor
    for a, b, score in zip(m0, m2, s0):
        np.testing.assert_allclose(b, a * score ** 2, rtol=1e-6, atol=1e-7)
        assert b.dtype == np.float32 and 0 <= b.min() and b.max() <= 1
    assert get_config("cpu-small").map_gate == 2.0 and get_config("paper").map_gate == 0.0
    gated.config = gated.config.replace(map_gate=-1.0)
    with pytest.raises(ValueError, match="map_gate must be 0 or more"):
        gated.predict(imgs)


def test_model_files_from_before_the_map_gate_field_keep_their_maps(tmp_path):
    """A file whose stored config has no ``map_gate`` (written before it existed) loads with the gate off, even
    under a profile that now sets it: its maps are what they were when it was evaluated."""
    cfg = tiny_config()  # cpu-small: map_gate 2
    path = tmp_path / "m.safetensors"
    save_model(str(path), trained_ish(cfg), cfg)
    assert drop_stored_config_field(path, "map_gate") == 2.0
    old = load_model(str(path))
    assert old.config.map_gate == 0.0
    img = np.random.default_rng(4).integers(0, 256, (32, 32), dtype=np.uint8)  # image_size: no resize
    (raw,) = old.infer(old.preprocess([img]))
    np.testing.assert_array_equal(old.predict([img])[1][0], np.clip(raw, 0, 1))


def test_refuses_foreign_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    cases = {
        "pickle.pt": pickle.dumps({"weights": Evil()}),
        "torch.pt": None,
        "random.bin": np.random.default_rng(0).bytes(5000),
        "empty.bin": b"",
        "foreign.safetensors": None,
    }
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "torch.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(NotADefectrayModelError, match="not a defectray model file"):
            load_model(str(tmp_path / name))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.safetensors"))


def test_calibrate_and_save_with_calibration(tmp_path):
    cfg = tiny_config()
    model = trained_ish(cfg)
    rng = np.random.default_rng(2)
    normals = [rng.integers(90, 140, (40, 40), dtype=np.uint8) for _ in range(20)]
    cal = calibrate(model, cfg, normals, batch_size=6)
    assert len(cal["normal_scores"]) == 20 and cal["rule"]
    s = np.array(cal["normal_scores"])
    assert cal["threshold"] >= np.quantile(s, 0.99) and cal["threshold"] <= 1.0
    path = str(tmp_path / "m.safetensors")
    save_model(path, model, cfg, cal)
    det = load_model(path)
    assert det.threshold == cal["threshold"]
    np.testing.assert_allclose(calibrate(det, cfg, normals)["normal_scores"], cal["normal_scores"], atol=1e-5)
    assert model_id_of(cfg, _inference_state(model)) == det.model_id


def test_a_score_head_model_scores_by_its_score_map_and_keeps_the_defect_map(tmp_path):
    cfg = tiny_config(score_head="shared")
    path = str(tmp_path / "m.safetensors")
    save_model(path, trained_ish(cfg), cfg)
    det = load_model(path)
    imgs = images(np.random.default_rng(3))
    scores, maps = det.predict(imgs)
    raw = det.infer(det.preprocess(imgs))
    assert all(r.ndim == 3 and r.shape[0] == 2 for r in raw)  # (defect, score) at the fitted resolution
    np.testing.assert_array_equal(scores, [image_scores(r[1], filter_size_for(cfg))[0] for r in raw])
    assert not np.allclose(scores, [image_scores(r[0], filter_size_for(cfg))[0] for r in raw])
    assert cfg.map_gate == 2.0  # cpu-small's gate scales the defect map by the score head's score
    for img, m, r, score in zip(imgs, maps, raw, scores):
        assert m.shape == img.shape[:2] and m.dtype == np.float32
        expected = np.clip(cv2.resize(r[0], (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR), 0, 1)
        np.testing.assert_allclose(m, expected * score ** 2, rtol=1e-6, atol=1e-7)


def test_wide_images_are_tiled_not_stretched(tmp_path):
    """A 32 x 100 image at image_size 32 is four overlapping 32 x 32 tiles at full scale: its map is the
    stitched tile maps (mean where they overlap), not one squeezed square."""
    from defectray.models.scoring import anomaly_maps
    from defectray.models.tiling import stitch, tile_windows

    cfg = tiny_config()
    path = str(tmp_path / "m.safetensors")
    save_model(path, trained_ish(cfg), cfg)
    det = load_model(path)
    img = np.random.default_rng(2).integers(0, 256, (32, 100), dtype=np.uint8)
    (x,) = det.preprocess([img])
    assert x.shape == (1, 32, 100)
    windows = tile_windows(32, 100, 32)
    assert windows == [(0, 0), (0, 23), (0, 45), (0, 68)]
    tiles = torch.from_numpy(np.stack([x[:, y:y + 32, c:c + 32] for y, c in windows]))
    expected = stitch(anomaly_maps(det.model, tiles, cfg.flip_average).numpy(), windows, 32, 100)
    (got,) = det.infer([x])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    stretched = load_model(path)
    stretched.config = stretched.config.replace(fit="stretch")
    assert stretched.preprocess([img])[0].shape == (1, 32, 32)


def test_model_files_from_before_the_fit_field_stay_stretched(tmp_path):
    cfg = tiny_config(fit="stretch")
    path = tmp_path / "m.safetensors"
    save_model(str(path), trained_ish(cfg), cfg)
    drop_stored_config_field(path, "fit")
    assert load_model(str(path)).config.fit == "stretch"
