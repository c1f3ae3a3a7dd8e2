"""Network benchmarks (CPU unless --device cuda):

1. forward images/s of the whole model, training form vs re-parameterised large kernels (eval mode), for the
   cpu-small profile and the paper profile;
2. training-step samples/s (TrainStep: both networks, all losses, Adam) for cpu-small vs paper.

    python benchmarks/models.py [--device cpu] [--paper-batch 2] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from defectray.config import get_config
from defectray.models import build_model
from defectray.models.train_step import TrainStep


def interleaved(fns: dict, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each fn, the fns timed alternately (other processes share this machine,
    so timing one after the other would charge load spikes to whichever ran second)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def forward_rates(profile: str, batch: int, device: str, rounds: int) -> dict:
    cfg = get_config(profile)
    torch.manual_seed(0)
    train_form = build_model(cfg, feature_extractor=False).to(device).eval()
    fused = copy.deepcopy(train_form).reparameterize().to(memory_format=torch.channels_last)
    x = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)

    def runner(model):
        @torch.no_grad()
        def run():
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        return run

    with torch.no_grad():
        max_diff = (torch.softmax(train_form(x)[1], 1) - torch.softmax(fused(x)[1], 1)).abs().max().item()
    sec = interleaved({"train_form": runner(train_form), "reparam": runner(fused)}, 1, rounds)
    return {"profile": profile, "batch": batch, "train_form_img_s": batch / sec["train_form"],
            "reparam_img_s": batch / sec["reparam"], "speedup": sec["train_form"] / sec["reparam"],
            "max_prob_diff": max_diff}


def train_rates(batches: dict[str, int], device: str, rounds: int) -> list[dict]:
    fns, info = {}, {}
    for profile, batch in batches.items():
        cfg = get_config(profile, batch_size=batch)
        step = TrainStep(cfg, device)
        s = cfg.image_size
        data = (torch.rand(batch, cfg.channels, s, s), torch.rand(batch, cfg.channels, s, s),
                (torch.rand(batch, 1, s, s) > 0.9).float())
        fns[profile] = (lambda st, d: (lambda: st(*d)))(step, data)
        info[profile] = sum(p.numel() for p in step.model.parameters() if p.requires_grad)
    sec = interleaved(fns, 1, rounds)
    return [{"profile": p, "batch": b, "s_per_step": sec[p], "samples_s": b / sec[p], "trainable_params": info[p]}
            for p, b in batches.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paper-batch", type=int, default=2, help="paper-profile batch on CPU (8 takes ~40 s/step)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = 2 if args.quick else 5
    results = {
        "forward": [forward_rates("cpu-small", 16, args.device, r),
                    forward_rates("paper", 2, args.device, 2 if args.quick else 3)],
        "train": train_rates({"cpu-small": 16, "paper": args.paper_batch}, args.device, 2 if args.quick else 3),
    }
    small, paper = results["train"]
    results["per_sample_cost_ratio_paper_over_small"] = small["samples_s"] / paper["samples_s"]
    results["torch"] = torch.__version__
    results["load_average"] = os.getloadavg()
    results["threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
