"""Training losses: L2 + SSIM and deep-feature consistency for the reconstruction, focal loss for the mask.

Weights (config): l2_weight=1.0, ssim_weight=0.8, feature_weight=0.2, focal_weight=1.0 (dice_weight=0,
peak_weight=0). The paper's lambda = 1, 0.8, 0.2 are read as L2, SSIM, feature consistency: L2 anchors the
pixel values, SSIM (whose raw value, 1 - SSIM, is ~10x larger than L2 on [0, 1] images) shapes local
structure, and the feature term is an auxiliary regulariser, so it gets the smallest weight. The focal loss
keeps DRAEM's weight 1.
All losses are computed in float32, also under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two (B, C, H, W) images in [0, 1] (Gaussian 11x11 window, as DRAEM).

    The window is separable, so the five local means are one 11x1 and one 1x11 depthwise pass over the
    five maps stacked (zero padding keeps it exactly the 11x11 blur): ~5x fewer multiply-adds than 11x11,
    and the blurs were ~6 % of a cpu-small training step."""
    a, b = a.float(), b.float()
    c = a.shape[1]
    g = _gaussian_1d(window_size, sigma, a.device, a.dtype)
    pad = window_size // 2
    maps = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    n = maps.shape[1]
    blurred = F.conv2d(maps, g.reshape(1, 1, 1, -1).expand(n, 1, 1, window_size), padding=(0, pad), groups=n)
    blurred = F.conv2d(blurred, g.reshape(1, 1, -1, 1).expand(n, 1, window_size, 1), padding=(pad, 0), groups=n)
    mu_a, mu_b, e_aa, e_bb, e_ab = blurred.split(c, dim=1)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def ssim_loss(recon: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return 1.0 - ssim(recon, clean)


def l2_loss(recon: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(recon.float(), clean.float())


def feature_consistency_loss(features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor:
    """Mean over levels of (1 - cosine similarity along channels): scale-free, so levels of very different
    magnitude (and a copied encoder whose scale drifts) weigh alike."""
    if not features_a:
        raise ValueError("no feature levels")
    total = 0.0
    for fa, fb in zip(features_a, features_b, strict=True):
        total = total + (1.0 - F.cosine_similarity(fa.float(), fb.float(), dim=1, eps=1e-6)).mean()
    return total / len(features_a)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on softmax logits (B, K, H, W) against integer targets (B, H, W) (DRAEM, gamma=2)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    pt = log_pt.exp()
    return (-((1.0 - pt) ** gamma) * log_pt).mean()


def defect_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over the images that contain a defect of 1 - soft Dice of the defect channel; 0 without any.

    Why, next to the focal loss: the focal loss is a mean over pixels, so a 1-px crack of 60 pixels weighs
    ~1/300 of a 128 x 128 sample and a net can leave it out at almost no cost; Dice per image gives every
    synthetic defect the same weight, whatever its area (opt-in: ``dice_weight``, off in the paper profile)."""
    p = torch.softmax(logits.float(), dim=1)[:, 1].flatten(1)
    g = (target > 0).float().flatten(1)
    has_defect = (g.sum(1) > 0).float()
    dice = (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)
    # A masked mean, not a branch: no host sync in the step, and a batch of normal images still gives a
    # (zero) loss with a whole graph, which DDP's gradient hooks need.
    return ((1.0 - dice) * has_defect).sum() / has_defect.sum().clamp(min=1.0)


def image_peak_loss(logits: torch.Tensor, target: torch.Tensor, top_k: int = 8, rim: int = 2) -> torch.Tensor:
    """A loss on what the image score reads: each image's peak defect probability.

    Why, next to the per-pixel losses: the image score is the map's maximum, so one hot pixel on a normal
    image is a false alarm however well the other 16,000 are classified, and a defect is found only if some
    pixel of it is confident. The focal loss is a mean over pixels and Dice an overlap; neither looks at the
    peaks. Two terms: the mean of the ``top_k`` highest defect probabilities among each image's normal pixels
    (outside the defect and a ``rim``-pixel band around it, where the label is uncertain) is pushed to 0, as
    -log(1 - p); and each defective image's highest probability inside its defect to 1, as -log p.
    (opt-in: ``peak_weight``.)"""
    log_p = F.log_softmax(logits.float(), dim=1)
    defect = (target > 0).float()[:, None]
    near = F.max_pool2d(defect, 2 * rim + 1, stride=1, padding=rim)[:, 0] > 0 if rim else defect[:, 0] > 0
    b = logits.shape[0]
    # -log(1 - p) of the normal pixels with the highest p: the smallest log-probabilities of "normal"
    normal_log_p = log_p[:, 0].masked_fill(near, 0.0).flatten(1)
    k = min(top_k, normal_log_p.shape[1])
    false_alarm = -normal_log_p.topk(k, dim=1, largest=False).values.mean(1)
    has_defect = defect.flatten(1).amax(1)
    best_hit = log_p[:, 1].masked_fill(defect[:, 0] == 0, -1e4).flatten(1).amax(1)
    miss = -best_hit.clamp(min=-1e3) * has_defect
    return false_alarm.sum() / b + miss.sum() / has_defect.sum().clamp(min=1.0)


def two_class_logits(z: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) logit of a sigmoid output -> (B, 2, H, W) logits whose softmax is (1 - sigmoid(z),
    sigmoid(z)): the form the two-class losses above take (a score head's channel, models/train_step.py)."""
    return torch.cat([torch.zeros_like(z), z], dim=1)
