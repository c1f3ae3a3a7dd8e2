"""How far averaging can take the image AUROC: many models' test scores, ranked, then averaged.

Each evaluation's `scores.csv` is turned into ranks (so models with different score scales weigh the same), and
the ranks are averaged image by image: over all models, and over the best 2, 3, 5, ... by their own AUROC (a choice
made on the same test split, so an optimistic bound). If even those fall short of a target, no seed search or
averaging of these models reaches it: what is left is images that all of them get wrong, which the script lists
(BENCHMARKS.md, session 48). Reads only `scores.csv` files: no model, no training.

    python benchmarks/ensemble_ceiling.py runs/*/eval [--worst 10]
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from image_loss import image_losses  # the per-defect share of AUROC, read the same way as for one model


def load_scores(eval_dir: str) -> dict[str, tuple[str, float]]:
    """image path -> (defect class, score) from one evaluation folder's scores.csv."""
    with open(os.path.join(eval_dir, "scores.csv"), newline="") as f:
        return {r["image"]: (r["defect_class"], float(r["score"])) for r in csv.DictReader(f)}


def rank_matrix(evaluations: list[dict[str, tuple[str, float]]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(images, is_defect, ranks (models, images) in (0, 1]) over the images every evaluation scored."""
    images = sorted(set.intersection(*(set(e) for e in evaluations)))
    if not images:
        raise ValueError("the evaluations share no image")
    is_defect = np.array([evaluations[0][i][0] != "good" for i in images])
    ranks = np.array([rankdata([e[i][1] for i in images]) / len(images) for e in evaluations])
    return images, is_defect, ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", help="evaluation folders (each with a scores.csv)")
    ap.add_argument("--worst", type=int, default=10, help="how many of the hardest images of each kind to list")
    args = ap.parse_args()
    evaluations = [load_scores(d) for d in args.evals]
    images, is_defect, ranks = rank_matrix(evaluations)
    single = np.array([roc_auc_score(is_defect, r) for r in ranks])
    mean_rank = ranks.mean(0)
    print(f"{len(evaluations)} evaluations, {len(images)} images ({is_defect.sum()} defective)")
    print(f"single models' image AUROC: mean {single.mean():.3f}, min {single.min():.3f}, max {single.max():.3f}")
    print(f"rank-mean ensemble of all:  {roc_auc_score(is_defect, mean_rank):.3f}")
    best_first = np.argsort(-single)
    for k in (2, 3, 5, 10, 20):
        if k < len(single):
            top = roc_auc_score(is_defect, ranks[best_first[:k]].mean(0))
            print(f"rank-mean of the best {k:>2} (picked on this split: optimistic): {top:.3f}")
    rows = [{"image": i, "defect_class": evaluations[0][i][0], "score": r} for i, r in zip(images, mean_rank)]
    _, defects = image_losses(rows)
    print(f"\ndefects ranked lowest by the ensemble (AUROC lost by each: loss / {len(defects)}):")
    for d in sorted(defects, key=lambda d: -d["loss"])[: args.worst]:
        print(f"  {d['defect_class']}/{os.path.basename(d['image'])}  mean rank {d['score']:.2f}  "
              f"loss {d['loss'] / len(defects):.4f}")
    print("\ngood images ranked highest by the ensemble:")
    good = sorted((r for r in rows if r["defect_class"] == "good"), key=lambda r: -r["score"])
    for r in good[: args.worst]:
        print(f"  {os.path.basename(r['image'])}  mean rank {r['score']:.2f}")


if __name__ == "__main__":
    main()
