"""A node dies in the middle of a job, on a multi-node Ray cluster simulated on this machine.

`ray.cluster_utils.Cluster` starts a head (no CPUs: like cluster.yaml's head, it runs no tasks) and two
worker nodes of one CPU each, every node with its own raylet and object store. While a job runs, the test
kills (no graceful drain: a reclaimed spot instance) the worker node that hosts part of the job, then adds a
fresh node, as the autoscaler does when it replaces a lost node. Scoring must still end with exactly one row
per image; training must resume from its last checkpoint and finish with the full step count.

Each test gets its own cluster; any Ray already running in this process is shut down first and none is left
behind. The data and models are tiny (the machine has two shared cores): the point is the fault, not speed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectray import io

# The GCS declares a node dead after health_check_failure_threshold missed checks; Ray's defaults take ~30 s.
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                   "health_check_timeout_ms": 1000}
JOB_TIMEOUT_S = 150


@pytest.fixture
def cluster():
    """Head (0 CPUs) + two 1-CPU worker nodes; the test process is the driver, connected to the head."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "_system_config": FAST_NODE_DEATH})
    try:
        for _ in range(2):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _wait_for(condition, what: str, timeout_s: float, job: threading.Thread | None = None):
    """Poll ``condition`` until it returns something truthy; fail if the job thread ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if job is not None and not job.is_alive():
            pytest.fail(f"the job ended before {what}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _node_hosting(cluster, class_name: str):
    """The worker node (cluster_utils Node) where a live actor whose class name contains ``class_name`` runs."""
    from ray._private import state

    for info in state.actors().values():
        if class_name in (info.get("ActorClassName") or "") and info.get("State") == "ALIVE":
            node_id = info["Address"]["NodeID"]
            for node in cluster.worker_nodes:
                if node.node_id == node_id:
                    return node
    return None


def _kill_and_replace(cluster, node) -> None:
    """A node lost without warning, then a new one of the same size (what the autoscaler does)."""
    import ray

    cluster.remove_node(node, allow_graceful=False)
    _wait_for(lambda: all(n["NodeID"] != node.node_id for n in ray.nodes() if n["Alive"]),
              "the GCS to declare the node dead", 60)
    cluster.add_node(num_cpus=1)


class _Job(threading.Thread):
    """Runs ``fn`` in the background, keeping its result or exception for the test to check."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # reported by the test, in its own thread
            self.error = e

    def outcome(self):
        self.join(JOB_TIMEOUT_S)
        assert not self.is_alive(), f"the job did not finish within {JOB_TIMEOUT_S} s of the node loss"
        if self.error is not None:
            raise self.error
        return self.result


# ---- scoring ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from defectray.config import get_config
    from defectray.models import build_model
    from defectray.models.modelfile import save_model

    torch.manual_seed(0)
    cfg = get_config("cpu-small", image_size=32, recon_base_width=4, seg_base_width=4)
    path = str(tmp_path_factory.mktemp("model") / "tiny.safetensors")
    save_model(path, build_model(cfg), cfg, calibration={"threshold": 0.5})
    return path


def _archive(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"line{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), (rng.random((48, 64)) * 255).astype(np.uint8))
    return io.list_images(str(root))


def test_scoring_survives_a_lost_node_with_one_row_per_image(cluster, tiny_model, tmp_path):
    from defectray.score import FILE_PREFIX, read_results, score_archive

    images = _archive(tmp_path / "archive", 160)
    output = tmp_path / "scores"
    # Two actors from the start, one per 1-CPU node: whichever node dies takes a working actor with it.
    job = _Job(lambda: score_archive(tiny_model, str(tmp_path / "archive"), str(output), batch_size=4,
                                     actors=(2, 2), progress=False))
    job.start()

    def masks_written() -> int:
        return len(list((output / "masks").rglob("*.png")))

    # Masks are written batch by batch by the actors (the Parquet files come later, from the write stage).
    _wait_for(lambda: masks_written() >= 8, "the first scored batches", 120, job)
    victim = _wait_for(lambda: _node_hosting(cluster, "ScoreActor"), "a scoring actor on a worker node", 30, job)
    before = masks_written()
    _kill_and_replace(cluster, victim)
    summary = job.outcome()

    assert before < len(images)  # the node died part-way through the job
    assert not list(output.glob(f"{FILE_PREFIX}*.parquet.*"))  # no stray temporary files
    assert (summary["files"], summary["ok"], summary["errors"]) == (len(images), len(images), 0)
    rows = read_results(str(output), latest=False).to_pylist()  # every row written, duplicates included
    assert sorted(r["image_path"] for r in rows) == images
    assert all(r["status"] == "ok" and r["score"] is not None for r in rows)
    for r in rows[:: len(rows) // 8]:
        assert io.load_image(r["mask_path"], channels=1).shape == (48, 64)


# ---- training -----------------------------------------------------------------------------------------------


def test_training_resumes_from_its_last_checkpoint_after_a_lost_node(cluster, tmp_path):
    from conftest import make_mvtec

    from defectray.config import get_config
    from defectray.train import split_holdout, steps_per_epoch_for, train

    data = make_mvtec(tmp_path / "cat", n_train=20, n_good=1, n_bad=1, size=(40, 48))
    config = get_config("cpu-small", image_size=32, recon_base_width=4, recon_depth=2, seg_base_width=4,
                        seg_depth=2, kernel_sizes=[7, 5], batch_size=4, max_minutes=None, val_fraction=0.2,
                        feature_refresh_every=2, epochs=4)
    storage, probe = tmp_path / "runs", tmp_path / "probe"
    probe.mkdir()
    # One training worker on one CPU: the other worker node runs the synthesis stream.
    job = _Job(lambda: train(config, str(data), str(tmp_path / "model"), workers=1, use_gpu=False,
                             cpus_per_worker=1, storage_path=str(storage), run_name="faults",
                             _hooks={"probe": str(probe)}))
    job.start()

    def registered_checkpoint() -> bool:
        """The controller has recorded a finished checkpoint (not just a folder being uploaded)."""
        for snapshot in (storage / "faults").glob("checkpoint_manager_snapshot*.json"):
            try:
                if "checkpoint_" in snapshot.read_text():
                    return True
            except OSError:
                pass
        return False

    _wait_for(registered_checkpoint, "the first registered checkpoint", 150, job)
    victim = _wait_for(lambda: _node_hosting(cluster, "RayTrainWorker"), "the training worker's node", 30, job)
    _kill_and_replace(cluster, victim)
    result = job.outcome()


    n_train = len(split_holdout(io.training_images(str(data)), config.val_fraction, config.seed)[0])
    spe = steps_per_epoch_for(n_train, config.batch_size)
    assert (result.epochs, result.steps, result.stopped_by) == (4, 4 * spe, "epochs")
    assert 1 <= result.resumed_from < 4  # restarted from a checkpoint, not from scratch
    # The restarted worker's first batch came from the resumed epoch: finished epochs were not replayed.
    restarted = json.loads((probe / f"rank0_from{result.resumed_from}.json").read_text())
    assert {e for e, _ in restarted["rows"]} == {result.resumed_from}
    from defectray import load_model

    assert load_model(result.model_uri).model_id == result.model_id


# ---- asking the autoscaler for the right nodes ------------------------------------------------------------------


def test_scoring_asks_for_gpu_actors_when_gpu_nodes_are_scaled_to_zero(tiny_model, tmp_path, monkeypatch):
    """With cluster.yaml's ceiling (4 GPU nodes, none running), the pool is 1..4 actors of one GPU each:
    the pending GPU actors are what makes the autoscaler start GPU nodes."""
    import ray
    from ray._private import state

    from defectray.score import autoscaler_max, score_archive

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setattr(state.state, "get_max_resources_from_cluster_config", lambda: {"GPU": 4, "CPU": 160})
    assert (autoscaler_max("GPU"), autoscaler_max("CPU"), autoscaler_max("TPU")) == (4, 160, 0)

    asked = {}

    class Stop(Exception):
        pass

    def map_batches(self, fn, **kwargs):
        if getattr(fn, "__name__", "") == "ScoreActor":
            compute = kwargs["compute"]
            asked.update(num_gpus=kwargs.get("num_gpus"), min=compute.min_size, max=compute.max_size)
            raise Stop
        return original(self, fn, **kwargs)

    original = ray.data.Dataset.map_batches
    monkeypatch.setattr(ray.data.Dataset, "map_batches", map_batches)
    _archive(tmp_path / "archive", 4)
    with pytest.raises(Stop):
        score_archive(tiny_model, str(tmp_path / "archive"), str(tmp_path / "out"), progress=False)
    assert not ray.is_initialized()  # the embedded Ray it started is gone
    assert asked == {"num_gpus": 1, "min": 1, "max": 4}

    def no_config():
        raise RuntimeError("no autoscaler here")

    monkeypatch.setattr(state.state, "get_max_resources_from_cluster_config", no_config)
    assert autoscaler_max("GPU") == 0


def test_training_asks_for_gpu_workers_when_gpu_nodes_are_scaled_to_zero(tiny_mvtec, tmp_path, monkeypatch):
    import ray
    import ray.train.torch
    from ray._private import state

    from defectray.config import get_config
    from defectray.train import train

    class Stop(Exception):
        pass

    asked = {}

    def trainer(*args, scaling_config, **kwargs):
        asked.update(workers=scaling_config.num_workers, gpu=scaling_config.use_gpu,
                     cpus=scaling_config.resources_per_worker["CPU"])
        raise Stop

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", trainer)
    monkeypatch.setattr(state.state, "get_max_resources_from_cluster_config", lambda: {"GPU": 4, "CPU": 160})
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the head: no GPU node running yet
    try:
        config = get_config("cpu-small", image_size=32, epochs=1, max_minutes=None)
        with pytest.raises(Stop):
            train(config, str(tiny_mvtec), str(tmp_path / "m"), workers=4)
        assert asked == {"workers": 4, "gpu": True, "cpus": 1.0}
        with pytest.raises(Stop):  # more CPUs than the running nodes have: the autoscaler will add them
            train(config, str(tiny_mvtec), str(tmp_path / "m"), workers=2, use_gpu=False, cpus_per_worker=8)
        assert asked == {"workers": 2, "gpu": False, "cpus": 8.0}
    finally:
        ray.shutdown()
