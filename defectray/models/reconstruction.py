"""The reconstruction network: maps a (possibly damaged) image back to its defect-free version.

DRAEM's reconstructive sub-network: ``depth`` encoder blocks (two 3x3 conv+BN+ReLU each) with widths
base x 1, 2, 4, 8, 8, ... and max-pooling between them, a mirrored decoder with bilinear upsampling and
no skip connections (skips would let defects through), and a sigmoid head so the output stays in [0, 1]
like the input. Any input size works: the decoder upsamples to the exact sizes the encoder saw.

``upsample`` orders each decoder stage's resize and its width-halving conv: "resize-conv" (DRAEM: resize, then
conv at the finer level) or "conv-resize" (conv at the coarser level, then resize: the same weights at a
quarter of the multiply-adds; the double conv after it still works at the finer level).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defectray.models.layers import DoubleConv, check_padding, check_upsample, conv_bn_relu, make_conv, upsample_stage


def level_widths(base_width: int, depth: int) -> list[int]:
    return [base_width * min(2**i, 8) for i in range(depth)]


class ReconstructionNet(nn.Module):
    def __init__(self, channels: int = 3, base_width: int = 128, depth: int = 5, upsample: str = "resize-conv",
                 padding: str = "zeros", norm: str = "batch"):
        super().__init__()
        if depth < 1:
            raise ValueError("recon_depth must be >= 1")
        widths = level_widths(base_width, depth)
        partial = check_padding(padding)
        self.widths = widths
        self.upsample = check_upsample(upsample)
        self.encoder = nn.ModuleList(
            DoubleConv(channels if i == 0 else widths[i - 1], w, partial, norm) for i, w in enumerate(widths))
        # Decoder stage i brings level i+1 up to level i: upsample, conv to level i's width, double conv.
        self.up = nn.ModuleList(conv_bn_relu(widths[i + 1], widths[i], partial=partial, norm=norm)
                                for i in range(depth - 1))
        self.decoder = nn.ModuleList(DoubleConv(widths[i], widths[i], partial, norm) for i in range(depth - 1))
        self.head = make_conv(widths[0], channels, 3, partial, bias=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every encoder block, finest first (the deep features for feature consistency)."""
        features = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for i in reversed(range(len(self.up))):
            x = self.decoder[i](upsample_stage(x, self.up[i], features[i].shape[-2:], self.upsample))
        return torch.sigmoid(self.head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
