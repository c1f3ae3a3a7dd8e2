"""Is a missed defect missed for what it looks like or for where it is? Move it and score again.

    python benchmarks/transplant.py --model runs/x/model.safetensors \
        --data /work/shared/datasets/magnetic-tile --images blowhole/exp1_num_308015 [...] [--shifts 0 -10 -25 -60]

For each test image (``<class>/<stem>``, its mask at ground_truth/<class>/<stem>_mask.png), the defect's bounding
box (plus a 3-px margin) is cut out, the hole filled with the strip of the same width 20 px above it, and the patch
pasted back shifted by each ``--shifts`` value (pixels along x at the image's own resolution; negative = left).
Prints the image score for each shift and for the image with the defect erased (the floor). Session 33 used it on
the edge blowhole that every model since session 20 misses (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import posixpath

import numpy as np

from defectray import io
from defectray.models.modelfile import load_model


def shifted_copies(image: np.ndarray, mask: np.ndarray, shifts: list[int], margin: int = 3) -> list[np.ndarray]:
    """The image with its masked defect moved by each shift along x, then the image with it erased."""
    ys, xs = np.nonzero(mask)
    h, w = image.shape[:2]
    y0, y1 = max(ys.min() - margin, 20), min(ys.max() + margin + 1, h)
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)
    patch = image[y0:y1, x0:x1].copy()
    erased = image.copy()
    erased[y0:y1, x0:x1] = image[y0 - 20:y1 - 20, x0:x1]
    out = []
    for dx in shifts:
        if x0 + dx < 0 or x1 + dx > w:
            raise ValueError(f"shift {dx} moves the defect out of the {w}-px wide image")
        moved = erased.copy()
        moved[y0:y1, x0 + dx:x1 + dx] = patch
        out.append(moved)
    return out + [erased]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="an MVTec-layout category")
    ap.add_argument("--images", nargs="+", required=True, help="<class>/<stem> of test images with masks")
    ap.add_argument("--shifts", nargs="+", type=int, default=[0, -10, -25, -60, -110])
    args = ap.parse_args()
    det = load_model(args.model)
    items = {f"{it.defect_class}/{posixpath.splitext(posixpath.basename(it.image))[0]}": it
             for it in io.mvtec_test_items(args.data)}
    print("shifts", " ".join(map(str, args.shifts)), "erased")
    for name in args.images:
        item = items.get(name)
        if item is None or item.mask is None:
            raise SystemExit(f"{name}: no such test image with a mask under {args.data}")
        image, mask = io.load_image(item.image, channels=1), io.load_image(item.mask, channels=1)
        scores, _ = det.predict(shifted_copies(image, mask > 0, args.shifts))
        print(name, " ".join(f"{s:.2f}" for s in scores))


if __name__ == "__main__":
    main()
