"""Does a profile learn in a time budget? Trains with TrainStep for MINUTES on a category's train/good
(synthetic defects from defectray.synthesis), then scores test/ and prints image AUROC per defect type.

    python benchmarks/models_learn.py /work/shared/datasets/magnetic-tile --profile cpu-small --minutes 6
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import torch

from defectray.config import get_config
from defectray.io import load_image, mvtec_test_items, training_images
from defectray.models.modelfile import Detector, model_id_of, _inference_state
from defectray.models import build_model, images_to_tensor
from defectray.models.train_step import TrainStep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("category")
    ap.add_argument("--profile", default="cpu-small")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--synthesis", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_config(args.profile)
    if args.synthesis:
        cfg = cfg.replace(synthesis=args.synthesis)
    from defectray.synthesis import SynthesisSources, synthesize_batch

    s = cfg.image_size
    train = [cv2.resize(load_image(u, cfg.channels), (s, s), interpolation=cv2.INTER_AREA)
             for u in training_images(args.category)]
    sources = SynthesisSources(normal_images=train, foreground=cfg.foreground)
    rng = np.random.default_rng(cfg.seed)
    step = TrainStep(cfg)
    start, log, synth_s = time.time(), [], 0.0
    while time.time() - start < args.minutes * 60:
        idx = rng.choice(len(train), cfg.batch_size, replace=False)
        t = time.time()
        damaged, clean, masks = synthesize_batch(np.stack([train[i] for i in idx]), cfg.synthesis, rng, sources,
                                                 cfg.anomaly_prob, cfg.rotate_prob)
        synth_s += time.time() - t
        out = step(images_to_tensor(damaged), images_to_tensor(clean), torch.from_numpy(masks))
        if step.step % 50 == 0:
            log.append({"step": step.step, "min": round((time.time() - start) / 60, 2),
                        **{k: round(v, 4) for k, v in out.items()}})
            print(json.dumps(log[-1]), flush=True)
    train_s = time.time() - start
    net = step.net
    inference = build_model(cfg, feature_extractor=False)
    inference.load_state_dict(_inference_state(net))
    det = Detector(inference, cfg, model_id_of(cfg, _inference_state(net)))
    from sklearn.metrics import roc_auc_score

    items = mvtec_test_items(args.category)
    scores, labels, kinds = [], [], []
    for i in range(0, len(items), 16):
        chunk = items[i:i + 16]
        sc, _ = det.predict([load_image(it.image, cfg.channels) for it in chunk])
        scores += sc.tolist()
        labels += [int(it.is_anomalous) for it in chunk]
        kinds += [it.defect_class for it in chunk]
    scores, labels, kinds = np.array(scores), np.array(labels), np.array(kinds)
    result = {"profile": args.profile, "synthesis": cfg.synthesis, "steps": step.step, "train_s": round(train_s),
              "samples_s": round(step.step * cfg.batch_size / train_s, 1), "synth_share": round(synth_s / train_s, 2),
              "image_auroc_all": round(float(roc_auc_score(labels, scores)), 3)}
    for kind in sorted(set(kinds) - {"good"}):
        sel = (kinds == kind) | (kinds == "good")
        result[f"auroc_{kind}"] = round(float(roc_auc_score(labels[sel], scores[sel])), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
