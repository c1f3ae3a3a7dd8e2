"""From network output to scores: pixel map = defect probability (softmax of the first two channels); image
score = max of the mean-filtered map (DRAEM's 21x21 at 256 px, scaled to the model resolution), or the mean of
its ``score_top_k`` highest values (scaled with the area).

A model with a score head (``Config.score_head``) has a third output channel whose sigmoid is a second map
trained for the image score (the peak loss): the image score is then read from that map, while the pixel
map stays the defect probability.

``Config.map_gate`` = p > 0 returns each pixel map times its image score to the p (``gated_map``), after the
score is read from the map as it was."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from defectray.config import Config
from defectray.models.precision import bf16_autocast_on


def filter_size_for(config: Config) -> int:
    """``score_filter_size`` scaled by image_size / 256, rounded to the nearest odd size, at least 1."""
    size = max(1, int(config.score_filter_size * config.image_size / 256 + 0.5))
    return size if size % 2 == 1 else size + 1


def top_k_for(config: Config) -> int:
    """``score_top_k`` scaled by (image_size / 256)², rounded, at least 1: a defect's pixel count scales
    with the area."""
    return max(1, int(config.score_top_k * (config.image_size / 256) ** 2 + 0.5))


FLIPS = ((), (3,), (2,), (2, 3))  # identity, left-right, up-down, both: dims of a (B, C, H, W) batch


def probability_maps(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2 or 3, H, W) logits -> (B, 1 or 2, H, W) float32: the defect probability, then (with a score head)
    the score head's probability."""
    logits = logits.float()
    defect = torch.softmax(logits[:, :2], dim=1)[:, 1:]
    if logits.shape[1] == 2:
        return defect
    return torch.cat([defect, torch.sigmoid(logits[:, 2:3])], dim=1)


@torch.no_grad()
def output_maps(model, batch: torch.Tensor, flip_average: bool = False, cpu_bf16: bool = False) -> torch.Tensor:
    """(B, K, H, W) float32 ``probability_maps`` of the model (K = 1, or 2 with a score head); the model is put
    in eval mode. bf16 autocast on CUDA, and on CPU with ``cpu_bf16`` (the Detector passes
    ``Config.cpu_bf16`` resolved for this CPU: on one with bf16 instructions inference is ~2x faster with the
    same metrics, BENCHMARKS.md "Session 33"); channels_last everywhere (faster large-kernel depthwise convs
    on CPU too). ``flip_average``: the mean of the maps of the 4 flipped batches, each flipped back (one flip
    at a time: memory as without)."""
    net = getattr(model, "module", model)
    net.eval()
    device = next(net.parameters()).device
    batch = batch.to(device, non_blocking=True)
    flips = FLIPS if flip_average else FLIPS[:1]
    total = None
    for dims in flips:
        x = (batch.flip(dims) if dims else batch).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast_on(device, cpu_bf16)):
            _, logits = net(x)
        maps = probability_maps(logits)
        maps = maps.flip(dims) if dims else maps
        total = maps if total is None else total + maps
    return total / len(flips)


def anomaly_maps(model, batch: torch.Tensor, flip_average: bool = False) -> torch.Tensor:
    """(B, H, W) float32 defect probability (the pixel map; see ``output_maps``)."""
    return output_maps(model, batch, flip_average)[:, 0]


def image_scores(maps: torch.Tensor | np.ndarray, filter_size: int, top_k: int = 1) -> np.ndarray:
    """(B,) float32: the mean of the ``top_k`` highest values (1: the max) of each (H, W) map's
    ``filter_size`` mean filter. Border windows average only the pixels inside the image, so a defect at the
    edge is not diluted by padding.

    Why top-k and not a wider filter: a filter dilutes a 1-px crack line as much as a 1-px dot, while the
    mean of the k highest pixels keeps any defect of k pixels or more (a line included) at full strength and
    brings a 1-2 px spot down towards its surroundings."""
    t = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    t = t.detach().to("cpu", torch.float32)
    if t.ndim == 2:
        t = t[None]
    if filter_size > 1:
        t = F.avg_pool2d(t[:, None], filter_size, stride=1, padding=filter_size // 2,
                         count_include_pad=False)[:, 0]
    t = t.flatten(1)
    if top_k <= 1:
        return t.amax(dim=1).numpy().astype(np.float32)
    return t.topk(min(top_k, t.shape[1]), dim=1).values.mean(dim=1).numpy().astype(np.float32)


def gated_map(amap: np.ndarray, score: float, power: float) -> np.ndarray:
    """``amap`` times ``score`` ** ``power`` (``power`` 0: ``amap`` itself).

    Why: a pixel's evidence is local, the image score weighs the whole image. A faint response inside a large
    defect ranks below the false alarms scattered over normal images; scaled by how sure the model is that
    its image holds a defect, it ranks above most of them, and a normal image's map fades as a whole. The
    image score, read before, is unchanged (BENCHMARKS.md, session 54)."""
    if not power >= 0:  # a negative power would raise the maps of images the model calls normal
        raise ValueError(f"map_gate must be 0 or more, got {power}")
    if power == 0:
        return amap
    return (amap * np.float32(max(float(score), 0.0) ** power)).astype(np.float32, copy=False)
