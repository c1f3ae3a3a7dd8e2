"""Small blocks shared by the two networks: conv+BN+ReLU, the DRAEM double conv, and the RepLKNet block.

The large-kernel conv trains as two parallel depthwise branches (k x k and a small kernel, each with BN)
and is re-parameterised for inference into one k x k depthwise conv with bias: BN folded into each
branch, the small kernel zero-padded to k x k, the two summed. Same outputs, one conv instead of two.

Padding: every conv pads with zeros ("zeros"), or with partial-convolution padding ("partial", Liu et al. 2018,
"Partial Convolution based Padding"): where part of a window lies beyond the frame, the output is scaled by
(taps in the window / taps inside the image), so a layer answers the frame from what is there instead of from a
black band the net must learn to ignore, and no mirrored or repeated structure appears for it to mistake for a
defect. Opt-in: level with zeros on image AUROC at cpu-small (BENCHMARKS.md, session 47).

Normalisation: BatchNorm ("batch", DRAEM's) or GroupNorm ("group", 8 groups): GroupNorm takes each image's own
statistics, so training and inference normalise alike and an image's exposure is divided out layer by layer. Its
large-kernel branches cannot be folded into one conv (a per-image norm is not a fixed affine map), so the block keeps
its two branches at inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# From this kernel size on, a CPU depthwise conv takes its weight gradient by FFT (depthwise_conv2d); below it
# torch's own is as fast (13x13 at 32 px: 34 vs 39 ms forward + backward, BENCHMARKS.md "Networks").
FFT_GRAD_MIN_KERNEL = 15

PADDINGS = ("zeros", "partial")


NORMS = ("batch", "group")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    return norm


class GroupNorm2d(nn.GroupNorm):
    """GroupNorm that runs bf16 maps in NCHW on CPU: torch's CPU kernel on channels_last bf16 maps (how the networks
    train on an AMX box) made a cpu-small step 1.6x dearer; forward + backward in NCHW, layout round trip included,
    is 4.2x / 2.4x faster at cpu-small's two finest levels. Float32 maps stay in place (there torch's channels_last
    kernel is as fast as NCHW or faster, and the round trip's copies made a float32 step 1.2x dearer), except with
    one channel per group: at cpu-small's reconstruction width (8 channels, 128 px) float32 forward + backward took
    13.4 ms in place against 4.3 ms in NCHW (benchmarks/step_ops.py; BENCHMARKS.md, sessions 49-50 and 52)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and (x.dtype == torch.bfloat16 or self.num_groups == self.num_channels)
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def make_norm(channels: int, norm: str = "batch") -> nn.Module:
    if check_norm(norm) == "group":
        return GroupNorm2d(math.gcd(8, channels), channels)  # 8 groups where the width splits 8 ways
    return nn.BatchNorm2d(channels)


def check_padding(padding: str) -> bool:
    """True for partial-convolution padding, False for zeros; anything else is an error."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, not {padding!r}")
    return padding == "partial"


_BORDER_RATIOS: dict[tuple, torch.Tensor] = {}


def border_ratio(like: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(1, C, H, W) for a (N, C, H, W) map ``like``: k*k over the number of a centred k x k window's taps inside
    the map. 1 where the window is inside, up to ~4 in the corners. Cached, and stored at full size in ``like``'s
    dtype and memory layout: a (1, 1, H, W) ratio broadcast over a channels-last bf16 map took 7x as long to apply.
    """
    _, channels, height, width = like.shape
    channels_last = like.is_contiguous(memory_format=torch.channels_last)
    key = (channels, height, width, kernel_size, str(like.device), like.dtype, channels_last)
    ratio = _BORDER_RATIOS.get(key)
    if ratio is None:
        if len(_BORDER_RATIOS) >= 512:  # inputs of ever new sizes would otherwise grow it without bound
            _BORDER_RATIOS.clear()
        pad = kernel_size // 2
        inside = F.conv2d(F.pad(torch.ones(1, 1, height, width, device=like.device), (pad,) * 4),
                          torch.ones(1, 1, kernel_size, kernel_size, device=like.device))
        ratio = (kernel_size * kernel_size / inside).to(like.dtype).expand(1, channels, height, width)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        ratio = _BORDER_RATIOS[key] = ratio.contiguous(memory_format=layout)
    return ratio


class PartialConv2d(nn.Conv2d):
    """A stride-1 'same' conv with partial-convolution padding: the bias-free output times ``border_ratio`` of
    ``ratio_kernel`` (its own kernel size, or the large kernel a parallel branch is fused into), then the bias.
    Folding a BatchNorm into it (fuse_conv_bn_eval) keeps the class, so the folded form is exact too."""

    def __init__(self, *args, ratio_kernel: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ratio_kernel = ratio_kernel or self.kernel_size[0]

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.rescale(super()._conv_forward(x, weight, None), bias)

    def rescale(self, out: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        ratio = border_ratio(out, self.ratio_kernel)
        if bias is None:
            return out * ratio
        return torch.addcmul(bias.to(out.dtype).reshape(1, -1, 1, 1), out, ratio)  # one pass, not two


def make_conv(in_channels: int, out_channels: int, kernel_size: int, partial: bool = False, bias: bool = False,
              groups: int = 1, ratio_kernel: int | None = None) -> nn.Conv2d:
    """A stride-1 conv padded to keep the size: zeros, or partial-convolution padding (1x1 convs need none)."""
    if partial and max(kernel_size, ratio_kernel or 0) > 1:
        return PartialConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias,
                             groups=groups, ratio_kernel=ratio_kernel)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, groups=groups)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, partial: bool = False,
                 norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        make_conv(in_channels, out_channels, kernel_size, partial),
        make_norm(out_channels, norm),
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

    def __init__(self, in_channels: int, out_channels: int, partial: bool = False, norm: str = "batch"):
        super().__init__(conv_bn_relu(in_channels, out_channels, partial=partial, norm=norm),
                         conv_bn_relu(out_channels, out_channels, partial=partial, norm=norm))


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
    """conv + BN; ``ratio_kernel`` (partial padding) is the kernel size whose border ratio scales the conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1,
                 ratio_kernel: int | None = None, norm: str = "batch"):
        super().__init__()
        self.conv = make_conv(in_channels, out_channels, kernel_size, ratio_kernel is not None, groups=groups,
                              ratio_kernel=ratio_kernel)
        self.bn = make_norm(out_channels, norm)
        self.depthwise = groups == in_channels == out_channels and groups > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise:
            out = depthwise_conv2d(x, self.conv.weight, self.conv.padding[0])
            return self.bn(self.conv.rescale(out) if isinstance(self.conv, PartialConv2d) else out)
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

    def __init__(self, channels: int, kernel_size: int, small_kernel: int | None = 5, partial: bool = False,
                 norm: str = "batch"):
        super().__init__()
        if kernel_size % 2 == 0 or (small_kernel is not None and small_kernel % 2 == 0):
            raise ValueError("kernel sizes must be odd")
        self.kernel_size = kernel_size
        self.partial = partial
        # With partial padding both branches take the large kernel's border ratio, the ratio of the one conv
        # they fuse into, so the fused form is exact.
        ratio_kernel = kernel_size if partial else None
        self.large = ConvBN(channels, channels, kernel_size, groups=channels, ratio_kernel=ratio_kernel, norm=norm)
        self.small = (ConvBN(channels, channels, small_kernel, groups=channels, ratio_kernel=ratio_kernel, norm=norm)
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
        if self.fused is not None or not isinstance(self.large.bn, nn.BatchNorm2d):
            return
        weight, bias = fuse_conv_bn(self.large.conv.weight, self.large.bn)
        if self.small is not None:
            w_small, b_small = fuse_conv_bn(self.small.conv.weight, self.small.bn)
            pad = (self.kernel_size - w_small.shape[-1]) // 2
            weight = weight + nn.functional.pad(w_small, [pad] * 4)
            bias = bias + b_small
        conv = self.large.conv
        self.fused = make_conv(conv.in_channels, conv.out_channels, self.kernel_size, self.partial, bias=True,
                               groups=conv.groups)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(bias)
        self.fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
        del self.large, self.small
        self.small = None


class LargeKernelBlock(nn.Module):
    """RepLKNet block: 1x1 conv+BN+ReLU -> large-kernel depthwise (k || small) -> ReLU -> 1x1 conv+BN, residual."""

    def __init__(self, channels: int, kernel_size: int, small_kernel: int | None = 5, partial: bool = False,
                 norm: str = "batch"):
        super().__init__()
        self.pw1 = conv_bn_relu(channels, channels, 1, norm=norm)
        self.large_kernel = ReparamLargeKernelConv(channels, kernel_size, small_kernel, partial, norm)
        self.act = nn.ReLU(inplace=True)
        self.pw2 = ConvBN(channels, channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.act(self.large_kernel(self.pw1(x))))
