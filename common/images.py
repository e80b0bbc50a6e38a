"""JPEG decode/encode (OpenCV) and resize: the one image path of every stage (a product's layouts live in solutions/bestfitting/layout.py)."""
from __future__ import annotations


import cv2
import numpy as np

from .errors import CorruptImageError

TILE = 180  # every Cdiscount image is 180x180

cv2.setNumThreads(1)  # decode runs in DataLoader workers: one thread each scales better


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
TAIL_BYTES = 64  # an end marker may be followed by a little padding


def image_problem(data: bytes) -> str | None:
    """Why bytes are not a whole JPEG or PNG (None when they are). Both decode paths (OpenCV in the
    workers, torchvision on the device) ask this first, so they accept and refuse the same images:
    OpenCV alone would decode a JPEG cut in half (grey fill) where nvjpeg refuses it."""
    if not data:
        return "empty image (0 bytes)"
    if data[:2] == JPEG_START:
        return None if JPEG_END in data[-TAIL_BYTES:] else "JPEG without its end marker (truncated)"
    if data[:8] == PNG_START:
        return None if PNG_END in data[-TAIL_BYTES:] else "PNG without its IEND chunk (truncated)"
    return "neither a JPEG nor a PNG"


def decode_jpeg(data: bytes, where: str = "") -> np.ndarray:
    """JPEG (or PNG) bytes -> HxWx3 RGB uint8. Raises CorruptImageError naming `where` (file, _id, rank)."""
    problem = image_problem(data)
    if problem:
        raise CorruptImageError(f"{where}: {len(data)} bytes: {problem}" if data else f"{where}: {problem}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
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
