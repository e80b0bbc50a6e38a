"""JPEG decode/encode (OpenCV) and resize: the one image path of every stage (a product's layouts live in solutions/bestfitting/layout.py)."""
from __future__ import annotations


import cv2
import numpy as np

from .errors import CorruptImageError

TILE = 180  # every Cdiscount image is 180x180

cv2.setNumThreads(1)  # decode runs in DataLoader workers: one thread each scales better


def decode_jpeg(data: bytes, where: str = "") -> np.ndarray:
    """JPEG bytes -> HxWx3 RGB uint8. Raises CorruptImageError naming `where` (file, _id, rank)."""
    if not data:
        raise CorruptImageError(f"{where}: empty image (0 bytes)")
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
