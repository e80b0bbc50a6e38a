"""JPEG decode/encode (OpenCV) and resize: the one image path of every stage (a product's layouts live in solutions/bestfitting/layout.py)."""
from __future__ import annotations


import io

import cv2
import numpy as np

from .errors import CorruptImageError

TILE = 180  # every Cdiscount image is 180x180

cv2.setNumThreads(1)  # decode runs in DataLoader workers: one thread each scales better


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
MAX_PIXELS = 40_000_000  # an image whose header says more is refused before decoding (the competition's are 180x180 = 32,400)
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame (baseline, progressive, ...): its size


def jpeg_layout(data: bytes) -> tuple[int, int, int] | str:
    """(height, width, end) of a JPEG from its segments, `end` just past its end-of-image marker
    (bytes after it, a camera's padding, are allowed); or why it is not whole. The end is searched
    after the first scan's header, so the end marker of an EXIF thumbnail (inside APP1) is skipped."""
    pos, size = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return "JPEG with a broken segment header"
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, restart, TEM: no length
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in SOF_MARKERS and pos + 9 <= len(data):
            size = int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(data[pos + 7 : pos + 9], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data, in which 0xFF is always stuffed: the first FFD9 is the end
            end = data.find(JPEG_END, pos + 2 + length)
            if size is None:
                return "JPEG without a frame header (no size)"
            return (*size, end + 2) if end >= 0 else "JPEG without its end marker (truncated)"
        pos += 2 + length
    return "JPEG without its end marker (truncated)"


def png_size(data: bytes) -> tuple[int, int] | str:
    """(height, width) from a PNG's IHDR chunk, or why it is not a whole PNG."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return "PNG without its IHDR header"
    if data.find(PNG_END, 33) < 0:
        return "PNG without its IEND chunk (truncated)"
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def image_problem(data: bytes) -> str | None:
    """Why bytes are not a whole JPEG or PNG of at most MAX_PIXELS (None when they are). Every decode
    path (OpenCV in the workers, torchvision on the device, OCR, new products) asks this first, so
    they accept and refuse the same images: OpenCV alone would decode a JPEG cut in half (grey fill)
    where nvjpeg refuses it, and would allocate what a forged header asks (100000x100000: 30 GB)."""
    if not data:
        return "empty image (0 bytes)"
    if data[:2] == JPEG_START:
        found = jpeg_layout(data)
    elif data[:8] == PNG_START:
        found = png_size(data)
    else:
        return "neither a JPEG nor a PNG"
    if isinstance(found, str):
        return found
    h, w = found[:2]
    if h < 1 or w < 1:
        return f"{w}x{h} in its header: no pixels"
    if h * w > MAX_PIXELS:
        return f"{w}x{h} in its header: {h * w / 1e6:,.0f} Mpx, over the {MAX_PIXELS / 1e6:.0f} Mpx limit (common.images.MAX_PIXELS), not decoded"
    return None


def other_format_problem(data: bytes) -> str | None:
    """For an image that is no JPEG or PNG (WebP, BMP, TIFF... that only new products may bring):
    its size from the header (PIL reads the header only), refused over MAX_PIXELS before OpenCV decodes it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad header (and a bomb of its own)
        return f"no image header PIL can read ({type(e).__name__})"
    return f"{w}x{h} in its header: {h * w / 1e6:,.0f} Mpx, over the {MAX_PIXELS / 1e6:.0f} Mpx limit (common.images.MAX_PIXELS), not decoded" \
        if h * w > MAX_PIXELS else None


def imdecode(data: bytes, flags: int, where: str) -> np.ndarray | None:
    """cv2.imdecode with OpenCV's own refusals (its pixel limit, a broken codec stream) as a
    CorruptImageError naming `where`, not a cv2.error that would stop the stage."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        raise CorruptImageError(f"{where}: {len(data)} bytes OpenCV refuses ({str(e).strip().splitlines()[-1][:160]})") from None


DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # the pixels as stored, as torchvision's decode_jpeg gives them


def decode_jpeg(data: bytes, where: str = "") -> np.ndarray:
    """JPEG (or PNG) bytes -> HxWx3 RGB uint8, as stored: an EXIF orientation tag is ignored, as on
    the device path (torchvision), so both paths see the same pixels; a new product's photo is
    turned upright once, when it comes in (ensembling/predict/products.py). Raises
    CorruptImageError naming `where` (file, _id, rank)."""
    problem = image_problem(data)
    if problem:
        raise CorruptImageError(f"{where}: {len(data)} bytes: {problem}" if data else f"{where}: {problem}")
    img = imdecode(data, DECODE_FLAGS, where)
    if img is None:
        raise CorruptImageError(f"{where}: {len(data)} bytes are not a decodable JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 -> JPEG bytes (deterministic for the same pixels and quality)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def resize(rgb: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to size (square int, or (height, width)); area interpolation when shrinking."""
    h, w = (size, size) if isinstance(size, int) else size
    if rgb.shape[:2] == (h, w):
        return rgb
    shrink = h < rgb.shape[0] or w < rgb.shape[1]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
