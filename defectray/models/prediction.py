"""The defect prediction network: a U-Net over concat(image, reconstruction) -> 2-channel logits (over the image
alone when the config has no reconstruction network, ``recon_base_width=0``).

DRAEM's discriminative sub-network (``depth`` levels, widths base x 1, 2, 4, 8, 8, 8, skip connections)
with, per Peng et al., a RepLKNet large-kernel block after the double conv of encoder levels 1..4.
``large_kernel=False`` gives the plain DRAEM network.

Kernel-size rule (``level_kernel_sizes``): ``kernel_sizes`` are given at the 256 px reference (RepLKNet-31B:
31, 29, 27, 13 for its stride-4..32 stages); entry j goes to encoder level j+1 (stride 2^(j+1)), scaled by
image_size / 256 and capped at that level's feature-map size (a kernel wider than the map only sees zero
padding), rounded down to odd. Levels where that leaves less than 3 get no large-kernel block. So the
kernels cover the same fraction of the image at every resolution: 31/29/27/13 at 256 px, 15/13/13/5 at
128 px. The parallel small kernel is 5x5 (RepLKNet), 3x3 when k <= 5.
``upsample`` orders each decoder stage's resize and conv as in reconstruction.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defectray.models.layers import (DoubleConv, LargeKernelBlock, ReparamLargeKernelConv, check_padding,
                                     check_upsample, conv_bn_relu, make_conv, upsample_stage)


def _odd_floor(x: float) -> int:
    k = int(x)
    return k if k % 2 == 1 else k - 1


def level_kernel_sizes(kernel_sizes: list[int], image_size: int, depth: int) -> list[int | None]:
    """The large kernel of each encoder level (None: no large-kernel block there). See the module doc."""
    sizes: list[int | None] = [None] * depth
    for j, k_ref in enumerate(kernel_sizes):
        level = j + 1
        if level >= depth:
            break
        feature_size = max(1, image_size // 2**level)
        k = _odd_floor(min(k_ref * image_size / 256, feature_size))
        sizes[level] = k if k >= 3 else None
    return sizes


class DefectPredictionNet(nn.Module):
    def __init__(self, in_channels: int = 6, out_channels: int = 2, base_width: int = 64, depth: int = 6,
                 large_kernel: bool = True, kernel_sizes: list[int] | None = None, image_size: int = 256,
                 upsample: str = "resize-conv", detach_last: bool = False, padding: str = "zeros",
                 norm: str = "batch"):
        super().__init__()
        if depth < 1:
            raise ValueError("seg_depth must be >= 1")
        widths = [base_width * min(2**i, 8) for i in range(depth)]
        partial = check_padding(padding)
        self.kernel_sizes = (level_kernel_sizes(list(kernel_sizes or [31, 29, 27, 13]), image_size, depth)
                             if large_kernel else [None] * depth)
        blocks = []
        for i, w in enumerate(widths):
            block: nn.Module = DoubleConv(in_channels if i == 0 else widths[i - 1], w, partial, norm)
            k = self.kernel_sizes[i]
            if k is not None:
                block = nn.Sequential(block, LargeKernelBlock(w, k, small_kernel=5 if k > 5 else 3, partial=partial,
                                                              norm=norm))
            blocks.append(block)
        self.encoder = nn.ModuleList(blocks)
        self.up = nn.ModuleList(conv_bn_relu(widths[i + 1], widths[i], partial=partial, norm=norm)
                                for i in range(depth - 1))
        self.decoder = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], partial, norm) for i in range(depth - 1))
        self.head = make_conv(widths[0], out_channels, 3, partial, bias=True)
        self.upsample = check_upsample(upsample)
        # The last output channel sees the features but sends no gradient into them (a detached score head)
        self.detach_last = detach_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = upsample_stage(x, self.up[i], skips[i].shape[-2:], self.upsample)
            x = self.decoder[i](torch.cat([x, skips[i]], dim=1))
        if not self.detach_last:
            return self.head(x)
        w, b = self.head.weight, self.head.bias
        # the head conv's own forward (its padding, partial or zeros) on each slice of its weights
        return torch.cat([self.head._conv_forward(x, w[:-1], b[:-1]),
                          self.head._conv_forward(x.detach(), w[-1:], b[-1:])], dim=1)

    def reparameterize(self) -> "DefectPredictionNet":
        """Fuse every large-kernel conv's two branches into one conv (inference form; call in eval mode)."""
        for m in self.modules():
            if isinstance(m, ReparamLargeKernelConv):
                m.reparameterize()
        return self
