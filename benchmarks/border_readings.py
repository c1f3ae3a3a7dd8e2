"""Two readings of a trained model's map that discount the frame's border, read on the test split (offline).

    python benchmarks/border_readings.py --model runs/x/model.safetensors --data /work/shared/datasets/magnetic-tile

Half the good images a cpu-small model scores highest peak within 6 px of the frame, at the part's corners, where
the part meets the dark background (session 34, BENCHMARKS.md). Two ways to read the map that would discount them:

- ``background``: the map zeroed on the dark border background (the foreground rule's test for it, run on the
  fitted image), grown by 0-5 px, before the image score.
- ``border offset``: for each distance d (0..15 px) from the frame's nearest edge, the q-th percentile of the
  held-out normal images' map values at that distance, less the interior's (d >= 16), subtracted from every map
  at distance d. Held-out normals only: the seeded split training kept out for calibration.

Prints image AUROC (overall and per class) for each reading. Both are chosen on the test split, so a gain here is
a lead, not a setting.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from defectray import io
from defectray.models.modelfile import load_model
from defectray.models.scoring import image_scores
from defectray.synthesis.foreground import _dark_border_background
from defectray.train import split_holdout

BORDER = 16  # px at the model's resolution: distances from here on are the interior


def border_distance(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    y, x = np.arange(h)[:, None], np.arange(w)[None]
    return np.minimum(np.minimum(y, h - 1 - y), np.minimum(x, w - 1 - x)).clip(max=BORDER)


def fitted_maps(det, uris: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each image's map at the model's resolution, and its fitted grey image."""
    maps, grays = [], []
    for uri in uris:
        x = det.preprocess([io.load_image(uri)])
        m = det.infer(x)[0]
        maps.append(m[-1] if m.ndim == 3 else m)  # a score-head model: its head's map, as its image score reads
        grays.append((x[0].mean(axis=0) * 255).astype(np.uint8))
    return maps, grays


def auroc_line(name: str, labels: np.ndarray, scores: np.ndarray, width: int = 28) -> str:
    """One reading's image AUROC, overall and per defect class, after its name padded to ``width``."""
    y = labels != "good"
    per = []
    for c in sorted(set(labels) - {"good"}):
        keep = (labels == c) | (labels == "good")
        per.append(f"{c} {roc_auc_score(y[keep], scores[keep]):.4f}")
    return f"{name:{width}s} {roc_auc_score(y, scores):.4f}  ({' / '.join(per)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the MVTec-layout category the model was trained on")
    ap.add_argument("--quantiles", default="0.99,0.995,0.999")
    args = ap.parse_args()
    det = load_model(args.model)
    config = det.config
    _, held = split_holdout(io.training_images(args.data), config.val_fraction, config.seed)
    items = io.mvtec_test_items(args.data)
    labels = np.array([it.defect_class for it in items])
    held_maps, _ = fitted_maps(det, held)
    test_maps, test_grays = fitted_maps(det, [it.image for it in items])

    def score(maps: list[np.ndarray]) -> np.ndarray:
        return np.array([image_scores(m, det.filter_size, det.top_k)[0] for m in maps])

    print(f"{len(held)} held-out normals, {len(items)} test images, top-{det.top_k} reading")
    print(auroc_line("as stored (no discount)", labels, score(test_maps)))
    backgrounds = [_dark_border_background(cv2.GaussianBlur(g, (0, 0), 1.0)).astype(np.uint8) for g in test_grays]
    for grow in (0, 1, 2, 3, 5):
        masked = [m * (1 - (cv2.dilate(b, np.ones((2 * grow + 1,) * 2, np.uint8)) if grow else b))
                  for m, b in zip(test_maps, backgrounds)]
        print(auroc_line(f"background zeroed, grown {grow}", labels, score(masked)))
    by_distance = [np.concatenate([m[border_distance(m.shape) == d] for m in held_maps]) for d in range(BORDER + 1)]
    for q in (float(v) for v in args.quantiles.split(",")):
        level = np.array([np.quantile(v, q) for v in by_distance])
        offset = np.maximum(0.0, level - level[BORDER])
        discounted = [m - offset[border_distance(m.shape)] for m in test_maps]
        print(auroc_line(f"border offset q={q}", labels, score(discounted)),
              "offset d=0..7:", " ".join(f"{v:.2f}" for v in offset[:8]))


if __name__ == "__main__":
    main()
