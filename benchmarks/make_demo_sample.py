"""Build defectray/sample/magnetic-tile: the small real-image sample shipped for `defectray demo`.

A deterministic selection (by sha1 of the file name) from the development data set, downscaled by 2 so the
package stays small. Run from the repo root:  python benchmarks/make_demo_sample.py [DATASET]
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import cv2

SRC = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/datasets/magnetic-tile"
DST = Path(__file__).resolve().parents[1] / "defectray/sample/magnetic-tile"
COUNTS = {"train/good": 48, "test/good": 12, "test/blowhole": 6, "test/break": 6, "test/crack": 6}
SCALE = 0.5


def pick(folder: Path, n: int) -> list[Path]:
    files = sorted(folder.glob("*.jpg"), key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
    return sorted(files[:n])


def shrink(img, interpolation):
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * SCALE)), max(1, round(h * SCALE))), interpolation=interpolation)


def main() -> None:
    if DST.exists():
        shutil.rmtree(DST)
    for sub, n in COUNTS.items():
        (DST / sub).mkdir(parents=True)
        cls = sub.split("/")[1]
        for f in pick(SRC / sub, n):
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(DST / sub / f.name), shrink(img, cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 92])
            if cls != "good":
                mask = cv2.imread(str(SRC / "ground_truth" / cls / f"{f.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
                out = DST / "ground_truth" / cls
                out.mkdir(parents=True, exist_ok=True)
                mask = (shrink(mask, cv2.INTER_AREA) >= 64).astype("uint8") * 255
                cv2.imwrite(str(out / f"{f.stem}_mask.png"), mask)
    (DST / "README.md").write_text(
        "Sample of the Magnetic Tile Defect data set (Huang, Qiu, Yuan, The Visual Computer 36 (2020) 85-96;\n"
        "github.com/abin24/Magnetic-tile-defect-datasets, research use), MVTec AD layout, downscaled by 2.\n"
        "Made by benchmarks/make_demo_sample.py. Used by `defectray demo` only.\n"
    )
    print(f"wrote {sum(1 for _ in DST.rglob('*.*'))} files to {DST}")


if __name__ == "__main__":
    main()
