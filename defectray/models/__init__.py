"""The two networks of Peng et al. as plain PyTorch (no Ray): reconstruction + large-kernel defect prediction.

``build_model(config)`` gives a DefectModel; ``TrainStep`` (train_step.py) trains it one batch at a time;
``scoring`` turns its output into pixel maps and image scores; ``modelfile`` saves/loads the model file and
its ``Detector`` (what ``defectray.load_model`` returns).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from defectray.config import Config
from defectray.models.features import build_feature_extractor
from defectray.models.layers import fold_batchnorm
from defectray.models.losses import feature_consistency_loss
from defectray.models.prediction import DefectPredictionNet
from defectray.models.reconstruction import ReconstructionNet


SCORE_HEADS = ("none", "shared", "detached")


class DefectModel(nn.Module):
    """reconstruction -> prediction over concat(image, reconstruction); optional feature extractor.

    Without a reconstruction network (``recon_base_width=0``) the prediction net sees the image alone and
    ``recon`` is None."""

    def __init__(self, reconstruction: ReconstructionNet | None, prediction: DefectPredictionNet,
                 feature_extractor=None):
        super().__init__()
        self.reconstruction = reconstruction
        self.prediction = prediction
        self.feature_extractor = feature_extractor  # nn.Module (registered), LiveEncoder, or None

    def forward(self, x: torch.Tensor, clean: torch.Tensor | None = None):
        """(recon, logits); with ``clean`` also the feature-consistency loss (a scalar, 0 without extractor).

        The loss is computed inside forward so that a DistributedDataParallel wrapper sees every parameter
        use in its own forward call."""
        recon = self.reconstruction(x) if self.reconstruction is not None else None
        logits = self.prediction(x if recon is None else torch.cat([x, recon], dim=1))
        if clean is None:
            return recon, logits
        if self.feature_extractor is None:  # always so without a reconstruction network (build_model)
            return recon, logits, logits.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            target = self.feature_extractor(clean)
        feature = feature_consistency_loss(self.feature_extractor(recon), [t.detach() for t in target])
        return recon, logits, feature

    def reparameterize(self) -> "DefectModel":
        """The inference form (call in eval mode): each large-kernel conv's two branches fused into one conv,
        then every BatchNorm folded into the conv before it. Same outputs to float rounding; not for training."""
        self.prediction.reparameterize()
        fold_batchnorm(self)
        return self


def build_model(config: Config, feature_extractor: bool = True) -> DefectModel:
    """The model ``config`` describes. ``feature_extractor=False`` leaves the extractor out (inference)."""
    if config.recon_base_width < 0:
        raise ValueError(f"recon_base_width must be >= 0, not {config.recon_base_width}")
    reconstruction = None
    if config.recon_base_width:
        reconstruction = ReconstructionNet(config.channels, config.recon_base_width, config.recon_depth,
                                           config.upsample, config.padding, config.recon_norm or config.norm)
    elif feature_extractor and config.feature_extractor != "none":
        raise ValueError(f"feature_extractor={config.feature_extractor!r} compares reconstructions; with "
                         "recon_base_width=0 (no reconstruction network) use feature_extractor='none'")
    if config.score_head not in SCORE_HEADS:
        raise ValueError(f"score_head must be one of {', '.join(SCORE_HEADS)}, not {config.score_head!r}")
    outputs = 2 if config.score_head == "none" else 3  # (normal, defect) logits, then the score head's logit
    inputs = 2 * config.channels if reconstruction is not None else config.channels  # image (+ reconstruction)
    prediction = DefectPredictionNet(inputs, outputs, config.seg_base_width, config.seg_depth,
                                     config.large_kernel, config.kernel_sizes, config.image_size, config.upsample,
                                     detach_last=config.score_head == "detached", padding=config.padding,
                                     norm=config.norm)
    extractor = (build_feature_extractor(config.feature_extractor, reconstruction, config.channels,
                                         config.feature_weights) if feature_extractor else None)
    # channels_last from the start, so a model wrapped by DDP before TrainStep sees it is laid out for the
    # fast NHWC convolutions too (see train_step.py); values and state_dict keys are unchanged.
    return DefectModel(reconstruction, prediction, extractor).to(memory_format=torch.channels_last)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> float32 (B, C, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.ndim != 4:
        raise ValueError(f"expected (B,H,W) or (B,H,W,C) images, got shape {images.shape}")
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return t.float().div_(255.0).contiguous()


__all__ = ["DefectModel", "build_model", "images_to_tensor", "ReconstructionNet", "DefectPredictionNet"]
