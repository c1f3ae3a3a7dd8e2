"""The CUDA paths of the core (bf16 autocast in training and scoring, device moves, model files on a GPU).

Skipped where there is no GPU (CI has none); run on a GPU box with ``python -m pytest tests/test_cuda.py``.
Each check compares the GPU against the CPU float32 result of the same weights and inputs.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from defectray.config import get_config
from defectray.models import build_model
from defectray.models.modelfile import calibrate, load_model, save_model
from defectray.models.scoring import anomaly_maps
from defectray.models.train_step import TrainStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_config(**kw):
    base = dict(image_size=64, channels=3, recon_base_width=16, recon_depth=4, seg_base_width=16, seg_depth=4,
                batch_size=4, lr=1e-3, epochs=10)
    base.update(kw)
    return get_config("cpu-small", **base)


def batch(n: int, size: int, channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, channels, size, size, generator=g)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 4: size // 2, size // 3: size // 2] = 1.0
    damaged = clean * (1 - mask) + mask * torch.rand(n, channels, size, size, generator=g)
    return damaged, clean, mask


def test_train_step_on_cuda_matches_cpu_and_learns():
    cfg = small_config()
    cpu, gpu = TrainStep(cfg, "cpu"), TrainStep(cfg, "cuda")
    gpu.net.load_state_dict(cpu.net.state_dict())
    data = batch(4, cfg.image_size, cfg.channels)
    first_cpu, first_gpu = cpu(*data), gpu(*data)
    for key in ("l2", "ssim", "focal"):  # bf16 forward vs float32: same loss to bf16 precision
        assert first_gpu[key] == pytest.approx(first_cpu[key], rel=0.05, abs=1e-3), key
    assert next(gpu.net.parameters()).device.type == "cuda"
    for _ in range(30):
        last = gpu(*data)
    assert all(np.isfinite(v) for v in last.values())
    assert last["loss"] < first_gpu["loss"]  # it learns the one batch it sees


def test_anomaly_maps_on_cuda_match_cpu():
    torch.manual_seed(0)
    model = build_model(small_config(), feature_extractor=False).eval()
    x = batch(2, 64, 3)[0]
    on_cpu = anomaly_maps(model, x)
    on_gpu = anomaly_maps(copy.deepcopy(model).cuda(), x.cuda()).float().cpu()
    assert on_gpu.shape == on_cpu.shape
    assert (on_gpu - on_cpu).abs().max().item() < 0.05  # probabilities, bf16 autocast on the GPU


def test_reparameterized_model_on_cuda():
    torch.manual_seed(0)
    model = build_model(small_config(), feature_extractor=False).cuda().eval()
    x = batch(2, 64, 3)[0].cuda()
    with torch.no_grad():
        before = torch.softmax(model(x)[1], 1)
        after = torch.softmax(copy.deepcopy(model).reparameterize()(x)[1], 1)
    assert (before - after).abs().max().item() < 1e-3


def test_model_file_loads_onto_cuda_and_predicts_like_cpu(tmp_path):
    cfg = small_config()
    torch.manual_seed(0)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    images = [(rng.random((50 + 7 * i, 70, 3)) * 255).astype(np.uint8) for i in range(3)]
    uri = str(tmp_path / "model.safetensors")
    save_model(uri, model, cfg, calibrate(model, cfg, images))
    on_cpu, on_gpu = load_model(uri, device="cpu"), load_model(uri, device="cuda")
    scores_cpu, maps_cpu = on_cpu.predict(images)
    scores_gpu, maps_gpu = on_gpu.predict(images)
    assert [m.shape for m in maps_gpu] == [m.shape for m in maps_cpu] == [im.shape[:2] for im in images]
    np.testing.assert_allclose(scores_gpu, scores_cpu, atol=0.05)
    assert on_gpu.threshold == on_cpu.threshold
