"""Reading products: random access through the offset index, or one streaming pass."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .bson_format import decode_document, iter_raw_documents
from .bson_index import INDEX_DTYPE, ProductIndex
from .errors import BsonDocumentError, DataError, SkipLog


@dataclass
class Product:
    product_id: int
    images: list[bytes]  # JPEG bytes, in the order the seller gave them
    category_id: int | None = None  # None in test.bson
    offset: int = -1
    extra: dict = field(default_factory=dict)


def product_from_document(doc: dict, path: str | os.PathLike, offset: int) -> Product:
    """Build a Product from a decoded document, naming the file and offset on a bad layout."""
    if "_id" not in doc:
        raise BsonDocumentError(f"{path}: document at offset {offset} has no _id")
    for key in ("_id", "category_id"):  # the index skips these documents alike (bson_format.parse_header)
        value = doc.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BsonDocumentError(f"{path}: malformed document at offset {offset}: {key} is a {type(value).__name__}, expected an integer")
    imgs = doc.get("imgs")
    if imgs is None:
        imgs = []
    if not isinstance(imgs, list):
        raise BsonDocumentError(f"{path}: product _id={doc['_id']} at offset {offset}: imgs is not an array")
    images = []
    for img in imgs:  # an entry without picture bytes is an unusable image (b""), as the index counts it
        picture = img.get("picture") if isinstance(img, dict) else None
        images.append(bytes(picture) if isinstance(picture, (bytes, bytearray)) else b"")
    category = doc.get("category_id")
    return Product(int(doc["_id"]), images, None if category is None else int(category), offset)


class BsonReader:
    """Random access to products by row of the index, safe in DataLoader workers.

    Reads use `os.pread` on a descriptor opened lazily per process, so a forked worker never
    shares a file position with its parent and a pickled reader (spawn) reopens cleanly.
    """

    def __init__(self, bson_path: str | os.PathLike, index: ProductIndex):
        self.path = Path(bson_path)
        self.index = index
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, None
        return state

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read_raw(self, row: int) -> bytes:
        offset, length = int(self.index.offsets[row]), int(self.index.lengths[row])
        data = os.pread(self._descriptor(), length, offset)
        if len(data) != length:
            raise DataError(f"{self.path}: product at offset {offset} expected {length} bytes, read {len(data)} (file changed since indexing?)")
        return data

    def __getitem__(self, row: int) -> Product:
        offset = int(self.index.offsets[row])
        return product_from_document(decode_document(self.read_raw(row), self.path, offset), self.path, offset)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class MemoryReader:
    """Products held in memory, read as a BsonReader reads a file's: what the loaded predictor
    (ensembling.predict) hands the stages' own test functions for new products, with no file."""

    path = Path("<memory>")

    def __init__(self, products: list[Product]):
        rows = np.zeros(len(products), INDEX_DTYPE)
        rows["id"] = [p.product_id for p in products]
        rows["offset"] = np.arange(len(products))
        rows["n_imgs"] = [len(p.images) for p in products]
        rows["category_id"] = -1
        self.products, self.index = list(products), ProductIndex(rows)

    def __len__(self) -> int:
        return len(self.products)

    def __getitem__(self, row: int) -> Product:
        return self.products[row]

    def close(self) -> None:
        pass


def iter_products(bson_path: str | os.PathLike, skips: SkipLog | None = None) -> Iterator[Product]:
    """One sequential pass over every product; malformed documents are counted in `skips`."""
    skips = skips if skips is not None else SkipLog(str(bson_path))
    for offset, raw in iter_raw_documents(bson_path, skips):
        try:
            yield product_from_document(decode_document(raw, bson_path, offset), bson_path, offset)
        except BsonDocumentError as e:
            skips.add("malformed_document", str(e))
