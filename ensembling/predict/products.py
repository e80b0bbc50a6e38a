"""New products in, held as the test split's products are (JPEG bytes in the seller's order): what
`ensembling.predict` feeds the loaded sources, so new products go through exactly the code that read test.bson.

A product is a name and its images in order (Cdiscount's first image is the main view). Every
Cdiscount image is a 180x180 JPEG with the product on white, so a new image is brought to that
form: a whole JPEG or PNG of 180x180 without transparency passes byte for byte (its MD5 can still
match a train duplicate); any other image OpenCV reads (WebP, another size, an alpha channel,
16 bits, an EXIF orientation other than upright) is decoded, turned upright, laid over white, padded
square with white, resized to 180 and stored as a lossless PNG, which both decode paths of the data
read (they ignore EXIF: common.images.decode_jpeg). An unreadable image is named and skipped; a
product left with no image is reported and gets no prediction (never a silent prior).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from common.bson_reader import iter_products
from common.errors import CorruptImageError, SkipLog
from common.images import TILE, image_problem, imdecode, other_format_problem, resize

log = logging.getLogger("cdiscount")
MAX_IMAGES = 4  # the most a Cdiscount product has: every model saw at most 4
MAGICS = (b"\xff\xd8", b"\x89PNG")


@dataclass
class NewProduct:
    name: str
    images: list[bytes]
    skipped: list[str] = field(default_factory=list)  # why each unreadable image was left out


def _decode_any(data: bytes, where: str) -> np.ndarray:
    # a cut JPEG / PNG: the data path refuses it, so do we; any image over MAX_PIXELS, before decoding
    problem = image_problem(data) if data[:2] == MAGICS[0] or data[:4] == MAGICS[1] else other_format_problem(data) if data else None
    if problem:
        raise CorruptImageError(f"{where}: {problem}")
    img = imdecode(data, cv2.IMREAD_UNCHANGED, where) if data else None
    if img is None:
        raise CorruptImageError(f"{where}: {len(data)} bytes OpenCV cannot read as an image")
    return img


EXIF_ORIENTATION = 0x0112
UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
           6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}  # EXIF 1..8


def exif_orientation(data: bytes) -> int:
    """A JPEG's EXIF orientation (1, upright, when it has none): a phone's photo is stored sideways with a tag."""
    if data[:2] != MAGICS[0]:
        return 1
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: the pixels as stored
        return 1
    return value if value in UPRIGHT else 1


def _on_white_rgb(img: np.ndarray) -> np.ndarray:
    """Any OpenCV image (grey, BGR, BGRA; 8 or 16 bits) -> RGB uint8 with transparency over white."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    img = img.astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _square_on_white(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    side = max(h, w)
    out = np.full((side, side, 3), 255, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


def as_data_image(data: bytes, where: str) -> bytes:
    """Bytes the data path reads as the competition's images are (see the module docstring)."""
    img, orientation = _decode_any(data, where), exif_orientation(data)
    if orientation != 1:
        img = np.ascontiguousarray(UPRIGHT[orientation](img))
    already = (data[:2] == MAGICS[0] or data[:4] == MAGICS[1]) and img.shape[:2] == (TILE, TILE) and orientation == 1
    if already and img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] == 3):
        return data
    rgb = resize(_square_on_white(_on_white_rgb(img)), TILE)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise CorruptImageError(f"{where}: could not be re-encoded")
    return buf.tobytes()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CorruptImageError(f"{path}: cannot be read ({e.strerror})") from None


def make_product(name: str, images: Sequence[tuple[str, bytes | Path]]) -> NewProduct:
    """(where, bytes or a file) per image, in order -> a NewProduct of its readable images (at most 4)."""
    product = NewProduct(name, [])
    for where, data in images:
        try:
            product.images.append(as_data_image(_read(data) if isinstance(data, Path) else data, where))
        except CorruptImageError as e:
            product.skipped.append(str(e))
            log.warning("%s: skipped (%s)", where, e)
    if len(product.images) > MAX_IMAGES:
        log.warning("product %s: %d images, the first %d kept (no Cdiscount product has more)", name, len(product.images), MAX_IMAGES)
        product.images = product.images[:MAX_IMAGES]
    return product


def _visible(paths: Iterable[Path], where: Path) -> list[Path]:
    """The entries not hidden, sorted; hidden folders are named in a warning, hidden files (.DS_Store) counted."""
    entries = sorted(paths)
    hidden = [p for p in entries if p.name.startswith(".")]
    for folder in (p for p in hidden if p.is_dir()):
        log.warning("%s: a hidden folder, skipped (rename it without the leading dot to predict it)", folder)
    files = [p.name for p in hidden if not p.is_dir()]
    if files:
        log.warning("%s: %d hidden file%s skipped (%s)", where, len(files), "s" * (len(files) > 1), ", ".join(files[:3]) + " ..." * (len(files) > 3))
    return [p for p in entries if not p.name.startswith(".")]


def _images_of(product: Path) -> list[tuple[str, Path]]:
    """A product folder's image files in name order; a folder inside it is named in a warning (not searched)."""
    entries = _visible(product.iterdir(), product)
    for nested in (p for p in entries if p.is_dir()):
        log.warning("%s: a folder inside product %s, skipped (a product's images go directly in its folder)", nested, product.name)
    return [(str(p), p) for p in entries if p.is_file()]


def from_folder(folder: str | os.PathLike) -> list[NewProduct]:
    """One product per subfolder (its name), its files in file-name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--folder {folder}: no such folder")
    entries = _visible(folder.iterdir(), folder)
    for loose in (p for p in entries if p.is_file()):
        log.warning("%s: a file directly in --folder, skipped (each product is a subfolder of its images)", loose)
    subfolders = [p for p in entries if p.is_dir()]
    if not subfolders:
        raise FileNotFoundError(f"--folder {folder}: no product subfolder (put each product's images in a subfolder named after it)")
    return [make_product(d.name, _images_of(d)) for d in subfolders]


def from_images(paths: Sequence[str | os.PathLike], name: str | None = None) -> NewProduct:
    """One product of these image files, in this order (named after the first file unless `name`)."""
    paths = [Path(p) for p in paths]
    return make_product(name or paths[0].stem, [(str(p), p) for p in paths])


def from_bson(path: str | os.PathLike) -> list[NewProduct]:
    """The products of a BSON file in the Kaggle layout (named by _id; a malformed document is named and skipped)."""
    skips, seen = SkipLog(str(path)), Counter()
    products = []
    for p in iter_products(path, skips):
        seen[p.product_id] += 1
        name = str(p.product_id) if seen[p.product_id] == 1 else f"{p.product_id}#{seen[p.product_id]}"
        if seen[p.product_id] > 1:  # two products of one _id would give two groups of rows under one name
            log.warning("%s: _id %s appears again (document %d of that _id): its rows are named %s", path, p.product_id, seen[p.product_id], name)
        products.append(make_product(name, [(f"{path} _id {p.product_id} image {i}", b) for i, b in enumerate(p.images)]))
    skips.report()
    return products


def from_objects(products: Sequence[Sequence[bytes | str | os.PathLike]] | dict) -> list[NewProduct]:
    """The API's input: a list of products (or a dict name -> product), a product a list of image bytes or paths."""
    named = products.items() if isinstance(products, dict) else ((str(i), p) for i, p in enumerate(products))
    out = []
    for name, images in named:
        if isinstance(images, (bytes, str, os.PathLike)):
            images = [images]  # one image given alone
        out.append(make_product(str(name), [(f"product {name} image {i}", b) if isinstance(b, bytes) else (str(b), Path(b))
                                            for i, b in enumerate(images)]))
    return out


def readable(products: Sequence[NewProduct]) -> list[NewProduct]:
    """The products with at least one readable image; each other one is named in a warning (no prediction)."""
    for product in products:
        if not product.images:
            log.warning("product %s: no readable image (%s): no prediction", product.name, "; ".join(product.skipped) or "no image file")
    return [p for p in products if p.images]
