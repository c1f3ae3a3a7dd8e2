"""Detector inference on CPU: the inference form's BatchNorm folding and bf16 autocast, against the float32
form with its BNs in place (the Detector before session 33), timed interleaved in one process.

    python benchmarks/inference.py [--model PATH] [--n 48] [--rounds 3] [--threads 2]

Times ``Detector.infer`` (tiling, the network with flip averaging, stitching) on ``--n`` magnetic-tile test
images, fitted once beforehand. Without ``--model`` an untrained cpu-small model with BatchNorm (speed does not
depend on the weights). With a trained model it also reports the largest map and image-score differences against
float32.
bf16 rows only where this CPU has bf16 instructions (``--force-bf16`` to time the emulated path anyway).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load

from defectray.config import get_config
from defectray.io import read_bytes
from defectray.models import build_model
from defectray.models.modelfile import Detector, load_model
from defectray.models.scoring import image_scores
from defectray.models.precision import cpu_has_bf16

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic-tile"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model file; default: an untrained cpu-small model")
    ap.add_argument("--data", default=str(DATASET))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force-bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        det = load_model(args.model)
        state = load(read_bytes(args.model))
    else:
        # BatchNorm, not the profile's GroupNorm (session 51): folding BNs is what this benchmark times
        cfg = get_config("cpu-small", norm="batch")
        torch.manual_seed(0)
        model = build_model(cfg, feature_extractor=False)
        state = copy.deepcopy(model.state_dict())
        det = Detector(model, cfg, "untrained")
    folded = det.model
    # The same weights in the form before session 33: large kernels fused, every BN still a pass of its own.
    unfolded = build_model(det.config, feature_extractor=False)
    unfolded.load_state_dict(state)
    unfolded.eval().prediction.reparameterize()
    unfolded = unfolded.to(memory_format=torch.channels_last)  # as Detector.to lays out the folded one
    files = sorted(glob.glob(os.path.join(args.data, "test", "*", "*.jpg")))
    files = files[:: max(1, len(files) // args.n)][: args.n]
    if not files:
        raise SystemExit(f"no test images under {args.data}")
    images = [cv2.imread(f, cv2.IMREAD_COLOR)[:, :, ::-1].copy() for f in files]
    fitted = det.preprocess(images)

    variants = {"float32, BN unfolded (before)": (unfolded, False), "float32, BN folded": (folded, False)}
    if cpu_has_bf16() or args.force_bf16:
        variants["bf16 autocast, BN unfolded"] = (unfolded, True)
        variants["bf16 autocast, BN folded (now, where the CPU has bf16)"] = (folded, True)

    def run(model, bf16):
        det.model, det.cpu_bf16 = model, bf16
        t = time.perf_counter()
        maps = det.infer(fitted)
        return time.perf_counter() - t, maps

    for v in variants.values():
        run(*v)  # warm-up
    times = {k: [] for k in variants}
    maps = {}
    for _ in range(args.rounds):
        for k, v in variants.items():
            dt, maps[k] = run(*v)
            times[k].append(dt)
    base = list(variants)[0]
    med = {k: float(np.median(t)) for k, t in times.items()}
    rows = []
    for k in variants:
        diff = max(float(np.abs(a - b).max()) for a, b in zip(maps[base], maps[k]))
        s_base = np.array([image_scores(m, det.filter_size, det.top_k)[0] for m in maps[base]])
        s_k = np.array([image_scores(m, det.filter_size, det.top_k)[0] for m in maps[k]])
        rows.append({"variant": k, "seconds": [round(t, 3) for t in times[k]], "images_s": len(fitted) / med[k],
                     "speedup": med[base] / med[k], "max_map_diff": diff,
                     "max_score_diff": float(np.abs(s_base - s_k).max())})
    print(json.dumps({"model": args.model or "untrained cpu-small", "images": len(fitted),
                      "flip_average": det.config.flip_average, "threads": torch.get_num_threads(),
                      "cpu_has_bf16": cpu_has_bf16(), "torch": torch.__version__,
                      "load_average": os.getloadavg(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
