"""Training on Ray: data-parallel workers, a lost worker survived, resume on re-run, S3 in and out, the CLI.

One local Ray (2 CPUs) for the module; a tiny model at 32 px so each training run takes seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import defectray
from defectray import io
from defectray.config import get_config
from defectray.train import (
    BLOCK_BYTES,
    RUN_AHEAD_BLOCKS,
    _data_config,
    epoch_order,
    model_uri_for,
    split_holdout,
    steps_per_epoch_for,
    synthesis_stage,
    train,
)

TINY = dict(image_size=32, channels=1, recon_base_width=4, recon_depth=2, seg_base_width=4, seg_depth=2,
            kernel_sizes=[7, 5], batch_size=4, max_minutes=None, val_fraction=0.2, feature_refresh_every=2)


def tiny_config(**overrides):
    return get_config("cpu-small", **{**TINY, **overrides})


# ---- the plan, without Ray ------------------------------------------------------------------------------------


def test_holdout_is_seeded_disjoint_and_complete():
    paths = [f"img{i:02d}.png" for i in range(30)]
    train_a, held_a = split_holdout(paths, 0.1, seed=0)
    assert split_holdout(paths, 0.1, seed=0) == (train_a, held_a)
    assert len(held_a) == 3 and not set(train_a) & set(held_a) and sorted(train_a + held_a) == paths
    assert split_holdout(paths, 0.1, seed=1)[1] != held_a
    assert split_holdout(paths[:1], 0.5, seed=0) == (paths[:1], [])  # never hold out the only image
    assert split_holdout(paths[:5], 0.01, seed=0)[1] != []  # a positive fraction holds out at least one


def test_a_region_of_interest_follows_each_training_view():
    """With fit=tiles each training view is a crop of the fitted image, so a fixed-camera ROI must be cropped
    with it: defects land only where the ROI allows, in view coordinates."""
    from defectray.synthesis import SynthesisSources

    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (4, 32, 32), dtype=np.uint8)
    roi = np.zeros((32, 64), bool)
    roi[:, :32] = True  # the left half of the fitted frame
    sources = SynthesisSources(normal_images=list(images), foreground=roi)
    batch = {"epoch": np.zeros(4, int), "position": np.arange(4), "index": np.arange(4), "image": images,
             "crop": np.array([[0, 0], [0, 16], [0, 0], [0, 16]], np.int32)}
    out = synthesis_stage(batch, sources=[sources], method="realistic", seed=1, anomaly_prob=1.0, rotate_prob=0.0)
    for i in (1, 3):  # views starting at x=16: only their left 16 columns are inside the ROI
        assert out["mask"][i].sum() > 0 and out["mask"][i][:, 16:].sum() == 0


def test_train_crop_sets_the_view_size_not_the_scale(tmp_path):
    """train_crop: smaller square views of the same fitted image (defects keep their scale); each view is a
    crop of that image at the position read_stage reports."""
    import cv2

    from defectray.models.tiling import fit_image
    from defectray.train import read_stage

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 80), dtype=np.uint8))
        paths.append(str(path))
    cfg = tiny_config(train_crop=24)
    out = read_stage({"id": np.arange(6)}, paths=[paths], rows_per_epoch=3, seed=0, config=cfg)
    assert out["image"].shape == (6, 24, 24)
    for view, k, (y, x) in zip(out["image"], out["index"], out["crop"]):
        fitted = fit_image(io.load_image(paths[k]), 32, 1, "tiles")
        assert fitted.shape == (32, 53) and np.array_equal(view, fitted[y:y + 24, x:x + 24])
    assert len({tuple(c) for c in out["crop"].tolist()}) > 1
    full = read_stage({"id": np.arange(3)}, paths=[paths], rows_per_epoch=3, seed=0, config=tiny_config())
    assert full["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="train_crop"):
        train(tiny_config(train_crop=64), str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="positive weight"):  # before Ray starts, not in the data tasks
        train(tiny_config(synthesis="realistic:0.7,nsa"), str(tmp_path), str(tmp_path / "out"))


def test_epoch_order_is_a_fresh_seeded_permutation():
    a0, a1 = epoch_order(0, 0, 50), epoch_order(0, 1, 50)
    assert sorted(a0.tolist()) == list(range(50))
    assert not np.array_equal(a0, a1)
    assert np.array_equal(a0, epoch_order(0, 0, 50))
    assert not np.array_equal(a0, epoch_order(1, 0, 50))
    assert steps_per_epoch_for(17, 8) == 3 and steps_per_epoch_for(3, 8) == 1


def test_synthesis_draw_depends_on_epoch_and_position_not_on_batching():
    from defectray.synthesis import SynthesisSources

    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (6, 32, 32), dtype=np.uint8)
    sources = SynthesisSources(normal_images=list(images))
    batch = {"epoch": np.array([0, 0, 0, 1, 1, 1]), "position": np.array([0, 1, 2, 0, 1, 2]),
             "index": np.arange(6), "image": images}
    kw = dict(sources=[sources], method="realistic", seed=5, anomaly_prob=1.0, rotate_prob=0.0)
    whole = synthesis_stage(batch, **kw)
    halves = [synthesis_stage({k: v[s] for k, v in batch.items()}, **kw) for s in (slice(0, 2), slice(2, 6))]
    for key in ("damaged", "clean", "mask"):
        assert np.array_equal(whole[key], np.concatenate([h[key] for h in halves]))
    assert (whole["mask"].reshape(6, -1).max(axis=1) > 0).all()  # anomaly_prob 1: every sample damaged
    assert not np.array_equal(whole["damaged"], images)
    other_seed = synthesis_stage(batch, **{**kw, "seed": 6})
    assert not np.array_equal(other_seed["damaged"], whole["damaged"])


def test_exposure_jitter_changes_the_views_brightness_and_nothing_else_about_the_draw():
    from defectray.synthesis import SynthesisSources

    rng = np.random.default_rng(1)
    images = rng.integers(60, 200, (8, 32, 32), dtype=np.uint8)
    batch = {"epoch": np.zeros(8, np.int64), "position": np.arange(8), "index": np.arange(8), "image": images}
    kw = dict(sources=[SynthesisSources(normal_images=list(images))], method="realistic", seed=5, anomaly_prob=0.0,
              rotate_prob=0.0)
    plain = synthesis_stage(batch, **kw)
    jittered = synthesis_stage(batch, **kw, exposure_jitter=0.6)
    assert np.array_equal(plain["clean"], images)
    changed = [i for i in range(8) if not np.array_equal(jittered["clean"][i], images[i])]
    assert 0 < len(changed) < 8  # about half the views
    for i in changed:  # the same view, only brighter or darker
        gain = jittered["clean"][i].astype(float).sum() / images[i].astype(float).sum()
        assert abs(gain - 1) > 0.005 and np.abs(jittered["clean"][i] - images[i] * gain).max() <= 1.0
    assert np.array_equal(jittered["clean"], synthesis_stage(batch, **kw, exposure_jitter=0.6)["clean"])
    # the defects are drawn from the row's own stream, as without the jitter: the same rows get one
    kw["anomaly_prob"] = 0.5
    plain, jittered = synthesis_stage(batch, **kw), synthesis_stage(batch, **kw, exposure_jitter=0.6)
    assert np.array_equal(plain["mask"].reshape(8, -1).any(axis=1), jittered["mask"].reshape(8, -1).any(axis=1))


def test_the_stream_runs_only_a_few_blocks_ahead_of_cpu_trainers_and_freely_ahead_of_gpus():
    cpu = _data_config(use_gpu=False)._resolve_execution_options("train").resource_limits
    gpu = _data_config(use_gpu=True)._resolve_execution_options("train").resource_limits
    assert cpu.object_store_memory == RUN_AHEAD_BLOCKS * BLOCK_BYTES
    assert gpu.object_store_memory == float("inf")


# ---- on Ray ---------------------------------------------------------------------------------------------------


def test_two_workers_train_data_parallel_and_survive_a_lost_worker(ray_local, tiny_mvtec, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    marker = tmp_path / "died"
    config = tiny_config(epochs=3)
    result = train(config, str(tiny_mvtec), str(tmp_path / "out"), workers=2, use_gpu=False,
                   _hooks={"probe": str(probe), "fail_once": {"rank": 1, "epoch": 1, "marker": str(marker)}})

    # Data parallel: each worker trained on its own rows, and DDP kept the weights identical after the step.
    r0, r1 = (json.loads((probe / f"rank{r}_from0.json").read_text()) for r in (0, 1))
    rows0, rows1 = {tuple(r) for r in r0["rows"]}, {tuple(r) for r in r1["rows"]}
    assert len(rows0) == len(rows1) == config.batch_size and not rows0 & rows1
    assert r0["weights"] == r1["weights"]

    # Rank 1 died after epoch 1; the run restarted from that epoch's checkpoint and finished, and the data
    # stream restarted at epoch 1 too.
    assert marker.exists()
    restarted = json.loads((probe / "rank0_from1.json").read_text())
    assert {e for e, _ in restarted["rows"]} == {1}
    n_train = len(split_holdout(io.training_images(str(tiny_mvtec)), config.val_fraction, config.seed)[0])
    spe = steps_per_epoch_for(n_train, 2 * config.batch_size)
    assert (result.epochs, result.steps, result.resumed_from, result.stopped_by) == (3, 3 * spe, 1, "epochs")
    detector = defectray.load_model(result.model_uri)
    assert detector.model_id == result.model_id and detector.threshold is not None
    scores, maps = detector.predict([io.load_image(p) for p in io.list_images(str(tiny_mvtec / "test/good"))[:2]])
    assert scores.shape == (2,) and np.isfinite(scores).all() and maps[0].shape == (64, 80)
    summary = json.loads((tmp_path / "out" / "training.json").read_text())
    assert summary["model_id"] == result.model_id


def test_cli_run_then_same_run_resumes(ray_local, tiny_mvtec, tmp_path, monkeypatch):
    from defectray.cli import main

    config_file = tmp_path / "tiny.json"
    config_file.write_text(tiny_config(epochs=1).to_json())
    out = tmp_path / "model"
    # a relative --out means the caller's folder, not the Ray worker's working directory
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", str(tiny_mvtec), "--out", "model", "--config", str(config_file), "--gpu", "no"]
    assert main(args) == 0
    first = defectray.load_model(model_uri_for(str(out)))
    # The same run with a larger budget continues: epoch 0 is neither trained nor synthesised again.
    probe = tmp_path / "probe"
    probe.mkdir()
    result = train(tiny_config(epochs=2), str(tiny_mvtec), str(out), use_gpu=False, validation=str(tiny_mvtec),
                   _hooks={"probe": str(probe)})
    assert (result.epochs, result.resumed_from) == (2, 1)
    assert {e for e, _ in json.loads((probe / "rank0_from1.json").read_text())["rows"]} == {1}
    summary = json.loads((out / "training.json").read_text())
    assert summary["model_id"] == result.model_id != first.model_id
    assert result.validation["image_auroc"] is not None and result.validation["pixel_auroc"] is not None
    # A different model under the same run name is refused before any training.
    with pytest.raises(ValueError, match="different config"):
        train(tiny_config(epochs=2, seg_base_width=8), str(tiny_mvtec), str(out))


def test_cli_user_errors_exit_2(tmp_path, capsys):
    from defectray.cli import main

    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "defectray train: error:" in err and "Traceback" not in err


def test_train_from_s3_with_a_step_budget_twice_gives_one_model(ray_local, s3_bucket, make_mvtec_s3):
    bucket, data = make_mvtec_s3(s3_bucket)
    config = tiny_config(epochs=5, max_steps=3)
    out = f"s3://{bucket}/models/tile"
    result = train(config, data, out, workers=1, use_gpu=False)
    n_train = len(split_holdout(io.training_images(data), config.val_fraction, config.seed)[0])
    assert steps_per_epoch_for(n_train, config.batch_size) > 3  # the budget stops inside an epoch
    assert (result.steps, result.stopped_by) == (3, "max_steps")
    assert result.model_uri == f"{out}/model.safetensors" and result.storage_path == f"{out}/checkpoints"
    fs, path = io.url_to_fs(result.storage_path)
    assert fs.glob(f"{path}/{result.run_name}/checkpoint_*/meta.json")  # checkpoints landed in S3
    assert defectray.load_model(result.model_uri).model_id == result.model_id
    # One seed and a step budget, one model: the same run again elsewhere trains the same weights (the Ray
    # worker once built its net before seeding torch, so each run started from other weights).
    again = train(config, data, f"s3://{bucket}/models/tile-again", workers=1, use_gpu=False)
    assert again.model_id == result.model_id


@pytest.fixture
def make_mvtec_s3(tmp_path):
    from conftest import make_mvtec

    def make(s3_bucket):
        local = make_mvtec(tmp_path / "cat", n_train=20, n_good=1, n_bad=1, size=(48, 40))
        bucket = s3_bucket("train")
        fs, _ = io.url_to_fs(f"s3://{bucket}")
        fs.put(str(local) + "/", f"{bucket}/cat/", recursive=True)
        return bucket, f"s3://{bucket}/cat"

    return make


def test_a_corrupt_training_image_stops_the_run_with_its_name(ray_local, tmp_path, monkeypatch):
    from conftest import make_mvtec

    import defectray.train as train_module

    data = make_mvtec(tmp_path / "cat", n_train=12, n_good=1, n_bad=1, size=(40, 40))
    (data / "train/good/005.png").write_bytes(b"not a png")
    monkeypatch.setattr(train_module, "SOURCE_IMAGE_LIMIT", 2)  # so the stream, not the driver, meets it
    config = tiny_config(epochs=1, seed=1)
    assert "005.png" not in " ".join(train_module.split_holdout(
        io.training_images(str(data)), config.val_fraction, config.seed)[1])  # it is a training image
    with pytest.raises(train_module.BadTrainingImage, match="005.png: not a decodable image"):
        train(config, str(data), str(tmp_path / "out"), use_gpu=False, max_failures=0)
