"""`defectray demo` end to end (shortened by --max-steps): every artefact it promises exists and is sane."""

import json
import subprocess
import sys

from defectray.commands.demo import MARKER, _prepare_out, sample_dir
from defectray.score import read_results


def test_sample_is_shipped_in_mvtec_layout():
    root = sample_dir()
    assert len(list((root / "train" / "good").glob("*.jpg"))) >= 40
    for cls in ("blowhole", "break", "crack"):
        images = list((root / "test" / cls).glob("*.jpg"))
        assert images and all((root / "ground_truth" / cls / f"{p.stem}_mask.png").exists() for p in images)


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "defectray", "demo", "--out", str(out), "--max-steps", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report.html" in proc.stdout
    n_test = sum(1 for p in (sample_dir() / "test").rglob("*.jpg"))
    table = read_results(str(out / "scores"))
    assert table.num_rows == n_test
    assert set(table.column("status").to_pylist()) == {"ok"}
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["pixel_aupro"] is not None
    assert (out / "model" / "model.safetensors").exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/") >= 2

    # a second run into the same folder starts fresh instead of failing
    _prepare_out(out)
    assert [p.name for p in out.iterdir()] == [MARKER]


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "defectray", "demo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not written by `defectray demo`" in proc.stderr
    assert (tmp_path / "precious.txt").exists()
