"""Where a cpu-small training step goes on CPU, and what the two cheaper forms of its costliest ops buy.

    python benchmarks/step_ops.py [--rounds 5] [--threads 2]

Same process, calls interleaved (benchmarks/models.py ``interleaved``), so load spikes hit both sides alike:

1. the large-kernel depthwise conv (forward + backward) at the shapes cpu-small trains: torch's conv2d
   backward against ``layers.depthwise_conv2d`` (FFT weight gradient, flipped-kernel input gradient);
2. SSIM loss + backward: a direct 11x11 Gaussian window (the earlier form, kept here as the baseline)
   against the separable form in ``losses.ssim``;
3. the whole cpu-small TrainStep with both earlier forms against both current ones;
4. the whole TrainStep of cpu-small variants that change the architecture, the losses or the precision
   (``--variants``);
5. GroupNorm (``norm="group"``) forward + backward on channels_last maps, bf16 (how cpu-small trains on CPUs with
   bf16) and float32 (elsewhere): torch's nn.GroupNorm against ``layers.GroupNorm2d`` (NCHW inside for bf16, and
   for float32 with one channel per group), and BatchNorm for scale.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from models import interleaved  # noqa: E402

from defectray.config import get_config  # noqa: E402
from defectray.models import layers, losses, train_step  # noqa: E402


def ssim_loss_direct(recon: torch.Tensor, clean: torch.Tensor, window_size: int = 11, sigma: float = 1.5):
    """The earlier SSIM loss: five separate blurs with the full 11x11 window."""
    a, b = recon.float(), clean.float()
    c = a.shape[1]
    x = torch.arange(window_size, dtype=a.dtype) - window_size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, window_size, window_size).contiguous()

    def blur(t):
        return F.conv2d(t, w, padding=window_size // 2, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return 1.0 - s.mean()


def depthwise_rows(rounds: int) -> list[dict]:
    rows = []
    # cpu-small at 128 px, batch 16: 15x15 on 32 channels at 64 px, 13x13 on 64 channels at 32 px
    for batch, channels, size, k in [(16, 32, 64, 15), (16, 64, 32, 13)]:
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(channels, 1, k, k, requires_grad=True)
        grad = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)

        def plain():
            F.conv2d(x, w, padding=k // 2, groups=channels).backward(grad)

        def ours():
            layers.depthwise_conv2d(x, w, k // 2).backward(grad)

        sec = interleaved({"plain": plain, "ours": ours}, 1, rounds)
        rows.append({"shape": [batch, channels, size, size], "kernel": k, "conv2d_ms": 1e3 * sec["plain"],
                     "depthwise_conv2d_ms": 1e3 * sec["ours"], "speedup": sec["plain"] / sec["ours"]})
    return rows


def group_norm_rows(rounds: int) -> list[dict]:
    rows = []
    # cpu-small's prediction-net levels at batch 8 (widths 16-128 at 128-16 px), then the reconstruction net's finest
    # (width 8: one channel per group, which GroupNorm2d runs in NCHW in float32 too)
    for dtype in (torch.bfloat16, torch.float32):
        for batch, channels, size in [(8, 16, 128), (8, 32, 64), (8, 64, 32), (8, 128, 16), (8, 8, 128)]:
            x0 = torch.randn(batch, channels, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
            norms = {"torch_group_norm": torch.nn.GroupNorm(8, channels),
                     "group_norm_2d": layers.GroupNorm2d(8, channels), "batch_norm": torch.nn.BatchNorm2d(channels)}

            def run(norm):
                x = x0.clone().requires_grad_()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    out = norm(x)
                out.float().sum().backward()

            sec = interleaved({k: functools.partial(run, m) for k, m in norms.items()}, 1, rounds)
            rows.append({"dtype": str(dtype).removeprefix("torch."), "shape": [batch, channels, size, size],
                         **{f"{k}_ms": 1e3 * v for k, v in sec.items()},
                         "speedup": sec["torch_group_norm"] / sec["group_norm_2d"]})
    return rows


def ssim_row(rounds: int) -> dict:
    a = torch.rand(16, 1, 128, 128).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.rand(16, 1, 128, 128)
    sec = interleaved({"direct": lambda: ssim_loss_direct(a, b).backward(),
                       "separable": lambda: losses.ssim_loss(a, b).backward()}, 1, rounds)
    diff = abs(ssim_loss_direct(a, b).item() - losses.ssim_loss(a, b).item())
    return {"direct_ms": 1e3 * sec["direct"], "separable_ms": 1e3 * sec["separable"],
            "speedup": sec["direct"] / sec["separable"], "abs_diff": diff}


# The session-12 cpu-small network (before conv-resize, width 8 and batch 8), at batch 16 like the tables in
# BENCHMARKS.md.
# float32, as every step was before cpu-small's cpu_bf16="auto" (session 32), so the old rows stay comparable
SESSION12 = {"upsample": "resize-conv", "recon_base_width": 16, "batch_size": 16, "cpu_bf16": "off"}


def random_batch(cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(damaged, clean, mask) of the config's batch size and resolution, 3 % of the mask set."""
    s, n = cfg.image_size, cfg.batch_size
    return torch.rand(n, 1, s, s), torch.rand(n, 1, s, s), (torch.rand(n, s, s) > 0.97).float()


def step_row(rounds: int) -> dict:
    cfg = get_config("cpu-small", **SESSION12)  # the network the earlier forms were measured on
    data, n = random_batch(cfg), cfg.batch_size
    before, after = train_step.TrainStep(cfg), train_step.TrainStep(cfg)
    fast_ssim, fft_from = train_step.ssim_loss, layers.FFT_GRAD_MIN_KERNEL

    def earlier():
        train_step.ssim_loss, layers.FFT_GRAD_MIN_KERNEL = ssim_loss_direct, 10**9
        try:
            before(*data)
        finally:
            train_step.ssim_loss, layers.FFT_GRAD_MIN_KERNEL = fast_ssim, fft_from

    sec = interleaved({"earlier": earlier, "now": lambda: after(*data)}, 1, rounds)
    return {"earlier_s": sec["earlier"], "now_s": sec["now"], "speedup": sec["earlier"] / sec["now"],
            "samples_s_now": n / sec["now"]}


# Each variant changes one thing of SESSION12, then all three, then today's cpu-small.
VARIANTS = {
    "session 12 network, batch 16": SESSION12,
    "upsample=conv-resize": {**SESSION12, "upsample": "conv-resize"},
    "recon_base_width=8": {**SESSION12, "recon_base_width": 8},
    "feature_extractor=none": {**SESSION12, "feature_extractor": "none"},
    "all three": {**SESSION12, "upsample": "conv-resize", "recon_base_width": 8, "feature_extractor": "none"},
    "cpu-small (conv-resize, width 8, batch 8)": {"cpu_bf16": "off"},
    "cpu-small, large_kernel=false": {"large_kernel": False, "cpu_bf16": "off"},
    "cpu-small, seg_base_width=12": {"seg_base_width": 12, "cpu_bf16": "off"},
    # no reconstruction network (session 42): the prediction net alone; at width 24 it costs what the default does
    "cpu-small, recon_base_width=0": {"recon_base_width": 0, "feature_extractor": "none", "cpu_bf16": "off"},
    "cpu-small, recon_base_width=0, seg_base_width=24": {"recon_base_width": 0, "feature_extractor": "none",
                                                         "seg_base_width": 24, "cpu_bf16": "off"},
    # session 44: kernels covering twice the fraction (29/27/15 at 128 px; the FFT weight gradient keeps them
    # nearly free) and one encoder level more or less
    "cpu-small, kernel_sizes x2": {"kernel_sizes": [61, 57, 53, 25], "cpu_bf16": "off"},
    "cpu-small, seg_depth=5": {"seg_depth": 5, "cpu_bf16": "off"},
    "cpu-small, seg_depth=3": {"seg_depth": 3, "cpu_bf16": "off"},
    # bf16 autocast on CPU: 1.2-1.4x on CPUs with bf16 instructions (session 32), emulated and slower elsewhere
    "cpu-small, cpu_bf16=on": {"cpu_bf16": "on"},
    "cpu-small, large_kernel=false, cpu_bf16=on": {"large_kernel": False, "cpu_bf16": "on"},
    # GroupNorm in both networks (session 49), with bf16 where its CPU layout mattered
    "cpu-small, norm=group": {"norm": "group", "cpu_bf16": "off"},
    "cpu-small, norm=group, cpu_bf16=on": {"norm": "group", "cpu_bf16": "on"},
}


def variant_rows(rounds: int) -> list[dict]:
    fns, sizes = {}, {}
    for name, overrides in VARIANTS.items():
        cfg = get_config("cpu-small", **overrides)
        fns[name] = functools.partial(train_step.TrainStep(cfg), *random_batch(cfg))
        sizes[name] = cfg.batch_size
    sec = interleaved(fns, 1, rounds)
    return [{"variant": k, "overrides": VARIANTS[k], "ms_per_step": 1e3 * sec[k], "samples_s": sizes[k] / sec[k]}
            for k in VARIANTS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", action="store_true", help="also time the cpu-small variants (4.)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"depthwise": depthwise_rows(args.rounds), "ssim": ssim_row(args.rounds),
              "train_step": step_row(args.rounds), "group_norm": group_norm_rows(args.rounds)}
    if args.variants:
        result["variants"] = variant_rows(args.rounds)
    print(json.dumps({**result, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
