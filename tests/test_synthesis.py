"""Anomaly synthesis: mask/pixel invariants, determinism, odd sizes, gray and RGB, every method."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from defectray.synthesis import (
    SYNTHESIZERS,
    SynthesisSources,
    foreground_mask,
    get_synthesizer,
    list_synthesizers,
    load_bank,
    perlin_mask,
    perlin_noise,
    register,
    synthesize_batch,
)
from defectray.synthesis.perlin import perlin_noise_reference
from defectray.synthesis.poisson import poisson_clone
from tests.conftest import tile_image

METHODS = ["cutpaste", "cutpaste-scar", "draem", "fpi", "memseg", "nsa", "realistic"]


def procedural_texture(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """A colourful texture: Perlin noise at two scales per channel, mapped to 0..255."""
    planes = [
        perlin_noise((h, w), (4, 4), rng) + 0.5 * perlin_noise((h, w), (16, 16), rng) for _ in range(channels)
    ]
    x = np.stack(planes, axis=-1) if channels == 3 else planes[0]
    return np.clip((x + 1.5) * 85, 0, 255).astype(np.uint8)


def make_image(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    gray = tile_image(rng, h, w)
    if channels == 1:
        return gray
    tint = np.array([1.0, 0.8, 0.6], np.float32)
    return np.clip(gray[..., None] * tint + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)


def make_sources(rng: np.random.Generator, channels: int, with_banks: bool) -> SynthesisSources:
    if not with_banks:
        return SynthesisSources()
    from skimage import data

    textures = [procedural_texture(rng, 90, 120, 3), data.brick()[:200, :300]]  # RGB and gray mixed
    return SynthesisSources(
        normal_images=[make_image(rng, 70, 50, channels) for _ in range(3)],
        textures=textures,
        defects=[procedural_texture(rng, 20, 30, channels)],
    )


# ---- registry ------------------------------------------------------------------------------------


def test_registry_lists_every_method():
    assert list_synthesizers() == sorted(METHODS)
    assert set(SYNTHESIZERS) == set(METHODS)
    assert get_synthesizer("realistic") is SYNTHESIZERS["realistic"]


def test_unknown_method_error_lists_known_names():
    with pytest.raises(ValueError, match="realistic") as e:
        get_synthesizer("perlin-magic")
    assert "perlin-magic" in str(e.value) and "draem" in str(e.value)


def test_register_rejects_duplicate_names():
    with pytest.raises(ValueError, match="twice"):
        register("draem")(lambda image, rng, sources: (image, image))


# ---- Perlin --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,scale", [((32, 32), (4, 4)), ((23, 37), (2, 8)), ((17, 9), (1, 1)), ((40, 13), (32, 4))])
def test_vectorised_perlin_matches_per_pixel_reference(shape, scale):
    fast = perlin_noise(shape, scale, np.random.default_rng(7))
    slow = perlin_noise_reference(shape, scale, np.random.default_rng(7))
    assert fast.shape == shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_perlin_noise_any_size_is_smooth_and_bounded():
    noise = perlin_noise((199, 602), (8, 32), np.random.default_rng(0))
    assert noise.shape == (199, 602)
    assert -1.01 <= noise.min() < -0.3 and 0.3 < noise.max() <= 1.01
    # Neighbouring pixels differ little: noise, not per-pixel random values.
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2


@pytest.mark.parametrize("shape", [(256, 256), (199, 602), (7, 5), (1, 1)])
def test_perlin_mask_is_binary_and_never_empty(shape):
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = perlin_mask(shape, rng)
        assert mask.shape == shape and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any()


def test_perlin_mask_covers_varied_fractions():
    rng = np.random.default_rng(2)
    fractions = [perlin_mask((128, 128), rng).mean() for _ in range(60)]
    assert 0.02 < np.median(fractions) < 0.4
    assert max(fractions) > 2 * min(fractions)


# ---- every method: invariants -------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("channels,shape", [(1, (199, 602)), (3, (96, 64)), (1, (5, 8)), (3, (256, 256))])
@pytest.mark.parametrize("with_banks", [True, False])
def test_method_invariants(method, channels, shape, with_banks):
    rng = np.random.default_rng(hash((method, channels, shape, with_banks)) % 2**32)
    sources = make_sources(rng, channels, with_banks)
    synthesize = get_synthesizer(method)
    changed_any = False
    for _ in range(6):
        image = make_image(rng, *shape, channels)
        original = image.copy()
        damaged, mask = synthesize(image, rng, sources)
        assert np.array_equal(image, original), "the input image must not be modified"
        assert damaged.shape == image.shape and damaged.dtype == np.uint8
        assert mask.shape == shape and mask.dtype == np.float32
        assert mask.min() >= 0 and mask.max() <= 1 and mask.any(), "mask must be in [0, 1] and non-empty"
        outside = mask == 0
        assert np.array_equal(damaged[outside], image[outside]), "pixels outside the mask must be unchanged"
        changed_any |= not np.array_equal(damaged, image)
    assert changed_any


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_identical_output_and_other_seed_differs(method):
    rng = np.random.default_rng(0)
    image = make_image(rng, 120, 90, 3)
    sources = make_sources(rng, 3, True)
    runs = []
    for seed in (5, 5, 6):
        g = np.random.default_rng(seed)
        runs.append([get_synthesizer(method)(image, g, sources) for _ in range(3)])
    for (d1, m1), (d2, m2) in zip(runs[0], runs[1]):
        assert d1.tobytes() == d2.tobytes() and m1.tobytes() == m2.tobytes()
    assert any(d1.tobytes() != d3.tobytes() for (d1, _), (d3, _) in zip(runs[0], runs[2]))


def test_binary_methods_give_binary_masks_and_fpi_soft_masks():
    rng = np.random.default_rng(3)
    image = make_image(rng, 64, 64, 1)
    sources = make_sources(rng, 1, True)
    for method in ["cutpaste", "cutpaste-scar", "draem", "memseg", "nsa", "realistic"]:
        _, mask = get_synthesizer(method)(image, rng, sources)
        assert set(np.unique(mask)) <= {0.0, 1.0}, method
    _, mask = get_synthesizer("fpi")(image, rng, sources)
    values = np.unique(mask)
    assert len(values) == 2 and 0 < values[1] <= 1, "fpi: mask is 0 or the interpolation factor"


def test_fpi_mask_equals_interpolation_factor():
    rng = np.random.default_rng(4)
    image = np.full((50, 60), 100, np.uint8)
    foreign = np.full((50, 60), 200, np.uint8)
    damaged, mask = get_synthesizer("fpi")(image, rng, SynthesisSources(normal_images=[foreign]))
    inside = mask > 0
    alpha = float(mask[inside][0])
    assert np.all(np.abs(damaged[inside].astype(float) - (100 + 100 * alpha)) <= 1)


# ---- realistic, the paper's method --------------------------------------------------------------


def test_realistic_defects_are_visible_on_tiles():
    """Realistic uses other normal tiles as appearance: without enhancement the change would be invisible.
    Nearly every sample must change the masked pixels noticeably (mean |change| >= 10 grey levels)."""
    rng = np.random.default_rng(5)
    normals = [tile_image(rng, 128, 128) for _ in range(8)]
    sources = SynthesisSources(normal_images=normals[4:])
    changes = []
    for i in range(60):
        image = normals[i % 4]
        damaged, mask = get_synthesizer("realistic")(image, rng, sources)
        inside = mask > 0
        changes.append(np.abs(damaged[inside].astype(float) - image[inside]).mean())
    assert np.mean(np.array(changes) >= 10) >= 0.95


def test_realistic_makes_thin_cracks_and_compact_defects_not_only_blobs():
    rng = np.random.default_rng(6)
    image = tile_image(rng, 256, 256)
    sources = SynthesisSources(normal_images=[tile_image(rng, 256, 256)])
    thin = 0
    for _ in range(80):
        _, mask = get_synthesizer("realistic")(image, rng, sources)
        m = mask.astype(np.uint8)
        # A thin structure disappears under an erosion that leaves a blob standing.
        eroded = cv2.erode(m, np.ones((5, 5), np.uint8))
        if m.sum() >= 30 and eroded.sum() < 0.1 * m.sum():
            thin += 1
    assert thin >= 8


def streaked_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A ground surface: vertical grinding marks (column noise smeared along y) over mild shading."""
    marks = cv2.GaussianBlur(rng.normal(0, 25, (h, w)).astype(np.float32), (0, 0), sigmaX=0.8, sigmaY=12)
    return np.clip(110 + marks, 0, 255).astype(np.uint8)


def test_texture_direction_finds_the_grain_or_none():
    from defectray.synthesis.realistic import texture_direction

    rng = np.random.default_rng(61)
    vertical = texture_direction(streaked_image(rng, 128, 160))
    assert vertical is not None and abs(math.sin(vertical)) > 0.98
    horizontal = texture_direction(streaked_image(rng, 160, 128).T.copy())
    assert horizontal is not None and abs(math.cos(horizontal)) > 0.98
    assert texture_direction(tile_image(rng, 128, 128)) is None  # isotropic grain


def test_realistic_cracks_often_follow_the_grain_faintly(monkeypatch):
    """On a streaked surface many cracks run along the marks (a crack across them is the easy case) and
    those are fainter than the cavity-dark ones; on an isotropic surface headings stay uniform."""
    from defectray.synthesis import realistic as realistic_module

    monkeypatch.setattr(realistic_module, "SHAPE_PROBS", (0.0, 1.0, 0.0, 0.0))
    monkeypatch.setattr(realistic_module, "GRAINED_SHAPE_PROBS", (0.0, 1.0, 0.0, 0.0))
    rng = np.random.default_rng(62)

    def vertical_share(make):
        image = make(rng, 128, 128)
        sources = SynthesisSources(normal_images=[make(rng, 128, 128)])
        near_vertical, changes = 0, []
        for _ in range(120):
            damaged, mask = get_synthesizer("realistic")(image, rng, sources)
            ys, xs = np.nonzero(mask)
            changes.append(np.abs(damaged[mask > 0].astype(float) - image[mask > 0]).mean())
            if len(ys) < 8:
                continue
            _, vectors = np.linalg.eigh(np.cov(np.stack([xs, ys]).astype(float)))
            near_vertical += abs(vectors[1, 1]) > math.cos(math.radians(15))  # principal axis within 15 deg
        return near_vertical / 120, np.array(changes)

    streaked, streaked_changes = vertical_share(streaked_image)
    isotropic, isotropic_changes = vertical_share(tile_image)
    assert streaked >= 0.4 and isotropic <= 0.3, (streaked, isotropic)
    assert np.median(streaked_changes) < np.median(isotropic_changes)
    assert (streaked_changes >= realistic_module.MIN_VISIBLE / 2 - 0.5).all()  # faint, never invisible


def test_paint_defect_paints_the_shape_asked_for():
    """A probe asks for one shape (benchmarks/score_reading.py --by-shape): a crack along a vertical grain
    is a near-vertical line, pits are compact, and a wrong request is an error, not a silent other shape."""
    from defectray.synthesis.realistic import SHAPES, paint_defect, texture_direction

    rng = np.random.default_rng(63)
    image = streaked_image(rng, 128, 128)
    sources = SynthesisSources(normal_images=[streaked_image(rng, 128, 128)])
    along = texture_direction(image)
    for _ in range(10):
        damaged, mask = paint_defect(image, rng, sources, "crack", along)
        ys, xs = np.nonzero(mask)
        assert np.ptp(ys) > 4 * max(1, np.ptp(xs))  # long and vertical: it follows the marks
        assert (damaged[mask == 0] == image[mask == 0]).all()
        _, pits = paint_defect(image, rng, sources, "pits")
        assert 0 < pits.sum() < 0.1 * pits.size
    assert set(SHAPES) == {"blob", "crack", "pits", "chip"}
    with pytest.raises(ValueError, match="unknown defect shape"):
        paint_defect(image, rng, sources, "scratch")
    with pytest.raises(ValueError, match="only a crack"):
        paint_defect(image, rng, sources, "pits", along)


def test_paint_region_paints_a_placed_pit_visibly_and_nothing_else():
    """A probe places a pit itself (benchmarks/score_reading.py --edge-pits: one cut by the frame) and paints it
    as ``paint_defect`` paints its own pits: only the masked pixels change, by at least the visibility floor."""
    from skimage import data

    from defectray.synthesis.realistic import MIN_VISIBLE, paint_region

    image = data.brick()[:128, :128]
    rng = np.random.default_rng(30)
    for x in (0, 2, 127):
        mask = np.zeros((128, 128), np.uint8)
        cv2.ellipse(mask, (x, 64), (2, 3), 0, 0, 360, 1, -1)
        damaged = paint_region(image, rng, SynthesisSources(foreground="full"), mask.astype(np.float32), "pits")
        inside = mask > 0
        assert (damaged[~inside] == image[~inside]).all()
        assert np.abs(damaged[inside].astype(np.float32) - image[inside]).mean() >= 2 * MIN_VISIBLE - 0.5


@pytest.mark.parametrize("method", ["realistic", "memseg", "nsa"])
def test_foreground_aware_methods_stay_inside_roi(method):
    rng = np.random.default_rng(7)
    roi = np.zeros((80, 120), np.uint8)
    roi[20:60, 30:90] = 1
    sources = SynthesisSources(normal_images=[tile_image(rng, 80, 120)], foreground=roi)
    for _ in range(15):
        _, mask = get_synthesizer(method)(tile_image(rng, 80, 120), rng, sources)
        assert mask.any() and not mask[roi == 0].any()


# ---- foreground ---------------------------------------------------------------------------------


def test_otsu_foreground_finds_object_on_background():
    rng = np.random.default_rng(8)
    image = np.full((120, 160), 30, np.uint8)
    cv2.circle(image, (80, 60), 40, 200, -1)
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    fg = foreground_mask(image, "otsu")
    disc = np.zeros_like(image)
    cv2.circle(disc, (80, 60), 40, 1, -1)
    assert (fg == disc.astype(bool)).mean() > 0.97
    # Inverted (dark object on a bright background): still the object.
    fg_inv = foreground_mask(255 - image, "otsu")
    assert (fg_inv == disc.astype(bool)).mean() > 0.97


def test_textured_surface_foreground_is_whole_frame():
    rng = np.random.default_rng(9)
    assert foreground_mask(tile_image(rng, 100, 140), "otsu").all()
    from skimage import data

    assert foreground_mask(data.gravel(), "otsu").all()


def part_with_dark_corners(rng: np.random.Generator, h: int = 120, w: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """A frame-filling part photographed close up: dark background wedges at two corners (as magnetic tiles'
    rounded corners show), and the wedges' mask."""
    image = tile_image(rng, h, w)
    wedges = np.zeros((h, w), np.uint8)
    cv2.fillPoly(wedges, [np.array([[0, 0], [14, 0], [0, 18]], np.int32)], 1)
    cv2.fillPoly(wedges, [np.array([[w - 1, h - 1], [w - 16, h - 1], [w - 1, h - 12]], np.int32)], 1)
    image[wedges > 0] = rng.integers(5, 20, int(wedges.sum()))
    return image, wedges.astype(bool)


def test_dark_background_at_a_frame_filling_parts_corners_is_not_foreground():
    rng = np.random.default_rng(11)
    image, wedges = part_with_dark_corners(rng)
    fg = foreground_mask(image, "otsu")
    assert not fg[wedges].any()  # the wedges are background
    assert fg.mean() > 0.9  # the part is not
    # The same part under another exposure: the rule is relative to the surface, not a grey level.
    assert not foreground_mask((image * 0.4).astype(np.uint8), "otsu")[wedges].any()
    # A dark spot inside the part (a pit, a stain) is surface, not background: it does not touch the border.
    spotted = image.copy()
    cv2.circle(spotted, (45, 60), 6, 8, -1)
    assert foreground_mask(spotted, "otsu")[54:67, 39:52].all()


def test_realistic_defects_stay_off_the_background_at_a_parts_corners():
    rng = np.random.default_rng(12)
    image, wedges = part_with_dark_corners(rng)
    sources = SynthesisSources(normal_images=[part_with_dark_corners(rng)[0]])
    for _ in range(40):  # every shape, chips cut into the part's edge included
        damaged, mask = get_synthesizer("realistic")(image, rng, sources)
        assert mask.any() and not mask[wedges].any() and (damaged[wedges] == image[wedges]).all()


def test_foreground_modes():
    image = np.zeros((10, 20), np.uint8)
    assert foreground_mask(image, "full").all()
    roi = np.zeros((5, 10), np.uint8)
    roi[1:3, 2:6] = 255
    fg = foreground_mask(image, roi)  # resized to the image
    assert fg.shape == (10, 20) and fg[2:6, 4:12].all() and fg.sum() == 32
    with pytest.raises(ValueError, match="otsu"):
        foreground_mask(image, "everything")
    with pytest.raises(ValueError, match="empty"):
        foreground_mask(image, np.zeros((10, 20), bool))


# ---- banks ---------------------------------------------------------------------------------------


def test_load_bank_local_folder(tmp_path):
    rng = np.random.default_rng(10)
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "a.png"), procedural_texture(rng, 40, 80, 3))
    cv2.imwrite(str(tmp_path / "sub" / "b.jpg"), procedural_texture(rng, 100, 50, 1))
    (tmp_path / "notes.txt").write_text("not an image")
    bank = load_bank(str(tmp_path), channels=3, size=32)
    assert [b.shape for b in bank] == [(32, 64, 3), (64, 32, 3)]
    assert all(b.dtype == np.uint8 for b in bank)
    assert len(load_bank(str(tmp_path), limit=1)) == 1
    assert load_bank(str(tmp_path), channels=1)[0].ndim == 2
    assert load_bank(None) == [] and load_bank("") == []


def test_load_bank_fsspec_uri():
    import fsspec

    from defectray import io

    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(11)
    for i in range(3):
        with fs.open(f"/texbank/t{i}.png", "wb") as f:
            f.write(io.encode_png(procedural_texture(rng, 30, 30, 3)))
    bank = load_bank("memory://texbank", channels=1)
    assert len(bank) == 3 and bank[0].shape == (30, 30)


def test_load_bank_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_bank(str(tmp_path))  # no images
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        load_bank(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_bank(str(tmp_path / "missing"))


# ---- Poisson blending (NSA) ----------------------------------------------------------------------


def test_poisson_clone_keeps_donor_gradients_and_target_border():
    rng = np.random.default_rng(12)
    target = rng.integers(0, 255, (40, 50)).astype(np.uint8)
    donor = (rng.random((40, 50)) * 100 + 50).astype(np.uint8)
    out = poisson_clone(target, donor, 5, 7, 20, 30)
    outside = np.ones_like(target, bool)
    outside[5:25, 7:37] = False
    assert np.array_equal(out[outside], target[outside])

    def laplacian(a):
        a = a.astype(float)
        return 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]

    # Inside: the donor's Laplacian, up to rounding to uint8.
    assert np.abs(laplacian(out[4:26, 6:38]) - laplacian(donor[4:26, 6:38])).max() <= 4
    # A constant offset of the donor changes nothing (only gradients are cloned).
    shifted = poisson_clone(target, donor + 30, 5, 7, 20, 30)
    assert np.abs(shifted.astype(int) - out).max() <= 1


# ---- batches -------------------------------------------------------------------------------------


def test_synthesize_batch_probabilities_and_shapes():
    rng = np.random.default_rng(13)
    images = np.stack([tile_image(rng, 48, 64) for _ in range(6)])
    sources = SynthesisSources(normal_images=[tile_image(rng, 48, 64)])
    damaged, clean, masks = synthesize_batch(images, "realistic", np.random.default_rng(0), sources, anomaly_prob=0.0)
    assert damaged.shape == clean.shape == images.shape and masks.shape == (6, 48, 64)
    assert np.array_equal(damaged, images) and np.array_equal(clean, images) and not masks.any()

    damaged, clean, masks = synthesize_batch(images, "draem", np.random.default_rng(0), sources, anomaly_prob=1.0)
    assert np.array_equal(clean, images) and masks.dtype == np.float32
    for d, c, m in zip(damaged, clean, masks):
        assert m.any() and np.array_equal(d[m == 0], c[m == 0])

    counts = [
        sum(m.any() for m in synthesize_batch(images, "fpi", np.random.default_rng(s), sources, 0.5)[2])
        for s in range(20)
    ]
    assert 0.3 < np.mean(counts) / 6 < 0.7


def test_vary_exposure_scales_whole_images_within_the_range_and_never_clips_a_bright_one():
    from defectray.synthesis.augment import vary_exposure

    rng = np.random.default_rng(15)
    image = tile_image(rng, 48, 64)
    assert vary_exposure(image, rng, 0.0) is image
    gains, unchanged = [], 0
    for seed in range(200):
        out = vary_exposure(image, np.random.default_rng(seed), 0.6)
        if out is image:
            unchanged += 1
            continue
        gain = out.astype(np.float64).sum() / image.astype(np.float64).sum()
        # the same picture, only brighter or darker: every pixel scaled alike (to rounding)
        assert np.abs(out.astype(np.float64) - image * gain).max() <= 1.0
        gains.append(gain)
    assert 70 < unchanged < 130
    assert 1 / 1.6 - 0.01 < min(gains) < 0.75 and 1.3 < max(gains) < 1.6 + 0.01

    bright = (image.astype(int) + 60).astype(np.uint8)  # 159-213
    cap = 255 / np.percentile(bright, 99)  # the most gain before the brightest 1 % would clip
    assert cap < 1.3
    mid = bright < 200  # not clipped at any gain up to the cap
    top = []
    for seed in range(100):
        out = vary_exposure(bright, np.random.default_rng(seed), 0.6)
        top.append(np.median(out[mid] / bright[mid].astype(np.float64)))
    assert max(top) <= cap + 0.02 and max(top) > 1.0


def test_synthesize_batch_rotation_and_rgb():
    rng = np.random.default_rng(14)
    rect = np.stack([make_image(rng, 40, 70, 3) for _ in range(4)])
    _, clean, _ = synthesize_batch(rect, "draem", np.random.default_rng(0), SynthesisSources(), 0.0, rotate_prob=1.0)
    for c, r in zip(clean, rect):
        assert np.array_equal(c, r[::-1, ::-1])  # non-square: 180 degrees
    square = np.stack([make_image(rng, 32, 32, 3) for _ in range(8)])
    damaged, clean, masks = synthesize_batch(square, "realistic", np.random.default_rng(1), SynthesisSources(), 1.0, 1.0)
    for c, s in zip(clean, square):
        assert any(np.array_equal(c, np.rot90(s, k)) for k in (1, 2, 3))
    assert all(m.any() for m in masks) and damaged.shape == square.shape


def test_synthesize_batch_roi_turns_with_the_image():
    # ROI: the left half. A non-square image is turned by half a turn, so its ROI is now the right half,
    # where every defect must land (before the fix they landed on the left, outside the part).
    image = np.full((1, 32, 48), 128, np.uint8)
    roi = np.zeros((32, 48), bool)
    roi[:, :24] = True
    for seed in range(12):
        _, _, masks = synthesize_batch(image, "realistic", np.random.default_rng(seed),
                                       SynthesisSources(foreground=roi), 1.0, 1.0)
        assert masks[0].any() and not masks[0][:, :24].any(), seed


def test_synthesize_batch_deterministic_and_channel_dim_one():
    rng = np.random.default_rng(15)
    images = np.stack([tile_image(rng, 30, 30) for _ in range(5)])[..., None]  # (B, H, W, 1)
    a = synthesize_batch(images, "realistic", np.random.default_rng(3), SynthesisSources(), 0.7, 0.3)
    b = synthesize_batch(images, "realistic", np.random.default_rng(3), SynthesisSources(), 0.7, 0.3)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert a[0].shape == images.shape and a[2].shape == (5, 30, 30)


def test_synthesize_batch_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        synthesize_batch(np.zeros((2, 8, 8), np.float32), "draem", np.random.default_rng(0), SynthesisSources())
    with pytest.raises(ValueError, match="known"):
        synthesize_batch(np.zeros((2, 8, 8), np.uint8), "nope", np.random.default_rng(0), SynthesisSources())


# ---- mixes of methods ------------------------------------------------------------------------------


def _marker(value: int):
    def paint(image, rng, sources):
        rng.random()  # a method consumes draws of its own, as the real ones do
        mask = np.zeros(image.shape[:2], np.float32)
        mask[0, 0] = 1
        out = image.copy()
        out[0, 0] = value
        return out, mask

    return paint


def test_mix_paints_each_defect_with_one_method_drawn_by_weight(monkeypatch):
    monkeypatch.setitem(SYNTHESIZERS, "mark-a", _marker(10))
    monkeypatch.setitem(SYNTHESIZERS, "mark-b", _marker(200))
    mixed = get_synthesizer("mark-a:0.7, mark-b:0.3")
    image = np.full((8, 8), 100, np.uint8)
    rng = np.random.default_rng(0)
    picks = [int(mixed(image, rng, SynthesisSources())[0][0, 0]) for _ in range(4000)]
    assert set(picks) == {10, 200}
    assert picks.count(200) / len(picks) == pytest.approx(0.3, abs=0.025)
    # weights need not sum to 1
    rng = np.random.default_rng(0)
    assert [int(get_synthesizer("mark-a:7,mark-b:3")(image, rng, SynthesisSources())[0][0, 0])
            for _ in range(4000)] == picks


def test_mix_of_real_methods_is_deterministic_and_keeps_the_invariants():
    rng = np.random.default_rng(4)
    image = make_image(rng, 64, 80, 1)
    sources = make_sources(rng, 1, with_banks=True)
    mixed = get_synthesizer("realistic:0.7,nsa:0.3")
    first = [mixed(image, np.random.default_rng(s), sources) for s in range(12)]
    again = [mixed(image, np.random.default_rng(s), sources) for s in range(12)]
    for (d1, m1), (d2, m2) in zip(first, again):
        assert np.array_equal(d1, d2) and np.array_equal(m1, m2)
        assert d1.shape == image.shape and d1.dtype == np.uint8
        assert m1.any() and np.array_equal(d1[m1 == 0], image[m1 == 0])
    damaged, clean, masks = synthesize_batch(np.stack([image] * 4), "realistic:0.7,nsa:0.3",
                                             np.random.default_rng(1), sources, anomaly_prob=1.0)
    assert damaged.shape == clean.shape == (4, 64, 80) and all(m.any() for m in masks)


def test_a_one_method_spec_is_that_method():
    assert get_synthesizer("realistic:1") is SYNTHESIZERS["realistic"]
    assert get_synthesizer(" nsa ") is SYNTHESIZERS["nsa"]


@pytest.mark.parametrize("spec, message", [
    ("realistic:0.7,nsa", "positive weight"),
    ("realistic:0,nsa:1", "positive weight"),
    ("realistic:-1,nsa:1", "positive weight"),
    ("realistic:x,nsa:1", "positive weight"),
    ("realistic:inf,nsa:1", "positive weight"),
    ("realistic:0.5,realistic:0.5", "twice"),
    ("realistic:0.7,perlin-magic:0.3", "unknown synthesis method 'perlin-magic'"),
])
def test_bad_mix_specs_fail_with_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        get_synthesizer(spec)
