"""Write synthetic defect samples and a preview sheet.

Paints N synthetic defects onto normal images with a synthesis method and writes each as 00000.png plus
00000_mask.png (0/255, never empty), and grid.png: a sheet of clean image, damaged image, mask and overlay
per sample (the first 16), to judge the method at a glance. With --size, each image is seen as training sees
it: short side resized to SIZE (aspect kept), then a SIZE×SIZE square (the centre one here).
Defect appearance comes from other normal images of --images (never test images), plus --textures and
--defects banks where given.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  defectray synth --list
  defectray synth --method realistic --images /data/magnetic-tile --out /tmp/synth
  defectray synth --method realistic:0.7,nsa:0.3 --images /data/magnetic-tile --out /tmp/mix --size 128
  defectray synth --method draem --images s3://bucket/parts/train/good --textures /data/dtd/images \\
      --out /tmp/draem --count 32 --seed 1 --size 128
"""

MAX_SOURCES = 32  # other normal images kept as the appearance bank
MAX_PREVIEW = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="print the synthesis methods, one per line, and exit")
    parser.add_argument("--method", default="realistic",
                        help="synthesis method (default: realistic; see --list), or a mix such as realistic:0.7,nsa:0.3 "
                        "(each sample from one of them, drawn by weight)")
    parser.add_argument("--images", help="folder/URI of normal images, or an MVTec category (uses train/good)")
    parser.add_argument("--out", help="output folder (local or URI)")
    parser.add_argument("--count", type=int, default=16, help="number of samples (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--size", type=int, default=256, help="short side to SIZE, then the centre SIZE×SIZE square, as a training view "
                        "(default: 256; 0 keeps their size)")
    parser.add_argument("--textures", help="folder/URI of texture images (optional)")
    parser.add_argument("--defects", help="folder/URI of real defect crops for `realistic` (optional)")
    parser.add_argument("--foreground", default="otsu",
                        help="where defects may go: otsu (default), full, or an ROI mask image file/URI")


def run(args: argparse.Namespace) -> int:
    from defectray.cli import CommandError
    from defectray.synthesis import get_synthesizer, list_synthesizers

    if args.list:
        print("\n".join(list_synthesizers()))
        return 0
    try:
        synthesize = get_synthesizer(args.method)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if not args.images or not args.out:
        raise CommandError("--images and --out are required (or use --list)")
    if args.count < 1:
        raise CommandError("--count must be at least 1")
    if args.size < 0:
        raise CommandError("--size must be 0 (keep) or a positive number of pixels")

    import numpy as np

    from defectray import io
    from defectray.models.tiling import center_crop, fit_image
    from defectray.synthesis import SynthesisSources, load_bank
    from defectray.synthesis.preview import preview_sheet

    paths = io.training_images(args.images)
    if not paths:
        raise CommandError(f"no images under {args.images}")
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(paths), size=min(len(paths), args.count + MAX_SOURCES), replace=False)
    targets_idx = [picked[i % min(len(picked), args.count)] for i in range(args.count)]
    # Appearance bank: images not drawn as targets; a folder smaller than --count shares them.
    source_idx = [i for i in picked if i not in set(targets_idx)][:MAX_SOURCES] or sorted(set(targets_idx))[:MAX_SOURCES]

    cache: dict[int, np.ndarray] = {}
    channels: list[int | None] = [None]

    def load(i: int) -> np.ndarray:
        if i not in cache:
            try:
                image = io.load_image(paths[i], channels[0])
            except (ValueError, OSError) as e:
                raise CommandError(f"cannot read {paths[i]}: {e}") from None
            channels[0] = channels[0] or (1 if image.ndim == 2 else 3)
            if args.size:
                fitted = fit_image(image, args.size, 1 if image.ndim == 2 else 3, "tiles")
                image = center_crop(fitted, args.size)
            cache[i] = image
        return cache[i]

    targets = [load(i) for i in targets_idx]
    ch = channels[0]
    size = args.size or None
    foreground = args.foreground
    if foreground not in ("otsu", "full"):
        roi = io.load_image(foreground, 1)
        foreground = roi > 0
    sources = SynthesisSources(
        normal_images=[load(i) for i in source_idx],
        textures=load_bank(args.textures, ch, size),
        defects=load_bank(args.defects, ch),
        foreground=foreground,
    )
    damaged, masks = [], []
    for k, image in enumerate(targets):
        out, mask = synthesize(image, rng, sources)
        binary = ((mask > 0) * 255).astype(np.uint8)
        io.save_image(io.join(args.out, f"{k:05d}.png"), out)
        io.save_image(io.join(args.out, f"{k:05d}_mask.png"), binary)
        damaged.append(out)
        masks.append(mask)
    n = min(MAX_PREVIEW, len(damaged))
    sheet = preview_sheet(targets[:n], damaged[:n], masks[:n], title=f"{args.method}  seed {args.seed}  {args.images}")
    io.save_image(io.join(args.out, "grid.png"), sheet)
    print(f"wrote {len(damaged)} samples and grid.png to {args.out}")
    return 0
