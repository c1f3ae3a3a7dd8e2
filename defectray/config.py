"""One config object for a training job: printable, serialisable, stored inside every model file.

Named profiles give complete starting points; ``--config FILE`` (JSON) and single overrides change fields.
Every row of the paper's ablation is a field here (deep features, large kernels, synthesis source,
copying vs gradient), so an ablation is a list of configs, not a code change.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Config:
    # --- data -----------------------------------------------------------------------------------
    image_size: int = 256  # the network's square input: tiles of this size (see fit)
    # "tiles": keep the aspect ratio (short side -> image_size, square tiles along the long side);
    # "stretch": squeeze the image into one square (DRAEM). defectray/models/tiling.py says why tiles.
    fit: str = "tiles"
    # Side of the square training views (random crops of the fitted image); None = image_size. Smaller views
    # cost less per sample while defects keep their scale (inference still runs image_size tiles). cpu-small
    # at 96 (BENCHMARKS.md, session 16): 1.6x the steps in 20 min, crack image AUROC 0.95-0.97 over two seeds
    # (0.77-0.91 at 128), breaks lower (0.83-0.86 vs 0.87-0.93); overall level, so opt-in.
    # Views narrower than the fitted short side rarely touch the image border that every inference tile has:
    # at image_size=160 with 128 views the maps peaked there, image AUROC 0.852 (BENCHMARKS.md, session 18).
    train_crop: int | None = None
    # stretch each image's 1-99 % grey-level quantiles to 0..255 (tiling.stretch_levels). Off: at the bf16 cpu-small
    # default 0.930 / 0.902 image AUROC at seeds 0 / 1 against 0.938 / 0.927 (BENCHMARKS.md, session 34)
    auto_levels: bool = False
    channels: int = 3  # 1 = grayscale model, 3 = RGB model; inputs are converted to this
    val_fraction: float = 0.1  # normal training images held out for calibration (and validation)

    # --- synthesis ------------------------------------------------------------------------------
    # a name from defectray.synthesis.SYNTHESIZERS, or a mix by weight such as "realistic:0.7,nsa:0.3" (each
    # defect painted by one of them). That mix in cpu-small: image AUROC 0.943 / 0.871 / 0.929 at seeds 0-2 (mean
    # 0.914, breaks 0.949 at seed 0 only); "realistic:0.85,nsa:0.15" 0.881 at seed 1; not the default
    # (BENCHMARKS.md, sessions 45-46)
    synthesis: str = "realistic"
    anomaly_prob: float = 0.5  # fraction of training samples that get a synthetic defect
    rotate_prob: float = 0.3  # DRAEM rotates training images with this probability
    # Half the training views as if under another exposure: grey levels times a gain from 1/(1+x) to 1+x
    # (synthesis/augment.vary_exposure), before the defect is painted. 0 = off.
    exposure_jitter: float = 0.0
    textures: str | None = None  # folder/URI of texture images (DTD or the user's own); optional
    defects: str | None = None  # folder/URI of real defect crops for the `realistic` bank; optional
    foreground: str = "otsu"  # "otsu", "full" (flat textured surfaces) or a URI of an ROI mask

    # --- reconstruction network -------------------------------------------------------------------
    # 0 = no reconstruction network: the prediction net sees the image alone (needs feature_extractor="none").
    # A cpu-small step ~0.6x as dear; on 2 cores level image AUROC, also with the time spent on a prediction net of
    # width 24 (four seeds: mean 0.930 against the default's 0.932; BENCHMARKS.md, sessions 42-43)
    recon_base_width: int = 128
    recon_depth: int = 5  # encoder blocks (width doubles up to x8)
    # decoder stages of both networks: "resize-conv" (DRAEM) or "conv-resize" (the width-halving conv at the
    # coarser level: same weights, ~20 % less time per cpu-small step; defectray/models/layers.upsample_stage)
    upsample: str = "resize-conv"
    # how both networks' convs treat the frame: "zeros" (DRAEM) or "partial" (partial-convolution padding:
    # the output near the frame scaled by taps / taps inside the image, so no black band; models/layers.py).
    # cpu-small, seeds 0-3: image AUROC 0.935 / 0.911 / 0.927 / 0.929 against zeros' 0.930 / 0.910 / 0.917 / 0.946,
    # level on average; AUPRO up at two seeds, pixel AUROC down at one; opt-in (BENCHMARKS.md, session 47)
    padding: str = "zeros"
    # both networks' normalisation: "batch" (DRAEM) or "group" (GroupNorm, 8 groups: each image's own statistics,
    # the same in training and inference; models/layers.py). "group" cannot be folded into the convs, so CPU
    # inference is ~1.2x dearer. cpu-small uses "group" in the prediction net only (see recon_norm, PROFILES).
    norm: str = "batch"
    # the reconstruction network's own normalisation, if not ``norm``. GroupNorm there (8 groups at width 8: one
    # channel per group) takes each image's level out of every layer of a net without skip connections, which then
    # cannot give it back: at cpu-small's budget its L2 loss ends at 0.022 against BatchNorm's 0.004. cpu-small
    # uses "batch" beside norm="group" (see PROFILES)
    recon_norm: str | None = None
    feature_extractor: str = "copy"  # "copy" | "gradient" | "timm:<name>" | "none"
    feature_weights: str | None = None  # weights file/URI for a timm extractor (else the hub, if reachable)
    feature_refresh_every: int = 100  # steps between parameter copies for feature_extractor="copy"

    # --- defect prediction network ----------------------------------------------------------------
    seg_base_width: int = 64
    seg_depth: int = 6
    large_kernel: bool = True  # RepLKNet-style blocks; False gives the plain DRAEM network
    kernel_sizes: list[int] = field(default_factory=lambda: [31, 29, 27, 13])  # at 256 px, scaled (prediction.py)

    # --- losses ---------------------------------------------------------------------------------
    l2_weight: float = 1.0
    ssim_weight: float = 0.8  # lambda = 1, 0.8, 0.2 -> L2, SSIM, feature (see defectray/models/losses.py)
    feature_weight: float = 0.2
    focal_gamma: float = 2.0
    focal_weight: float = 1.0
    dice_weight: float = 0.0  # per-image Dice on the defect channel: thin defects weigh like big ones (losses.py)
    peak_weight: float = 0.0  # each image's peak defect probability, what the image score reads (losses.py)
    # A third output channel for the image score, trained like the defect channel plus the peak loss, so the
    # peak loss shapes the image score without making the pixel map shy (models/scoring.py output_maps):
    # "none"; "shared" (its losses train the whole network); "detached" (they train the head's own conv only)
    score_head: str = "none"

    # --- optimisation ---------------------------------------------------------------------------
    batch_size: int = 8
    # bf16 autocast on CPU, for training and for the Detector's inference (CUDA always runs under it; losses
    # stay float32 on both): "off", "on", or "auto" = on where the CPU has bf16 instructions (AVX512-BF16, AMX,
    # Arm BF16), where a cpu-small step is 1.2-1.4x cheaper and inference ~2x (BENCHMARKS.md, sessions 32-33);
    # on other CPUs bf16 is emulated and slower. Resolved on the machine that runs the model.
    cpu_bf16: str = "off"
    lr: float = 1e-4
    epochs: int = 700
    # lr x0.1 at each of these fractions of the run's budget (epochs, max_steps or max_minutes, whichever
    # runs out first; defectray.models.train_step.budget_progress)
    lr_milestones: list[float] = field(default_factory=lambda: [400 / 700, 600 / 700])
    max_steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0

    # --- scoring --------------------------------------------------------------------------------
    score_filter_size: int = 21  # mean filter at 256 px; scaled with resolution
    # image score = mean of the k highest values of the (filtered) map; k at 256 px, scaled with the area. 1 is
    # the plain max. Why more: a 1-2 px dark dot, which normal surfaces have, peaks on one or two pixels, while a
    # defect the net finds has more than a handful (models/scoring.py).
    score_top_k: int = 1
    # average each tile's map over its 4 flips (x4 inference cost; a cheap ensemble that evens out the
    # network's direction-dependent noise: BENCHMARKS.md, Accuracy)
    flip_average: bool = False
    # return each pixel map times its image score to this power (0 = off; the score itself is read from the
    # map as it was): a faint response inside a large defect then ranks above the false alarms of normal
    # images (models/scoring.gated_map)
    map_gate: float = 0.0

    profile: str = "paper"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return self.to_json()


PROFILES: dict[str, dict[str, Any]] = {
    # The paper's setting (DRAEM widths and schedule at 256 px): for GPUs.
    "paper": {},
    # Sized by measurement to learn something useful on 2 CPU cores in 20 minutes (see BENCHMARKS.md).
    "cpu-small": {
        "image_size": 128,
        "channels": 1,
        # The budget is wall time, so a cheaper step is more training. Session 13 (BENCHMARKS.md, a box half as
        # fast as earlier ones): the decoders' up-convs a level down ("conv-resize") and a reconstruction
        # net of width 8 make a step 1.7 s -> 1.1 s; batch 8 then doubles the steps again (897 -> 1,652 in
        # 20 min): pixel AUROC 0.898 -> 0.918-0.953 over 5 runs; image AUROC 0.893 -> 0.876-0.912 (within the
        # ±0.04 between seeds). An opt-in score head (score_head) traded pixel AUROC for image AUROC: not kept.
        "upsample": "conv-resize",
        "recon_base_width": 8,
        "recon_depth": 4,
        "seg_base_width": 16,
        "seg_depth": 4,
        "kernel_sizes": [31, 29, 27, 13],  # 256 px reference, scaled to 15/13/13 at 128 px (prediction.py)
        "batch_size": 8,
        # bf16 autocast where the CPU has bf16 instructions (float32 elsewhere): a step 1.2-1.4x cheaper on an
        # AVX512-BF16 EPYC, 2,611 steps in 20 minutes against 1,980 in float32; at seed 0 0.938 / 0.972 / 0.915
        # (image / pixel AUROC, AUPRO) against float32's 0.904 / 0.914 / 0.881 (BENCHMARKS.md, session 32)
        "cpu_bf16": "auto",
        "lr": 2e-4,
        "epochs": 1000,
        "max_minutes": 20.0,
        # A short budget gets one drop, for its last fifth. The paper's two (x0.1 at 4/7 and 6/7): image AUROC 0.931 /
        # 0.920 at seeds 0 / 1 against 0.930 / 0.934, pixel AUROC lower at both (BENCHMARKS.md, session 46)
        "lr_milestones": [0.8],
        # Per-image Dice beside the focal loss: a 1-px crack then weighs like a large blob. 20-minute runs
        # (BENCHMARKS.md, session 12): crack image AUROC 0.68 -> 0.88-0.96 at weights 0.1-1; pixel AUROC falls as
        # the weight rises (0.950 / 0.912 / 0.885 at 0.1 / 0.3 / 1), so the smallest weight measured. Under GroupNorm
        # 0.2 is level over four same-day seed pairs (image AUROC +0.001; cracks up, blowholes down; sessions 58-59).
        "dice_weight": 0.1,
        # The plain max of the map (1 at the 256 px reference): with Dice a crack is a confident 1-px line that
        # any mean filter dilutes (image AUROC 0.902 / 0.882 / 0.867 at 1x1 / 3x3 / 5x5 at 128 px). DRAEM's
        # 21 (11x11 here) averaged small defects away on every model measured before.
        "score_filter_size": 1,
        # The mean of the 10 highest pixels at 128 px (40 at 256). Chosen without the test split
        # (benchmarks/score_reading.py: held-out normal views against the same views with synthetic defects):
        # 10-20 pixels beat the max on all three models of session 22 (AUROC 0.976 / 0.966 / 0.983 at 10 vs
        # 0.960 / 0.962 / 0.978). On the test split the same models gain +0.024 / +0.003 / +0.010 image AUROC.
        "score_top_k": 40,
        # +0.01-0.02 pixel AUROC and AUPRO on all 5 models of session 11 (BENCHMARKS.md); inference x4
        "flip_average": True,
        # Half the training views under another exposure (gain 1/1.6..1.6). The parts are photographed under six
        # exposures and the net's false alarms followed brightness; with it the image AUROC of three seeds on a 2-core
        # AVX2 box (float32, 1,458-1,635 steps) was 0.940 / 0.943 / 0.943 against the default's 0.923 / 0.909 / 0.925
        # at the same seeds (BENCHMARKS.md, session 35)
        "exposure_jitter": 0.6,
        # GroupNorm: each image normalised by its own statistics, so an exposure's level is divided out at every
        # layer, the same in training and inference. Image AUROC at or above the BatchNorm default's at every seed
        # measured, six pairs on two boxes: bf16 seeds 0 / 1 0.943 / 0.937 (BatchNorm 0.914-0.930 / 0.910-0.934),
        # float32 seeds 0-3 0.943 / 0.908 / 0.931 / 0.931 (0.914 / 0.815 / 0.930 / 0.929: the seed-1 crack lottery
        # is gone). AUPRO higher; pixel AUROC ~0.03 lower on the float32 box (breaks at the frame), level on bf16;
        # CPU inference 1.23x dearer (BENCHMARKS.md, sessions 49-51)
        "norm": "group",
        # ...except in the reconstruction net, which it cripples (see recon_norm). BatchNorm there, float32 seeds 0-5
        # against all-GroupNorm: pixel AUROC 0.892-0.905 (mean 0.899 against 0.886; up at four seeds, level at two),
        # image AUROC (0.931 against 0.933) and AUPRO (0.927 against 0.930) level; its BatchNorms fold at inference,
        # 1.24x the images/s (BENCHMARKS.md, sessions 52-53)
        "recon_norm": "batch",
        # Each map times its image score squared. Chosen without the test split (benchmarks/score_reading.py
        # --map-gate: held-out normal views against the same views with synthetic defects, three models): pixel
        # AUROC 0.921 / 0.934 / 0.937 / 0.934 at powers 0 / 1 / 2 / 4 (means). On the test split, read from nine
        # models: pixel AUROC +0.012 to +0.030 at every one, AUPRO -0.009 to +0.003 (BENCHMARKS.md, session 54)
        "map_gate": 2.0,
    },
}


def get_config(profile: str = "paper", **overrides: Any) -> Config:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    cfg = Config(**{**PROFILES[profile], "profile": profile})
    return cfg.replace(**overrides) if overrides else cfg


def load_config(uri: str) -> Config:
    from defectray.io import read_bytes

    return Config.from_json(read_bytes(uri).decode("utf-8"))
