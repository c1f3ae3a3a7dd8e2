"""Reading and writing images and files on local disks and anything fsspec reaches (s3://, gs://, ...).

Every image in defectray travels as a uint8 numpy array, (H, W) for grayscale or (H, W, 3) for RGB.
Pixel values are brought to float [0, 1] only inside the model code, and nowhere else, so that the
synthetic defects and the real images share one value range end to end.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Iterable

import cv2
import fsspec
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _storage_options(protocol: str) -> dict:
    # s3fs reads AWS_* credentials itself; the endpoint variable is honoured explicitly because older
    # botocore releases ignore AWS_ENDPOINT_URL, and users of MinIO/Ceph rely on it.
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def url_to_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``uri`` and the path inside it (``bucket/key`` for object stores)."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    fs, path = fsspec.core.url_to_fs(uri, **_storage_options(protocol))
    return fs, path


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A full URI for ``path`` inside ``fs``: local paths stay plain absolute paths."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return os.path.abspath(path)
    return f"{protocol}://{path}"


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme of ``base``."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(uri: str, recursive: bool = True) -> list[str]:
    """All image files under a folder/prefix, matching a glob, or listed in a manifest (``.txt``, one URI
    per line). Returned as full URIs, sorted, so every caller sees the same order."""
    if uri.endswith(".txt") and not any(c in uri for c in "*?["):
        with open_file(uri, "rb") as f:
            lines = [ln.strip() for ln in f.read().decode("utf-8").splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("#")]
    fs, path = url_to_fs(uri)
    if any(c in uri for c in "*?["):
        found = fs.glob(path)
    elif fs.isfile(path):
        found = [path]
    elif fs.isdir(path):
        found = fs.find(path) if recursive else fs.ls(path, detail=False)
    else:
        raise FileNotFoundError(f"no such folder, file or prefix: {uri}")
    return sorted(to_uri(fs, p) for p in found if is_image_name(p))


def open_file(uri: str, mode: str = "rb"):
    fs, path = url_to_fs(uri)
    if "w" in mode:
        parent = posixpath.dirname(path) if "://" in uri else os.path.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
    return fs.open(path, mode)


def read_bytes(uri: str) -> bytes:
    with open_file(uri, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    with open_file(uri, "wb") as f:
        f.write(data)


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return fs.exists(path)


def decode_image(data: bytes, channels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to uint8 (H, W) or (H, W, 3).

    16-bit images are scaled to 8 bits by their full range (65535 -> 255), alpha is dropped.
    ``channels`` = 1 or 3 converts; None keeps what the file has (gray stays gray, colour becomes RGB).
    Raises ValueError with a readable message for anything that is not a decodable image.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ValueError("not a decodable image (corrupt, truncated or not an image format)")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        else:
            raise ValueError(f"unsupported channel count {img.shape[2]}")
    return convert_channels(img, channels)


def convert_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None:
        return img
    if channels == 1 and img.ndim == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if channels == 3 and img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    return img


def load_image(uri: str, channels: int | None = None) -> np.ndarray:
    return decode_image(read_bytes(uri), channels)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or RGB (H, W, 3) array."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def save_image(uri: str, img: np.ndarray) -> None:
    write_bytes(uri, encode_png(img))


# ---- MVTec AD layout -------------------------------------------------------------------------------


def training_images(uri: str) -> list[str]:
    """Normal training images: ``<uri>/train/good`` for an MVTec-style category, else every image under
    ``uri``. Test images are never returned, so they can never leak into training or synthesis."""
    fs, path = url_to_fs(uri)
    good = posixpath.join(path, "train", "good")
    if fs.isdir(good):
        return list_images(to_uri(fs, good))
    images = list_images(uri)
    if not images:
        raise FileNotFoundError(f"no images (png, jpg, bmp, tif) under {uri}")
    return images


@dataclass(frozen=True)
class TestItem:
    image: str  # URI
    defect_class: str  # "good" for normal images
    mask: str | None  # URI of the 0/255 ground-truth mask, None for good images or unannotated classes

    @property
    def is_anomalous(self) -> bool:
        return self.defect_class != "good"


def mvtec_test_items(uri: str) -> list[TestItem]:
    """The test split of an MVTec-layout category: test/<class>/* with masks at
    ground_truth/<class>/<stem>_mask.png where they exist."""
    fs, root = url_to_fs(uri)
    test_dir = posixpath.join(root, "test")
    if not fs.isdir(test_dir):
        raise FileNotFoundError(f"{uri} has no test/ folder (expected the MVTec AD layout)")
    items: list[TestItem] = []
    for cls_path in sorted(fs.ls(test_dir, detail=False)):
        if not fs.isdir(cls_path):
            continue
        cls = posixpath.basename(cls_path.rstrip("/"))
        for img in sorted(p for p in fs.ls(cls_path, detail=False) if is_image_name(p)):
            mask = None
            if cls != "good":
                stem = posixpath.splitext(posixpath.basename(img))[0]
                cand = posixpath.join(root, "ground_truth", cls, f"{stem}_mask.png")
                if fs.exists(cand):
                    mask = to_uri(fs, cand)
            items.append(TestItem(to_uri(fs, img), cls, mask))
    if not items:
        raise FileNotFoundError(f"no test images under {uri}/test")
    return items


def iter_chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
