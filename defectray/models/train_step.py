"""One optimizer step of joint training: (damaged, clean, mask) -> both networks -> losses -> Adam step.

Device-agnostic; on CUDA, and on CPU when ``Config.cpu_bf16`` asks for it, the forward runs under bf16
autocast (losses stay float32). Tensors are
channels_last on every device: besides the GPU win, oneDNN's depthwise large-kernel convs on CPU are several
times faster in NHWC (measured: cpu-small step 4-6 s -> ~1 s on 2 cores, BENCHMARKS.md "## Networks").
The model may arrive wrapped (DistributedDataParallel from Ray Train): the wrapper is called for
the forward, the unwrapped module is used for everything else (feature refresh, state dicts).
"""

from __future__ import annotations

import torch
from torch import nn

from defectray.config import Config
from defectray.models import build_model
from defectray.models.features import CopiedEncoder
from defectray.models.losses import (defect_dice_loss, focal_loss, image_peak_loss, l2_loss, ssim_loss,
                                     two_class_logits)
from defectray.models.precision import bf16_autocast_on, cpu_bf16_enabled


def lr_at(config: Config, progress: float) -> float:
    """The lr after ``progress`` (0..1) of the run's budget: x0.1 for each ``lr_milestones`` fraction passed.

    Progress is whichever budget runs out first (epochs, steps or minutes), not epochs alone: a 20-minute CPU
    run finishes a small part of its nominal epochs, and milestones counted in epochs would never fire there."""
    passed = sum(1 for f in config.lr_milestones if progress >= f)
    return config.lr * 0.1**passed


def budget_progress(config: Config, epochs_done: float, steps_done: int, minutes_done: float | None) -> float:
    """How far along the run is, as the largest fraction used of any of its budgets."""
    parts = [epochs_done / max(1, config.epochs)]
    if config.max_steps:
        parts.append(steps_done / config.max_steps)
    if config.max_minutes and minutes_done is not None:
        parts.append(minutes_done / config.max_minutes)
    return min(1.0, max(parts))


class TrainStep:
    def __init__(self, config: Config, device: str | torch.device = "cpu", model: nn.Module | None = None):
        torch.manual_seed(config.seed)
        self.config = config
        self.device = torch.device(device)
        # cpu_bf16 is checked on every device: a typo fails at once
        self.bf16 = bf16_autocast_on(self.device, cpu_bf16_enabled(config.cpu_bf16))
        if model is None:
            model = build_model(config).to(self.device)
        if not hasattr(model, "module"):
            # A wrapped (DDP) model keeps the layout it was wrapped with: changing parameter strides under
            # DDP's gradient buckets costs copies. Wrap build_model(cfg).to(memory_format=channels_last).
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.step = 0
        self.progress = 0.0

    @property
    def net(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last)

    def __call__(self, damaged: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        damaged, clean = self._prepare(damaged), self._prepare(clean)
        mask = mask.to(self.device, non_blocking=True)
        if mask.ndim == 4:
            mask = mask[:, 0]
        target = (mask > 0.5).long()
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            recon, logits, feature = self.model(damaged, clean=clean)
        if recon is None:  # recon_base_width=0: nothing to reconstruct
            l2 = ssim = logits.new_zeros((), dtype=torch.float32)
        else:
            l2 = l2_loss(recon, clean)
            ssim = ssim_loss(recon, clean)
        pixel = logits[:, :2]  # (normal, defect); a score head's logit follows
        focal = focal_loss(pixel, target, cfg.focal_gamma)
        feature = feature.float()
        loss = cfg.l2_weight * l2 + cfg.ssim_weight * ssim + cfg.feature_weight * feature + cfg.focal_weight * focal
        parts = {}
        if cfg.dice_weight:
            dice = defect_dice_loss(pixel, target)
            loss = loss + cfg.dice_weight * dice
            parts["dice"] = dice.item()
        # The peak loss goes to the score head when there is one (the pixel map keeps the focal + Dice
        # calibration), else to the defect channel itself.
        peaked = pixel
        if cfg.score_head != "none":
            peaked = two_class_logits(logits[:, 2:3])
            score = cfg.focal_weight * focal_loss(peaked, target, cfg.focal_gamma)
            if cfg.dice_weight:
                score = score + cfg.dice_weight * defect_dice_loss(peaked, target)
            loss = loss + score
            parts["score"] = score.item()
        if cfg.peak_weight:
            peak = image_peak_loss(peaked, target)
            loss = loss + cfg.peak_weight * peak
            parts["peak"] = peak.item()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        extractor = self.net.feature_extractor
        if isinstance(extractor, CopiedEncoder) and self.step % max(1, cfg.feature_refresh_every) == 0:
            extractor.refresh(self.net.reconstruction)
        return {"loss": loss.item(), "l2": l2.item(), "ssim": ssim.item(), "feature": feature.item(),
                "focal": focal.item(), **parts}

    def set_progress(self, progress: float) -> None:
        """Tell the step how far through its budget the run is (see ``budget_progress``); sets the lr."""
        self.progress = max(self.progress, float(progress))  # never back: a resume must not raise the lr again
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.config, self.progress)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                "progress": self.progress}

    def load_state_dict(self, d: dict) -> None:
        self.net.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.step = int(d["step"])
        self.progress = 0.0
        self.set_progress(float(d.get("progress", 0.0)))
