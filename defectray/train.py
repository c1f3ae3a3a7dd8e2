"""Training on Ray: synthesis in Ray Data on CPU workers, the model data-parallel on Ray Train.

The pipeline, top to bottom:

1. The driver lists the normal images, keeps a seeded ``val_fraction`` of them out of training (calibration),
   and loads a bounded bank of training images as the synthesis appearance source.
2. Ray Data streams the row ids ``0 .. epochs * rows_per_epoch``. Row ``id`` is epoch-major: epoch
   ``id // rows_per_epoch``, position ``id % rows_per_epoch``; the image at a position is fixed by a per-epoch
   permutation seeded from (seed, epoch). Each row is read, decoded and resized, then a synthetic defect is
   painted on it with an RNG seeded from (seed, epoch, position). So every epoch is a fresh draw, and a run with
   a step or epoch budget is reproducible whatever the block scheduling (the workers seed torch before building
   the net; a wall-clock budget ends at another step each run). ``rows_per_epoch`` is padded to a multiple of
   the global batch (workers x batch_size), so every worker gets the same number of full batches per epoch.
3. Ray Train ``TorchTrainer`` runs ``_train_loop`` on N workers (GPU each when present, else CPU/gloo).
   Workers only train: they take ready (damaged, clean, mask) batches from ``get_dataset_shard``.
   An epoch is ``steps_per_epoch`` batches; after each, rank 0 writes a checkpoint and every worker reports.
4. Resume: the same run name + storage path resumes from the latest checkpoint (a re-run of the command, or a
   restart after a lost worker under ``FailureConfig``). The data stream then skips finished epochs before
   reading anything (the workers tell a small actor where they resume).
5. At the end rank 0 calibrates on the held-out images and writes the model file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from defectray import io
from defectray.config import Config
from defectray.models.tiling import center_crop, fit_image, fitted_size

MODEL_FILENAME = "model.safetensors"
SUMMARY_FILENAME = "training.json"
SOURCE_IMAGE_LIMIT = 256  # normal images kept in memory as the synthesis appearance source
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"
# Config fields that may change between a run and its resume; anything else must match the checkpoint.
BUDGET_FIELDS = ("epochs", "max_steps", "max_minutes")
BLOCK_BYTES = 64 << 20  # the most a block of synthesised rows may hold (build_dataset)
RUN_AHEAD_BLOCKS = 4  # CPU-only training: blocks of synthesised rows the stream may hold ahead (_data_config)
LOSS_KEYS = ("loss", "l2", "ssim", "feature", "focal", "dice", "score", "peak")  # TrainStep's outputs, in log order


@dataclass
class TrainResult:
    model_uri: str
    model_id: str
    run_name: str
    storage_path: str
    epochs: int  # completed epochs (over the whole run, resumes included)
    steps: int  # optimizer steps (over the whole run)
    minutes: float  # wall time of this call
    samples_per_s: float  # training samples per second over the last epoch, all workers together
    stopped_by: str  # "epochs" | "max_steps" | "max_minutes"
    losses: dict[str, float] = field(default_factory=dict)  # mean losses of the last epoch
    validation: dict[str, float | None] | None = None
    checkpoint: str | None = None
    resumed_from: int = 0  # the epoch this call (or its last restart after a lost worker) started at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        loss = self.losses.get("loss")
        loss_text = f"loss {loss:.4f}, " if loss is not None else ""
        return (f"trained {self.model_id} in {self.minutes:.1f} min: {self.epochs} epochs, {self.steps} steps, "
                f"{loss_text}{self.samples_per_s:.1f} samples/s, stopped by {self.stopped_by} -> {self.model_uri}")


# ---- plan: which images, in which order ----------------------------------------------------------------------


def model_uri_for(out: str) -> str:
    """``out`` is either the model file itself (``*.safetensors``) or a folder/prefix that gets one."""
    return out if out.endswith(".safetensors") else io.join(out, MODEL_FILENAME)


def split_holdout(paths: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) paths. The held-out set is a seeded choice of ``val_fraction`` of the images, at
    least one when the fraction is positive, and never all of them."""
    n = len(paths)
    n_held = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(np.random.SeedSequence([seed, 2])).permutation(n)
    held = set(order[:n_held].tolist())
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def epoch_order(seed: int, epoch: int, n_images: int) -> np.ndarray:
    """The image index at each position of epoch ``epoch`` (positions past n_images wrap around)."""
    return np.random.default_rng(np.random.SeedSequence([seed, 0, epoch])).permutation(n_images)


def steps_per_epoch_for(n_images: int, global_batch: int) -> int:
    return max(1, math.ceil(n_images / global_batch))


class BadTrainingImage(ValueError):
    """A training image that cannot be read or decoded (the run stops: no silently dropped images)."""


def load_fitted(path: str, config: Config) -> np.ndarray:
    """A training image resized by the config's ``fit`` rule (the same code as Detector.preprocess, so training
    and inference see identically resampled pixels): short side ``image_size`` for "tiles"."""
    try:
        return fit_image(io.load_image(path), config.image_size, config.channels, config.fit, config.auto_levels)
    except ValueError as e:
        raise BadTrainingImage(f"{path}: {e}") from None


def view_size(config: Config) -> int:
    """The side of the square training views: ``train_crop``, or ``image_size`` when it is None."""
    size = config.image_size if config.train_crop is None else config.train_crop
    if not 0 < size <= config.image_size:
        raise ValueError(f"train_crop must be in 1..image_size ({config.image_size}), not {config.train_crop}")
    return size


def training_view(fitted: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """The square a training sample sees: a random ``size`` crop of the fitted image, and where it was."""
    h, w = fitted.shape[:2]
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return fitted[y:y + size, x:x + size], y, x


def sources_for_view(sources, y: int, x: int, size: int):
    """Synthesis sources whose foreground is a user ROI (an array covering the fitted image), with the ROI cut
    to one training view's window."""
    return replace(sources, foreground=sources.foreground[y:y + size, x:x + size])


def _user_error_in(error: BaseException) -> str | None:
    """The BadTrainingImage message inside a Ray Train failure, whose text nests the data task's traceback."""
    import re

    texts = [str(error)] + [str(e) for e in (getattr(error, "worker_failures", None) or {}).values()]
    for text in texts:
        found = re.search(r"BadTrainingImage: (.*)", text)
        if found:
            return found.group(1).strip()
    return None


def _load_many(paths: list[str], config: Config) -> list[np.ndarray]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda p: load_fitted(p, config), paths))


def build_sources(config: Config, train_paths: list[str]):
    """The synthesis sources: a bounded, seeded sample of the training images plus the configured banks."""
    from defectray.synthesis import SynthesisSources, load_bank

    n = min(len(train_paths), SOURCE_IMAGE_LIMIT)
    pick = np.sort(np.random.default_rng(np.random.SeedSequence([config.seed, 3])).permutation(len(train_paths))[:n])
    # Appearance sources are squares like the training views: the centre of each fitted image.
    normal = [center_crop(img, config.image_size) for img in _load_many([train_paths[i] for i in pick], config)]
    foreground: str | np.ndarray = config.foreground
    if foreground not in ("otsu", "full"):
        # A region of interest for a fixed camera: fitted like the images; each training view crops its own
        # window of it (synthesis_stage).
        mask = io.load_image(foreground, channels=1)
        fh, fw = fitted_size(*mask.shape[:2], config.image_size, config.fit)
        foreground = cv2.resize(mask, (fw, fh), interpolation=cv2.INTER_NEAREST) > 0
    return SynthesisSources(
        normal_images=normal,
        textures=load_bank(config.textures, config.channels, config.image_size),
        defects=load_bank(config.defects, config.channels),
        foreground=foreground,
    )


# ---- Ray Data stages (run in Ray Data tasks on CPU workers) ----------------------------------------------------

_CACHE: dict[str, Any] = {}  # per worker process: object-store values fetched once, not once per batch


def _cached_get(ref_box: list) -> Any:
    import ray

    if not isinstance(ref_box[0], ray.ObjectRef):  # called outside Ray (tests, benchmarks): the value itself
        return ref_box[0]
    key = ref_box[0].hex()
    if key not in _CACHE:
        _CACHE[key] = ray.get(ref_box[0])
    return _CACHE[key]


class ResumePoint:
    """The first epoch the data stream must produce (a Ray actor). Workers set it after loading the
    checkpoint, before they pull data; the read stage drops earlier epochs before reading any file."""

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get(self) -> int:
        return self.epoch


def read_stage(batch: dict[str, np.ndarray], *, paths: list, rows_per_epoch: int, seed: int, config: Config,
               resume=None) -> dict[str, np.ndarray]:
    import ray

    ids = np.asarray(batch["id"], np.int64)
    epoch, position = ids // rows_per_epoch, ids % rows_per_epoch
    if resume is not None:
        keep = epoch >= ray.get(resume.get.remote())
        epoch, position = epoch[keep], position[keep]
    all_paths = _cached_get(paths)
    n = len(all_paths)
    orders: dict[int, np.ndarray] = {}
    index = np.empty(len(epoch), np.int64)
    for i, (e, p) in enumerate(zip(epoch.tolist(), position.tolist())):
        if e not in orders:
            orders[e] = epoch_order(seed, e, n)
        index[i] = orders[e][p % n]
    size = view_size(config)
    shape = (size, size) if config.channels == 1 else (size, size, config.channels)
    images = np.empty((len(index), *shape), np.uint8)
    crop = np.zeros((len(index), 2), np.int32)
    for i, (k, e, p) in enumerate(zip(index.tolist(), epoch.tolist(), position.tolist())):
        # The view is seeded by (seed, epoch, position), like the defect: independent of block layout.
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, e, p]))
        images[i], crop[i, 0], crop[i, 1] = training_view(load_fitted(all_paths[k], config), size, rng)
    return {"epoch": epoch, "position": position, "index": index, "image": images, "crop": crop}


def synthesis_stage(batch: dict[str, np.ndarray], *, sources: list, method: str, seed: int, anomaly_prob: float,
                    rotate_prob: float, exposure_jitter: float = 0.0) -> dict[str, np.ndarray]:
    from defectray.synthesis import synthesize_batch
    from defectray.synthesis.augment import vary_exposure

    src = _cached_get(sources)
    images = batch["image"]
    size = images.shape[1]
    damaged, clean = np.empty_like(images), np.empty_like(images)
    masks = np.zeros(images.shape[:3], np.float32)
    # One RNG per row, seeded by (seed, epoch, position): the draw does not depend on how rows fall into blocks.
    for i, (e, p) in enumerate(zip(batch["epoch"].tolist(), batch["position"].tolist())):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, e, p]))
        row_src = src
        if isinstance(src.foreground, np.ndarray):  # a user ROI: the window under this row's training view
            y, x = (int(v) for v in batch["crop"][i])
            row_src = sources_for_view(src, y, x, size)
        view = images[i : i + 1]
        if exposure_jitter > 0:  # from a stream of its own: the row's view and defect are drawn as without it
            view = vary_exposure(view, np.random.default_rng(np.random.SeedSequence([seed, 3, e, p])), exposure_jitter)
        d, c, m = synthesize_batch(view, method, rng, row_src, anomaly_prob, rotate_prob)
        damaged[i], clean[i], masks[i] = d[0], c[0], m[0]
    return {"epoch": batch["epoch"], "position": batch["position"], "index": batch["index"],
            "damaged": damaged, "clean": clean, "mask": masks}


def build_dataset(train_paths: list[str], config: Config, sources, global_batch: int, epochs: int, resume=None):
    """The streaming training dataset: epochs x rows_per_epoch rows of ready (damaged, clean, mask)."""
    import ray

    n = len(train_paths)
    rows_per_epoch = steps_per_epoch_for(n, global_batch) * global_batch
    total = rows_per_epoch * epochs
    # Blocks: small enough that the first batches reach the trainer after one block's work (not one epoch's)
    # and a block's output stays ~64 MiB; few enough (~500) that Ray Data's scheduling loop, whose cost grows
    # with the blocks queued, stays cheap (BENCHMARKS.md "Training pipeline").
    row_bytes = view_size(config)**2 * (2 * config.channels + 4)  # damaged + clean uint8, float32 mask
    rows_per_block = max(4 * config.batch_size, min(math.ceil(total / 500), BLOCK_BYTES // row_bytes))
    paths_box = [ray.put(list(train_paths))]
    sources_box = [ray.put(sources)]
    # The ids go into the object store from here, not through ray.data.range: its ~1,000 read tasks (one per
    # block) ran one at a time on the CPU left to Ray Data and held back every synthesis task for the first
    # minute of a 2-core run (BENCHMARKS.md "Training pipeline").
    import pyarrow as pa

    ids = np.arange(total, dtype=np.int64)
    ds = ray.data.from_arrow([pa.table({"id": ids[i:i + rows_per_block]}) for i in range(0, total, rows_per_block)])
    ds = ds.map_batches(
        read_stage, batch_size=config.batch_size,
        fn_kwargs=dict(paths=paths_box, rows_per_epoch=rows_per_epoch, seed=config.seed, config=config,
                       resume=resume),
    )
    ds = ds.map_batches(
        synthesis_stage, batch_size=config.batch_size,
        fn_kwargs=dict(sources=sources_box, method=config.synthesis, seed=config.seed,
                       anomaly_prob=config.anomaly_prob, rotate_prob=config.rotate_prob,
                       exposure_jitter=config.exposure_jitter),
    )
    from defectray.pacing import pace_scheduling_loop

    pace_scheduling_loop(ds)
    return ds, rows_per_epoch


def _data_config(use_gpu: bool):
    """Ray Train's DataConfig for the training stream. On CPU-only training the synthesis tasks and the
    trainers share the same cores, so the stream may only run ~RUN_AHEAD_BLOCKS blocks ahead: unbounded, it
    synthesised ~17,000 rows (1.7 GiB) in its first minute while the trainer had consumed a few hundred, and
    that minute was the trainer's. On GPU workers the CPUs are otherwise idle: no limit."""
    import ray.train

    if use_gpu:
        return ray.train.DataConfig()
    from ray.data import ExecutionOptions, ExecutionResources

    budget = RUN_AHEAD_BLOCKS * BLOCK_BYTES
    return ray.train.DataConfig(execution_options=ExecutionOptions(
        resource_limits=ExecutionResources.for_limits(object_store_memory=budget)))


# ---- the training loop (one per Ray Train worker) ---------------------------------------------------------------


def _batch_tensors(batch: dict) -> tuple:
    import torch

    def to_float(x: torch.Tensor) -> torch.Tensor:
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.float().div_(255.0)

    return to_float(batch["damaged"]), to_float(batch["clean"]), batch["mask"].float()


def _validation_data(uri: str) -> list[tuple[str, np.ndarray, np.ndarray | None, bool]]:
    """(path, image, ground-truth mask or None, is_anomalous) for the test split of an MVTec-layout folder."""
    items = io.mvtec_test_items(uri)
    out = []
    for item in items:
        img = io.load_image(item.image)
        mask = None
        if item.mask is not None:
            mask = io.load_image(item.mask, channels=1) > 127
        out.append((item.image, img, mask, item.is_anomalous))
    return out


def _validate(net, config: Config, data, device) -> dict[str, float | None]:
    from defectray.metrics import PixelMetrics, roc_auc
    from defectray.models import build_model
    from defectray.models.modelfile import Detector, _inference_state

    inference = build_model(config, feature_extractor=False)
    inference.load_state_dict(_inference_state(net))
    detector = Detector(inference, config, "validation", device=device)
    pixel = PixelMetrics(resolution_bits=10)
    scores, labels = [], []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        s, maps = detector.predict([img for _, img, _, _ in chunk])
        scores.extend(s.tolist())
        labels.extend(int(a) for _, _, _, a in chunk)
        for (_, _, mask, anomalous), amap in zip(chunk, maps):
            if mask is not None or not anomalous:
                pixel.update(amap, mask)
    image_auroc = roc_auc(labels, scores) if 0 < sum(labels) < len(labels) else None
    net.train()
    return {"image_auroc": image_auroc, "pixel_auroc": pixel.compute()["pixel_auroc"]}


def _fmt_minutes(m: float) -> str:
    return f"{m:.1f} min" if m < 120 else f"{m / 60:.1f} h"


def _train_loop(loop: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from defectray.models import build_model
    from defectray.models.modelfile import calibrate, save_model
    from defectray.models.train_step import TrainStep, budget_progress

    config = Config.from_dict(loop["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, min(loop["torch_threads"], os.cpu_count() or 1)))
    device = ray.train.torch.get_device()
    distributed = dist.is_available() and dist.is_initialized() and world > 1

    # Seeded before the model is built: TrainStep seeds too, but only after this model exists, and a Ray
    # worker's torch generator starts wherever that process left it (runs of one seed got other weights).
    torch.manual_seed(config.seed)
    model = ray.train.torch.prepare_model(build_model(config))
    step = TrainStep(config, device=device, model=model)
    if rank == 0:
        print(f"[defectray train] {device.type}, {torch.get_num_threads()} torch thread(s), "
              f"{'bf16 autocast' if step.bf16 else 'float32'}", flush=True)
    epochs, steps_per_epoch = config.epochs, loop["steps_per_epoch"]
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
            with open(os.path.join(d, META_FILE)) as f:
                meta = json.load(f)
        step.load_state_dict(state)
        start_epoch = int(meta["epoch"])
        if rank == 0:
            print(f"[defectray train] resuming from epoch {start_epoch}, step {step.step}", flush=True)
    hooks = loop.get("hooks") or {}
    ray.get(loop["resume"].set.remote(start_epoch))

    # The time budget runs from the train() call, not from this worker's (re)start; rank 0's clock decides.
    deadline = loop["deadline"]
    validation = _validation_data(loop["validation"]) if loop["validation"] and rank == 0 else None

    def minutes_used() -> float | None:
        if deadline is None:
            return None
        used = torch.tensor([config.max_minutes - (deadline - time.time()) / 60], dtype=torch.float64, device=device)
        if distributed:  # clocks differ: rank 0 decides for everyone
            dist.broadcast(used, 0)
        return used.item()

    def budget_reached(epochs_done: float) -> str | None:
        """Also moves the lr schedule along: both read the same budgets (see budget_progress)."""
        minutes = minutes_used()
        step.set_progress(budget_progress(config, epochs_done, step.step, minutes))
        if config.max_steps is not None and step.step >= config.max_steps:
            return "max_steps"  # the step count is the same on every worker
        if minutes is not None and minutes >= config.max_minutes:
            return "max_minutes"
        return None

    batches = iter(ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=config.batch_size))
    epoch, last = start_epoch, {}
    stopped_by = budget_reached(epoch) if epoch < epochs else None
    epoch_seconds: list[float] = []
    while epoch < epochs and stopped_by is None:
        t0, samples, sums, n_steps = time.monotonic(), 0, {}, 0
        for _ in range(steps_per_epoch):
            try:
                batch = next(batches)
            except StopIteration:
                raise RuntimeError(f"the data stream ended early in epoch {epoch} (rank {rank})") from None
            damaged, clean, mask = _batch_tensors(batch)
            losses = step(damaged, clean, mask)
            if "probe" in hooks and n_steps == 0 and epoch == start_epoch:
                _write_probe(hooks["probe"], f"rank{rank}_from{start_epoch}", step, batch)
            samples += len(damaged)
            n_steps += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            stopped_by = budget_reached(epoch + n_steps / steps_per_epoch)
            if stopped_by:
                break
        if n_steps == steps_per_epoch:
            epoch += 1
        seconds = time.monotonic() - t0
        totals = torch.tensor([samples, *[sums[k] for k in sorted(sums)]], dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(totals)
        global_samples = totals[0].item()
        means = {k: totals[1 + i].item() / max(1, n_steps * world) for i, k in enumerate(sorted(sums))}
        rate = global_samples / max(seconds, 1e-9)
        if n_steps == steps_per_epoch:
            epoch_seconds.append(seconds)
        metrics = {"epoch": epoch, "step": step.step, "samples_per_s": rate, "lr": step.lr, **means}
        if validation is not None:
            metrics.update(_validate(step.net, config, validation, device))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint_obj = None
            if rank == 0:
                torch.save(step.state_dict(), os.path.join(tmp, STATE_FILE))
                with open(os.path.join(tmp, META_FILE), "w") as f:
                    json.dump({"epoch": epoch, "step": step.step, "config": config.to_dict()}, f)
                checkpoint_obj = ray.train.Checkpoint.from_directory(tmp)
                print(_progress_line(metrics, epochs, config, epoch_seconds, steps_per_epoch, deadline), flush=True)
            ray.train.report(metrics, checkpoint=checkpoint_obj)
        last = metrics
        fail = hooks.get("fail_once")
        if fail and rank == fail["rank"] and epoch == fail["epoch"] and not os.path.exists(fail["marker"]):
            # Test hook: die during the next epoch, once the controller has registered the checkpoint
            # (it collects reports every few seconds).
            time.sleep(fail.get("delay_s", 5.0))
            with open(fail["marker"], "w") as f:
                f.write(f"rank {rank} exited during epoch {epoch}\n")
            os._exit(1)  # a lost worker, as a killed process or a failed node looks to Ray Train

    if stopped_by is None:
        stopped_by = "epochs"
    # The end: rank 0 calibrates on the held-out normal images and writes the model; every worker reports
    # once more (the same number of reports on every worker).
    final = {"epoch": epoch, "step": step.step, "stopped_by": stopped_by, "done": True, "resumed_from": start_epoch,
             **{k: v for k, v in last.items() if k not in ("epoch", "step")}}
    # Ray Train keeps the metrics of the latest checkpoint as the result, so this report carries one too.
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_obj = None
        if rank == 0:
            held = _load_many(loop["held_out"], config) if loop["held_out"] else []
            calibration = calibrate(step.net, config, held) if held else None
            final["model_id"] = save_model(loop["model_uri"], step.net, config, calibration)
            if calibration:
                final["threshold"] = calibration["threshold"]
            torch.save(step.state_dict(), os.path.join(tmp, STATE_FILE))
            with open(os.path.join(tmp, META_FILE), "w") as f:
                json.dump({"epoch": epoch, "step": step.step, "config": config.to_dict(), "final": final}, f)
            checkpoint_obj = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(final, checkpoint=checkpoint_obj)


def _progress_line(metrics: dict, epochs: int, config: Config, epoch_seconds: list[float], steps_per_epoch: int,
                   deadline: float | None) -> str:
    losses = " ".join(f"{k} {metrics[k]:.4f}" for k in LOSS_KEYS if k in metrics)
    val = "".join(f" {k} {metrics[k]:.3f}" for k in ("image_auroc", "pixel_auroc") if metrics.get(k) is not None)
    eta_text = ""
    if epoch_seconds:
        per_epoch = float(np.mean(epoch_seconds[-5:]))
        remaining = [(epochs - metrics["epoch"]) * per_epoch]
        if config.max_steps is not None:
            remaining.append(max(0, config.max_steps - metrics["step"]) / steps_per_epoch * per_epoch)
        if deadline is not None:
            remaining.append(max(0.0, deadline - time.time()))
        eta_text = f" eta {_fmt_minutes(min(remaining) / 60)}"
    return (f"[defectray train] epoch {metrics['epoch']}/{epochs} step {metrics['step']} {losses}{val} "
            f"lr {metrics['lr']:.2g} {metrics['samples_per_s']:.1f} samples/s{eta_text}")


def _write_probe(probe_dir: str, name: str, step, batch: dict) -> None:
    """Test hook: what this worker trained on in its first step, and a digest of its parameters after it
    (parameters, not buffers: DDP syncs gradients, while BatchNorm statistics stay per worker until the next
    forward broadcasts rank 0's)."""
    digest = hashlib.sha256()
    for param_name, p in sorted(step.net.named_parameters()):
        digest.update(param_name.encode())
        digest.update(p.detach().cpu().float().numpy().tobytes())
    rows = [[int(e), int(p)] for e, p in zip(batch["epoch"].tolist(), batch["position"].tolist())]
    with open(os.path.join(probe_dir, f"{name}.json"), "w") as f:
        json.dump({"rows": rows, "weights": digest.hexdigest()}, f)


# ---- the driver ------------------------------------------------------------------------------------------------


def default_run_name(data: str, out: str) -> str:
    """Same data + same output = same run name, so re-running the same command resumes it."""
    key = json.dumps([data.rstrip("/"), out.rstrip("/")])
    return "defectray-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def default_storage_path(out: str) -> str:
    """Checkpoints next to the model: ``<out>/checkpoints`` (or beside a ``*.safetensors`` out)."""
    base = out if not out.endswith(".safetensors") else out.rsplit("/", 1)[0] if "/" in out else "."
    return io.join(base, "checkpoints")


def _storage_args(storage_path: str) -> dict:
    """RunConfig storage arguments. Object stores go through the same fsspec filesystem as all other I/O,
    so AWS_ENDPOINT_URL (MinIO, Ceph, moto) is honoured exactly as when reading the data."""
    if io.protocol_of(storage_path) in ("file", "local"):
        path = os.path.abspath(storage_path.split("://", 1)[-1])
        os.makedirs(path, exist_ok=True)
        return {"storage_path": path}
    import pyarrow.fs

    fs, path = io.url_to_fs(storage_path)
    return {"storage_path": path, "storage_filesystem": pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))}


def _check_resumable(storage_path: str, run_name: str, config: Config) -> None:
    """Refuse to resume a run whose checkpoints were made with a different model or data configuration."""
    fs, root = io.url_to_fs(io.join(storage_path, run_name))
    try:
        metas = [p for p in fs.glob(f"{root}/checkpoint_*/{META_FILE}")]
    except FileNotFoundError:
        return
    if not metas:
        return
    with fs.open(sorted(metas)[-1], "rb") as f:
        saved = json.loads(f.read().decode("utf-8"))["config"]
    now = config.to_dict()
    differ = sorted(k for k in now if k not in BUDGET_FIELDS and saved.get(k) != now[k])
    if differ:
        raise ValueError(f"run {run_name!r} in {storage_path} was started with a different config "
                         f"({', '.join(differ)}); pass another --name to start a new run")


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def plan_resources(workers: int, use_gpu: bool, cpus_per_worker: float | None, cluster_cpus: float) -> float:
    """CPUs per training worker, leaving at least one CPU for the Ray Data synthesis tasks (else they could
    never be scheduled beside the trainers and the run would wait forever)."""
    if cpus_per_worker is not None:
        needed = workers * cpus_per_worker + 1
        if needed > cluster_cpus:
            raise ValueError(f"{workers} workers x {cpus_per_worker} CPUs + 1 CPU for data synthesis = {needed} "
                             f"CPUs, but the cluster has {cluster_cpus:g}")
        return cpus_per_worker
    if use_gpu:
        return 1.0 if workers + 1 <= cluster_cpus else max(0.1, (cluster_cpus - 1) / workers)
    if cluster_cpus - 1 < 0.1 * workers:
        raise ValueError(f"{workers} training workers need at least {0.1 * workers + 1:g} CPUs (one for data "
                         f"synthesis), but the cluster has {cluster_cpus:g}")
    return min(float(max(1, int((cluster_cpus - 1) // workers))), (cluster_cpus - 1) / workers)


def train(
    config: Config,
    data: str,
    out: str,
    workers: int = 1,
    use_gpu: bool | None = None,
    storage_path: str | None = None,
    run_name: str | None = None,
    validation: str | None = None,
    cpus_per_worker: float | None = None,
    max_failures: int = 3,
    _hooks: dict | None = None,
) -> TrainResult:
    """Train a model on the normal images at ``data`` and write it to ``out`` (folder/prefix or
    ``*.safetensors`` URI). Connects to Ray (``RAY_ADDRESS`` or a local one) when not yet initialised."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    started = time.monotonic()
    deadline = time.time() + config.max_minutes * 60 if config.max_minutes else None
    if workers < 1:
        raise ValueError("workers must be at least 1")
    view_size(config)  # a bad train_crop fails here, not in the data tasks
    from defectray.synthesis import get_synthesizer

    get_synthesizer(config.synthesis)  # so does an unknown method or a bad mix
    # Ray workers run in their own working directory: a relative local path must mean the caller's.
    data, out = _absolute(data), _absolute(out)
    validation = _absolute(validation) if validation else validation
    storage_path = _absolute(storage_path) if storage_path else storage_path
    paths = io.training_images(data)
    train_paths, held_out = split_holdout(paths, config.val_fraction, config.seed)
    if validation:
        io.mvtec_test_items(validation)  # fail now, not after the first epoch
    run_name = run_name or default_run_name(data, out)
    storage_path = storage_path or default_storage_path(out)
    _check_resumable(storage_path, run_name, config)

    if not ray.is_initialized():
        ray.init()
    from defectray.score import autoscaler_max

    cluster = ray.cluster_resources()
    if use_gpu is None:  # GPU nodes may be scaled to zero: count those the autoscaler can add
        use_gpu = max(cluster.get("GPU", 0), autoscaler_max("GPU")) >= workers
    # Explicit or GPU sizing may count on nodes the autoscaler has yet to add; the CPU-only default
    # divides the CPUs present (a share of the autoscaler's total could exceed any single node).
    cluster_cpus = cluster.get("CPU", 0)
    if use_gpu or cpus_per_worker is not None:
        cluster_cpus = max(cluster_cpus, autoscaler_max("CPU"))
    cpus = plan_resources(workers, use_gpu, cpus_per_worker, cluster_cpus)

    global_batch = workers * config.batch_size
    steps_per_epoch = steps_per_epoch_for(len(train_paths), global_batch)
    data_epochs = config.epochs
    if config.max_steps is not None:
        data_epochs = min(data_epochs, math.ceil(config.max_steps / steps_per_epoch))
    sources = build_sources(config, train_paths)
    # On the driver's node (the head, under `ray job submit`), which lives as long as the run: anywhere else, a
    # lost worker node could take the resume point with it and fail the restart that should recover the run.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    resume = ray.remote(num_cpus=0, scheduling_strategy=driver_node)(ResumePoint).remote()
    dataset, rows_per_epoch = build_dataset(train_paths, config, sources, global_batch, max(1, data_epochs), resume)
    print(f"[defectray train] {len(train_paths)} training images ({len(held_out)} held out for calibration), "
          f"{workers} worker(s) x {cpus:g} CPU{' + 1 GPU' if use_gpu else ''}, {steps_per_epoch} steps/epoch "
          f"of {global_batch}, run {run_name!r} in {storage_path}", flush=True)

    loop = {
        "config": config.to_dict(),
        "steps_per_epoch": steps_per_epoch,
        "deadline": deadline,
        # CPU training: the CPU kept for Ray Data is nearly idle (synthesis needs < 0.1 core per worker,
        # BENCHMARKS.md "Training pipeline"), so the workers' torch threads share it: on 2 cores one worker
        # runs 2 threads (a bare TrainStep: 1.74 -> 0.95 s/step; through Ray the gain was not seen yet, see
        # BENCHMARKS.md "Accuracy"). The loop caps this at the worker node's own core count.
        "torch_threads": max(1, int(cpus)) if use_gpu or cpus_per_worker is not None
        else max(1, int(cluster_cpus // workers)),
        "resume": resume,
        "held_out": held_out,
        "validation": validation,
        "model_uri": model_uri_for(out),
        "hooks": _hooks or {},
    }
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(
            name=run_name,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            **_storage_args(storage_path),
        ),
        datasets={"train": dataset},
        dataset_config=_data_config(use_gpu),
    )
    try:
        result = trainer.fit()
        if result.error:
            raise result.error
    except Exception as error:
        message = _user_error_in(error)
        if message:
            raise BadTrainingImage(message) from error
        raise
    finally:
        ray.kill(resume)
    m = result.metrics or {}
    if "model_id" not in m:
        raise RuntimeError(f"training ended without writing a model (last metrics: {m})")
    train_result = TrainResult(
        model_uri=model_uri_for(out),
        model_id=m["model_id"],
        run_name=run_name,
        storage_path=storage_path,
        epochs=int(m["epoch"]),
        steps=int(m["step"]),
        minutes=(time.monotonic() - started) / 60,
        samples_per_s=float(m.get("samples_per_s", 0.0)),
        stopped_by=m["stopped_by"],
        losses={k: float(m[k]) for k in LOSS_KEYS if k in m},
        validation={k: m.get(k) for k in ("image_auroc", "pixel_auroc")} if validation else None,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        resumed_from=int(m.get("resumed_from", 0)),
    )
    if not out.endswith(".safetensors"):
        io.write_bytes(io.join(out, SUMMARY_FILENAME), json.dumps(train_result.to_dict(), indent=2).encode())
    print(f"[defectray train] {train_result.summary()}", flush=True)
    return train_result
