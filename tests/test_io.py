import cv2
import numpy as np
import pytest

from defectray import io


def test_decode_gray_rgb_rgba_16bit(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert np.array_equal(io.decode_image(io.encode_png(gray)), gray)
    rgb = np.dstack([gray, gray // 2, 255 - gray])
    assert np.array_equal(io.decode_image(io.encode_png(rgb)), rgb)
    bgra = np.dstack([rgb[..., ::-1], np.full_like(gray, 7)])
    ok, buf = cv2.imencode(".png", bgra)
    assert np.array_equal(io.decode_image(buf.tobytes()), rgb)
    g16 = (gray.astype(np.uint16) * 257)
    ok, buf = cv2.imencode(".tif", g16)
    assert np.array_equal(io.decode_image(buf.tobytes()), gray)
    assert io.decode_image(io.encode_png(rgb), channels=1).shape == (3, 4)
    assert io.decode_image(io.encode_png(gray), channels=3).shape == (3, 4, 3)


@pytest.mark.parametrize("data", [b"", b"hello, not an image", io.encode_png(np.zeros((8, 8), np.uint8))[:20]])
def test_decode_bad_bytes_is_value_error(data):
    with pytest.raises(ValueError):
        io.decode_image(data)


def test_mvtec_layout(tiny_mvtec):
    train = io.training_images(str(tiny_mvtec))
    assert len(train) == 24 and all("/train/good/" in p for p in train)
    items = io.mvtec_test_items(str(tiny_mvtec))
    assert sum(i.is_anomalous for i in items) == 6
    assert all(i.mask for i in items if i.is_anomalous)


def test_list_images_on_s3(s3_bucket, tiny_mvtec):
    bucket = s3_bucket()
    fs, _ = io.url_to_fs(f"s3://{bucket}")
    fs.put(str(tiny_mvtec / "train"), f"{bucket}/cat/train", recursive=True)
    found = io.list_images(f"s3://{bucket}/cat")
    assert len(found) == 24 and all(p.startswith(f"s3://{bucket}/cat/train/good/") for p in found)
    assert io.load_image(found[0]).shape == (64, 80)
    assert len(io.training_images(f"s3://{bucket}/cat")) == 24
