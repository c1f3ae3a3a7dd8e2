"""`defectray report`: a self-contained HTML page from a (fake) scoring run, checked in a real browser."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from defectray import report
from defectray.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T0 = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.timezone.utc)


def _tile(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 120 + 40 * np.sin(xx / w * np.pi) * np.cos(yy / h * np.pi / 2)
    return np.clip(base + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)


def make_scoring_run(root: Path, n_ok: int = 30, seed: int = 0) -> dict:
    """A scoring output as `defectray score` writes it: two Parquet parts (the second one from a resumed
    run), PNG anomaly maps, plus error rows, a missing image and a missing map."""
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "out" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    threshold = 0.5
    rows_first, rows_resumed = [], []
    truth = {}
    for i in range(n_ok):
        h, w = int(rng.integers(90, 160)), int(rng.integers(120, 220))
        img_path, mask_path = images / f"tile_{i:03d}.png", masks / f"tile_{i:03d}.png"
        img = _tile(rng, h, w)
        amap = np.zeros((h, w), np.uint8)
        score = float(rng.beta(2, 6)) if i % 5 else float(0.55 + 0.4 * rng.random())
        if score > threshold:
            c = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)))
            cv2.circle(img, c, h // 8, 40, -1)
            cv2.circle(amap, c, h // 6, 255, -1)
            amap = cv2.GaussianBlur(amap, (0, 0), 4)
        cv2.imwrite(str(img_path), img)
        cv2.imwrite(str(mask_path), amap)
        row = dict(image_path=str(img_path), score=score, is_anomalous=score >= threshold,
                   mask_path=str(mask_path), status="ok", error=None, height=h, width=w,
                   model_id="magtile-v1", scored_at=T0 + dt.timedelta(seconds=i))
        truth[str(img_path)] = score
        # Images 3 and 4 failed in the first run (a transient read error) and scored on --resume.
        if i in (3, 4):
            rows_first.append(dict(row, score=None, is_anomalous=None, mask_path=None, status="error",
                                   error="OSError: connection reset by peer", height=None, width=None))
            rows_resumed.append(dict(row, scored_at=T0 + dt.timedelta(hours=2, seconds=i)))
        else:
            rows_first.append(row)
    # The top-scoring image's source vanished after scoring; another one's map was never written.
    top_two = sorted(truth, key=truth.get, reverse=True)[:2]
    os.remove(top_two[0])
    os.remove(next(r["mask_path"] for r in rows_first + rows_resumed if r["image_path"] == top_two[1]))
    errors = {
        str(images / "broken.jpg"): "ValueError: not a decodable image (corrupt, truncated or not an image format)",
        str(images / "empty.png"): "ValueError: empty file (0 bytes) <script>alert(1)</script>",
    }
    for k, (path, msg) in enumerate(errors.items()):
        err = dict(image_path=path, score=None, is_anomalous=None, mask_path=None, status="error", error=msg,
                   height=None, width=None, model_id="magtile-v1", scored_at=T0 + dt.timedelta(minutes=5 + k))
        rows_first.append(err)
        rows_resumed.append(dict(err, scored_at=T0 + dt.timedelta(hours=3)))  # failed again on resume
    schema = pa.schema([("image_path", pa.string()), ("score", pa.float64()), ("is_anomalous", pa.bool_()),
                        ("mask_path", pa.string()), ("status", pa.string()), ("error", pa.string()),
                        ("height", pa.int32()), ("width", pa.int32()), ("model_id", pa.string()),
                        ("scored_at", pa.timestamp("us", tz="UTC"))])
    out = root / "out"
    pq.write_table(pa.Table.from_pylist(rows_first, schema=schema), out / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows_resumed, schema=schema), out / "part-00001.parquet")
    return dict(out=out, truth=truth, errors=errors, threshold=threshold, missing_image=top_two[0],
                missing_mask=top_two[1], n_rows=len(rows_first) + len(rows_resumed))


@pytest.fixture(scope="module")
def scoring_run(tmp_path_factory) -> dict:
    return make_scoring_run(tmp_path_factory.mktemp("scoring"))


@pytest.fixture(scope="module")
def page(scoring_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", "--scores", str(scoring_run["out"]), "--out", str(out), "--top-k", "12"]) == 0
    return out, out.read_text()


# ---- table logic ----------------------------------------------------------------------------------


def test_latest_per_image_prefers_the_latest_ok_row(scoring_run):
    raw = report.read_scores(str(scoring_run["out"]))
    assert raw.num_rows == scoring_run["n_rows"]
    latest = report.latest_per_image(raw)
    by_path = {r["image_path"]: r for r in latest.to_pylist()}
    assert len(by_path) == latest.num_rows == len(scoring_run["truth"]) + len(scoring_run["errors"])
    for path, score in scoring_run["truth"].items():
        assert by_path[path]["status"] == "ok" and by_path[path]["score"] == pytest.approx(score)
    for path in scoring_run["errors"]:
        assert by_path[path]["status"] == "error"
        assert by_path[path]["scored_at"].hour == 11  # the later of its two error rows


def test_latest_ok_row_wins_even_when_an_error_came_later():
    table = pa.table({"image_path": ["a", "a", "a", "b"], "score": [0.1, 0.7, None, 0.3],
                      "status": ["ok", "ok", "error", "ok"], "scored_at": [1, 2, 3, 1]})
    latest = report.latest_per_image(table).to_pylist()
    assert [(r["image_path"], r["score"]) for r in latest] == [("a", 0.7), ("b", 0.3)]


def test_derive_threshold():
    scores = np.array([0.1, 0.2, 0.6, 0.9])
    assert report.derive_threshold(scores, np.array([0, 0, 1, 1], bool))[0] == pytest.approx(0.4)
    assert report.derive_threshold(scores, np.ones(4, bool))[0] == pytest.approx(0.1)
    assert report.derive_threshold(scores, np.zeros(4, bool))[0] == pytest.approx(0.9)
    value, note = report.derive_threshold(scores, np.array([0, 1, 0, 1], bool))
    assert value is None and "overlap" in note


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--scores", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no such scoring output" in capsys.readouterr().err
    pq.write_table(pa.table({"path": ["x"]}), tmp_path / "other.parquet")
    assert main(["report", "--scores", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "missing column(s) image_path, score, status" in capsys.readouterr().err


# ---- the page -------------------------------------------------------------------------------------


def _stat(html: str, key: str) -> str:
    m = re.search(r'<div class="v">([^<]*)</div><div class="k">' + re.escape(key), html)
    assert m, key
    return m.group(1)


def test_page_counts_threshold_and_errors(page, scoring_run):
    _, html = page
    truth, errors = scoring_run["truth"], scoring_run["errors"]
    n_anomalous = sum(s >= scoring_run["threshold"] for s in truth.values())
    assert _stat(html, "images") == str(len(truth) + len(errors))
    assert _stat(html, "scored") == str(len(truth))
    assert _stat(html, "anomalous") == str(n_anomalous)
    assert _stat(html, "errors") == str(len(errors))
    normal_max = max(s for s in truth.values() if s < 0.5)
    anomalous_min = min(s for s in truth.values() if s >= 0.5)
    assert _stat(html, "threshold") == f"{(normal_max + anomalous_min) / 2:.4g}"
    assert 'class="threshold"' in html and "<svg" in html
    for path in errors:
        assert html.count(path) == 1  # once, although each failed twice
    assert "connection reset" not in html  # superseded by the resumed ok rows
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html


def test_page_is_self_contained(page):
    path, html = page
    assert not re.search(r'(src|href)="(?!data:)', html)  # every picture is a data URI
    assert "<link" not in html and "<script" not in html and "url(" not in html
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
    # 12 cards: image + overlay each, less the one without its source image and one map
    assert len(thumbs) == 2 * 12 - 2 - 1
    for b64 in thumbs[:4]:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and max(img.shape[:2]) <= report.THUMBNAIL_SIDE
    assert path.stat().st_size < 2_000_000


def test_top_k_in_score_order_with_placeholders(page, scoring_run):
    _, html = page
    truth = scoring_run["truth"]
    shown = [float(s) for s in re.findall(r'<span class="score">([0-9.]+)</span>', html)]
    assert shown == [round(s, 4) for s in sorted(truth.values(), reverse=True)[:12]]
    assert "source image unavailable (file not found)" in html
    assert "anomaly map unavailable (file not found)" in html


def test_run_without_threshold_and_empty_run(tmp_path):
    schema = pa.schema([("image_path", pa.string()), ("score", pa.float64()), ("is_anomalous", pa.bool_()),
                        ("status", pa.string()), ("error", pa.string())])
    rows = [dict(image_path=f"/nowhere/{i}.png", score=s, is_anomalous=None, status="ok", error=None)
            for i, s in enumerate([0.1, 0.2, 0.9])]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "scores.parquet")
    html = Path(report.write_report(str(tmp_path / "scores.parquet"), str(tmp_path / "a.html"))).read_text()
    assert _stat(html, "anomalous") == "—" and _stat(html, "threshold") == "—"
    assert "no is_anomalous flags" in html and 'class="threshold"' not in html
    assert html.count("source image unavailable") == 3  # placeholders, not a crash
    html = Path(report.write_report(str(tmp_path / "scores.parquet"), str(tmp_path / "b.html"),
                                    threshold=0.5)).read_text()
    assert _stat(html, "anomalous") == "1" and 'class="threshold"' in html

    (tmp_path / "empty").mkdir()
    pq.write_table(schema.empty_table(), tmp_path / "empty" / "scores.parquet")
    html = Path(report.write_report(str(tmp_path / "empty"), str(tmp_path / "c.html"))).read_text()
    assert _stat(html, "images") == "0" and "No scored images." in html and "No errors." in html


def test_heat_map_overlay_marks_the_defect(tmp_path):
    img = np.full((80, 120), 128, np.uint8)
    amap = np.zeros((80, 120), np.uint8)
    amap[30:50, 40:70] = 255
    cv2.imwrite(str(tmp_path / "i.png"), img)
    cv2.imwrite(str(tmp_path / "m.png"), amap)
    thumb = report.make_thumbnail(str(tmp_path / "i.png"), str(tmp_path / "m.png"))
    assert thumb.note is None
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(thumb.overlay.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    b, g, r = (overlay[40, 55].astype(int))
    assert r > b + 60  # red (hot) over the defect
    b, g, r = (overlay[5, 5].astype(int))
    assert b > r + 60  # blue (cold) elsewhere


def test_report_reads_and_writes_s3(s3_bucket, scoring_run):
    from defectray import io

    bucket = s3_bucket("report")
    fs, _ = io.url_to_fs(f"s3://{bucket}")
    for part in sorted(scoring_run["out"].glob("*.parquet")):
        fs.put(str(part), f"{bucket}/scores/{part.name}")
    out = report.write_report(f"s3://{bucket}/scores/", f"s3://{bucket}/reports/r.html", top_k=3,
                              threshold=0.5, title="Line 3")
    html = io.read_bytes(out).decode("utf-8")
    assert "<title>Line 3</title>" in html and "given (--threshold)" in html
    assert html.count('class="card"') == 3


# ---- in a real browser ----------------------------------------------------------------------------

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-loaded', loaded);
  document.body.setAttribute('data-svg-height', Math.round(document.querySelector('svg.hist').getBoundingClientRect().height));
});
</script></body>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: run .ci/install-browser first")
        pytest.skip("chromium not installed (sudo .ci/install-browser installs it); browser check skipped")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,2000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_opens_in_a_real_browser(page, tmp_path):
    path, html = page
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE))
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert int(attrs["images"]) == 21
    assert attrs["loaded"] == attrs["images"]  # every embedded picture decoded
    assert int(attrs["svg-height"]) > 100  # the histogram has a real size on screen

    shot = tmp_path / "report.png"
    result = _chromium(tmp_path, f"--screenshot={shot}", path.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    keep = os.environ.get("DEFECTRAY_REPORT_SCREENSHOT")  # to look at it: set to a .png path
    if keep:
        shutil.copy(shot, keep)
    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 30  # not a blank page
    # The dark header band and the heat-map overlays (cold blue around hot red) are on screen.
    assert img[:60].mean() < 80
    b, g, r = (img[..., c].astype(int) for c in range(3))
    assert (b > r + 50).mean() > 0.03
    assert ((r > b + 80) & (r > g + 50)).mean() > 0.002
