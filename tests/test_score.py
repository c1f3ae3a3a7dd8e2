"""Batch scoring on Ray Data against a real moto S3 server and local folders (defectray.score)."""

from __future__ import annotations

import glob
import os
import posixpath

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from defectray import cli
from defectray.io import decode_image, list_images, load_image, read_bytes, url_to_fs, write_bytes
from defectray.score import (
    FILE_PREFIX,
    mask_paths,
    read_results,
    safe_message,
    safe_relative_path,
    score_archive,
)

SECRET = "testing-secret-do-not-log"  # what conftest's s3_server puts in AWS_SECRET_ACCESS_KEY
THRESHOLD = 0.5


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _images(rng: np.random.Generator) -> dict[str, bytes]:
    """Relative key -> file bytes: good images of every kind we promise to read, and four bad files."""
    gray = lambda h, w: (rng.random((h, w)) * 255).astype(np.uint8)  # noqa: E731
    files = {
        "line1/cam0/a.png": _png(gray(40, 56)),
        "line1/cam0/b.jpg": cv2.imencode(".jpg", gray(48, 40))[1].tobytes(),
        "line1/cam1/c.bmp": cv2.imencode(".bmp", (rng.random((33, 47, 3)) * 255).astype(np.uint8))[1].tobytes(),
        "line1/cam1/deep/er/d16.tif": cv2.imencode(".tiff", (rng.random((36, 50)) * 65535).astype(np.uint16))[1]
        .tobytes(),
        "line2/rgba.png": _png((rng.random((45, 38, 4)) * 255).astype(np.uint8)),
        "line2/rgb.jpeg": cv2.imencode(".jpeg", (rng.random((64, 30, 3)) * 255).astype(np.uint8))[1].tobytes(),
        "line2/odd name #1.png": _png(gray(20, 70)),
        "bad/corrupt.png": _png(gray(40, 40))[:60],
        "bad/empty.png": b"",
        "bad/text.png": b"this is a text file, not a picture\n",
        "bad/garbage.jpg": rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
    }
    return files


BAD = {"bad/corrupt.png", "bad/empty.png", "bad/text.png", "bad/garbage.jpg"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from defectray.config import get_config
    from defectray.models import build_model
    from defectray.models.modelfile import save_model

    torch.manual_seed(0)
    cfg = get_config("cpu-small", image_size=32, recon_base_width=4, seg_base_width=4)
    path = str(tmp_path_factory.mktemp("model") / "tiny.safetensors")
    save_model(path, build_model(cfg), cfg, calibration={"threshold": THRESHOLD})
    return path


def _check_rows(rows: list[dict], inputs: dict[str, bytes], detector, threshold: float) -> None:
    """Every input has its row; ok rows carry the model's exact scores and a mask of the image's size."""
    assert sorted(r["image_path"] for r in rows) == sorted(inputs)
    good = {u: decode_image(b) for u, b in inputs.items() if not any(u.endswith(k) for k in BAD)}
    by_path = {r["image_path"]: r for r in rows}
    for uri in inputs:
        r = by_path[uri]
        if uri not in good:
            assert r["status"] == "error" and r["error"], r
            assert r["score"] is None and r["mask_path"] is None
            continue
        assert r["status"] == "ok" and r["error"] is None, r
        h, w = good[uri].shape[:2]
        assert (r["height"], r["width"]) == (h, w)
        mask = cv2.imdecode(np.frombuffer(read_bytes(r["mask_path"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (h, w)
        assert r["model_id"] == detector.model_id and r["scored_at"] is not None
        assert r["is_anomalous"] == (r["score"] > threshold)
    uris = sorted(good)
    scores, maps = detector.predict([good[u] for u in uris])
    np.testing.assert_allclose([by_path[u]["score"] for u in uris], scores, rtol=0, atol=1e-5)
    for u, m in zip(uris, maps):  # the mask is the map itself, quantised to 8 bits
        mask = cv2.imdecode(np.frombuffer(read_bytes(by_path[u]["mask_path"]), np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.abs(mask.astype(np.float32) - m * 255).max() <= 1.0


# ---- paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../../../etc/cron.d/x.png", "a/../../../b.png", "..\\..\\win.png",
                                 "/abs/olute.png", "./././c.png", "....png", "..", "a/%2e%2e/ok.png",
                                 "we ird?#*[].png", "\u00fcml\u00e4ut/\u2603.png", "a//b///c.tif"])
@pytest.mark.parametrize("root", ["s3://bucket/masks", "/srv/out/masks"])
def test_crafted_keys_cannot_escape_masks_prefix(key, root):
    rel = safe_relative_path(key)
    assert all(p not in ("", ".", "..") for p in rel.split("/"))
    assert all(c.isalnum() and c.isascii() or c in "._-/" for c in rel)
    uri = mask_paths([f"s3://in/{key}"], root, "s3://in")[f"s3://in/{key}"]
    assert uri.startswith(root + "/") and uri.endswith(".png")
    normalised = posixpath.normpath(uri.split("://", 1)[-1])
    assert normalised.startswith(root.split("://", 1)[-1] + "/")


def test_mask_paths_mirror_inputs_and_never_collide():
    uris = ["s3://in/day/a.png", "s3://in/day/a.jpg", "s3://in/day/x/b.tif", "s3://in/day/c d.png",
            "s3://in/day/c_d.png"]
    out = mask_paths(uris, "s3://out/masks", "s3://in/day")
    assert out["s3://in/day/x/b.tif"] == "s3://out/masks/x/b.png"
    assert len(set(out.values())) == len(uris)
    assert out == mask_paths(list(reversed(uris)), "s3://out/masks", "s3://in/day")  # order-independent


def test_safe_message_blanks_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-123")
    assert "sekrit" not in safe_message(RuntimeError("signature for sekrit-value-123\nfailed"))


# ---- the pipeline on S3 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_run(s3_bucket, ray_local, tiny_model, tmp_path_factory):
    """One scoring run over a nested S3 prefix (model on S3 too), output and masks on S3."""
    import s3fs

    data_bucket, out_bucket = s3_bucket("images"), s3_bucket("results")
    files = _images(np.random.default_rng(1))
    inputs = {}
    for key, data in files.items():
        write_bytes(f"s3://{data_bucket}/day1/{key}", data)
        inputs[f"s3://{data_bucket}/day1/{key}"] = data
    write_bytes(f"s3://{data_bucket}/day1/notes.txt", b"not an image name: not listed")
    model_uri = f"s3://{out_bucket}/models/tiny.safetensors"
    write_bytes(model_uri, read_bytes(tiny_model))
    output = f"s3://{out_bucket}/scores/day1"
    s3fs.S3FileSystem.clear_instance_cache()
    summary = score_archive(model_uri, f"s3://{data_bucket}/day1/", output, batch_size=4, actors=(1, 2),
                            progress=False)
    return {"summary": summary, "inputs": inputs, "output": output, "model": model_uri}


def test_s3_archive_one_row_per_file_with_exact_scores_and_masks(s3_run):
    from defectray.models.modelfile import load_model

    table = read_results(s3_run["output"], latest=False)
    assert table.num_rows == len(s3_run["inputs"])  # nothing lost, nothing doubled
    rows = table.to_pylist()
    _check_rows(rows, s3_run["inputs"], load_model(s3_run["model"]), THRESHOLD)
    for r in rows:
        if r["status"] == "ok":
            assert r["mask_path"].startswith(s3_run["output"] + "/masks/line")
    odd = next(r for r in rows if r["image_path"].endswith("odd name #1.png"))
    assert odd["mask_path"] == s3_run["output"] + "/masks/line2/odd_name_1.png"
    s = s3_run["summary"]
    assert (s["files"], s["ok"], s["errors"]) == (len(s3_run["inputs"]), len(s3_run["inputs"]) - len(BAD), len(BAD))
    assert s["anomalous"] == sum(bool(r["is_anomalous"]) for r in rows)
    assert s["images_per_s"] > 0
    assert table.schema.field("scored_at").type.tz == "UTC"


def test_error_rows_say_what_went_wrong(s3_run):
    rows = {r["image_path"].rsplit("/", 1)[-1]: r for r in read_results(s3_run["output"]).to_pylist()}
    assert "empty" in rows["empty.png"]["error"]
    assert "not a decodable image" in rows["text.png"]["error"]
    assert "not a decodable image" in rows["corrupt.png"]["error"]


def test_credentials_never_reach_outputs_or_logs(s3_run, ray_local, capfd):
    fs, path = url_to_fs(s3_run["output"])
    for p in fs.find(path):
        assert SECRET.encode() not in fs.cat_file(p), p
    assert SECRET not in str(s3_run["summary"])
    logs_dir = ray_local._private.worker._global_node.get_logs_dir_path()
    for p in glob.glob(os.path.join(logs_dir, "**", "*"), recursive=True):
        if os.path.isfile(p):
            with open(p, "rb") as f:
                assert SECRET.encode() not in f.read(), p
    out, err = capfd.readouterr()
    assert SECRET not in out + err


# ---- local folders, manifests, the CLI and --resume -------------------------------------------------


@pytest.fixture()
def local_archive(tmp_path):
    root = tmp_path / "archive"
    inputs = {}
    for key, data in _images(np.random.default_rng(2)).items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
        inputs[str(root / key)] = data
    return root, inputs


def test_local_folder_resume_after_crash_is_exactly_once(local_archive, ray_local, tiny_model, tmp_path, capsys):
    from defectray.models.modelfile import load_model

    root, inputs = local_archive
    output = str(tmp_path / "scores")
    args = ["score", "--model", tiny_model, "--input", str(root), "--output", output, "--batch-size", "3",
            "--actors", "1,2", "--quiet"]
    assert cli.main(args) == 0
    assert "11 files: 7 ok, 4 errors" in capsys.readouterr().out
    first = read_results(output, latest=False)
    assert first.num_rows == len(inputs)

    # The crash: only some rows made it to disk, and the last file was torn mid-write.
    files = glob.glob(os.path.join(output, FILE_PREFIX + "*.parquet"))
    for f in files:
        os.remove(f)
    survivors = first.filter(first.column("status").to_numpy(zero_copy_only=False) == "ok").slice(0, 4)
    pq.write_table(survivors, os.path.join(output, FILE_PREFIX + "crashed_000000.parquet"))
    with open(os.path.join(output, FILE_PREFIX + "crashed_000001.parquet"), "wb") as f:
        f.write(b"PAR1\x00\x01torn")

    assert cli.main(args) == 2  # an output with rows is never silently appended to
    assert "--resume" in capsys.readouterr().err
    assert cli.main(args + ["--resume"]) == 0
    assert f"{len(inputs) - 4} files, 4 already scored" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(output, FILE_PREFIX + "crashed_000001.parquet"))

    union = read_results(output, latest=False).to_pylist()
    ok = [r["image_path"] for r in union if r["status"] == "ok"]
    assert sorted(ok) == sorted(u for u in inputs if not any(u.endswith(k) for k in BAD))  # once each
    kept = {r["image_path"]: r["scored_at"] for r in survivors.to_pylist()}
    assert all(r["scored_at"] == kept[r["image_path"]] for r in union if r["image_path"] in kept)
    assert len(union) == len(inputs)  # the survivors were not scored again
    latest = read_results(output).to_pylist()
    _check_rows(latest, inputs, load_model(tiny_model), THRESHOLD)

    assert cli.main(args + ["--resume"]) == 0  # all done: scores nothing
    assert "scored 4 files, 7 already scored" in capsys.readouterr().out  # the 4 bad files are retried
    assert len(read_results(output).to_pylist()) == len(inputs)


def test_manifest_with_missing_file_and_threshold_flag(local_archive, ray_local, tiny_model, tmp_path,
                                                       monkeypatch):
    root, inputs = local_archive
    for name in ("take_all", "to_pandas", "to_arrow_refs", "to_numpy_refs", "count", "iter_batches"):
        # streaming: results go from the actors to write_parquet, never through the driver (write_parquet
        # itself calls materialize() on its small write-result blocks, so that one cannot be banned here)
        monkeypatch.setattr(ray_local.data.Dataset, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} called"))
    listed = [u for u in list_images(str(root)) if "/bad/" not in u]
    manifest = tmp_path / "todo.txt"
    missing = str(root / "line1" / "gone.png")
    manifest.write_text("\n".join(listed[:3] + [missing]) + "\n")
    output, masks = str(tmp_path / "out"), str(tmp_path / "elsewhere")
    summary = score_archive(tiny_model, str(manifest), output, masks=masks, threshold=2.0, batch_size=8,
                            progress=False)
    rows = {r["image_path"]: r for r in read_results(output).to_pylist()}
    assert sorted(rows) == sorted(listed[:3] + [missing])
    assert rows[missing]["status"] == "error" and "FileNotFoundError" in rows[missing]["error"]
    for u in listed[:3]:
        assert rows[u]["status"] == "ok"
        assert rows[u]["is_anomalous"] is False  # threshold 2.0 beats the calibrated 0.5
        assert rows[u]["mask_path"].startswith(masks + "/") and os.path.exists(rows[u]["mask_path"])
        assert load_image(rows[u]["mask_path"]).shape == decode_image(inputs[u]).shape[:2]
    assert summary["files"] == 4


def test_cli_user_errors_are_one_line(tiny_model, tmp_path, capsys):
    assert cli.main(["score", "--model", tiny_model, "--input", str(tmp_path / "nope"),
                     "--output", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["score", "--model", tiny_model, "--input", ".", "--output", "o", "--actors", "3,1"])


def test_input_root_for_each_kind_of_input(tmp_path):
    from defectray.score import input_root

    (tmp_path / "day" / "cam").mkdir(parents=True)
    (tmp_path / "day" / "cam" / "a.png").write_bytes(b"x")
    assert input_root(str(tmp_path / "day")) == str(tmp_path / "day")
    assert input_root(str(tmp_path / "day" / "cam" / "a.png")) == str(tmp_path / "day" / "cam")
    assert input_root(str(tmp_path / "day") + "/**/*.png") == str(tmp_path / "day")
    assert input_root("s3://bucket/day/*/cam?.png") == "s3://bucket/day"
    assert input_root(str(tmp_path / "list.txt")) is None  # a manifest: masks mirror full paths


def test_job_script_is_the_cli_command(tiny_model, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("score_job", os.path.join(os.path.dirname(__file__), "..",
                                                                            "jobs", "score.py"))
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--model", tiny_model, "--input", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_stages_turn_model_and_mask_failures_into_error_rows(local_archive, tiny_model, tmp_path):
    """The two pipeline stages called directly (no Ray): a batch the model fails on is retried image by
    image, so only the culprit gets an error row; a mask that cannot be written is an error row too."""
    from defectray.models.modelfile import load_model
    from defectray.score import ScoreActor, read_and_prepare

    root, inputs = local_archive
    uris = sorted(inputs)
    good = [i for i, u in enumerate(uris) if "/bad/" not in u]
    poison, unwritable = good[0], good[1]
    (tmp_path / "a-file").write_bytes(b"")
    masks = [str(tmp_path / "masks" / f"{i}.png") for i in range(len(uris))]
    masks[unwritable] = str(tmp_path / "a-file" / "mask.png")
    batch = read_and_prepare({"image_path": np.array(uris, dtype=object), "mask_path": np.array(masks, dtype=object)},
                             config=load_model(tiny_model).config)
    actor = ScoreActor(tiny_model, threshold=None)
    real_infer = actor.detector.infer

    def infer(pixels):
        if any(np.array_equal(p, batch["pixels"][poison]) for p in pixels):
            raise RuntimeError("CUDA out of memory")
        return real_infer(pixels)

    actor.detector.infer = infer
    rows = actor(batch).to_pylist()
    assert [r["image_path"] for r in rows] == uris
    assert rows[poison]["status"] == "error" and "CUDA out of memory" in rows[poison]["error"]
    assert rows[unwritable]["status"] == "error" and "could not write mask" in rows[unwritable]["error"]
    assert rows[unwritable]["mask_path"] is None and rows[unwritable]["score"] is None
    others = [i for i in good if i not in (poison, unwritable)]
    assert all(rows[i]["status"] == "ok" and os.path.exists(rows[i]["mask_path"]) for i in others)
    assert all(rows[i]["is_anomalous"] == (rows[i]["score"] > THRESHOLD) for i in others)  # calibrated
    assert sum(r["status"] == "error" for r in rows) == len(BAD) + 2


def test_resume_after_the_job_is_killed_part_way(ray_local, tiny_model, tmp_path):
    """A real crash: `defectray score`, a driver on the module's Ray cluster, is SIGKILLed once its first
    Parquet file lands; `--resume` then scores exactly what has no ok row."""
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(3)
    archive = tmp_path / "archive"
    for i in range(90):
        (archive / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(archive / f"part{i % 3}" / f"{i:03d}.png"), (rng.random((256, 256)) * 255).astype(np.uint8))
    output = tmp_path / "scores"
    proc = subprocess.Popen([sys.executable, "-m", "defectray", "score", "--model", tiny_model, "--input",
                             str(archive), "--output", str(output), "--batch-size", "2", "--actors", "1,1", "--quiet"],
                            env={**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(str(output / f"{FILE_PREFIX}*.parquet")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the job wrote nothing in 120 s"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver; Ray then ends the dead job's actors and tasks
        proc.wait(timeout=30)
    survived = 0
    for f in glob.glob(str(output / f"{FILE_PREFIX}*.parquet")):
        try:
            survived += pq.read_metadata(f).num_rows
        except Exception:
            pass  # torn by the kill: resume removes it
    assert survived < 90, "the job finished before it could be killed"

    summary = score_archive(tiny_model, str(archive), str(output), batch_size=16, resume=True, progress=False)
    assert summary["skipped"] == survived and summary["files"] == 90 - survived
    union = read_results(str(output), latest=False).to_pylist()
    assert sorted(r["image_path"] for r in union if r["status"] == "ok") == sorted(list_images(str(archive)))
    assert len(union) == 90
