"""The model file: ONE safetensors file holding the weights, with the config, calibration and model id in
its metadata header (strings). Written and read through defectray.io, so a local path or any fsspec URI.

- Weights: the reconstruction and prediction networks in their training form (so a file can be fine-tuned);
  ``load_model`` re-parameterises the large kernels for inference. The feature extractor is not stored: it
  is only needed for training.
- ``model_id``: ``"dr-"`` + the first 16 hex digits of SHA-256 over the canonical config JSON and every
  weight tensor (name, dtype, shape, bytes) in name order. Calibration is not part of the id: re-calibrating
  a model does not make it a different model.
- Loading never unpickles: safetensors holds tensors only, and anything else (a pickle, a random file, a
  safetensors file from elsewhere) is refused with ``NotADefectrayModelError``.
"""

from __future__ import annotations

import hashlib
import json
import struct

import cv2
import numpy as np
import torch

from defectray.config import Config
from defectray.io import read_bytes, write_bytes
from defectray.models import DefectModel, build_model
from defectray.models.precision import bf16_autocast_on, cpu_bf16_enabled
from defectray.models.scoring import filter_size_for, gated_map, image_scores, top_k_for
from defectray.models.tiling import fit_image, stitch, tile_windows

FORMAT = "defectray-model"
FORMAT_VERSION = "1"
TILE_BATCH = 64  # tiles per forward pass at inference


class NotADefectrayModelError(ValueError):
    pass


def _inference_state(model: DefectModel) -> dict[str, torch.Tensor]:
    net = getattr(model, "module", model)
    state = {}
    for prefix, part in (("reconstruction.", net.reconstruction), ("prediction.", net.prediction)):
        if part is None:  # recon_base_width=0
            continue
        for k, v in part.state_dict().items():
            state[prefix + k] = v.detach().to("cpu").contiguous()
    return state


def model_id_of(config: Config, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "dr-" + h.hexdigest()[:16]


def save_model(uri: str, model: DefectModel, config: Config, calibration: dict | None = None) -> str:
    """Write the model file to ``uri``; returns its model_id. The model must be in training form."""
    from safetensors.torch import save

    net = getattr(model, "module", model)
    if any(getattr(m, "fused", None) is not None for m in net.modules()):
        raise ValueError("save the training-form model, not a re-parameterised one")
    state = _inference_state(net)
    model_id = model_id_of(config, state)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": model_id,
                "config": config.to_json(), "calibration": json.dumps(calibration or {})}
    write_bytes(uri, save(state, metadata=metadata))
    return model_id


def _read_metadata(data: bytes, uri: str) -> dict[str, str]:
    refuse = NotADefectrayModelError(f"{uri} is not a defectray model file (expected a safetensors file "
                                     f"written by defectray.models.modelfile.save_model)")
    if len(data) < 8:
        raise refuse
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise refuse
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise refuse from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise refuse
    if metadata.get("format_version") != FORMAT_VERSION:
        raise NotADefectrayModelError(f"{uri}: defectray model format {metadata.get('format_version')!r} is not "
                                      f"supported by this version (reads {FORMAT_VERSION})")
    return metadata


def load_model(uri: str, device: str = "cpu") -> "Detector":
    """Load a model file (local path or fsspec URI) as a ready-to-run, re-parameterised Detector."""
    from safetensors.torch import load

    data = read_bytes(uri)
    metadata = _read_metadata(data, uri)
    stored = json.loads(metadata["config"])
    stored.setdefault("fit", "stretch")  # files written before the "fit" field were trained stretched
    config = Config.from_dict(stored)
    model = build_model(config, feature_extractor=False)
    model.load_state_dict(load(data), strict=True)
    model_id = metadata["model_id"]
    return Detector(model, config, model_id, json.loads(metadata.get("calibration") or "{}"), device)


class Detector:
    """A trained model ready for inference: ``predict(images) -> (scores, maps)`` on uint8 images of any size.

    The three stages are separate so a pipeline can run ``preprocess`` on CPU workers and ``infer`` +
    ``postprocess`` on GPU actors and get exactly what ``predict`` gives."""

    def __init__(self, model: DefectModel, config: Config, model_id: str, calibration: dict | None = None,
                 device: str | torch.device = "cpu"):
        self.config = config
        self.model_id = model_id
        self.calibration = dict(calibration or {})
        self.model = model.eval().reparameterize()
        # bf16 autocast on a CPU when the config asks for it and this CPU has bf16 instructions ("auto"), as in
        # training; CUDA always runs bf16. Set to False for float32 CPU inference.
        self.cpu_bf16 = cpu_bf16_enabled(config.cpu_bf16)
        self.device = torch.device("cpu")
        self.to(device)

    @property
    def filter_size(self) -> int:
        return filter_size_for(self.config)

    @property
    def top_k(self) -> int:
        return top_k_for(self.config)

    @property
    def threshold(self) -> float | None:
        t = self.calibration.get("threshold")
        return None if t is None else float(t)

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self.calibration["threshold"] = None if value is None else float(value)

    def to(self, device) -> "Detector":
        self.device = torch.device(device)
        self.model.to(self.device, memory_format=torch.channels_last)
        return self

    def preprocess(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 (H, W) / (H, W, 1) / (H, W, 3) images of any size -> float32 (C, H', W') in [0, 1], resized by
        the config's ``fit`` rule (defectray.models.tiling): short side ``image_size`` for "tiles", an
        ``image_size`` square for "stretch".

        Reads only ``self.config``: the scoring pipeline calls it unbound on CPU workers that hold no weights."""
        s, c = self.config.image_size, self.config.channels
        out = []
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.dtype != np.uint8:
                raise ValueError(f"image {i}: expected uint8, got {img.dtype}")
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or min(img.shape[:2]) < 1:
                raise ValueError(f"image {i}: expected (H, W) or (H, W, 3), got shape {img.shape}")
            fitted = fit_image(img, s, c, self.config.fit, self.config.auto_levels)
            fitted = fitted.reshape(*fitted.shape[:2], -1).transpose(2, 0, 1)
            out.append(fitted.astype(np.float32) / 255.0)
        return out

    @torch.no_grad()
    def infer(self, batch) -> list[np.ndarray]:
        """Preprocessed (C, H', W') images (a list, or one (B, C, H', W') array) -> float32 maps at that
        resolution: each image cut into ``image_size`` tiles, all tiles run in batches, maps stitched. A map is
        the (H', W') defect probability, or, for a model with a score head, (2, H', W'): the defect
        probability and the score head's map (``postprocess`` takes the image score from the last)."""
        from defectray.models.scoring import output_maps

        s = self.config.image_size
        images = [np.asarray(x, np.float32) for x in batch]
        tiles, owners = [], []
        for k, x in enumerate(images):
            windows = tile_windows(x.shape[1], x.shape[2], s)
            tiles.extend(x[:, y:y + s, xx:xx + s] for y, xx in windows)
            owners.append(windows)
        if not tiles:
            return []
        flips = self.config.flip_average
        maps = np.concatenate([output_maps(self.model, torch.from_numpy(np.stack(tiles[i:i + TILE_BATCH])), flips,
                                           self.cpu_bf16).cpu().numpy()
                               for i in range(0, len(tiles), TILE_BATCH)]).astype(np.float32)
        out, at = [], 0
        for x, windows in zip(images, owners):
            own = maps[at:at + len(windows)]
            stitched = [stitch(own[:, c], windows, x.shape[1], x.shape[2]) for c in range(own.shape[1])]
            out.append(stitched[0] if len(stitched) == 1 else np.stack(stitched))
            at += len(windows)
        return out

    def postprocess(self, maps, sizes: list[tuple[int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Image scores from the fitted-resolution maps (``infer``); each defect map resized to its image's
        (h, w), times its image score to the ``map_gate`` power (models/scoring.gated_map)."""
        if len(maps) != len(sizes):
            raise ValueError(f"{len(maps)} maps but {len(sizes)} sizes")
        # image_scores reads a (2, H', W') map as two maps: the last is the score head's, or the only one
        scores = np.array([image_scores(m, self.filter_size, self.top_k)[-1] for m in maps], np.float32)
        defect = [np.asarray(m, np.float32)[0] if np.ndim(m) == 3 else np.asarray(m, np.float32) for m in maps]
        gate = self.config.map_gate
        resized = [gated_map(np.clip(cv2.resize(m, (int(w), int(h)), interpolation=cv2.INTER_LINEAR),
                                     0.0, 1.0).astype(np.float32), score, gate)
                   for m, (h, w), score in zip(defect, sizes, scores)]
        return scores, resized

    def predict(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        sizes = [tuple(np.asarray(img).shape[:2]) for img in images]
        if not images:
            return np.zeros(0, np.float32), []
        return self.postprocess(self.infer(self.preprocess(images)), sizes)

    def __repr__(self) -> str:
        precision = "bf16" if bf16_autocast_on(self.device, self.cpu_bf16) else "float32"
        return (f"Detector(model_id={self.model_id!r}, profile={self.config.profile!r}, "
                f"image_size={self.config.image_size}, threshold={self.threshold}, {precision})")


CALIBRATION_RULE = "q99 + 0.5*IQR of held-out normal scores, clipped to [0, 1]"


def calibrate(detector_or_model, config: Config, normal_images: list[np.ndarray], batch_size: int = 16) -> dict:
    """Score held-out normal images and pick a default threshold.

    Rule: the 99th percentile of the normal scores plus half their inter-quartile range. The percentile
    alone would flag ~1 % of the calibration images; the margin, a robust measure of their spread, absorbs
    the drift between a small calibration set and production normals without needing any defect examples
    (which a user training on defect-free images does not have). Users with labelled defects should pick
    their own operating point from the evaluation report."""
    if isinstance(detector_or_model, Detector):
        detector = detector_or_model
    else:
        net = getattr(detector_or_model, "module", detector_or_model)

        inference = build_model(config, feature_extractor=False)
        inference.load_state_dict(_inference_state(net))
        device = next(net.parameters()).device
        detector = Detector(inference, config, model_id_of(config, _inference_state(net)), device=device)
    if not normal_images:
        raise ValueError("calibration needs at least one normal image")
    scores = np.concatenate([detector.predict(normal_images[i:i + batch_size])[0]
                             for i in range(0, len(normal_images), batch_size)])
    q25, q50, q75, q99 = np.quantile(scores, [0.25, 0.5, 0.75, 0.99])
    threshold = float(min(1.0, max(0.0, q99 + 0.5 * (q75 - q25))))
    return {"normal_scores": [float(s) for s in scores], "threshold": threshold, "rule": CALIBRATION_RULE,
            "normal_median": float(q50), "n": int(len(scores))}
