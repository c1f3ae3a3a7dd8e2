"""Small blocks shared by the two networks: conv+BN+ReLU, the DRAEM double conv, and the RepLKNet block.

The large-kernel conv trains as two parallel depthwise branches (k x k and a small kernel, each with BN)
and is re-parameterised for inference into one k x k depthwise conv with bias: BN folded into each
branch, the small kernel zero-padded to k x k, the two summed. Same outputs, one conv instead of two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# From this kernel size on, a CPU depthwise conv takes its weight gradient by FFT (depthwise_conv2d); below it
# torch's own is as fast (13x13 at 32 px: 34 vs 39 ms forward + backward, BENCHMARKS.md "Networks").
FFT_GRAD_MIN_KERNEL = 15


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


UPSAMPLE_ORDERS = ("resize-conv", "conv-resize")


def check_upsample(order: str) -> str:
    if order not in UPSAMPLE_ORDERS:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_ORDERS)}, not {order!r}")
    return order


def upsample_stage(x: torch.Tensor, conv: nn.Module, size, order: str) -> torch.Tensor:
    """One decoder stage's way up: bilinear resize to ``size`` and ``conv``, in the ``order`` asked for.
    "resize-conv" is DRAEM's; "conv-resize" runs the conv at the coarser level (1/4 of the multiply-adds)."""
    if order == "resize-conv":
        return conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    return F.interpolate(conv(x), size=size, mode="bilinear", align_corners=False)


class DoubleConv(nn.Sequential):
    """Two 3x3 conv+BN+ReLU: the building block of both DRAEM sub-networks."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


def fuse_conv_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv equal to conv(weight, no bias) followed by ``bn`` in eval mode."""
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class _DepthwiseConv2d(torch.autograd.Function):
    """Stride-1 depthwise conv whose backward is two cheap forms of the same sums (CPU only, see below)."""

    # Under CPU bf16 autocast (Config.cpu_bf16) this op stays float32: the FFT has no bf16 form, and the
    # gradient it computes is a sum over the whole batch, where bf16's 8-bit mantissa would lose the most.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding, groups=weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, k = ctx.padding, weight.shape[-1]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # the transposed conv of a stride-1 depthwise conv: the flipped kernel
            grad_x = F.conv2d(grad, weight.flip(2, 3), padding=k - 1 - p, groups=weight.shape[0])
        if ctx.needs_input_grad[1]:
            # dW[c, i, j] = sum over batch and pixels of x_padded[c, y + i, x + j] * grad[c, y, x]: a
            # cross-correlation, one product of spectra per channel instead of k*k passes over the batch.
            # The spectra are (H + 2p) wide, so the k*k lags wanted never wrap around.
            size = (x.shape[-2] + 2 * p, x.shape[-1] + 2 * p)
            spectrum_x = torch.fft.rfft2(F.pad(x.float(), (p, p, p, p)), s=size)
            spectrum_g = torch.fft.rfft2(grad.float(), s=size)
            lags = torch.fft.irfft2((spectrum_x * spectrum_g.conj()).sum(0), s=size)
            grad_w = lags[:, : k, : k].reshape(weight.shape).to(weight.dtype)
        return grad_x, grad_w, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=padding, groups=channels)`` for a (C, 1, k, k) weight, stride 1.

    Why not F.conv2d alone: on CPU, oneDNN's weight gradient of a large depthwise kernel is ~10x slower than
    the forward (15x15 at 64 x 64, batch 16: 254 ms against 21-44 ms by FFT here), and it was the single
    largest op of a cpu-small training step (BENCHMARKS.md "Networks"). The same values, in float32."""
    k = weight.shape[-1]
    if x.device.type != "cpu" or k < FFT_GRAD_MIN_KERNEL or not torch.is_grad_enabled():
        return F.conv2d(x, weight, padding=padding, groups=weight.shape[0])
    return _DepthwiseConv2d.apply(x, weight, padding)


class ConvBN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.depthwise = groups == in_channels == out_channels and groups > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise:
            return self.bn(depthwise_conv2d(x, self.conv.weight, self.conv.padding[0]))
        return self.bn(self.conv(x))

    def fold(self) -> None:
        """BN folded into the conv (inference form, eval mode); the FFT gradient path is left behind with it."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv, self.bn, self.depthwise = fuse_conv_bn_eval(self.conv, self.bn), nn.Identity(), False


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a conv (in an nn.Sequential, or a ConvBN) into that conv's
    weight and bias, the BN replaced by Identity; call in eval mode. Same outputs to float rounding, one pass
    less per layer: BN was 18 % of a cpu-small forward on CPU, and folding made CPU inference 1.24x faster
    (BENCHMARKS.md "Session 33"). Inference only: a folded BN no longer tracks batch statistics."""
    for m in list(module.modules()):
        if isinstance(m, ConvBN):
            m.fold()
        elif isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    m[i], m[i + 1] = fuse_conv_bn_eval(m[i], m[i + 1]), nn.Identity()
    return module


class ReparamLargeKernelConv(nn.Module):
    """Depthwise k x k conv+BN in parallel with a depthwise small-kernel conv+BN, summed (RepLKNet)."""

    def __init__(self, channels: int, kernel_size: int, small_kernel: int | None = 5):
        super().__init__()
        if kernel_size % 2 == 0 or (small_kernel is not None and small_kernel % 2 == 0):
            raise ValueError("kernel sizes must be odd")
        self.kernel_size = kernel_size
        self.large = ConvBN(channels, channels, kernel_size, groups=channels)
        self.small = (ConvBN(channels, channels, small_kernel, groups=channels)
                      if small_kernel is not None and small_kernel < kernel_size else None)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x)
        out = self.large(x)
        if self.small is not None:
            out = out + self.small(x)
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        weight, bias = fuse_conv_bn(self.large.conv.weight, self.large.bn)
        if self.small is not None:
            w_small, b_small = fuse_conv_bn(self.small.conv.weight, self.small.bn)
            pad = (self.kernel_size - w_small.shape[-1]) // 2
            weight = weight + nn.functional.pad(w_small, [pad] * 4)
            bias = bias + b_small
        conv = self.large.conv
        self.fused = nn.Conv2d(conv.in_channels, conv.out_channels, self.kernel_size,
                               padding=self.kernel_size // 2, groups=conv.groups, bias=True)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(bias)
        self.fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
        del self.large, self.small
        self.small = None


class LargeKernelBlock(nn.Module):
    """RepLKNet block: 1x1 conv+BN+ReLU -> large-kernel depthwise (k || small) -> ReLU -> 1x1 conv+BN, residual."""

    def __init__(self, channels: int, kernel_size: int, small_kernel: int | None = 5):
        super().__init__()
        self.pw1 = conv_bn_relu(channels, channels, 1)
        self.large_kernel = ReparamLargeKernelConv(channels, kernel_size, small_kernel)
        self.act = nn.ReLU(inplace=True)
        self.pw2 = ConvBN(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.act(self.large_kernel(self.pw1(x))))
