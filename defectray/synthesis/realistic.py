"""The paper's realistic synthetic anomalies (Peng et al., Sensors 2024), the default for training.

- Where: on the foreground only (Otsu object mask, a user ROI, or the whole frame for flat surfaces, less any
  dark background showing at its border).
- What: appearance from a bank of real image content (other normal images, the user's defect crops,
  textures), under a random affine transform and colour/brightness enhancement.
- How: random linear interpolation with the original, so some of the surface shows through.

The paper's mask is Perlin noise on the foreground. Real surface defects also come as thin cracks, small
round pits and chipped edges, which Perlin blobs (large, lobed) rarely look like; a detector trained only
on blobs misses thin cracks (see the field notes: a blob-only probe scored chance on cracks). So the mask
is one of four shapes: Perlin blob (the paper's, most often), a thin jagged crack, a few pits, or a chip
cut into the part's edge; on a surface with a grain, cracks most often (GRAINED_SHAPE_PROBS). Cracks, pits
and chips are mostly darker than the surface (shadowed cavities), sometimes brighter (reflections); blobs
change brightness either way, so the network learns "surface content that does not belong" rather than
"dark means defect". On a surface with a grain (grinding or rolling marks: ``texture_direction``) three
cracks in four follow it, straight, faint (15-45% darker) and often running in from the edge: real cracks
open along the marks, and a detector that only ever saw cracks across them took the real ones for marks
(magnetic tile, BENCHMARKS.md).

Every sample is checked to be visible: if the blend changed the masked pixels by less than
MIN_VISIBLE grey levels on average (a patch of a near-identical normal image), the source is pushed
brighter or darker by the shortfall (within 0..255), because a label on an invisible change teaches the detector noise.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from defectray.synthesis.augment import ensure_nonempty, mask_window, match_channels, random_affine
from defectray.synthesis.foreground import foreground_mask
from defectray.synthesis.perlin import perlin_mask
from defectray.synthesis.registry import SynthesisSources, register

SHAPES = ("blob", "crack", "pits", "chip")
SHAPE_PROBS = (0.4, 0.3, 0.15, 0.15)
# On a surface with a grain, cracks come first: three in four of them run along it, the synthetic shape a
# 20-minute model learns last (held-out AUROC 0.84 against 0.95-0.99 for the rest, one seed at 1,738 steps),
# and whether it had, decided the real cracks' image AUROC (0.71-0.98 over three seeds). At 0.45 the same seed
# had learned it by the same step (0.98) and found the real cracks (0.97); with steps to spare both mixes
# learn it and score level (BENCHMARKS.md, sessions 23-24).
GRAINED_SHAPE_PROBS = (0.25, 0.45, 0.15, 0.15)
GRAIN_CRACK_PROB = 0.75  # of the cracks on a surface with a grain: those along it are the hard case
MIN_VISIBLE = 12.0  # mean absolute change (grey levels) inside the mask; twice this for thin/small shapes
MIN_AREA = 0.001  # of the frame: 65 px at 256 x 256, a thin crack of 30 px length


def texture_direction(image: np.ndarray) -> float | None:
    """The direction (radians, image x/y axes) the surface's texture runs along, from the structure tensor;
    None when the texture has no dominant direction (coherence below 0.2: sand, gravel, flat paint)."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    g = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
    coherence = math.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-9)
    if coherence < 0.2:
        return None
    return 0.5 * math.atan2(2 * jxy, jxx - jyy) + math.pi / 2  # gradients run across the grain


def edge_pixels(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the foreground's border pixels; the image border counts as border (outside is not part)."""
    a = allowed.astype(np.uint8)
    return np.nonzero(a - cv2.erode(a, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0))


def edge_start(allowed: np.ndarray, along: float, rng: np.random.Generator) -> np.ndarray | None:
    """A point on the foreground's edge where a crack along ``along`` would run into the part (one step
    along it leaves the part, one step back stays in), so it does not trace the edge itself; None if none."""
    h, w = allowed.shape
    ys, xs = edge_pixels(allowed)
    if len(ys) == 0:
        return None
    d = 3.0 * np.array([math.cos(along), math.sin(along)])

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xi, yi = np.round(x).astype(int), np.round(y).astype(int)
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out = np.zeros(len(x), bool)
        out[ok] = allowed[yi[ok], xi[ok]]
        return out

    ahead, behind = inside(xs + d[0], ys + d[1]), inside(xs - d[0], ys - d[1])
    good = np.nonzero(ahead != behind)[0]
    if len(good) == 0:
        return None
    i = int(good[int(rng.integers(len(good)))])
    return np.array([xs[i], ys[i]], np.float64)


def crack_mask(shape: tuple[int, int], rng: np.random.Generator, allowed: np.ndarray,
               along: float | None = None) -> np.ndarray:
    """A thin jagged line (random walk with small turns), sometimes with a branch.

    With ``along`` (the texture direction) the crack follows the grain, nearly straight, and often runs in
    from the foreground's edge: cracks in ground or rolled parts open along the machining marks, and there
    they are hardest to tell from the marks themselves, so the detector must see them."""
    h, w = shape
    unit = min(h, w) / 256
    mask = np.zeros((h, w), np.uint8)
    ys, xs = np.nonzero(allowed)
    start = None
    if along is not None and rng.random() < 0.4:
        start = edge_start(allowed, along, rng)
    if start is None:
        i = int(rng.integers(len(ys)))
        start = np.array([xs[i], ys[i]], np.float64)
    length = rng.uniform(0.15, 0.7) * min(h, w) + 4
    thickness = max(1, int(round(rng.uniform(1.0, 3.5) * unit)))
    if along is None:
        heading, drift, jitter = rng.uniform(0, 2 * math.pi), 0.12, 0.45
    else:
        # Straight: a model that only ever saw jagged cracks learns "jagged = crack" and passes a straight
        # dark line along the marks (probe on a trained model: 7% of straight lines found, 87% of jagged).
        heading = along + rng.normal(0, 0.05) + math.pi * int(rng.random() < 0.5)
        drift, jitter = 0.02, rng.uniform(0.0, 0.12)
        x, y = np.round(start + 3.0 * np.array([math.cos(heading), math.sin(heading)])).astype(int)
        if not (0 <= x < w and 0 <= y < h and allowed[y, x]):
            heading += math.pi  # from an edge start, into the part
    points = [start]
    # Cracks along the grain do not branch: a branch is a turn, and turns let the model tell them from marks.
    for branch in range(1 + int(along is None and rng.random() < 0.3)):
        # A slowly drifting course with independent jitter per step: jagged but going somewhere, as a
        # crack does (an accumulating random walk alone gives smooth curls).
        steps = int(rng.integers(10, 30))
        step = length / steps * (rng.uniform(0.25, 0.5) if branch else 1.0)
        point = start if branch == 0 else points[int(rng.integers(len(points) // 4, 3 * len(points) // 4 + 1))]
        course = heading if branch == 0 else heading + rng.choice([-1, 1]) * rng.uniform(0.7, 1.4)
        points = [point]
        for _ in range(steps):
            course += rng.normal(0, drift)
            direction = course + rng.normal(0, jitter)
            point = point + step * np.array([math.cos(direction), math.sin(direction)])
            points.append(point)
        cv2.polylines(mask, [np.round(np.array(points)).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    return mask.astype(bool)


def pits_mask(shape: tuple[int, int], rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """One to three small irregular ellipses (blowholes, pits, spots)."""
    h, w = shape
    unit = min(h, w) / 256
    mask = np.zeros((h, w), np.uint8)
    ys, xs = np.nonzero(allowed)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(ys)))
        axes = (max(1, int(rng.uniform(2, 14) * unit)), max(1, int(rng.uniform(2, 14) * unit)))
        cv2.ellipse(mask, (int(xs[i]), int(ys[i])), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    return mask.astype(bool)


def chip_mask(shape: tuple[int, int], rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """A piece broken off the part's edge: a jagged polygon centred on the foreground's border (the image
    border when the foreground is the whole frame)."""
    h, w = shape
    unit = min(h, w) / 256
    ys, xs = edge_pixels(allowed)
    if len(ys) == 0:
        ys, xs = np.nonzero(allowed)
    i = int(rng.integers(len(ys)))
    radius = rng.uniform(15, 60) * unit + 2
    n = int(rng.integers(8, 16))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = radius * rng.uniform(0.35, 1.0, n)
    polygon = np.stack([xs[i] + radii * np.cos(angles), ys[i] + radii * np.sin(angles)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask.astype(bool)


def defect_shape(kind: str, shape: tuple[int, int], rng: np.random.Generator, allowed: np.ndarray,
                 along: float | None = None) -> np.ndarray:
    if kind == "blob":
        # Scales up to 2^4 periods: DRAEM's 2^5 turns a 256 px frame into a hundred specks, a pattern no
        # real surface defect has (the other shapes cover the small ones).
        return perlin_mask(shape, rng, max_scale_exp=5).astype(bool)
    if kind == "crack":
        return crack_mask(shape, rng, allowed, along)
    return {"pits": pits_mask, "chip": chip_mask}[kind](shape, rng, allowed)


def appearance_source(
    image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources, window: tuple[int, int, int, int]
) -> np.ndarray:
    """Real image content for the defect, from a bank chosen uniformly among the non-empty ones, under a
    random affine transform; the image's own content (moved and rotated) when every bank is empty.
    Only ``window`` (y0, y1, x0, x1) of the frame is computed."""
    banks = [b for b in (sources.normal_images, sources.defects, sources.textures) if b]
    if banks:
        bank = banks[int(rng.integers(len(banks)))]
        source = match_channels(bank[int(rng.integers(len(bank)))], image)
    else:
        source = image
    return random_affine(source, image.shape[:2], rng, scale_range=(0.5, 2.0), max_angle=180, window=window)


def enhance(values: np.ndarray, rng: np.random.Generator, polarity: float, surface: float,
            dark: tuple[float, float] = (0.2, 0.65)) -> np.ndarray:
    """Colour/brightness enhancement of uint8 pixel values ((N,) or (N, 3)): gamma and contrast, then
    the level moved relative to ``surface`` (the mean grey level the defect covers): ``polarity`` -1 to
    ``dark`` (20-65%) of it (a shadowed cavity), +1 to 40-110 levels above it (a reflection), 0 to within
    ±50 of it. float32 [0, 255]."""
    gamma_table = (255.0 * (np.arange(256, dtype=np.float32) / 255.0) ** rng.uniform(0.7, 1.4)).astype(np.float32)
    x = gamma_table[values]
    mean = float(x.mean())
    x = (x - mean) * np.float32(rng.uniform(0.5, 1.5))
    if polarity < 0:
        level = surface * rng.uniform(*dark)
    elif polarity > 0:
        level = surface + rng.uniform(40, 110)
    else:
        level = surface + rng.uniform(-50, 50)
    x += np.float32(level)
    if x.ndim == 2 and rng.random() < 0.3:
        x *= rng.uniform(0.8, 1.2, size=3).astype(np.float32)  # tint
    return np.clip(x, 0, 255)


@register("realistic")
def realistic(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources) -> tuple[np.ndarray, np.ndarray]:
    grain = texture_direction(image)
    kind = SHAPES[int(rng.choice(len(SHAPES), p=SHAPE_PROBS if grain is None else GRAINED_SHAPE_PROBS))]
    along = grain if kind == "crack" and rng.random() < GRAIN_CRACK_PROB else None
    return paint_defect(image, rng, sources, kind, along)


def paint_defect(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources, kind: str,
                 along: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One realistic defect of shape ``kind`` (one of SHAPES); a crack follows ``along`` (radians) if given.
    ``realistic`` draws the shape; this is also how a probe asks for one shape (benchmarks/score_reading.py)."""
    if kind not in SHAPES:
        raise ValueError(f"unknown defect shape {kind!r}; choose from {', '.join(SHAPES)}")
    if along is not None and kind != "crack":
        raise ValueError(f"only a crack follows a direction, not a {kind}")
    h, w = image.shape[:2]
    foreground = foreground_mask(image, sources.foreground)
    # A few pixels cut off by the frame or the foreground are a label nobody could see: redraw those.
    min_area = max(1.0, MIN_AREA * h * w)
    mask = np.zeros((h, w), bool)
    for _ in range(4):
        candidate = defect_shape(kind, (h, w), rng, foreground, along) & foreground
        if candidate.sum() > mask.sum():
            mask = candidate
        if mask.sum() >= min_area:
            break
    mask = ensure_nonempty(mask, rng, foreground).astype(np.float32)
    return paint_region(image, rng, sources, mask, kind, along), mask


def paint_region(image: np.ndarray, rng: np.random.Generator, sources: SynthesisSources, mask: np.ndarray,
                 kind: str, along: float | None = None) -> np.ndarray:
    """``image`` with the pixels of ``mask`` (non-empty, (H, W)) painted as a defect of shape ``kind``: the
    appearance ``paint_defect`` gives the shapes it draws. A probe uses it to paint a region it placed itself
    (benchmarks/score_reading.py --edge-pits)."""
    dark = (0.2, 0.65)
    min_visible = 2 * MIN_VISIBLE  # thin/small shapes need more contrast to be seen
    if kind == "blob":
        polarity = 0.0
        strength = rng.uniform(0.3, 1.0)  # the paper's random linear interpolation
        min_visible = MIN_VISIBLE
    elif along is not None:
        # A crack along the grain is a hairline darker than the marks beside it, not the deep shadow of a
        # cavity: real ones on ground ferrite are 25-35% below the surface once resized to the model's scale.
        polarity, strength, dark = -1.0, rng.uniform(0.8, 1.0), (0.55, 0.85)
        min_visible = MIN_VISIBLE / 2
    else:
        polarity = -1.0 if rng.random() < 0.75 else 1.0
        strength = rng.uniform(0.6, 1.0)  # thin and small defects must stay visible
    # Everything below works on the masked pixels only: a defect costs what its area costs.
    y0, y1, x0, x1 = window = mask_window(mask)
    inside_window = mask[y0:y1, x0:x1] > 0
    original = image[y0:y1, x0:x1][inside_window].astype(np.float32)
    surface = float(original.mean())
    if polarity > 0 and surface > 200:
        polarity = -1.0  # no room to brighten a near-white surface
    values = enhance(appearance_source(image, rng, sources, window)[inside_window], rng, polarity, surface, dark)

    def paint(values: np.ndarray) -> np.ndarray:
        return np.clip(original + np.float32(strength) * (values - original) + 0.5, 0, 255).astype(np.uint8)

    painted = paint(values)
    change = painted.astype(np.float32) - original
    mean_change = float(np.abs(change).mean())
    if mean_change < min_visible:
        direction = polarity or (1.0 if float(change.mean()) > 0 else -1.0)
        if direction > 0 and surface > 200:
            direction = -1.0
        elif direction < 0 and surface < 55:
            direction = 1.0
        painted = paint(np.clip(values + direction * (min_visible - mean_change + 8) / strength, 0, 255))
    out = image.copy()
    region = out[y0:y1, x0:x1]  # a view: writing into it writes into out
    region[inside_window] = painted
    return out
