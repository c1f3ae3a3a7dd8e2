"""One optimizer step of joint training: (damaged, clean, mask) -> both networks -> losses -> Adam step.

Device-agnostic; on CUDA the forward runs under bf16 autocast (losses stay float32). Tensors are
channels_last on every device: besides the GPU win, oneDNN's depthwise large-kernel convs on CPU are several
times faster in NHWC (measured: cpu-small step 4-6 s -> ~1 s on 2 cores, BENCHMARKS.md "## Networks").
The model may arrive wrapped (DistributedDataParallel from Ray Train): the wrapper is called for
the forward, the unwrapped module is used for everything else (feature refresh, state dicts).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from defectray.config import Config
from defectray.models import build_model
from defectray.models.features import CopiedEncoder
from defectray.models.losses import focal_loss, l2_loss, ssim_loss


def lr_milestone_epochs(config: Config) -> list[int]:
    """``lr_milestones`` are fractions of ``epochs``; the lr drops x0.1 after each."""
    return sorted({max(1, round(f * config.epochs)) for f in config.lr_milestones})


class TrainStep:
    def __init__(self, config: Config, device: str | torch.device = "cpu", model: nn.Module | None = None):
        torch.manual_seed(config.seed)
        self.config = config
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        if model is None:
            model = build_model(config).to(self.device)
        if not hasattr(model, "module"):
            # A wrapped (DDP) model keeps the layout it was wrapped with: changing parameter strides under
            # DDP's gradient buckets costs copies. Wrap build_model(cfg).to(memory_format=channels_last).
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, lr_milestone_epochs(config), gamma=0.1)
        self.step = 0

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.on_cuda):
            recon, logits, feature = self.model(damaged, clean=clean)
        l2 = l2_loss(recon, clean)
        ssim = ssim_loss(recon, clean)
        focal = focal_loss(logits, target, cfg.focal_gamma)
        feature = feature.float()
        loss = cfg.l2_weight * l2 + cfg.ssim_weight * ssim + cfg.feature_weight * feature + cfg.focal_weight * focal
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
                "focal": focal.item()}

    def end_epoch(self, epoch: int) -> None:
        """Call after finishing epoch ``epoch`` (0-based): steps the lr schedule up to epoch + 1."""
        with warnings.catch_warnings():  # stepping before any optimizer step (resume, tests) is intended
            warnings.simplefilter("ignore", UserWarning)
            while self.scheduler.last_epoch < epoch + 1:
                self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        sched = self.scheduler.state_dict()
        sched["milestones"] = dict(sched["milestones"])  # a Counter, which weights_only loading refuses
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": sched,
                "step": self.step}

    def load_state_dict(self, d: dict) -> None:
        from collections import Counter

        self.net.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        sched = dict(d["scheduler"])
        sched["milestones"] = Counter({int(k): int(v) for k, v in sched["milestones"].items()})
        self.scheduler.load_state_dict(sched)
        self.step = int(d["step"])
