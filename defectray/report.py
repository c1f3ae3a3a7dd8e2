"""One self-contained HTML page from a scoring run: counts, score histogram, the most anomalous images
with their heat maps, and every error.

The page carries everything inline (CSS, an SVG histogram, thumbnails as base64 data URIs), so it opens
from a laptop, a mail attachment or an S3 download with no server and no network.

Input is the Parquet table `defectray score` writes (a file, or a folder/prefix of ``.parquet`` files,
local or on any fsspec store), one row per scored image:
``image_path, score, is_anomalous, mask_path, status ('ok'|'error'), error, height, width, model_id,
scored_at``. Only ``image_path``, ``score`` and ``status`` are required.

Re-running a scoring job with ``--resume`` appends rows: an image can have an old error row and a
newer ok row. Each image is counted once, from its latest ok row, or its latest error row if it never
scored.

The threshold line: ``threshold=`` if given, else derived from the table itself as the midpoint between
the largest score flagged normal and the smallest score flagged anomalous (any threshold in that gap
gives the same flags). With only one kind of flag, the nearest edge is shown; when the flags overlap
(rows from different models or thresholds) no line is drawn and the page says why.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from defectray import io
from defectray.plots import heatmap_overlay

REQUIRED_COLUMNS = ("image_path", "score", "status")
OPTIONAL_COLUMNS = ("is_anomalous", "mask_path", "error", "height", "width", "model_id", "scored_at")
THUMBNAIL_SIDE = 360  # px, longest side; shown at about half that, sharp on high-density screens
MAX_ERRORS_SHOWN = 2000  # the page stays small; the Parquet table has the rest


# ---- reading the scoring table --------------------------------------------------------------------


def read_scores(scores: str) -> pa.Table:
    """All rows of a scoring run (a ``.parquet`` file or a folder/prefix of them), the known columns only."""
    fs, path = io.url_to_fs(scores)
    if fs.isfile(path):
        files = [path]
    elif fs.isdir(path):
        # A scoring output folder also holds mask images; read only the Parquet parts.
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    else:
        raise FileNotFoundError(f"no such scoring output: {scores}")
    if not files:
        raise FileNotFoundError(f"no .parquet files under {scores}")
    tables = []
    for file in files:
        with fs.open(file, "rb") as f:
            table = pq.read_table(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{io.to_uri(fs, file)} is not a defectray scoring table "
                             f"(missing column(s) {', '.join(missing)})")
        tables.append(table.select([c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in table.column_names]))
    # Parts written by different tasks can differ (an all-error part has null-typed columns).
    return pa.concat_tables(tables, promote_options="permissive")


def latest_per_image(table: pa.Table) -> pa.Table:
    """One row per ``image_path``: its latest ok row, else its latest error row."""
    if table.num_rows == 0:
        return table
    path_codes = pc.dictionary_encode(table["image_path"]).combine_chunks().indices.to_numpy(zero_copy_only=False)
    is_ok = pc.fill_null(pc.equal(table["status"], "ok"), False).to_numpy(zero_copy_only=False)
    when = _time_order(table["scored_at"]) if "scored_at" in table.column_names else np.zeros(table.num_rows, np.int64)
    row = np.arange(table.num_rows)
    # lexsort: the last key is the primary one. Within an image: error before ok, older before newer,
    # earlier part before later part; the last row of each image is the one to keep.
    order = np.lexsort((row, when, is_ok, path_codes))
    codes_sorted = path_codes[order]
    last_of_image = np.append(codes_sorted[1:] != codes_sorted[:-1], True)
    return table.take(pa.array(np.sort(order[last_of_image])))


def _time_order(stamps: pa.ChunkedArray) -> np.ndarray:
    """int64 keys that sort like the timestamps (nulls first); ISO-8601 strings sort as text."""
    if pa.types.is_string(stamps.type) or pa.types.is_large_string(stamps.type):
        values = np.array(stamps.to_pylist(), dtype=object)
        present = np.array([v is not None for v in values], dtype=bool)
        keys = np.full(len(values), -1, np.int64)
        if present.any():
            _, keys[present] = np.unique(values[present].astype(str), return_inverse=True)
        return keys
    if pa.types.is_timestamp(stamps.type) or pa.types.is_date(stamps.type):
        stamps = pc.cast(stamps, pa.timestamp("ns")) if pa.types.is_date(stamps.type) else stamps
        stamps = stamps.cast(pa.int64())
    elif not (pa.types.is_integer(stamps.type) or pa.types.is_floating(stamps.type) or pa.types.is_null(stamps.type)):
        raise ValueError(f"scored_at has an unsupported type {stamps.type}")
    return pc.fill_null(pc.cast(stamps, pa.int64(), safe=False), np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)


def derive_threshold(scores: np.ndarray, flags: np.ndarray) -> tuple[float | None, str]:
    """The threshold implied by (score, is_anomalous) pairs, and how it was found (see module doc)."""
    normal, anomalous = scores[~flags], scores[flags]
    if len(normal) and len(anomalous):
        lo, hi = float(normal.max()), float(anomalous.min())
        if lo < hi:
            return (lo + hi) / 2, f"derived: midpoint of the gap between {lo:.4g} (highest normal) and {hi:.4g} (lowest anomalous)"
        return None, (f"not drawn: flags overlap (a normal image scored {lo:.4g}, an anomalous one {hi:.4g}); "
                      "rows come from more than one model or threshold, pass --threshold")
    if len(anomalous):
        return float(anomalous.min()), "derived: every scored image is anomalous; line at the lowest score"
    if len(normal):
        return float(normal.max()), "derived: no scored image is anomalous; line at the highest score"
    return None, "not drawn: no scored images"


# ---- pictures -------------------------------------------------------------------------------------


@dataclass
class Thumbnail:
    original: str | None  # data URI of the downscaled image
    overlay: str | None  # data URI of the heat-map overlay
    note: str | None  # why something is missing


def _data_uri_jpeg(img: np.ndarray, quality: int = 85) -> str:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _downscale(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _short_reason(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    return str(e).splitlines()[0][:160] or type(e).__name__


def make_thumbnail(image_path: str, mask_path: str | None, side: int = THUMBNAIL_SIDE) -> Thumbnail:
    """Downscaled image + heat-map overlay as data URIs; a missing or broken file gives a note, not an error."""
    try:
        image = _downscale(io.load_image(image_path, channels=3), side)
    except Exception as e:  # noqa: BLE001 - any unreadable source becomes a placeholder on the page
        return Thumbnail(None, None, f"source image unavailable ({_short_reason(e)})")
    original = _data_uri_jpeg(image)
    if not mask_path:
        return Thumbnail(original, None, "no anomaly map recorded")
    try:
        amap = io.load_image(mask_path, channels=1)
    except Exception as e:  # noqa: BLE001
        return Thumbnail(original, None, f"anomaly map unavailable ({_short_reason(e)})")
    h, w = image.shape[:2]
    amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return Thumbnail(original, _data_uri_jpeg(heatmap_overlay(image, amap, alpha=0.5)), None)


# ---- the histogram --------------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def histogram_svg(scores: np.ndarray, threshold: float | None, bins: int = 40,
                  width: int = 1120, height: int = 260) -> str:
    """Inline SVG: score histogram, bars right of the threshold in the alert colour, dashed threshold line."""
    if len(scores) == 0:
        return '<p class="muted">No scored images.</p>'
    lo, hi = float(scores.min()), float(scores.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.02
    lo, hi = lo - pad, hi + pad
    counts, edges = np.histogram(scores, bins=bins, range=(lo, hi))
    left, right, top, bottom = 56, 16, 16, 40
    pw, ph = width - left - right, height - top - bottom
    ymax = max(1, int(counts.max()))
    x = lambda v: left + (v - lo) / (hi - lo) * pw  # noqa: E731
    y = lambda c: top + ph - c / ymax * ph  # noqa: E731
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Histogram of {len(scores)} image scores" xmlns="http://www.w3.org/2000/svg">']
    for t in _nice_ticks(0, ymax, 4):
        yy = y(t)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                     f'<text x="{left - 8}" y="{yy + 4:.1f}" class="tick" text-anchor="end">{t:g}</text>')
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c == 0:
            continue
        cls = "bar alert" if threshold is not None and (a + b) / 2 >= threshold else "bar"
        parts.append(f'<rect class="{cls}" x="{x(a) + 0.5:.1f}" y="{y(c):.1f}" width="{max(0.5, x(b) - x(a) - 1):.1f}" '
                     f'height="{top + ph - y(c):.1f}"><title>{a:.4g} – {b:.4g}: {c} image(s)</title></rect>')
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>')
    for t in _nice_ticks(lo, hi, 8):
        parts.append(f'<text x="{x(t):.1f}" y="{top + ph + 18}" class="tick" text-anchor="middle">{t:.4g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" class="label" text-anchor="middle">image score</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" class="label" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2})">images</text>')
    if threshold is not None:
        tx = x(threshold)
        anchor, dx = ("end", -6) if tx > left + pw * 0.8 else ("start", 6)
        parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{top + ph}" class="threshold"/>'
                     f'<text x="{tx + dx:.1f}" y="{top + 12}" class="threshold-label" text-anchor="{anchor}">'
                     f'threshold {threshold:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---- the page -------------------------------------------------------------------------------------


CSS = """
:root { --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff; --accent:#2e5aac;
        --alert:#c4320a; --alert-bg:#fef3f2; --ok:#067647; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#1d2330; color:#fff; padding:20px 32px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header .meta { color:#c0c6d4; font-size:12.5px; word-break:break-all; }
main { max-width:1216px; margin:0 auto; padding:24px 32px 48px; }
section { margin-top:28px; }
h2 { font-size:16px; margin:0 0 12px; font-weight:600; }
h2 .muted { font-weight:400; }
.muted { color:var(--muted); }
.stats { display:grid; grid-template-columns:repeat(5, 1fr); gap:12px; }
.stat { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; }
.stat .v { font-size:26px; font-weight:650; font-variant-numeric:tabular-nums; }
.stat .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.stat .s { color:var(--muted); font-size:12px; margin-top:2px; }
.stat.alert .v { color:var(--alert); }
.stat.err .v { color:#b54708; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px; }
.hist { width:100%; height:auto; display:block; }
.hist .bar { fill:#8ea3c7; } .hist .bar.alert { fill:var(--alert); }
.hist .grid { stroke:var(--line); } .hist .axis { stroke:#98a2b3; }
.hist .tick { fill:var(--muted); font-size:11px; } .hist .label { fill:var(--muted); font-size:12px; }
.hist .threshold { stroke:var(--ink); stroke-width:1.5; stroke-dasharray:5 4; }
.hist .threshold-label { fill:var(--ink); font-size:12px; font-weight:600; }
.note { font-size:12.5px; margin-top:8px; }
.legend { display:flex; align-items:center; gap:8px; font-size:12px; color:var(--muted); margin-bottom:12px; }
.legend .ramp { width:160px; height:10px; border-radius:3px;
  background:linear-gradient(90deg,#00007f,#0000ff,#007fff,#00ffff,#7fff7f,#ffff00,#ff7f00,#ff0000,#7f0000); }
.grid-cards { display:grid; grid-template-columns:repeat(3, 1fr); gap:14px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; overflow:hidden; }
.card .pics { display:grid; grid-template-columns:1fr 1fr; gap:2px; background:#0f1115; }
.card .pics img { width:100%; height:168px; object-fit:contain; display:block; background:#0f1115; }
.card .placeholder { height:168px; display:flex; align-items:center; justify-content:center;
  color:#c0c6d4; font-size:12.5px; padding:12px; text-align:center; background:repeating-linear-gradient(
  45deg,#1b1f27,#1b1f27 10px,#222733 10px,#222733 20px); }
.card .placeholder.wide { grid-column:1 / span 2; }
.card .body { padding:10px 12px 12px; }
.card .row { display:flex; justify-content:space-between; align-items:baseline; gap:8px; }
.card .rank { color:var(--muted); font-size:12px; }
.card .score { font-size:18px; font-weight:650; font-variant-numeric:tabular-nums; }
.card .name { font-size:12.5px; word-break:break-all; margin-top:4px; }
.card .sub { color:var(--muted); font-size:11.5px; }
.badge { font-size:11px; padding:2px 8px; border-radius:999px; font-weight:600; }
.badge.alert { background:var(--alert-bg); color:var(--alert); }
.badge.ok { background:#ecfdf3; color:var(--ok); }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line);
        border-radius:10px; overflow:hidden; font-size:12.5px; }
th, td { text-align:left; padding:8px 12px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f9fafb; color:var(--muted); font-weight:600; }
td.path { word-break:break-all; width:45%; font-family:ui-monospace, Menlo, Consolas, monospace; }
td.msg { color:#b42318; word-break:break-word; }
footer { color:var(--muted); font-size:12px; margin-top:32px; }
@media (max-width: 960px) { .stats { grid-template-columns:repeat(3, 1fr); } .grid-cards { grid-template-columns:1fr 1fr; } }
@media (max-width: 620px) { main { padding:16px; } .stats, .grid-cards { grid-template-columns:1fr 1fr; }
  .grid-cards { grid-template-columns:1fr; } }
@media print { header { background:none; color:var(--ink); } header .meta { color:var(--muted); } .card { break-inside:avoid; } }
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt_time(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _error_message(row: dict) -> str:
    if row.get("error"):
        return str(row["error"])
    if row.get("status") == "ok":
        return "scored, but the score is missing or NaN"
    return f"status {row.get('status')!r}, no message"


def _stat(value: str, key: str, cls: str = "", sub: str = "") -> str:
    sub = f'<div class="s">{_esc(sub)}</div>' if sub else ""
    return f'<div class="stat {cls}"><div class="v">{value}</div><div class="k">{_esc(key)}</div>{sub}</div>'


def _card(rank: int, row: dict, thumb: Thumbnail, threshold: float | None) -> str:
    name = posixpath.basename(str(row["image_path"]).rstrip("/"))
    flagged = row.get("is_anomalous")
    if flagged is None and threshold is not None:
        flagged = row["score"] > threshold
    badge = ('<span class="badge alert">anomalous</span>' if flagged else
             '<span class="badge ok">normal</span>' if flagged is not None else "")
    if thumb.original is None:
        pics = f'<div class="placeholder wide">{_esc(thumb.note)}</div>'
    else:
        pics = f'<img src="{thumb.original}" alt="{_esc(name)}" title="image">'
        pics += (f'<img src="{thumb.overlay}" alt="{_esc(name)}: anomaly map" title="anomaly map overlay">'
                 if thumb.overlay else f'<div class="placeholder">{_esc(thumb.note)}</div>')
    size = f'{row["width"]}×{row["height"]} px' if row.get("width") and row.get("height") else ""
    return (f'<div class="card"><div class="pics">{pics}</div><div class="body">'
            f'<div class="row"><span class="rank">#{rank}</span>{badge}</div>'
            f'<div class="row"><span class="score">{row["score"]:.4f}</span><span class="sub">{_esc(size)}</span></div>'
            f'<div class="name" title="{_esc(row["image_path"])}">{_esc(name)}</div>'
            f'<div class="sub" title="{_esc(row["image_path"])}">{_esc(posixpath.dirname(str(row["image_path"])))}</div>'
            '</div></div>')


def write_report(scores: str, out: str, top_k: int = 24, title: str | None = None,
                 threshold: float | None = None) -> str:
    """Write the HTML report of the scoring run at ``scores`` to ``out`` (local path or URI); returns ``out``.

    ``threshold`` draws the line at that score; None derives it from the table (see the module doc).
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, not {top_k}")
    raw = read_scores(scores)
    table = latest_per_image(raw)
    score = pc.cast(table["score"], pa.float64())
    is_ok = pc.and_(pc.fill_null(pc.equal(table["status"], "ok"), False),
                    pc.fill_null(pc.invert(pc.is_nan(score)), False))
    ok_table, error_table = table.filter(is_ok), table.filter(pc.invert(is_ok))
    ok_scores = pc.cast(ok_table["score"], pa.float64()).to_numpy(zero_copy_only=False)
    # A run scored without a threshold leaves is_anomalous null: no flags to count or derive from.
    flag_column = ok_table["is_anomalous"] if "is_anomalous" in ok_table.column_names else None
    has_flags = flag_column is not None and flag_column.null_count < len(flag_column)
    if has_flags:
        flagged = pc.is_valid(flag_column).to_numpy(zero_copy_only=False)
        flags = pc.fill_null(flag_column, False).to_numpy(zero_copy_only=False).astype(bool)
    if threshold is not None:
        threshold_note = "given (--threshold)"
    elif has_flags:
        threshold, threshold_note = derive_threshold(ok_scores[flagged], flags[flagged])
    else:
        threshold_note = "not drawn: the run has no is_anomalous flags (scored without a threshold); pass --threshold"
    if has_flags:
        n_anomalous: int | None = int(flags.sum())
    elif threshold is not None:
        n_anomalous = int((ok_scores > threshold).sum())  # as `defectray score` flags
    else:
        n_anomalous = None

    top_index = np.argsort(-ok_scores, kind="stable")[:top_k]
    top = ok_table.take(pa.array(top_index, pa.int64())).to_pylist()
    errors = error_table.slice(0, MAX_ERRORS_SHOWN).to_pylist()
    with ThreadPoolExecutor(max_workers=8) as pool:  # reading from object stores is latency-bound
        thumbs = list(pool.map(lambda r: make_thumbnail(r["image_path"], r.get("mask_path")), top))

    models = (sorted(str(m) for m in pc.unique(table["model_id"]).to_pylist() if m)
              if "model_id" in table.column_names else [])
    stamps = (pc.min_max(table["scored_at"]).values()
              if "scored_at" in table.column_names and pa.types.is_timestamp(table["scored_at"].type) else [])
    stamps = [t.as_py() for t in stamps if t.is_valid]
    title = title or "Defect scoring report"
    n_ok, n_errors = ok_table.num_rows, error_table.num_rows
    if n_anomalous is None:
        pct = "no threshold"
    else:
        pct = f"{100 * n_anomalous / n_ok:.1f}% of scored" if n_ok else ""
    meta = [f"scores: {_esc(scores)}"]
    if models:
        meta.append("model: " + _esc(", ".join(models)))
    if stamps:
        meta.append(f"scored {_fmt_time(min(stamps))} – {_fmt_time(max(stamps))}")
    meta.append(f"report written {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")

    stats = "".join([
        _stat(f"{table.num_rows:,}", "images"),
        _stat(f"{n_ok:,}", "scored"),
        _stat("—" if n_anomalous is None else f"{n_anomalous:,}", "anomalous", "alert", pct),
        _stat(f"{n_errors:,}", "errors", "err" if n_errors else ""),
        _stat("—" if threshold is None else f"{threshold:.4g}", "threshold"),
    ])
    dupes = raw.num_rows - table.num_rows
    dupes_note = (f" {dupes:,} earlier row(s) of re-scored images (resumed runs) were superseded by their latest result."
                  if dupes else "")

    cards = "".join(_card(i + 1, r, t, threshold) for i, (r, t) in enumerate(zip(top, thumbs)))
    if not cards:
        cards = '<p class="muted">No scored images.</p>'

    if errors:
        body = "".join(f'<tr><td class="path">{_esc(r["image_path"])}</td>'
                       f'<td class="msg">{_esc(_error_message(r))}</td></tr>' for r in errors)
        more = (f'<p class="note muted">Showing {len(errors):,} of {n_errors:,}; the Parquet table has them all.</p>'
                if n_errors > len(errors) else "")
        error_html = f'<table><thead><tr><th>image</th><th>error</th></tr></thead><tbody>{body}</tbody></table>{more}'
    else:
        error_html = '<p class="muted">No errors.</p>'

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>{_esc(title)}</h1><div class="meta">{" · ".join(meta)}</div></header>
<main>
<section class="stats" id="counts">{stats}</section>
<section id="histogram"><h2>Score distribution</h2><div class="panel">{histogram_svg(ok_scores, threshold)}
<p class="note muted">Threshold {_esc(threshold_note)}.{_esc(dupes_note)}</p></div></section>
<section id="top"><h2>Most anomalous images <span class="muted">· top {len(top)} of {n_ok:,} by score</span></h2>
<div class="legend">image | anomaly map overlay &nbsp; 0 <span class="ramp"></span> 1 (defect probability)</div>
<div class="grid-cards">{cards}</div></section>
<section id="errors"><h2>Errors <span class="muted">· {n_errors:,} image(s) that could not be scored</span></h2>
{error_html}</section>
<footer>defectray report · self-contained page: every picture is embedded, nothing is fetched.</footer>
</main></body></html>
"""
    io.write_bytes(out, page.encode("utf-8"))
    return out
