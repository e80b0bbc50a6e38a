"""The Cdiscount BSON format: a sequential document scanner, a light header parser, a writer.

Every product is one BSON document: int32 length, then `_id` (int32), `imgs` (array of
`{picture: <JPEG bytes>}`), and `category_id` (int32, train only), in that order. Documents
follow each other with no framing, so one pass over the int32 length prefixes finds them all.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import bson  # pymongo's bson (never the unrelated `bson` package from PyPI)

from .atomic import atomic_path
from .errors import BsonDocumentError, NotBsonError, SkipLog

MIN_DOC_BYTES = 5
MAX_DOC_BYTES = 16 << 20  # a real product is < 100 KB; anything this big is a corrupt prefix
READ_CHUNK = 8 << 20
_ID_MARKERS = (b"\x10_id\x00", b"\x12_id\x00")  # int32 / int64 `_id`: how a document starts
_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_FIXED_SIZES = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


def _check_pymongo_bson() -> None:
    if not hasattr(bson, "decode") or not hasattr(bson, "encode"):
        raise ImportError(
            "the imported `bson` module is not pymongo's (the PyPI package `bson` shadows it): "
            "run `pip uninstall bson && pip install --force-reinstall pymongo`"
        )


_check_pymongo_bson()


@dataclass(frozen=True)
class DocHeader:
    """What the index needs from one document, parsed without touching the JPEG bytes."""

    product_id: int
    n_imgs: int  # -1 when the document has no `imgs` field
    category_id: int  # -1 when absent (test set)


def _valid_length(n: int, remaining: int) -> bool:
    return MIN_DOC_BYTES <= n <= min(MAX_DOC_BYTES, remaining)


def _find_next_document(f: BinaryIO, start: int, size: int) -> int:
    """Offset of the next plausible document at or after `start`, or `size` if none.

    Why: a corrupt length prefix in the middle of a 58 GB file must not lose everything after
    it. A document starts with its length and then the `_id` element, so search for that marker
    and accept a candidate whose length is sane and whose last byte is the BSON terminator.
    """
    window = 1 << 20
    pos = start
    while pos < size:
        f.seek(pos)
        data = f.read(window + 8)
        for marker in _ID_MARKERS:
            hit = data.find(marker, 4)
            while hit != -1:
                cand = pos + hit - 4
                if cand >= start and _plausible_document_at(f, cand, size):
                    return cand
                hit = data.find(marker, hit + 1)
        pos += window
    return size


def _plausible_document_at(f: BinaryIO, offset: int, size: int) -> bool:
    f.seek(offset)
    head = f.read(4)
    if len(head) < 4:
        return False
    n = _INT32.unpack(head)[0]
    if not _valid_length(n, size - offset):
        return False
    f.seek(offset + n - 1)
    return f.read(1) == b"\x00"


def iter_raw_documents(
    path: str | os.PathLike, skips: SkipLog | None = None, chunk_size: int = READ_CHUNK
) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, document bytes) for every document, reading the file sequentially.

    Memory stays flat (one chunk). A truncated last document is reported and skipped; a corrupt
    length prefix mid-file is reported and the scan resynchronises on the next document. A file
    whose first document is invalid raises NotBsonError.
    """
    path = Path(path)
    skips = skips if skips is not None else SkipLog(str(path))
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        buf, pos, base = b"", 0, 0  # base = file offset of buf[0]
        while base + pos < size:
            offset = base + pos
            if len(buf) - pos < 4:
                f.seek(base + len(buf))
                buf, base, pos = buf[pos:] + f.read(chunk_size), offset, 0
            if len(buf) - pos < 4:
                skips.add("truncated_tail", f"{path}: {size - offset} stray bytes at offset {offset} (truncated file?)")
                return
            n = _INT32.unpack_from(buf, pos)[0]
            if not _valid_length(n, MAX_DOC_BYTES):
                _bad_prefix(path, offset, f"length prefix {n} is not a valid document size")
                nxt = _find_next_document(f, offset + 1, size)
                skips.add("corrupt_bytes", f"{path}: bad length prefix {n} at offset {offset}; skipped {nxt - offset} bytes to offset {nxt}")
                buf, base, pos = b"", nxt, 0
                continue
            if n > size - offset:
                if offset == 0:
                    _bad_prefix(path, offset, f"first document claims {n} bytes but the file has {size}")
                skips.add("truncated_tail", f"{path}: last document at offset {offset} claims {n} bytes but only {size - offset} remain (truncated file); skipped")
                return
            if len(buf) - pos < n:
                f.seek(base + len(buf))
                buf, base, pos = buf[pos:] + f.read(max(chunk_size, n)), offset, 0
            doc = buf[pos : pos + n]
            if doc[-1] != 0:
                _bad_prefix(path, offset, "document does not end with a NUL byte")
                nxt = _find_next_document(f, offset + 1, size)
                skips.add("corrupt_bytes", f"{path}: document at offset {offset} is not terminated; skipped {nxt - offset} bytes to offset {nxt}")
                buf, base, pos = b"", nxt, 0
                continue
            pos += n
            yield offset, doc


def _bad_prefix(path: Path, offset: int, problem: str) -> None:
    """At offset 0 a bad document means the file is not BSON at all: stop with a clear error."""
    if offset == 0:
        raise NotBsonError(f"{path} is not a Cdiscount BSON file: {problem} at offset 0")


def _cstring_end(doc: bytes, i: int) -> int:
    j = doc.find(b"\x00", i)
    if j < 0:
        raise ValueError(f"unterminated element name at byte {i}")
    return j


def _skip_value(doc: bytes, etype: int, i: int) -> int:
    """Index just past the value of an element of type `etype` starting at `i`."""
    if etype in _FIXED_SIZES:
        return i + _FIXED_SIZES[etype]
    if etype in (0x03, 0x04):  # embedded document / array: int32 total length
        return i + _INT32.unpack_from(doc, i)[0]
    if etype == 0x05:  # binary: int32 length, subtype byte, data
        return i + 5 + _INT32.unpack_from(doc, i)[0]
    if etype in (0x02, 0x0D, 0x0E):  # string-like: int32 length, data
        return i + 4 + _INT32.unpack_from(doc, i)[0]
    raise ValueError(f"unsupported BSON element type 0x{etype:02x} at byte {i - 1}")


def _count_array_documents(doc: bytes, start: int, end: int) -> int:
    """Number of elements in the `imgs` array, each an embedded `{picture: ...}` document."""
    count, i = 0, start + 4
    while i < end - 1:
        etype = doc[i]
        i = _cstring_end(doc, i + 1) + 1
        if etype != 0x03:
            raise ValueError(f"imgs element {count} has BSON type 0x{etype:02x}, expected a document")
        i = _skip_value(doc, etype, i)
        count += 1
    return count


def parse_header(doc: bytes, path: str | os.PathLike = "?", offset: int = -1) -> DocHeader:
    """Read `_id`, the number of images and `category_id` from one raw document.

    Why not `bson.decode`: the index scan of 58 GB only needs these three fields; walking the
    element headers skips the JPEG payloads without copying them.
    """
    product_id, n_imgs, category_id = None, -1, -1
    try:
        i, end = 4, len(doc) - 1
        while i < end:
            etype = doc[i]
            name_end = _cstring_end(doc, i + 1)
            name, i = doc[i + 1 : name_end], name_end + 1
            nxt = _skip_value(doc, etype, i)
            if nxt > end:
                raise ValueError(f"element {name!r} runs past the end of the document")
            if name == b"_id" or name == b"category_id":
                if etype == 0x10:
                    value = _INT32.unpack_from(doc, i)[0]
                elif etype == 0x12:
                    value = _INT64.unpack_from(doc, i)[0]
                else:
                    raise ValueError(f"{name.decode()} has BSON type 0x{etype:02x}, expected an integer")
                if name == b"_id":
                    product_id = value
                else:
                    category_id = value
            elif name == b"imgs":
                if etype != 0x04:
                    raise ValueError(f"imgs has BSON type 0x{etype:02x}, expected an array")
                n_imgs = _count_array_documents(doc, i, nxt)
            i = nxt
    except (ValueError, struct.error, IndexError) as e:
        raise BsonDocumentError(f"{path}: malformed document at offset {offset}: {e}") from None
    if product_id is None:
        raise BsonDocumentError(f"{path}: document at offset {offset} has no integer _id")
    return DocHeader(product_id, n_imgs, category_id)


def decode_document(doc: bytes, path: str | os.PathLike = "?", offset: int = -1) -> dict:
    """Full decode with pymongo, with the file and offset in the error message."""
    try:
        return bson.decode(doc)
    except Exception as e:  # bson raises InvalidBSON and assorted errors on garbage
        raise BsonDocumentError(f"{path}: cannot decode document at offset {offset}: {e}") from None


def encode_product(product_id: int, images: Sequence[bytes], category_id: int | None = None) -> bytes:
    """One product in the official layout, byte for byte: `_id`, `imgs`, then `category_id`."""
    doc: dict = {"_id": int(product_id), "imgs": [{"picture": bytes(jpeg)} for jpeg in images]}
    if category_id is not None:
        doc["category_id"] = int(category_id)
    return bson.encode(doc)


class BsonWriter:
    """Writes products to a BSON file atomically: the file appears only when closed cleanly."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._f = open(self._tmp, "wb")
        self.count = 0

    def write(self, product_id: int, images: Sequence[bytes], category_id: int | None = None) -> None:
        self._f.write(encode_product(product_id, images, category_id))
        self.count += 1

    def close(self) -> None:
        self._f.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._f.close()
        try:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def __enter__(self) -> "BsonWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
