"""Batch scoring of an image archive on Ray Data: one Parquet row and one mask image per input file.

The pipeline streams, so memory stays flat however large the night's archive is:

    URIs (listing or manifest) -> read bytes + decode + preprocess   (CPU tasks, one error row per bad file)
                               -> infer + postprocess + write masks   (autoscaling actor pool, GPU when present)
                               -> write_parquet                        (file names unique to this run)

(Without GPUs Ray fuses the first two stages, so each CPU actor decodes and scores its own batches.)

Every input file gets exactly one row: a file that cannot be read or decoded becomes a row with
``status="error"`` and a message instead of failing the job. ``resume=True`` reads the rows already at
``output`` and scores only the files that have no ``ok`` row yet, so the union of a crashed run and its
resumption holds exactly one ``ok`` row per image; :func:`read_results` gives that union, latest row per image.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from defectray.io import decode_image, join, list_images, protocol_of, read_bytes, url_to_fs, write_bytes

RESULT_SCHEMA = pa.schema(
    [
        ("image_path", pa.string()),
        ("score", pa.float64()),
        ("is_anomalous", pa.bool_()),
        ("mask_path", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("model_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)

FILE_PREFIX = "scores-"  # every Parquet file this module writes starts with it (and the run id follows)
_IO_THREADS = 16  # object stores answer one request at a time per connection; reads/writes overlap in threads
_MAX_ERROR_CHARS = 500


# ---- paths -----------------------------------------------------------------------------------------

_ODD_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_relative_path(relative: str) -> str:
    """A relative path that stays inside any folder it is joined to: separators normalised, empty, ``.``
    and ``..`` components dropped, anything but letters, digits, ``._-`` replaced by ``_``."""
    parts = []
    for part in relative.replace("\\", "/").split("/"):
        if part in ("", ".", ".."):
            continue
        part = _ODD_CHARACTERS.sub("_", part)
        if set(part) <= {"."}:  # "..." and the like: harmless on object stores, confusing on disks
            part = "_"
        parts.append(part[:200])
    return "/".join(parts) or "_"


def input_root(input_uri: str) -> str | None:
    """The folder/prefix the input's relative paths are taken from; None for a manifest (whose entries
    may live anywhere), in which case masks mirror each entry's full path without its scheme."""
    if input_uri.endswith(".txt") and not any(c in input_uri for c in "*?["):
        return None
    fs, path = url_to_fs(input_uri)
    glob_at = min((path.find(c) for c in "*?[" if c in path), default=-1)
    if glob_at >= 0:
        path = posixpath.dirname(path[:glob_at]) if "/" in path[:glob_at] else ""
    elif fs.isfile(path):
        path = posixpath.dirname(path)
    return _uri(input_uri, path)


def _uri(like: str, path: str) -> str:
    protocol = protocol_of(like)
    if protocol == "file":
        return os.path.abspath(path.removeprefix("file://") or ".")
    return f"{protocol}://{path}".rstrip("/")


def _relative_to(uri: str, root: str | None) -> str:
    if root is not None and uri.startswith(root.rstrip("/") + "/"):
        return uri[len(root.rstrip("/")) + 1 :]
    return uri.split("://", 1)[-1]


def mask_paths(image_uris: list[str], masks_root: str, root: str | None) -> dict[str, str]:
    """``<masks_root>/<relative path, sanitised, extension replaced by .png>`` for every image. Names that
    would collide (``a.jpg`` next to ``a.png``, or two names that sanitise alike) get a short hash of the
    image URI, so no mask overwrites another."""
    relative = {}
    for uri in image_uris:
        rel = safe_relative_path(_relative_to(uri, root))
        relative[uri] = posixpath.splitext(rel)[0] if posixpath.splitext(rel)[1] else rel
    counts: dict[str, int] = {}
    for rel in relative.values():
        counts[rel] = counts.get(rel, 0) + 1
    out = {}
    for uri, rel in relative.items():
        if counts[rel] > 1:
            rel = f"{rel}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"
        out[uri] = join(masks_root, rel + ".png")
    return out


# ---- safety ----------------------------------------------------------------------------------------

_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def safe_message(error: BaseException | str) -> str:
    """One line describing ``error`` with any credential from the environment blanked out."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = " ".join(text.split())
    return text[:_MAX_ERROR_CHARS]


# ---- pipeline stages (run on Ray workers) ----------------------------------------------------------

class _Preprocessor:
    """``Detector.preprocess`` reads the config only, so CPU workers run the very same code without
    loading the weights (which can be hundreds of MB)."""

    def __init__(self, config):
        self.config = config

    def preprocess(self, images: list[np.ndarray]) -> list[np.ndarray]:
        from defectray.models.modelfile import Detector

        return Detector.preprocess(self, images)


def _read_many(uris: list[str]) -> list[bytes | BaseException]:
    def read(uri: str) -> bytes | BaseException:
        try:
            return read_bytes(uri)
        except Exception as e:  # one unreadable file is one error row, never a failed job
            return e

    if all(protocol_of(u) == "file" for u in uris):
        return [read(u) for u in uris]
    with ThreadPoolExecutor(min(_IO_THREADS, len(uris))) as pool:
        return list(pool.map(read, uris))


def read_and_prepare(batch: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """Read, decode and preprocess one batch; a file that fails gets status ``error`` and zero pixels."""
    detector = _Preprocessor(config)
    uris = [str(u) for u in batch["image_path"]]
    n = len(uris)
    status = np.array(["ok"] * n, dtype=object)
    error = np.array([None] * n, dtype=object)
    height = np.zeros(n, np.int32)
    width = np.zeros(n, np.int32)
    images: dict[int, np.ndarray] = {}
    for i, data in enumerate(_read_many(uris)):
        try:
            if isinstance(data, BaseException):
                raise data
            img = decode_image(data)
            height[i], width[i] = img.shape[:2]
            images[i] = img
        except ValueError as e:
            status[i], error[i] = "error", safe_message(str(e))
        except Exception as e:
            status[i], error[i] = "error", safe_message(e)
    size, channels = detector.config.image_size, detector.config.channels
    # One (C, H', W') array per row, H' and W' by the model's fit rule (so rows may differ in shape); a row
    # that failed gets a placeholder square.
    pixels = [np.zeros((channels, size, size), np.float32) for _ in range(n)]
    if images:
        idx = sorted(images)
        try:
            for i, x in zip(idx, detector.preprocess([images[i] for i in idx])):
                pixels[i] = x
        except Exception:  # find the culprit(s) rather than losing the batch
            for i in idx:
                try:
                    pixels[i] = detector.preprocess([images[i]])[0]
                except Exception as e:
                    status[i], error[i] = "error", safe_message(e)
    return {
        "image_path": batch["image_path"],
        "mask_path": batch["mask_path"],
        "status": status,
        "error": error,
        "height": height,
        "width": width,
        "pixels": _tensor_column(pixels),
    }


def _tensor_column(arrays: list[np.ndarray]) -> np.ndarray:
    """One array per row as a Ray Data tensor column: a plain stacked array when the shapes agree, else an
    object array of arrays (Ray stores that as a variable-shaped tensor column)."""
    if len({a.shape for a in arrays}) <= 1:
        return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 1), np.float32)
    column = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        column[i] = a
    return column


class ScoreActor:
    """One model per actor (on its GPU when Ray gave it one): infer, full-resolution maps, masks, rows."""

    def __init__(self, model_uri: str, threshold: float | None):
        import torch

        from defectray.models.modelfile import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.detector = load_model(model_uri, device=device)
        self.threshold = threshold if threshold is not None else self.detector.threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["image_path"])
        status = [str(s) for s in batch["status"]]
        # (a column of None may come back as NaN after Ray's block conversion: status is the truth)
        error = [str(e) if s != "ok" and isinstance(e, str) else None for s, e in zip(status, batch["error"])]
        mask_path: list[str | None] = [str(m) for m in batch["mask_path"]]
        score: list[float | None] = [None] * n
        ok = [i for i in range(n) if status[i] == "ok"]
        masks: dict[int, bytes] = {}
        if ok:
            try:
                masks = self._score(batch, ok, score)
            except Exception:  # a failing batch (out of GPU memory, an odd image): isolate it image by image
                for i in ok:
                    try:
                        masks.update(self._score(batch, [i], score))
                    except Exception as e:
                        status[i], error[i] = "error", "scoring failed: " + safe_message(e)
        if masks:
            for i, err in _write_many({i: (mask_path[i], png) for i, png in masks.items()}).items():
                status[i], error[i], score[i] = "error", safe_message(f"could not write mask: {err}"), None
        for i in range(n):
            if status[i] != "ok":
                mask_path[i] = None
        ok_mask = [s == "ok" for s in status]
        anomalous = [
            None if (s is None or self.threshold is None) else bool(s > self.threshold) for s in score
        ]
        now = datetime.now(timezone.utc)
        return pa.Table.from_pydict(
            {
                "image_path": [str(u) for u in batch["image_path"]],
                "score": score,
                "is_anomalous": anomalous,
                "mask_path": mask_path,
                "status": status,
                "error": error,
                "height": [int(h) if ok_mask[i] or h else None for i, h in enumerate(batch["height"])],
                "width": [int(w) if ok_mask[i] or w else None for i, w in enumerate(batch["width"])],
                "model_id": [self.detector.model_id] * n,
                "scored_at": [now] * n,
            },
            schema=RESULT_SCHEMA,
        )

    def _score(self, batch: dict[str, np.ndarray], rows: list[int], score: list) -> dict[int, bytes]:
        sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in rows]
        maps = self.detector.infer([batch["pixels"][i] for i in rows])
        scores, full_maps = self.detector.postprocess(maps, sizes)
        masks = {i: _encode_mask(m) for i, m in zip(rows, full_maps)}
        for j, i in enumerate(rows):
            score[i] = float(scores[j])
        return masks


def _encode_mask(anomaly_map: np.ndarray) -> bytes:
    import cv2

    img = np.clip(np.asarray(anomaly_map, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("could not encode mask PNG")
    return buf.tobytes()


def _write_many(items: dict[int, tuple[str, bytes]]) -> dict[int, BaseException]:
    def write(item: tuple[str, bytes]) -> BaseException | None:
        try:
            write_bytes(*item)
            return None
        except Exception as e:
            return e

    keys = list(items)
    if not keys:
        return {}
    with ThreadPoolExecutor(min(_IO_THREADS, len(keys))) as pool:
        results = list(pool.map(write, [items[k] for k in keys]))
    return {k: r for k, r in zip(keys, results) if r is not None}


# ---- results at an output URI ----------------------------------------------------------------------


def _result_files(output: str) -> list[str]:
    fs, path = url_to_fs(output)
    if not fs.exists(path):
        return []
    return sorted(_uri(output, p) for p in fs.glob(posixpath.join(path, f"{FILE_PREFIX}*.parquet")))


def _read_result_file(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns, schema=RESULT_SCHEMA if columns is None else None)


def read_results(output: str, latest: bool = True) -> pa.Table:
    """All rows at ``output``. With ``latest`` (the default), one row per image: its ``ok`` row if it has
    one, else its most recent error row — the union of a crashed run and its ``--resume``."""
    files = _result_files(output)
    if not files:
        return RESULT_SCHEMA.empty_table()
    table = pa.concat_tables([_read_result_file(f).select(RESULT_SCHEMA.names) for f in files])
    if not latest or table.num_rows == 0:
        return table
    rows = table.to_pylist()
    best: dict[str, int] = {}
    for i, r in enumerate(rows):
        j = best.get(r["image_path"])
        if j is None or _rank(r) > _rank(rows[j]):
            best[r["image_path"]] = i
    return table.take(sorted(best.values()))


def _rank(row: dict) -> tuple:
    return (row["status"] == "ok", row["scored_at"] or datetime.min.replace(tzinfo=timezone.utc))


def _scored_ok(output: str, progress: bool) -> set[str]:
    """Image URIs that already have an ``ok`` row. A file torn by a crash mid-write is unreadable: it is
    removed (its rows are scored again), never trusted."""
    done: set[str] = set()
    for uri in _result_files(output):
        try:
            t = _read_result_file(uri, columns=["image_path", "status"])
        except Exception as e:
            if progress:
                print(f"defectray score: removing unreadable result file {uri} ({safe_message(e)})")
            fs, path = url_to_fs(uri)
            fs.rm(path)
            continue
        for path, status in zip(t.column("image_path").to_pylist(), t.column("status").to_pylist()):
            if status == "ok":
                done.add(path)
    return done


def _arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for Ray's writer: fsspec's, so AWS_ENDPOINT_URL is honoured the same
    way as everywhere else in defectray."""
    if protocol_of(uri) == "file":
        return None, os.path.abspath(uri.removeprefix("file://"))
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = url_to_fs(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


# ---- the job ---------------------------------------------------------------------------------------


def autoscaler_max(resource: str) -> int:
    """How much of ``resource`` ("GPU", "CPU") the cluster can grow to under its autoscaler (the sum over
    node types of max_workers x resources, as Ray Train checks its worker group against); 0 without an
    autoscaler config (a local Ray, nodes started by hand)."""
    try:
        from ray._private.state import state

        return int(min((state.get_max_resources_from_cluster_config() or {}).get(resource, 0), 1 << 20))
    except Exception:  # no autoscaler config, or a Ray without this (private) call
        return 0


def score_archive(
    model: str,
    input: str,
    output: str,
    masks: str | None = None,
    threshold: float | None = None,
    batch_size: int = 16,
    actors: tuple[int, int] | None = None,
    resume: bool = False,
    progress: bool = True,
    gpus_per_actor: float | None = None,
) -> dict:
    """Score every image under ``input`` (folder, glob, prefix or ``.txt`` manifest) with the model at
    ``model``; write a Parquet dataset to ``output`` and one 8-bit PNG anomaly map per image under
    ``masks`` (default ``<output>/masks``). Returns the run's summary (see :func:`format_summary`).

    ``gpus_per_actor``: None gives each model actor one GPU when the cluster has GPUs right now or its
    autoscaler may add GPU nodes (cluster.yaml's GPU type scales from zero), else none. ``actors`` None:
    a pool of 1 to (GPUs now or possible) / ``gpus_per_actor`` actors, or 1 to the CPU count without GPUs."""
    import ray

    from defectray.models.modelfile import load_model

    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    if actors is not None and not (1 <= actors[0] <= actors[1]):
        raise ValueError(f"actors must be MIN,MAX with 1 <= MIN <= MAX, not {actors[0]},{actors[1]}")
    started = time.perf_counter()
    output = output.rstrip("/")
    masks = (masks or join(output, "masks")).rstrip("/")
    detector = load_model(model, device="cpu")  # fails fast, in the driver, on a bad model URI
    if threshold is None and detector.threshold is None and progress:
        print("defectray score: the model has no calibrated threshold and none was given: is_anomalous is null")

    images = list_images(input)
    for kept_apart in (_uri(output, url_to_fs(output)[1]), _uri(masks, url_to_fs(masks)[1])):
        images = [u for u in images if not u.startswith(kept_apart + "/")]  # tonight's input, not last night's masks
    if not images:
        raise FileNotFoundError(f"no images (png, jpg, bmp, tif) under {input}")
    masks_of = mask_paths(images, masks, input_root(input))

    already_ok: set[str] = set()
    if resume:
        already_ok = _scored_ok(output, progress)
    elif _result_files(output):
        raise ValueError(f"{output} already holds scores: pass --resume to finish that run, or choose a new --output")
    todo = [u for u in images if u not in already_ok]
    run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    summary = {
        "run_id": run_id,
        "model_id": detector.model_id,
        "input": input,
        "output": output,
        "masks": masks,
        "files": len(todo),
        "skipped": len(images) - len(todo),
        "ok": 0,
        "errors": 0,
        "anomalous": 0,
        "seconds": 0.0,
        "images_per_s": 0.0,
    }
    if not todo:
        summary["seconds"] = time.perf_counter() - started
        return summary

    started_ray = not ray.is_initialized()
    if started_ray:  # a cluster at RAY_ADDRESS, else an embedded local Ray for this run only
        ray.init() if os.environ.get("RAY_ADDRESS") else ray.init(include_dashboard=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        # GPUs now or, under an autoscaler, the GPUs it may add: a night that starts with the GPU nodes scaled
        # to zero still asks for GPU actors, and the pool may grow to every GPU node (pending actors are the
        # demand that makes the autoscaler start them).
        gpus = max(int(ray.cluster_resources().get("GPU", 0)), autoscaler_max("GPU"))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if gpus_per_actor is None:
            gpus_per_actor = 1 if gpus else 0
        if actors is None:  # without GPUs Ray fuses decoding into the actors, so one actor per CPU
            actors = (1, max(1, int(gpus / gpus_per_actor))) if gpus_per_actor else (1, max(1, cpus))
        rows = [{"image_path": u, "mask_path": masks_of[u]} for u in todo]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 1000)))
        ds = ds.map_batches(read_and_prepare, batch_size=batch_size, batch_format="numpy",
                            fn_kwargs={"config": detector.config})
        ds = ds.map_batches(
            ScoreActor,
            fn_constructor_kwargs={"model_uri": model, "threshold": threshold},
            compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
            batch_size=batch_size,
            batch_format="numpy",
            num_gpus=gpus_per_actor,
        )
        from ray.data.datasource import FilenameProvider

        filesystem, path = _arrow_filesystem(output)
        ds.write_parquet(path, filesystem=filesystem,
                         filename_provider=FilenameProvider(dataset_uuid=FILE_PREFIX + run_id, file_format="parquet"))
    finally:
        if started_ray:
            ray.shutdown()

    written = [f for f in _result_files(output) if posixpath.basename(f).startswith(FILE_PREFIX + run_id)]
    table = pa.concat_tables([_read_result_file(f, ["status", "is_anomalous"]) for f in written]) if written else None
    rows_written = table.num_rows if table is not None else 0
    if rows_written != len(todo):
        raise RuntimeError(f"wrote {rows_written} rows for {len(todo)} input files (run {run_id})")
    status = table.column("status").to_pylist()
    summary["ok"] = status.count("ok")
    summary["errors"] = len(status) - summary["ok"]
    summary["anomalous"] = sum(1 for a in table.column("is_anomalous").to_pylist() if a)
    summary["seconds"] = time.perf_counter() - started
    summary["images_per_s"] = len(todo) / summary["seconds"]
    return summary


def format_summary(summary: dict) -> str:
    skipped = f", {summary['skipped']} already scored" if summary.get("skipped") else ""
    return (
        f"scored {summary['files']} files{skipped}: {summary['ok']} ok, {summary['errors']} errors, "
        f"{summary['anomalous']} anomalous; {summary['images_per_s']:.1f} images/s "
        f"({summary['seconds']:.1f} s) -> {summary['output']} (masks: {summary['masks']})"
    )
