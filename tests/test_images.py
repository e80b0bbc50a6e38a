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


def png_header(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose IHDR claims width x height (one tiny IDAT, IEND): a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its frame header's size patched (as a hostile file would)."""
    data = bytearray(encode_jpeg(np.full((16, 16, 3), 120, np.uint8)))
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("data, size", [(png_header(100_000, 100_000), "100000x100000"), (jpeg_claiming(65_000, 65_000), "65000x65000")],
                         ids=["png-100000", "jpeg-65000"])
def test_an_image_bomb_is_refused_from_its_header_before_decoding(data, size):
    """The header's size over MAX_PIXELS (40 Mpx): refused by image_problem (every decode path asks it
    first) naming the image, never handed to OpenCV (a raw cv2.error, or gigabytes for one image)."""
    assert len(data) < 1000
    assert f"{size} in its header" in image_problem(data) and "40 Mpx limit" in image_problem(data)
    with pytest.raises(CorruptImageError, match=f"train.bson _id=9 img 0: .*{size} in its header"):
        decode_jpeg(data, "train.bson _id=9 img 0")


def test_a_30000_px_png_of_under_a_megabyte_is_refused_without_decoding():
    import cv2

    ok, png = cv2.imencode(".png", np.zeros((30_000, 30_000), np.uint8))
    assert ok and len(png) < 1_000_000
    assert "30000x30000 in its header: 900 Mpx" in image_problem(png.tobytes())


def test_bytes_after_a_jpeg_s_end_marker_are_accepted_a_thumbnail_s_end_is_not_the_end(sample_products):
    """A camera's padding after the end marker is no truncation (decoded as without it); an EXIF
    thumbnail's own end marker inside APP1 does not make a JPEG cut in its scan look whole."""
    data = sample_products[0].images[0]
    assert image_problem(data + b"\x00" * 5000) is None
    assert np.array_equal(decode_jpeg(data + b"\x00" * 5000), decode_jpeg(data))
    thumb = encode_jpeg(np.full((8, 8, 3), 10, np.uint8))
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    with_thumb = data[:2] + app1 + data[2:]
    assert image_problem(with_thumb) is None
    assert "truncated" in image_problem(with_thumb[: len(with_thumb) // 2])


def test_a_webp_bomb_among_new_products_is_named_and_skipped(tmp_path, caplog):
    """New products may be any format OpenCV reads: a WebP's header size is checked (PIL reads the header
    only) before OpenCV decodes it; the product's other image is kept."""
    import cv2

    from ensembling.predict.products import from_folder

    ok, webp = cv2.imencode(".webp", np.zeros((8000, 6000, 3), np.uint8))  # 48 Mpx
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.webp").write_bytes(webp.tobytes())
    (tmp_path / "p" / "b.jpg").write_bytes(encode_jpeg(np.full((180, 180, 3), 90, np.uint8)))
    products = from_folder(tmp_path)
    assert len(products[0].images) == 1 and "a.webp: skipped" in caplog.text and "6000x8000 in its header: 48 Mpx" in caplog.text
