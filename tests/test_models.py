"""Networks, losses, scoring math and the training step (plain PyTorch, no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from conftest import with_trained_batchnorm
from defectray.config import get_config
from defectray.models import DefectModel, build_model, images_to_tensor
from defectray.models.features import CopiedEncoder, LiveEncoder, TimmFeatures
from defectray.models.layers import ConvBN, PartialConv2d, ReparamLargeKernelConv, depthwise_conv2d
from defectray.models.losses import (defect_dice_loss, feature_consistency_loss, focal_loss, image_peak_loss, ssim,
                                     ssim_loss, two_class_logits)
from defectray.models.modelfile import load_model, save_model
from defectray.models.prediction import DefectPredictionNet, level_kernel_sizes
from defectray.models.reconstruction import ReconstructionNet
from defectray.models.precision import cpu_bf16_enabled, cpu_has_bf16
from defectray.models.scoring import anomaly_maps, filter_size_for, image_scores, output_maps, top_k_for
from defectray.models.train_step import TrainStep, budget_progress

torch.set_num_threads(2)


def tiny_config(**kw):
    base = dict(image_size=32, channels=1, recon_base_width=8, recon_depth=3, seg_base_width=8, seg_depth=4,
                batch_size=8, lr=2e-3, epochs=10, feature_refresh_every=5)
    base.update(kw)
    return get_config("cpu-small", **base)


# --- shapes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("large_kernel", [True, False])
@pytest.mark.parametrize("size", [(33, 33), (37, 50), (17, 29)])
@pytest.mark.parametrize("upsample", ["resize-conv", "conv-resize"])
def test_shapes_at_odd_sizes(channels, large_kernel, size, upsample):
    model = build_model(tiny_config(channels=channels, large_kernel=large_kernel, upsample=upsample)).eval()
    x = torch.rand(2, channels, *size)
    recon, logits = model(x)
    assert recon.shape == x.shape and logits.shape == (2, 2, *size)
    assert recon.min() >= 0 and recon.max() <= 1  # the reconstruction stays in the input's [0, 1] range


@pytest.mark.parametrize("kind, cls", [("copy", CopiedEncoder), ("gradient", LiveEncoder), ("none", type(None))])
def test_feature_extractor_kinds(kind, cls):
    model = build_model(tiny_config(feature_extractor=kind))
    assert isinstance(model.feature_extractor, cls)
    x = torch.rand(2, 1, 35, 35)
    recon, logits, feature = model(x, clean=x)
    assert feature.ndim == 0 and torch.isfinite(feature)
    assert (feature.item() == 0) == (kind == "none")


def test_without_a_reconstruction_network_the_prediction_net_sees_the_image_alone():
    model = build_model(tiny_config(recon_base_width=0, feature_extractor="none"))
    first_conv = next(m for m in model.prediction.modules() if isinstance(m, torch.nn.Conv2d))
    assert model.reconstruction is None and first_conv.in_channels == 1
    assert not any(k.startswith("reconstruction.") for k in model.state_dict())
    x = torch.rand(2, 1, 37, 50)
    recon, logits = model.eval()(x)
    assert recon is None and logits.shape == (2, 2, 37, 50)
    recon, logits, feature = model(x, clean=x)
    assert recon is None and feature.item() == 0.0
    # the feature losses compare reconstructions: without one they are refused when the model is built
    for kind in ("copy", "gradient"):
        with pytest.raises(ValueError, match="recon_base_width=0"):
            build_model(tiny_config(recon_base_width=0, feature_extractor=kind))
    with pytest.raises(ValueError, match="recon_base_width"):
        build_model(tiny_config(recon_base_width=-1))


def test_upsample_order_changes_the_computation_not_the_weights():
    """Both orders hold the same parameters (a model file's tensors fit either), compute different maps, and
    a name outside the two is refused when the network is built, not at its first forward."""
    torch.manual_seed(0)
    dra = build_model(tiny_config(upsample="resize-conv")).eval()
    ours = build_model(tiny_config(upsample="conv-resize")).eval()
    assert {k: v.shape for k, v in dra.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(dra.state_dict())
    x = torch.rand(2, 1, 32, 32)
    assert not torch.allclose(dra(x)[1], ours(x)[1])
    with pytest.raises(ValueError, match="upsample"):
        build_model(tiny_config(upsample="nearest"))


def test_unknown_feature_extractor():
    with pytest.raises(ValueError, match="feature_extractor"):
        build_model(tiny_config(feature_extractor="vgg"))


def test_widths_follow_config():
    recon = ReconstructionNet(3, base_width=128, depth=5)
    assert recon.widths == [128, 256, 512, 1024, 1024]  # DRAEM's x1,2,4,8,8
    paper = build_model(get_config("paper"), feature_extractor=False)
    assert len(paper.prediction.encoder) == 6 and paper.prediction.head.in_channels == 64


def test_kernel_sizes_scale_with_resolution():
    assert level_kernel_sizes([31, 29, 27, 13], 256, 6) == [None, 31, 29, 27, 13, None]
    assert level_kernel_sizes([31, 29, 27, 13], 128, 4) == [None, 15, 13, 13]
    assert level_kernel_sizes([31, 29, 27, 13], 512, 6) == [None, 61, 57, 53, 25, None]
    assert level_kernel_sizes([31, 29, 27, 13], 64, 6) == [None, 7, 7, 5, 3, None]  # capped by the 8 px map
    assert level_kernel_sizes([31, 29, 27, 13], 32, 6) == [None, 3, 3, 3, None, None]
    for k in level_kernel_sizes([31, 29, 27, 13], 200, 6):
        assert k is None or k % 2 == 1
    plain = DefectPredictionNet(2, base_width=8, depth=4, large_kernel=False, image_size=128)
    assert not any(isinstance(m, ReparamLargeKernelConv) for m in plain.modules())


# --- re-parameterisation -------------------------------------------------------------------------------

@pytest.mark.parametrize("padding", ["zeros", "partial"])
def test_reparameterize_matches_training_form(padding):
    torch.manual_seed(0)
    net = with_trained_batchnorm(DefectPredictionNet(2, base_width=8, depth=4, large_kernel=True, image_size=128,
                                                     padding=padding), (4, 2, 64, 64))
    x = torch.rand(3, 2, 61, 70)
    with torch.no_grad():
        before = net(x)
        probs_before = torch.softmax(before, 1)
        n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
        net.reparameterize()
        after = net(x)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) < n_convs
    assert all(m.fused is not None for m in net.modules() if isinstance(m, ReparamLargeKernelConv))
    assert torch.allclose(before, after, atol=1e-5, rtol=0)
    assert torch.allclose(probs_before, torch.softmax(after, 1), atol=1e-5, rtol=0)


def test_inference_form_folds_every_batchnorm_and_keeps_the_outputs():
    """DefectModel.reparameterize: large kernels fused and every BN folded into its conv, in both networks
    (a score-head model too); reconstruction and logits as the training form's in eval mode."""
    for variant in ({}, dict(score_head="shared", upsample="resize-conv"), dict(padding="partial"),
                    dict(padding="partial", score_head="detached")):
        cfg = tiny_config(norm="batch", **variant)
        torch.manual_seed(0)
        model = with_trained_batchnorm(build_model(cfg, feature_extractor=False), (4, 1, 32, 32))
        x = torch.rand(3, 1, 32, 32)
        with torch.no_grad():
            recon, logits = model(x)
            model.reparameterize()
            recon2, logits2 = model(x)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        torch.testing.assert_close(recon2, recon, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits2, logits, atol=1e-4, rtol=1e-5)


# --- partial-convolution padding ---------------------------------------------------------------------------

def test_partial_padding_matches_a_direct_reference():
    """Each output pixel: the window's taps inside the image, times k*k / their number, plus the bias; computed
    here pixel by pixel on float64. A uniform kernel then answers a uniform image the same at the frame as
    inside, where zero padding darkens the frame's band."""
    torch.manual_seed(0)
    conv = PartialConv2d(2, 3, 5, padding=2, bias=True).double()
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        out = conv(x)
    w, b = conv.weight, conv.bias
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    inside = torch.nn.functional.pad(torch.ones(1, 1, 7, 9, dtype=torch.float64), (2, 2, 2, 2))
    for i in range(7):
        for j in range(9):
            window = xp[0, :, i:i + 5, j:j + 5]
            taps = inside[0, 0, i:i + 5, j:j + 5].sum()
            expected = (w * window).sum(dim=(1, 2, 3)) * 25 / taps + b
            torch.testing.assert_close(out[0, :, i, j], expected)
    uniform = PartialConv2d(1, 1, 3, padding=1, bias=False)
    zeros = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        uniform.weight.fill_(1 / 9)
        zeros.weight.fill_(1 / 9)
        grey = torch.full((1, 1, 6, 6), 0.5)
        torch.testing.assert_close(uniform(grey), grey)
        assert zeros(grey)[0, 0, 0, 0] == pytest.approx(0.5 * 4 / 9)


def test_partial_padding_reaches_every_padded_conv_and_trains(tmp_path):
    """padding="partial": every conv wider than 1x1 in both networks (and the copied feature encoder) pads that
    way, the large kernels' FFT gradient path included, and the model file keeps it; unknown paddings are an error."""
    cfg = tiny_config(padding="partial", image_size=64)
    model = build_model(cfg)
    wide = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1]
    assert wide and all(isinstance(m, PartialConv2d) for m in wide)
    assert not any(isinstance(m, PartialConv2d) for m in build_model(tiny_config(image_size=64)).modules())
    step = TrainStep(cfg, model=model)
    x = torch.rand(4, 1, 64, 64)
    mask = torch.zeros(4, 1, 64, 64)
    mask[:, :, 2:9, 50:64] = 1  # a defect at the frame
    losses = [step(x, x, mask)["loss"] for _ in range(3)]
    assert all(np.isfinite(losses))
    # the model file stores the padding: the loaded Detector pads the same way
    path = str(tmp_path / "partial.safetensors")
    save_model(path, model.eval(), cfg)
    detector = load_model(path)
    assert detector.config.padding == "partial"
    assert any(isinstance(m, PartialConv2d) for m in detector.model.modules())
    _, maps = detector.predict([np.zeros((64, 80), np.uint8)])
    assert maps[0].shape == (64, 80)
    with pytest.raises(ValueError, match="padding"):
        build_model(tiny_config(padding="reflect"))
    # a 15x15 depthwise conv takes the FFT weight gradient (depthwise_conv2d); with the border ratio applied after
    # it, values and gradients are the plain PartialConv2d's
    layer = ConvBN(4, 4, 15, groups=4, ratio_kernel=15)
    x = torch.rand(2, 4, 20, 24, requires_grad=True)
    grads = []
    for depthwise in (True, False):
        layer.depthwise = depthwise
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        (out * torch.linspace(0, 1, 24)).sum().backward()
        grads.append((out.detach(), x.grad.clone(), layer.conv.weight.grad.clone()))
    for fft, plain in zip(*grads):
        torch.testing.assert_close(fft, plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels, dtype", [(8, torch.float32), (16, torch.float32), (16, torch.bfloat16)])
def test_group_norm_2d_matches_torch_in_any_layout(channels, dtype):
    """GroupNorm2d takes a detour through NCHW for bf16 and for one channel per group (speed only): values and
    gradients are torch's GroupNorm's, and the output keeps the input's channels_last layout."""
    from defectray.models.layers import GroupNorm2d

    torch.manual_seed(0)
    ours, ref = GroupNorm2d(8, channels), torch.nn.GroupNorm(8, channels)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, channels))
            m.bias.copy_(torch.linspace(-0.2, 0.2, channels))
    x0 = torch.randn(2, channels, 12, 10).to(dtype).contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for m in (ours, ref):
        x = x0.clone().requires_grad_()
        y = m(x)
        (y.float() * torch.arange(y.numel()).reshape(y.shape).remainder(7)).sum().backward()
        outs.append(y)
        grads.append((x.grad, m.weight.grad))
    assert outs[0].is_contiguous(memory_format=torch.channels_last)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(outs[0].float(), outs[1].float(), atol=tol, rtol=tol)
    for a, b in zip(*grads):
        torch.testing.assert_close(a.float(), b.float(), atol=tol * 10, rtol=tol)


def assert_trains(cfg, model, x: torch.Tensor) -> None:
    """Three TrainSteps of ``model`` on ``x`` (4 x 1 x 64 x 64) with a square defect give finite losses."""
    mask = torch.zeros(4, 1, 64, 64)
    mask[:, :, 20:30, 20:30] = 1
    step = TrainStep(cfg, model=model)
    assert all(np.isfinite([step(x, x, mask)["loss"] for _ in range(3)]))


def test_reconstruction_net_can_keep_batchnorm_beside_a_group_norm_prediction_net(tmp_path):
    """recon_norm="batch" with norm="group": BatchNorm in the reconstruction net (and the copied extractor), GroupNorm
    in the prediction net; the model file rebuilds the same split and gives the trained model's outputs."""
    torch.manual_seed(0)
    cfg = tiny_config(norm="group", recon_norm="batch", image_size=64)
    model = build_model(cfg)

    def norms(net):
        return {type(m).__name__ for m in net.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))}

    assert norms(model.reconstruction) == norms(model.feature_extractor) == {"BatchNorm2d"}
    assert norms(model.prediction) == {"GroupNorm2d"}
    x = torch.rand(4, 1, 64, 64)
    assert_trains(cfg, model, x)
    model.eval()
    with torch.no_grad():
        expected = model(x)[1]
    path = str(tmp_path / "mixed.safetensors")
    save_model(path, model, cfg)
    detector = load_model(path)
    assert detector.config.recon_norm == "batch"
    assert norms(detector.model.reconstruction) == set()  # its BatchNorms folded away
    with torch.no_grad():
        torch.testing.assert_close(detector.model(x)[1], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="norm"):
        build_model(tiny_config(norm="group", recon_norm="layer"))


def test_group_norm_reaches_both_networks_and_is_per_image(tmp_path):
    """norm="group" with recon_norm unset: every norm layer of both networks is a GroupNorm, so an image's
    training-mode output does not depend on the other images of its batch (BatchNorm's does); the model trains, keeps
    its outputs through reparameterize (large-kernel branches stay unfused), and the model file keeps the norm.
    Unknown norms are an error."""
    torch.manual_seed(0)
    cfg = tiny_config(norm="group", recon_norm=None, image_size=64)
    model = build_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
    assert norms and all(isinstance(m, torch.nn.GroupNorm) for m in norms)
    assert all(m.num_groups == 8 for m in norms if m.num_channels % 8 == 0)
    x = torch.rand(4, 1, 64, 64)
    for net in (model.train(), build_model(tiny_config(image_size=64, norm="batch")).train()):
        with torch.no_grad():
            alone = net(x[:1])[1]
            in_batch = net(x)[1][:1]
        # float rounding only (torch's channels_last GroupNorm sums in batch-dependent order); BatchNorm's
        # batch statistics move the output by far more
        assert torch.allclose(alone, in_batch, atol=1e-3) == (net is model)
    assert_trains(cfg, model, x)
    model.eval()
    with torch.no_grad():
        before = model(x)[1]
        model.reparameterize()
        after = model(x)[1]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    path = str(tmp_path / "group.safetensors")
    save_model(path, model, cfg)
    detector = load_model(path)
    assert detector.config.norm == "group"
    assert any(isinstance(m, torch.nn.GroupNorm) for m in detector.model.modules())
    _, maps = detector.predict([np.zeros((64, 80), np.uint8)])
    assert maps[0].shape == (64, 80)
    with pytest.raises(ValueError, match="norm"):
        build_model(tiny_config(norm="layer"))


# --- losses and scores ---------------------------------------------------------------------------------

def test_losses():
    x = torch.rand(2, 3, 40, 40)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim_loss(x, torch.rand_like(x)).item() > 0.5
    assert ssim_loss(x, (x + 0.02 * torch.randn_like(x)).clamp(0, 1)) < ssim_loss(x, torch.rand_like(x))
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # p(class 1) = 1 / (1 + e^2)
    p1 = 1 / (1 + np.exp(2.0))
    assert focal_loss(logits, torch.tensor([[[1]]])).item() == pytest.approx(-(1 - p1) ** 2 * np.log(p1), rel=1e-5)
    assert focal_loss(logits, torch.tensor([[[0]]])).item() == pytest.approx(-p1 ** 2 * np.log(1 - p1), rel=1e-5)
    f = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
    assert feature_consistency_loss(f, f).item() == pytest.approx(0.0, abs=1e-5)
    assert feature_consistency_loss(f, [-t for t in f]).item() == pytest.approx(2.0, abs=1e-5)


def test_ssim_matches_a_direct_11x11_reference():
    """The separable blur must give DRAEM's SSIM: an 11x11 Gaussian window (sigma 1.5), zero padding, computed
    here independently with scipy on float64."""
    from scipy.ndimage import correlate

    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 23, 31))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def blur(m):
        return correlate(m, window, mode="constant", cval=0.0)

    values = []
    for i in range(2):
        for c in range(3):
            p, q = a[i, c], b[i, c]
            mu_p, mu_q = blur(p), blur(q)
            var_p, var_q, cov = blur(p * p) - mu_p**2, blur(q * q) - mu_q**2, blur(p * q) - mu_p * mu_q
            c1, c2 = 0.01**2, 0.03**2
            values.append(((2 * mu_p * mu_q + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2)))
    expected = float(np.mean(values))
    assert ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("shape,k", [((3, 4, 29, 18), 15), ((2, 6, 16, 16), 17), ((2, 3, 12, 20), 21)])
def test_depthwise_conv2d_gradients_match_autograd_of_conv2d(shape, k):
    """The FFT weight gradient and the flipped-kernel input gradient against torch's own conv2d backward."""
    torch.manual_seed(0)
    channels = shape[1]
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(channels, 1, k, k, requires_grad=True)
    grad = torch.randn(shape)
    out = depthwise_conv2d(x, w, k // 2)
    assert "DepthwiseConv2d" in type(out.grad_fn).__name__  # the FFT path, not torch's own
    out.backward(grad)
    got_x, got_w = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    expected = torch.nn.functional.conv2d(x, w, padding=k // 2, groups=channels)
    expected.backward(grad)
    assert torch.equal(out, expected)
    assert torch.allclose(got_x, x.grad, rtol=0, atol=1e-5 * x.grad.abs().max().item())
    assert torch.allclose(got_w, w.grad, rtol=0, atol=1e-5 * w.grad.abs().max().item())
    assert depthwise_conv2d(x.detach(), w.detach(), k // 2).grad_fn is None  # inference takes the plain conv


def test_depthwise_conv2d_stays_float32_under_cpu_bf16_autocast():
    """The FFT path has no bf16 form: under autocast it casts its inputs up and gives torch's float32 result."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 20, 20).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 1, 15, 15, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise_conv2d(x.bfloat16(), w, 7)  # a bf16 activation, as the layer before would hand it on
    assert out.dtype == torch.float32 and "DepthwiseConv2d" in type(out.grad_fn).__name__
    out.sum().backward()
    expected_w = torch.autograd.grad(
        torch.nn.functional.conv2d(x.bfloat16().float(), w, padding=7, groups=4).sum(), w)[0]
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    assert torch.allclose(w.grad, expected_w, rtol=0, atol=1e-5 * expected_w.abs().max().item())


def test_cpu_bf16_modes():
    assert cpu_bf16_enabled("off") is False and cpu_bf16_enabled("on") is True
    assert cpu_bf16_enabled("auto") is cpu_has_bf16()
    with pytest.raises(ValueError, match="cpu_bf16"):
        TrainStep(tiny_config(cpu_bf16="yes"))


def test_cpu_bf16_train_step_matches_float32_and_learns():
    """bf16 autocast on CPU: the same losses as float32 to bf16 precision from the same weights, and it learns."""
    cfg = tiny_config()
    damaged, clean, mask = synthetic_batch(8, 32)
    full, half = TrainStep(cfg.replace(cpu_bf16="off")), TrainStep(cfg.replace(cpu_bf16="on"))
    assert not full.bf16 and half.bf16
    first_full, first_half = full(damaged, clean, mask), half(damaged, clean, mask)
    for key in ("l2", "ssim", "focal", "dice"):
        assert first_half[key] == pytest.approx(first_full[key], rel=0.05, abs=1e-3), key
    assert all(p.dtype == torch.float32 for p in half.net.parameters())  # the weights stay float32
    losses = [half(damaged, clean, mask) for _ in range(60)]
    assert all(np.isfinite(v) for v in losses[-1].values())
    first, last = np.mean([l["loss"] for l in losses[:5]]), np.mean([l["loss"] for l in losses[-5:]])
    assert last < 0.6 * first, (first, last)


def test_image_peak_loss_reads_the_peaks_an_image_score_reads():
    def logits_for(p):  # a two-class map with defect probability p
        p = p.clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)

    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, 10:20, 15] = 1  # a 1-px crack
    good = torch.full((1, 32, 32), 1e-4)
    good[target > 0] = 0.999
    assert image_peak_loss(logits_for(good), target).item() < 0.01
    hot = good.clone()
    hot[0, 2, 2] = 0.9  # one hot normal pixel: a false alarm whatever the other 1,000 pixels do
    assert image_peak_loss(logits_for(hot), target).item() > 0.2
    rim = good.clone()
    rim[0, 10, 16] = 0.9  # next to the defect, where the label is uncertain: not counted
    assert image_peak_loss(logits_for(rim), target).item() < 0.01
    missed = good.clone()
    missed[target > 0] = 1e-4
    assert image_peak_loss(logits_for(missed), target).item() > 5
    one_hit = missed.clone()
    one_hit[0, 12, 15] = 0.999  # one confident pixel is all the image score needs
    assert image_peak_loss(logits_for(one_hit), target).item() < 0.01
    normal_only = torch.zeros(2, 8, 8, dtype=torch.long)
    logits = torch.zeros(2, 2, 8, 8, requires_grad=True)
    loss = image_peak_loss(logits, normal_only)
    loss.backward()
    assert loss.item() == pytest.approx(np.log(2), rel=1e-5) and logits.grad.abs().sum() > 0


def test_score_head_is_a_second_map_trained_with_the_peak_loss():
    """With score_head the network has a third output; output_maps gives (defect, score) probabilities, flip
    averaging covers both, and a training step puts the peak loss on the score head only."""
    cfg = tiny_config(score_head="shared", peak_weight=0.1, dice_weight=0.1)
    torch.manual_seed(0)
    model = build_model(cfg, feature_extractor=False).eval()
    x = torch.rand(2, 1, 32, 32)
    both = output_maps(model, x, flip_average=True)
    assert both.shape == (2, 2, 32, 32) and 0 <= both.min() and both.max() <= 1
    torch.testing.assert_close(both[:, 0], anomaly_maps(model, x, flip_average=True))
    _, logits = model(x)
    torch.testing.assert_close(output_maps(model, x)[:, 1], torch.sigmoid(logits[:, 2]))
    assert output_maps(build_model(tiny_config(), feature_extractor=False), x).shape == (2, 1, 32, 32)

    step = TrainStep(cfg)
    target = torch.zeros(8, 32, 32)
    target[:4, 10:20, 12:14] = 1
    images = torch.rand(8, 1, 32, 32)
    losses = step(images, images, target)
    assert {"score", "peak", "dice", "focal"} <= set(losses)
    # the peak loss reads the score head: zeroing the defect channel's last conv changes nothing in it
    net = step.net.eval()
    _, logits = net(images)
    expected = image_peak_loss(two_class_logits(logits[:, 2:3]), (target > 0.5).long())
    with torch.no_grad():
        net.prediction.head.weight[:2] = 0
    _, logits_after = net(images)
    torch.testing.assert_close(image_peak_loss(two_class_logits(logits_after[:, 2:3]), (target > 0.5).long()),
                               expected)


def test_a_detached_score_head_trains_only_its_own_conv():
    torch.manual_seed(0)
    shared = build_model(tiny_config(score_head="shared"), feature_extractor=False)
    detached = build_model(tiny_config(score_head="detached"), feature_extractor=False)
    detached.load_state_dict(shared.state_dict())  # same parameters, same forward values
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(shared.eval()(x)[1], detached.eval()(x)[1])
    detached.train()
    detached(x)[1][:, 2].sum().backward()  # a loss on the score channel alone
    head = detached.prediction.head
    assert head.weight.grad[2].abs().sum() > 0 and head.weight.grad[:2].abs().sum() == 0
    trunk = [p for n, p in detached.named_parameters() if not n.startswith("prediction.head")]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trunk)
    with pytest.raises(ValueError, match="score_head"):
        build_model(tiny_config(score_head="yes"))


def test_defect_dice_loss_weighs_every_defect_alike():
    def logits_for(prob):  # (B, H, W) defect probability -> (B, 2, H, W) logits
        p = prob.clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)

    thin, big = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    thin[0, 10:50, 30] = 1  # a 1-px crack
    big[0, 10:50, 10:50] = 1
    targets = torch.cat([thin, big]).long()
    assert defect_dice_loss(logits_for(targets.float()), targets).item() == pytest.approx(0.0, abs=1e-3)
    # Missing the crack costs what missing the big defect costs (the focal loss barely notices the crack).
    missed_thin = torch.cat([torch.zeros(1, 64, 64), big])
    missed_big = torch.cat([thin, torch.zeros(1, 64, 64)])
    dice_thin = defect_dice_loss(logits_for(missed_thin), targets).item()
    dice_big = defect_dice_loss(logits_for(missed_big), targets).item()
    assert dice_thin == pytest.approx(0.5, abs=0.02) and dice_big == pytest.approx(0.5, abs=0.02)
    assert focal_loss(logits_for(missed_thin), targets) < 0.1 * focal_loss(logits_for(missed_big), targets)
    # Normal images only: no Dice term, but a graph gradients can flow through.
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    loss = defect_dice_loss(logits, torch.zeros(2, 8, 8, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_filter_size_and_image_scores():
    assert filter_size_for(get_config("paper")) == 21
    assert filter_size_for(get_config("paper", image_size=128)) == 11
    assert filter_size_for(get_config("paper", image_size=512)) == 43
    assert filter_size_for(get_config("paper", image_size=8)) == 1
    maps = np.zeros((3, 20, 20), np.float32)
    maps[1, 5:8, 5:8] = 1.0  # a 3x3 blob: a 3x3 mean filter's max is exactly 1
    maps[2, 10, 10] = 1.0  # one pixel: diluted to 1/9
    scores = image_scores(maps, 3)
    assert scores.shape == (3,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, [0.0, 1.0, 1 / 9], atol=1e-6)
    np.testing.assert_allclose(image_scores(torch.from_numpy(maps), 3), scores)
    corner = np.zeros((1, 20, 20), np.float32)
    corner[0, :2, :2] = 1.0  # at the border only in-image pixels are averaged
    assert image_scores(corner, 3)[0] == pytest.approx(1.0)
    assert image_scores(maps, 1)[2] == 1.0


def test_top_k_image_score_keeps_a_line_and_lowers_a_spot():
    assert top_k_for(get_config("paper")) == 1
    assert top_k_for(get_config("cpu-small")) == 10  # 40 at 256 px, scaled by the area to 128 px
    assert top_k_for(get_config("cpu-small", image_size=256)) == 40
    maps = np.full((3, 20, 20), 0.1, np.float32)
    maps[0, 3, 2:14] = 0.9  # a 1-px line of 12 pixels
    maps[1, 7, 7] = maps[1, 7, 8] = 0.9  # a 2-px spot
    top4 = image_scores(maps, 1, 4)
    np.testing.assert_allclose(top4, [0.9, (2 * 0.9 + 2 * 0.1) / 4, 0.1], atol=1e-6)
    np.testing.assert_allclose(image_scores(maps, 1, 1), [0.9, 0.9, 0.1], atol=1e-6)  # k = 1 is the max
    np.testing.assert_allclose(image_scores(torch.from_numpy(maps), 1, 4), top4)
    assert image_scores(maps, 1, 10_000)[0] == pytest.approx(float(maps[0].mean()))  # k beyond the pixels: all


def test_images_to_tensor():
    gray = np.full((2, 5, 7), 255, np.uint8)
    t = images_to_tensor(gray)
    assert t.shape == (2, 1, 5, 7) and t.dtype == torch.float32 and t.max() == 1.0
    rgb = np.zeros((1, 5, 7, 3), np.uint8)
    rgb[..., 2] = 51
    t = images_to_tensor(rgb)
    assert t.shape == (1, 3, 5, 7) and t[0, 2, 0, 0].item() == pytest.approx(0.2)
    with pytest.raises(ValueError):
        images_to_tensor(np.zeros((1, 5, 7), np.float32))


# --- training step ---------------------------------------------------------------------------------------

def synthetic_batch(n: int, size: int, seed: int = 0):
    """Smooth normal images; half get a bright or dark square defect whose mask is the target."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    clean = (0.4 + 0.1 * torch.sin(xx / size * 6.28)[None, None] + 0.03 * torch.rand(n, 1, size, size, generator=g))
    damaged, mask = clean.clone(), torch.zeros(n, 1, size, size)
    for i in range(0, n, 2):
        y, x = torch.randint(0, size - 10, (2,), generator=g).tolist()
        mask[i, :, y:y + 10, x:x + 10] = 1
        damaged[i, :, y:y + 10, x:x + 10] = 0.95 if i % 4 == 0 else 0.05
    return damaged.clamp(0, 1), clean.clamp(0, 1), mask


def mask_iou(model: DefectModel, damaged, mask) -> float:
    pred = anomaly_maps(model, damaged) > 0.5
    truth = mask[:, 0] > 0.5
    return ((pred & truth).sum() / (pred | truth).sum().clamp(min=1)).item()


def test_tiny_model_overfits_a_handful_of_samples():
    cfg = tiny_config()
    damaged, clean, mask = synthetic_batch(8, 32)
    step = TrainStep(cfg)
    iou_before = mask_iou(step.model, damaged, mask)
    losses = [step(damaged, clean, mask) for _ in range(100)]
    iou_after = mask_iou(step.model, damaged, mask)
    first, last = np.mean([l["loss"] for l in losses[:5]]), np.mean([l["loss"] for l in losses[-5:]])
    assert last < 0.5 * first, (first, last)
    assert losses[-1]["focal"] < 0.3 * losses[0]["focal"]
    assert iou_after > 0.5 and iou_after > iou_before + 0.3, (iou_before, iou_after)
    assert step.step == 100
    assert set(losses[0]) == {"loss", "l2", "ssim", "feature", "focal", "dice"}  # cpu-small has Dice
    assert 0.0 < losses[0]["dice"] <= 1.0 and losses[-1]["dice"] < losses[0]["dice"]
    without_dice = TrainStep(cfg.replace(dice_weight=0.0))(damaged, clean, mask)
    assert set(without_dice) == {"loss", "l2", "ssim", "feature", "focal"}


def test_a_model_without_reconstruction_learns_the_masks_alone():
    cfg = tiny_config(recon_base_width=0, feature_extractor="none")
    damaged, clean, mask = synthetic_batch(8, 32)
    step = TrainStep(cfg)
    iou_before = mask_iou(step.model, damaged, mask)
    losses = [step(damaged, clean, mask) for _ in range(100)]
    assert all(l["l2"] == l["ssim"] == l["feature"] == 0.0 for l in losses)  # nothing to reconstruct
    assert losses[-1]["focal"] < 0.3 * losses[0]["focal"]
    assert mask_iou(step.model, damaged, mask) > max(0.5, iou_before + 0.3)


def test_train_step_is_deterministic_and_resumes():
    cfg = tiny_config()
    damaged, clean, mask = synthetic_batch(4, 32)
    a, b = TrainStep(cfg), TrainStep(cfg)
    ra = [a(damaged, clean, mask[:, 0]) for _ in range(3)]  # (B, S, S) masks work too
    rb = [b(damaged, clean, mask) for _ in range(3)]
    assert ra == rb
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = TrainStep(cfg.replace(seed=1))
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert c.step == 3
    assert c(damaged, clean, mask) == a(damaged, clean, mask)


def test_lr_schedule_follows_whichever_budget_runs_out_first():
    cfg = tiny_config(epochs=10, lr_milestones=[0.4, 0.8], lr=1e-3)
    assert budget_progress(cfg, 3, 30, None) == pytest.approx(0.3)
    assert budget_progress(cfg.replace(max_steps=50), 3, 30, None) == pytest.approx(0.6)
    assert budget_progress(cfg.replace(max_minutes=20.0), 3, 30, 17.0) == pytest.approx(0.85)
    assert budget_progress(cfg.replace(max_minutes=20.0), 3, 30, 25.0) == 1.0
    step = TrainStep(cfg)
    for progress, lr in [(0.0, 1e-3), (0.39, 1e-3), (0.4, 1e-4), (0.79, 1e-4), (0.8, 1e-5), (1.0, 1e-5)]:
        step.set_progress(progress)
        assert step.lr == pytest.approx(lr)
        assert all(g["lr"] == pytest.approx(lr) for g in step.optimizer.param_groups)
    step.set_progress(0.1)  # progress never goes back (a resumed run's fresh time budget)
    assert step.lr == pytest.approx(1e-5)
    other = TrainStep(cfg)
    other.load_state_dict(step.state_dict())
    assert other.lr == pytest.approx(1e-5) and other.progress == 1.0


def test_copy_refresh():
    cfg = tiny_config(feature_refresh_every=2)
    step = TrainStep(cfg)
    damaged, clean, mask = synthetic_batch(2, 32)
    enc, copy = step.model.reconstruction.encoder, step.model.feature_extractor.encoder
    step(damaged, clean, mask)  # step 1: the copy lags the encoder
    assert not all(torch.equal(p, q) for p, q in zip(enc.parameters(), copy.parameters()))
    assert not any(p.requires_grad for p in copy.parameters()) and not copy.training
    step(damaged, clean, mask)  # step 2: refreshed
    assert all(torch.equal(p, q) for p, q in zip(enc.state_dict().values(), copy.state_dict().values()))


def test_gradient_extractor_trains_the_encoder_through_the_feature_loss():
    model = build_model(tiny_config(feature_extractor="gradient"))
    x = torch.rand(2, 1, 32, 32)
    _, _, feature = model(x, clean=torch.rand_like(x))
    feature.backward()
    assert model.reconstruction.encoder[0][0][0].weight.grad.abs().sum() > 0
    assert model.prediction.head.weight.grad is None  # the feature term touches the reconstruction only


# --- timm extractor (weights made here, nothing downloaded) ---------------------------------------------

def test_timm_extractor_from_a_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "r10.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "r10.safetensors"))
    for weights in ("r10.pth", "r10.safetensors"):
        model = build_model(tiny_config(feature_extractor="timm:resnet10t", feature_weights=str(tmp_path / weights)))
        ext = model.feature_extractor
        assert isinstance(ext, TimmFeatures) and not any(p.requires_grad for p in ext.parameters())
        assert torch.equal(ext.backbone.conv1[0].weight, source.conv1[0].weight)
        x = torch.rand(2, 1, 64, 64)
        features = ext(x)
        reference = timm.create_model("resnet10t", pretrained=False, features_only=True, out_indices=(1, 2, 3))
        reference.load_state_dict(source.state_dict(), strict=False)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        expected = reference.eval()((x.expand(-1, 3, -1, -1) - mean[:, None, None]) / std[:, None, None])
        assert len(features) == 3
        for f, e in zip(features, expected):
            torch.testing.assert_close(f, e)  # grayscale repeated, ImageNet-normalised inside the wrapper only
        _, _, feature = model(x, clean=torch.rand_like(x))
        assert feature.item() > 0
    step = TrainStep(tiny_config(feature_extractor="timm:resnet10t", feature_weights=str(tmp_path / "r10.pth")))
    assert step(*synthetic_batch(2, 64))["feature"] > 0


def test_timm_extractor_refuses_wrong_or_foreign_weights(tmp_path):
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="do not fit"):
        build_model(tiny_config(feature_extractor="timm:resnet10t", feature_weights=str(tmp_path / "other.pth")))
    (tmp_path / "junk.bin").write_bytes(b"not weights at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        build_model(tiny_config(feature_extractor="timm:resnet10t", feature_weights=str(tmp_path / "junk.bin")))


def test_train_step_accepts_a_wrapped_model():
    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel: forward delegates, .module holds it
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    cfg = tiny_config(feature_refresh_every=1)
    torch.manual_seed(cfg.seed)
    step = TrainStep(cfg, model=Wrapper(build_model(cfg)))
    out = step(*synthetic_batch(2, 32))
    assert np.isfinite(out["loss"]) and step.net is step.model.module
    assert all(not k.startswith("module.") for k in step.state_dict()["model"])
    plain = TrainStep(cfg)
    plain.load_state_dict(step.state_dict())  # a checkpoint of a wrapped model loads into an unwrapped one


# --- tiling (fit="tiles") -------------------------------------------------------------------------------------

def test_fit_keeps_the_aspect_ratio_and_tiles_cover_the_image():
    from defectray.models.tiling import fit_image, fitted_size, stitch, tile_offsets, tile_windows

    assert fitted_size(150, 600, 128, "tiles") == (128, 512)
    assert fitted_size(600, 250, 128, "tiles") == (307, 128)
    assert fitted_size(150, 600, 128, "stretch") == (128, 128)
    with pytest.raises(ValueError, match="fit"):
        fitted_size(10, 10, 8, "crop")
    assert fit_image(np.zeros((150, 600, 3), np.uint8), 128, 1, "tiles").shape == (128, 512)
    for length in (128, 129, 200, 256, 300, 512, 1000):
        offsets = tile_offsets(length, 128)
        covered = np.zeros(length, int)
        for o in offsets:
            covered[o:o + 128] += 1
        assert offsets[0] == 0 and offsets[-1] == length - 128 and covered.min() >= 1
        assert len(offsets) == -(-length // 128)  # as few tiles as cover it
    windows = tile_windows(128, 300, 128)
    maps = np.stack([np.full((128, 128), v, np.float32) for v in (0.0, 1.0, 2.0)])
    stitched = stitch(maps, windows, 128, 300)
    assert stitched.shape == (128, 300)
    assert stitched[0, 0] == 0.0 and stitched[0, -1] == 2.0
    assert stitched[0, windows[1][1]] == 0.5  # overlap of tiles 0 and 1: their mean


def test_training_views_are_random_crops_at_inference_scale():
    from defectray.train import training_view

    fitted = np.arange(128 * 300, dtype=np.int64).reshape(128, 300)
    rng = np.random.default_rng(0)
    xs = set()
    for _ in range(20):
        view, y, x = training_view(fitted, 128, rng)
        assert view.shape == (128, 128) and y == 0 and np.array_equal(view, fitted[:, x:x + 128])
        xs.add(x)
    assert len(xs) > 10  # the whole width is sampled, not one fixed square


# --- Ray Data pacing (defectray/pacing.py; the callback needs no running Ray) ---------------------------------

def test_scheduling_loop_sleeps_only_after_a_step_that_changed_nothing(monkeypatch):
    import types

    from defectray import pacing

    if pacing.ExecutionCallback is None:
        pytest.skip("this Ray release has no execution callbacks")
    slept = []
    monkeypatch.setattr(pacing.time, "sleep", lambda s: slept.append(s))
    metrics = types.SimpleNamespace(num_tasks_submitted=0, num_task_outputs_generated=0, num_outputs_taken=0)
    executor = types.SimpleNamespace(_topology=[types.SimpleNamespace(metrics=metrics)])  # iterated like the dict
    loop = pacing.PacedSchedulingLoop()
    loop.on_execution_step(executor)  # first step: nothing to compare with, counts as progress
    metrics.num_tasks_submitted += 1
    loop.on_execution_step(executor)  # launched a task: no sleep
    assert slept == []
    loop.on_execution_step(executor)  # nothing changed: sleep
    assert slept == [pacing.SCHEDULING_STEP_S]
    metrics.num_outputs_taken += 1
    loop.on_execution_step(executor)
    assert slept == [pacing.SCHEDULING_STEP_S]
    loop.on_execution_step(types.SimpleNamespace())  # counters unavailable: always paced
    assert len(slept) == 2


def test_auto_levels_stretch_contrast_but_leave_flat_images_alone():
    from defectray.models.tiling import fit_image, stretch_levels

    rng = np.random.default_rng(0)
    dark = rng.integers(40, 90, (64, 64), dtype=np.uint8)  # a dim, low-contrast exposure
    out = stretch_levels(dark)
    assert np.quantile(out, 0.005) == 0 and np.quantile(out, 0.995) == 255
    assert np.all(np.diff(out[np.argsort(dark, axis=None) // 64, np.argsort(dark, axis=None) % 64]
                          .astype(int)) >= 0)  # monotone: the order of grey levels is kept
    flat = np.full((32, 32), 120, np.uint8)
    flat[0, 0] = 125
    assert np.array_equal(stretch_levels(flat), flat)
    rgb = rng.integers(40, 90, (16, 16, 3), dtype=np.uint8)
    assert stretch_levels(rgb).shape == rgb.shape
    assert np.array_equal(fit_image(dark, 64, 1, "tiles", auto_levels=True), out)
    assert np.array_equal(fit_image(dark, 64, 1, "tiles"), dark)


def test_flip_average_is_the_mean_of_the_flipped_maps_and_flip_equivariant():
    torch.manual_seed(0)
    model = build_model(tiny_config(), feature_extractor=False).eval()
    x = torch.rand(3, 1, 32, 32)
    manual = (anomaly_maps(model, x) + anomaly_maps(model, x.flip(3)).flip(2)
              + anomaly_maps(model, x.flip(2)).flip(1) + anomaly_maps(model, x.flip((2, 3))).flip((1, 2))) / 4
    averaged = anomaly_maps(model, x, flip_average=True)
    torch.testing.assert_close(averaged, manual)
    assert not torch.allclose(averaged, anomaly_maps(model, x), atol=1e-4)  # the network is not symmetric
    # The average over the flip group commutes with flipping the input; a single pass does not.
    torch.testing.assert_close(anomaly_maps(model, x.flip(3), flip_average=True), averaged.flip(2))
