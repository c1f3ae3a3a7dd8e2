"""Exposure averaging at inference, read on the test split (offline).

    python benchmarks/exposure_average.py --model runs/x/model.safetensors --data /work/shared/datasets/magnetic-tile

A model trained with ``exposure_jitter`` has seen its training views at gains 1/(1+x)..1+x. Its maps of one test
image at a few gains are then a cheap ensemble along the axis its false alarms used to follow (session 35,
BENCHMARKS.md). Each fitted image's grey levels are multiplied by each gain (a brighter copy capped so its 99th
percentile stays in range, as ``synthesis.augment.vary_exposure`` caps it), each copy runs through the Detector as
stored (tiles, flip averaging), and the maps are averaged before the image score.

Prints image AUROC (overall and per class) for each gain alone and for the averages. Chosen on the test split, so
a gain here is a lead, not a setting.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from border_readings import auroc_line  # noqa: E402

from defectray import io  # noqa: E402
from defectray.models.modelfile import load_model  # noqa: E402
from defectray.models.scoring import image_scores  # noqa: E402


def at_gain(fitted: np.ndarray, gain: float) -> np.ndarray:
    """A float32 [0, 1] fitted image as if under another exposure; a gain above 1 is capped at the one that takes
    the 99th percentile to full scale."""
    if gain > 1:
        gain = min(gain, max(1.0, 1.0 / max(float(np.percentile(fitted, 99)), 1e-6)))
    return np.clip(fitted * gain, 0.0, 1.0).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="an MVTec-layout category")
    ap.add_argument("--gains", default="1,0.75,1.33", help="the first is the stored reading (1)")
    args = ap.parse_args()
    det = load_model(args.model)
    gains = [float(g) for g in args.gains.split(",")]
    items = io.mvtec_test_items(args.data)
    labels = np.array([it.defect_class for it in items])
    maps: dict[float, list[np.ndarray]] = {g: [] for g in gains}
    for it in items:
        fitted = det.preprocess([io.load_image(it.image)])[0]
        for g in gains:
            m = det.infer([at_gain(fitted, g)])[0]
            maps[g].append(m[-1] if m.ndim == 3 else m)  # a score-head model: its head's map

    def score(per_image: list[np.ndarray]) -> np.ndarray:
        return np.array([image_scores(m, det.filter_size, det.top_k)[0] for m in per_image])

    print(f"{len(items)} test images, top-{det.top_k} reading, gains {gains}")
    for g in gains:
        print(auroc_line(f"gain {g:g} alone", labels, score(maps[g]), width=32))
    for k in range(2, len(gains) + 1):
        for subset in itertools.combinations(gains, k):
            if gains[0] not in subset:
                continue
            averaged = [np.mean([maps[g][i] for g in subset], axis=0) for i in range(len(items))]
            name = "maps averaged at " + ", ".join(f"{g:g}" for g in subset)
            print(auroc_line(name, labels, score(averaged), width=32))


if __name__ == "__main__":
    main()
