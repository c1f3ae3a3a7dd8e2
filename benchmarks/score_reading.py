"""How to read a trained model's map as an image score, chosen without the test split.

    python benchmarks/score_reading.py --model runs/x/model.safetensors --data /work/shared/datasets/magnetic-tile

The model's held-out normal images (the seeded split training kept out for calibration) are cut into random
views; each view is scored as it is and again with a synthetic defect painted by the model's own synthesis
method. The image AUROC between the two, for each top-k (the mean of the k highest pixels of the map at the
model's resolution, flips as the model's config says), is what a reading is judged by: no real defect is seen.
Session 22 chose cpu-small's ``score_top_k`` this way (BENCHMARKS.md).

``--map-gate 0,1,2,4`` adds the pixel AUROC, AUPRO and AP of the views' maps times their image score to each power
(models/scoring.gated_map), the clean views' pixels and the painted views' masks: session 54 chose cpu-small's
``map_gate`` this way.

``--by-shape`` adds the AUROC per shape of the `realistic` method at the model's own reading: a model that has
not yet learned one shape (session 23: faint cracks along the surface's grain) shows it here, before any test.

``--edge-pits`` adds the AUROC of one small pit (radius 1-2 or 2-3 px at the model's resolution) painted at a
given distance from a vertical edge of the view, against the clean views: whether a small defect cut by the
frame is found as well as one inside. Session 30's default model: 2-3 px pits 0.724 / 0.894 / 0.990 at 0 / 2 / 60 px
from the edge. Drawing half the training pits on the frame's edge lifted that at one of two seeds, and that model
scored the real edge blowhole lower than the default did (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the training data the model was trained on")
    ap.add_argument("--views", type=int, default=8, help="views per held-out image")
    ap.add_argument("--top-k", default="1,3,5,10,15,20,30,40", help="comma list, pixels at model resolution")
    ap.add_argument("--by-shape", action="store_true",
                    help="also paint every view once with each shape of the `realistic` method (a crack along the "
                         "surface's grain apart from one across it) and report the AUROC per shape, at the "
                         "model's own top-k: which kind of synthetic defect the model has not learned yet")
    ap.add_argument("--edge-pits", action="store_true",
                    help="also paint every view with one small pit at 0, 2, 5, 20 and 60 px from a vertical frame "
                         "edge and report the AUROC per radius and distance, at the model's own top-k")
    ap.add_argument("--map-gate", default=None,
                    help="comma list of powers p: also report the pixel AUROC and AUPRO of the views' maps times their "
                         "image score to the p (0 = the map as it is), pixels of the clean views and of the painted "
                         "views' masks against all other pixels")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from defectray import io
    from defectray.models.modelfile import load_model
    from defectray.models.scoring import image_scores, output_maps
    from defectray.synthesis import synthesize_batch
    from defectray.train import build_sources, load_fitted, split_holdout, view_size

    det = load_model(args.model)
    cfg = det.config
    train_paths, held = split_holdout(io.training_images(args.data), cfg.val_fraction, cfg.seed)
    size = view_size(cfg)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 22]))
    views = []
    for path in held:
        img = load_fitted(path, cfg)
        for _ in range(args.views):
            y = int(rng.integers(0, img.shape[0] - size + 1))
            x = int(rng.integers(0, img.shape[1] - size + 1))
            views.append(img[y:y + size, x:x + size])
    sources = build_sources(cfg, train_paths)
    damaged, clean, masks = synthesize_batch(np.stack(views), cfg.synthesis, rng, sources, anomaly_prob=1.0)

    def maps(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch.reshape(len(batch), size, size, -1)).permute(0, 3, 1, 2).float() / 255.0
        return np.concatenate([output_maps(det.model, x[i:i + 64], cfg.flip_average, det.cpu_bf16)[:, 0].numpy()
                               for i in range(0, len(x), 64)])

    normal, defect = maps(clean), maps(damaged)
    labels = np.r_[np.zeros(len(normal)), np.ones(len(defect))]
    result = {}
    for k in [int(k) for k in args.top_k.split(",")]:
        scores = np.r_[image_scores(normal, det.filter_size, k), image_scores(defect, det.filter_size, k)]
        result[k] = round(float(roc_auc_score(labels, scores)), 4)
    report = {"model": args.model, "held_out_images": len(held), "views": len(views),
              "synthesis": cfg.synthesis, "auroc_by_top_k": result}
    normal_scores = image_scores(normal, det.filter_size, det.top_k)

    def auroc_against_normals(painted: list[np.ndarray]) -> float:
        """Image AUROC, at the model's own reading, of views painted one for one from the clean views."""
        scores = image_scores(maps(np.stack(painted)), det.filter_size, det.top_k)
        return round(float(roc_auc_score(labels, np.r_[normal_scores, scores])), 4)

    if args.map_gate:
        from defectray.metrics import PixelMetrics
        from defectray.models.scoring import gated_map

        defect_scores = image_scores(defect, det.filter_size, det.top_k)
        by_power = {}
        for p in [float(v) for v in args.map_gate.split(",")]:
            pixel = PixelMetrics()
            for amap, score in zip(normal, normal_scores):
                pixel.update(gated_map(amap, score, p), None)
            for amap, score, mask in zip(defect, defect_scores, masks):
                pixel.update(gated_map(amap, score, p), mask > 0.5)
            r = pixel.compute()
            by_power[p] = {"pixel_auroc": round(r["pixel_auroc"], 4), "pixel_aupro": round(r["pixel_aupro"], 4),
                           "pixel_ap": round(r["pixel_ap"], 4)}
        report["map_gate"] = by_power
    if args.by_shape:
        from defectray.synthesis.realistic import SHAPES, paint_defect, texture_direction

        by_shape = {}
        for name in [*SHAPES, "crack-along-grain"]:
            kind = "crack" if name.startswith("crack") else name
            shape_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 22, len(by_shape)]))
            painted = []
            for view in clean:
                along = texture_direction(view) if name == "crack-along-grain" else None
                painted.append(paint_defect(view, shape_rng, sources, kind, along)[0])
            by_shape[name] = auroc_against_normals(painted)
        report["auroc_by_shape"] = by_shape
    if args.edge_pits:
        import cv2

        from defectray.synthesis.realistic import paint_region

        by_place = {}
        for radius in ((1, 2), (2, 3)):
            for distance in (0, 2, 5, 20, 60):
                pit_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 30, radius[0], distance]))
                painted = []
                for view in clean:
                    h, w = view.shape[:2]
                    mask = np.zeros((h, w), np.uint8)
                    x = distance if pit_rng.random() < 0.5 else w - 1 - distance
                    y = int(pit_rng.integers(h // 8, h - h // 8))
                    axes = tuple(int(a) for a in pit_rng.integers(radius[0], radius[1] + 1, 2))
                    cv2.ellipse(mask, (x, y), axes, 0, 0, 360, 1, -1)
                    painted.append(paint_region(view, pit_rng, sources, mask.astype(np.float32), "pits"))
                key = f"radius {radius[0]}-{radius[1]} px, {distance} px from the edge"
                by_place[key] = auroc_against_normals(painted)
        report["auroc_edge_pits"] = by_place
    print(json.dumps(report))


if __name__ == "__main__":
    main()
