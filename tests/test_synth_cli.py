"""`defectray synth`: the files it writes, its determinism, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from defectray.cli import main
from defectray.synthesis import list_synthesizers
from tests.conftest import MAGNETIC_TILE, tile_image


def synth(*args: str) -> int:
    return main(["synth", *args])


def test_list_prints_methods_one_per_line(capsys):
    assert synth("--list") == 0
    assert capsys.readouterr().out.split("\n")[:-1] == list_synthesizers()


@pytest.mark.parametrize("method", ["realistic", "draem", "nsa", "fpi", "realistic:0.7,nsa:0.3"])
def test_writes_samples_masks_and_grid(tiny_mvtec, tmp_path, method):
    out = tmp_path / "out"
    assert synth("--method", method, "--images", str(tiny_mvtec), "--out", str(out), "--count", "5",
                 "--size", "48") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:05d}{s}.png" for i in range(5) for s in ("", "_mask")] + ["grid.png"]
    for i in range(5):
        image = cv2.imread(str(out / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / f"{i:05d}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (48, 48) and image.dtype == np.uint8  # grayscale input stays grayscale
        assert mask.shape == (48, 48) and set(np.unique(mask)) == {0, 255}
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[0] > 48 and grid.shape[1] > 4 * 48


def test_same_seed_same_files_other_seed_differs(tiny_mvtec, tmp_path):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert synth("--images", str(tiny_mvtec / "train" / "good"), "--out", str(tmp_path / name),
                     "--count", "3", "--seed", seed, "--size", "40") == 0
    a, b, c = (sorted((tmp_path / n).iterdir()) for n in "abc")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]


def test_never_reads_test_images(tmp_path):
    """For an MVTec category, only train/good feeds synthesis: make every test image unreadable."""
    from tests.conftest import make_mvtec

    root = make_mvtec(tmp_path / "cat", n_train=6, n_good=2, n_bad=2)
    for p in (root / "test").rglob("*.png"):
        p.write_bytes(b"garbage")
    assert synth("--images", str(root), "--out", str(tmp_path / "o"), "--count", "4", "--size", "32") == 0


def test_textures_defects_rgb_and_native_size(tmp_path):
    rng = np.random.default_rng(0)
    images, textures = tmp_path / "imgs", tmp_path / "tex"
    images.mkdir()
    textures.mkdir()
    for i in range(4):
        rgb = np.stack([tile_image(rng, 37, 53)] * 3, axis=-1)
        cv2.imwrite(str(images / f"{i}.png"), rgb)
        cv2.imwrite(str(textures / f"t{i}.png"), rng.integers(0, 255, (30, 30, 3)).astype(np.uint8))
    out = tmp_path / "out"
    assert synth("--method", "draem", "--images", str(images), "--textures", str(textures), "--defects",
                 str(textures), "--out", str(out), "--count", "3", "--size", "0") == 0
    sample = cv2.imread(str(out / "00000.png"), cv2.IMREAD_UNCHANGED)
    assert sample.shape == (37, 53, 3)


def test_roi_foreground_file(tmp_path, tiny_mvtec):
    roi = np.zeros((64, 80), np.uint8)
    roi[10:50, 20:60] = 255
    cv2.imwrite(str(tmp_path / "roi.png"), roi)
    out = tmp_path / "out"
    assert synth("--method", "realistic", "--images", str(tiny_mvtec), "--out", str(out), "--count", "6",
                 "--size", "0", "--foreground", str(tmp_path / "roi.png")) == 0
    for i in range(6):
        mask = cv2.imread(str(out / f"{i:05d}_mask.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.any() and not mask[roi == 0].any()


def test_errors_are_one_line_with_nonzero_exit(tmp_path, tiny_mvtec, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    cases = [
        (["--images", str(empty), "--out", str(tmp_path / "o1")], "no images"),
        (["--images", str(broken), "--out", str(tmp_path / "o2")], "x.png"),
        (["--method", "nope", "--images", str(tiny_mvtec), "--out", str(tmp_path / "o3")], "unknown synthesis method"),
        (["--method", "realistic:0.7,nsa", "--images", str(tiny_mvtec), "--out", str(tmp_path / "o8")],
         "positive weight"),
        (["--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o4")], "missing"),
        (["--out", str(tmp_path / "o5")], "--images"),
        (["--images", str(tiny_mvtec), "--out", str(tmp_path / "o6"), "--count", "0"], "--count"),
        (["--images", str(tiny_mvtec), "--out", str(tmp_path / "o7"), "--textures", str(empty)], "no images"),
    ]
    for args, expected in cases:
        assert synth(*args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err


def test_cli_process_error_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "defectray", "synth", "--method", "nope", "--images", str(tmp_path), "--out",
         str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "realistic" in result.stderr


@pytest.mark.skipif(not (MAGNETIC_TILE / "train" / "good").is_dir(), reason="magnetic-tile data set not present")
def test_magnetic_tile_realistic(tmp_path):
    out = tmp_path / "mt"
    assert synth("--images", str(MAGNETIC_TILE), "--out", str(out), "--count", "8", "--size", "128") == 0
    masks = [cv2.imread(str(out / f"{i:05d}_mask.png"), cv2.IMREAD_GRAYSCALE) for i in range(8)]
    assert all(m.shape == (128, 128) and m.max() == 255 for m in masks)
    assert (out / "grid.png").stat().st_size > 10_000


def test_fsspec_uris_in_and_out():
    import fsspec

    from defectray import io

    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(1)
    for i in range(3):
        with fs.open(f"/synth-in/train/good/{i}.png", "wb") as f:
            f.write(io.encode_png(tile_image(rng, 40, 60)))
    assert synth("--images", "memory://synth-in", "--out", "memory://synth-out", "--count", "5", "--size", "32") == 0
    written = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/synth-out", detail=False))
    assert len(written) == 11 and "grid.png" in written and "00004_mask.png" in written
    mask = io.load_image("memory://synth-out/00004_mask.png")
    assert mask.shape == (32, 32) and mask.max() == 255
