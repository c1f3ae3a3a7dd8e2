"""Feature extractors for the deep-feature consistency loss, selected by ``config.feature_extractor``.

- ``copy`` (default, the paper's better variant): a frozen copy of the reconstruction encoder, refreshed by
  copying the encoder's parameters and BN statistics every ``feature_refresh_every`` optimizer steps.
  Why every K steps rather than an EMA: it is what "parameter copying" says, it costs nothing between
  refreshes, and a target held fixed for K steps is the stable-target trick of DQN; an EMA target would make
  this a BYOL-style variant, a different row of the ablation. K=100 is ~1/7 epoch of MVTec-sized data at
  batch 8: often enough to track the encoder, rarely enough to be a fixed target.
- ``gradient``: the live reconstruction encoder itself; the feature loss back-propagates into it (the
  clean image's features are detached, a stop-gradient that keeps the term from collapsing).
- ``timm:<name>``: a frozen timm backbone (``features_only``), ImageNet-normalised inside this wrapper
  (the only place images are normalised), grayscale repeated to 3 channels. Weights from
  ``config.feature_weights`` (a local path or fsspec URI: safetensors, or a tensors-only torch file) or,
  when that is unset, from the timm hub, which fails with a clear message when offline.
- ``none``: no feature term.
"""

from __future__ import annotations

import copy
import io as _io

import torch
from torch import nn

from defectray.models.reconstruction import ReconstructionNet


class CopiedEncoder(nn.Module):
    """A frozen snapshot of a ReconstructionNet's encoder; always in eval mode."""

    def __init__(self, reconstruction: ReconstructionNet):
        super().__init__()
        self.encoder = copy.deepcopy(reconstruction.encoder)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "CopiedEncoder":
        return super().train(False)  # a target network: BN uses the copied running statistics

    @torch.no_grad()
    def refresh(self, reconstruction: ReconstructionNet) -> None:
        src = reconstruction.encoder.state_dict()
        for name, t in self.encoder.state_dict().items():
            t.copy_(src[name])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


class LiveEncoder:
    """``gradient``: the reconstruction encoder itself (not a registered module: its parameters already are)."""

    def __init__(self, reconstruction: ReconstructionNet):
        self.reconstruction = reconstruction

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.reconstruction.encode(x)


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a tensors-only torch file (weights_only=True), local or fsspec URI."""
    from defectray.io import read_bytes

    data = read_bytes(uri)
    try:
        from safetensors.torch import load as load_safetensors

        return dict(load_safetensors(data))
    except Exception:
        pass
    try:
        obj = torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{uri}: not a safetensors file or a tensors-only torch file ({e.__class__.__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{uri}: holds no state dict of tensors")
    return obj


class TimmFeatures(nn.Module):
    def __init__(self, name: str, channels: int, weights: str | None = None, out_indices=(1, 2, 3)):
        super().__init__()
        import timm

        self.channels = channels
        if weights is None:
            try:
                self.backbone = timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
            except Exception as e:
                raise RuntimeError(
                    f"could not get pretrained weights for timm model {name!r} from the hub ({e.__class__.__name__}: "
                    f"{e}); set feature_weights to a local file or URI of its weights") from None
        else:
            self.backbone = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
            state = read_state_dict(weights)
            state = {k.removeprefix("module."): v for k, v in state.items()}
            missing, _ = self.backbone.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{weights}: weights do not fit timm model {name!r} "
                                 f"(missing {len(missing)} tensors, e.g. {missing[0]})")
        cfg = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).reshape(1, 3, 1, 1), persistent=False)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "TimmFeatures":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone((x - self.mean) / self.std)


def build_feature_extractor(kind: str, reconstruction: ReconstructionNet, channels: int,
                            weights: str | None = None):
    if kind == "copy":
        return CopiedEncoder(reconstruction)
    if kind == "gradient":
        return LiveEncoder(reconstruction)
    if kind == "none":
        return None
    if kind.startswith("timm:") and kind[5:]:
        return TimmFeatures(kind[5:], channels, weights)
    raise ValueError(f"unknown feature_extractor {kind!r}; use copy, gradient, timm:<model name> or none")
