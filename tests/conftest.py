"""Shared fixtures: a real moto S3 server on 127.0.0.1, one local Ray per test module, tiny data sets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MAGNETIC_TILE = SHARED / "datasets" / "magnetic-tile"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server; code reaches it through the standard AWS_* variables, as users' code does."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-do-not-log",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    """Factory: make a fresh bucket, return its name."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    counter = iter(range(10**6))

    def make(prefix: str = "bucket") -> str:
        name = f"{prefix}-{next(counter)}-{os.getpid()}"
        fs.mkdir(name)
        return name

    return make


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """One local Ray per test module (the AWS variables are set first so its workers inherit them)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": a fresh cluster even when another Ray runs on this machine (never join it).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
    yield ray
    ray.shutdown()


def with_trained_batchnorm(model, input_shape: tuple[int, ...], bias: float = 0.2, passes: int = 3):
    """``model`` in eval mode after its BNs got random affine parameters and running statistics from ``passes``
    train-mode forwards of random ``input_shape`` batches: BNs that folding or a file round trip could get wrong."""
    import torch

    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-bias, bias)
        for _ in range(passes):
            model(torch.rand(*input_shape))
    return model.eval()


def tile_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A normal 'part': smooth shading plus fine texture, like a photographed tile."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 110 + 30 * np.sin(xx / w * np.pi) * np.cos(yy / h * np.pi / 2)
    tex = cv2.GaussianBlur(rng.normal(0, 18, (h, w)).astype(np.float32), (0, 0), 1.2)
    return np.clip(base + tex, 0, 255).astype(np.uint8)


def defect(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark crack-like scratch or blob, and its 0/255 mask."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(mask, p1, p2, 255, max(2, h // 24))
    else:
        c = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)))
        cv2.circle(mask, c, max(3, h // 10), 255, -1)
    out = img.copy()
    out[mask > 0] = (out[mask > 0] * 0.3).astype(np.uint8)
    return out, mask


def make_mvtec(root: Path, n_train: int = 24, n_good: int = 6, n_bad: int = 6, size=(64, 80), seed: int = 0) -> Path:
    """A tiny MVTec-layout category: train/good, test/good, test/scratch + ground_truth masks."""
    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), tile_image(rng, h, w))
    for i in range(n_good):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), tile_image(rng, h, w))
    for i in range(n_bad):
        img, mask = defect(rng, tile_image(rng, h, w))
        cv2.imwrite(str(root / "test/scratch" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth/scratch" / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(scope="session")
def tiny_mvtec(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("tiny_mvtec"))
