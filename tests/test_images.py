"""Image helpers: decode, resize, and the side-by-side / grid layouts of a product's images."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import CorruptImageError
from common.images import decode_jpeg, encode_jpeg, image_problem, resize


def test_decode_real_sample(sample_products):
    for p in sample_products[:10]:
        for img in p.images:
            rgb = decode_jpeg(img)
            assert rgb.shape == (180, 180, 3) and rgb.dtype == np.uint8


def test_decode_is_rgb():
    red = np.zeros((180, 180, 3), np.uint8)
    red[..., 0] = 255
    back = decode_jpeg(encode_jpeg(red, quality=95))
    assert back[..., 0].mean() > 240 and back[..., 2].mean() < 15


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff garbage", b"not a jpeg"])
def test_corrupt_jpeg_names_where(data):
    with pytest.raises(CorruptImageError, match="train.bson _id=7 img 1"):
        decode_jpeg(data, "train.bson _id=7 img 1")


def test_a_truncated_jpeg_is_refused_naming_it(sample_products):
    """OpenCV alone decodes a JPEG cut in half (grey fill) where nvjpeg refuses it: both paths now
    refuse it, by its missing end marker; every real sample image passes the same check."""
    data = sample_products[0].images[0]
    with pytest.raises(CorruptImageError, match="cut: .* JPEG without its end marker"):
        decode_jpeg(data[: len(data) // 2], "cut")
    assert all(image_problem(img) is None for p in sample_products for img in p.images)


def test_resize_shapes():
    img = np.zeros((180, 180, 3), np.uint8)
    assert resize(img, 64).shape == (64, 64, 3) and resize(img, (90, 270)).shape == (90, 270, 3)
