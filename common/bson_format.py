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

import numpy as np

from .atomic import atomic_path
from .errors import BsonDocumentError, NotBsonError, SkipLog

MIN_DOC_BYTES = 5
MAX_DOC_BYTES = 16 << 20  # a real product is < 100 KB; anything this big is a corrupt prefix
READ_CHUNK = 8 << 20
_ID_MARKERS = (b"\x10_id\x00", b"\x12_id\x00")  # int32 / int64 `_id`: how a document starts
_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_FIXED_SIZES = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}




@dataclass(frozen=True)
class DocHeader:
    """What the index needs from one document, parsed without touching the JPEG bytes."""

    product_id: int
    n_imgs: int  # -1 when the document has no `imgs` field
    category_id: int  # -1 when absent (test set)
    empty_imgs: int = 0  # `imgs` entries without picture bytes (unusable images, counted by the index)


EMPTY_ENTRY_BYTES = 19  # an `imgs` entry this short holds no image: {picture: b""} is 19 bytes, {} is 5


def _valid_length(n: int, remaining: int) -> bool:
    return MIN_DOC_BYTES <= n <= min(MAX_DOC_BYTES, remaining)


def _find_next_document(f: BinaryIO, start: int, size: int, limit: int | None = None) -> int:
    """Offset of the next plausible document at or after `start`, or `size` if none.

    Why: a corrupt length prefix in the middle of a 58 GB file must not lose everything after
    it. A document starts with its length and then the `_id` element, so search for that marker
    and accept a candidate whose length is sane and whose last byte is the BSON terminator.
    """
    window = 1 << 20
    pos, stop = start, size if limit is None else min(size, limit)
    while pos < stop:
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
    f.seek(offset)
    return structure_accounts_for(f.read(n), 0, n)


def structure_accounts_for(buf: bytes, pos: int, n: int) -> bool:
    """True when the top-level elements of the document at buf[pos:] end exactly at its claimed
    length n (then its terminating NUL). Why: a corrupt length prefix that lands on a 0x00 byte
    inside a later document looks like a document; its element chain does not fit it (an int32
    `_id`, the `imgs` array's own length, `category_id`: a few hops, no payload touched)."""
    end = pos + n - 1
    if n < MIN_DOC_BYTES or end >= len(buf) or buf[end] != 0:
        return False
    i = pos + 4
    try:
        while i < end:
            etype = buf[i]
            name_end = buf.find(b"\x00", i + 1, end)
            if name_end < 0:
                return False
            nxt = _skip_value(buf, etype, name_end + 1)
            if nxt > end or nxt <= name_end or (etype in (0x03, 0x04) and buf[nxt - 1] != 0):
                return False
            i = nxt
    except (ValueError, struct.error, IndexError):
        return False
    return i == end


@dataclass(frozen=True)
class DocumentBatch:
    """Complete documents found in one read: document i is buf[starts[i] : starts[i] + lengths[i]]."""

    base: int  # file offset of buf[0]
    buf: bytes
    starts: np.ndarray
    lengths: np.ndarray


def _walk_documents(buf: bytes) -> tuple[list[int], list[int], int, str | None]:
    """Follow the length prefixes through `buf`: (starts, lengths, end position, problem or None).

    Stops at the first document that does not fit (None) or that is invalid (a problem message).
    """
    starts, lengths, pos, end = [], [], 0, len(buf)
    unpack = _INT32.unpack_from
    while end - pos >= 4:
        n = unpack(buf, pos)[0]
        if not MIN_DOC_BYTES <= n <= MAX_DOC_BYTES:
            return starts, lengths, pos, f"length prefix {n} is not a valid document size"
        if pos + n > end:
            break
        if not structure_accounts_for(buf, pos, n):
            return starts, lengths, pos, f"length prefix {n} does not match the document's elements"
        starts.append(pos)
        lengths.append(n)
        pos += n
    return starts, lengths, pos, None


IMGS_MARKER = b"\x04imgs\x00"  # once per product document (images are keyed "picture")


def count_marks(f: BinaryIO, start: int, end: int, chunk: int = 8 << 20) -> int:
    """`imgs` keys in bytes [start, end) of the file: the products a skipped region held, counted
    without trusting any length prefix (a chance match inside a JPEG: ~1 in 2^48 positions)."""
    count, tail, pos = 0, b"", start
    while pos < end:
        f.seek(pos)
        block = f.read(min(chunk, end - pos))
        if not block:
            break
        data = tail + block
        count += data.count(IMGS_MARKER)
        tail, pos = data[-(len(IMGS_MARKER) - 1):], pos + len(block)
    return count


def iter_document_batches(
    path: str | os.PathLike, skips: SkipLog | None = None, chunk_size: int = READ_CHUNK, lost: list[int] | None = None
) -> Iterator[DocumentBatch]:
    """Read the file sequentially in chunks and yield the complete documents of each chunk.

    Memory stays flat (one chunk). A truncated last document is reported and skipped; an invalid
    document mid-file is reported and the scan resynchronises on the next document; a file whose
    first document is invalid raises NotBsonError. `lost` (a one-item list) accumulates the
    products the skipped bytes held (their `imgs` keys).
    """
    lost = lost if lost is not None else [0]
    path = Path(path)
    skips = skips if skips is not None else SkipLog(str(path))
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        offset, want = 0, chunk_size
        while offset < size:
            f.seek(offset)
            buf = f.read(want)
            starts, lengths, pos, problem = _walk_documents(buf)
            if starts:
                yield DocumentBatch(offset, buf, np.asarray(starts, np.int64), np.asarray(lengths, np.int64))
            offset, want = offset + pos, chunk_size
            if problem:
                # a bad first document: BSON only if a valid document follows within one document's reach
                nxt = _find_next_document(f, offset + 1, size, None if offset else MAX_DOC_BYTES + 4)
                if offset == 0 and nxt >= min(size, MAX_DOC_BYTES + 4):
                    _bad_prefix(path, 0, problem)
                held = count_marks(f, offset, nxt)
                lost[0] += held
                skips.add("corrupt_bytes", f"{path}: {problem} at offset {offset}; skipped {nxt - offset} bytes to offset {nxt} "
                          f"(they held {held} products' `imgs` keys)")
                offset = nxt
            elif pos == 0:  # the document at `offset` does not fit in this read
                remaining = size - offset
                lost[0] += count_marks(f, offset, size)
                if remaining < 4:
                    skips.add("truncated_tail", f"{path}: {remaining} stray bytes at offset {offset} after the last document; skipped")
                    return
                n = _INT32.unpack_from(buf, 0)[0]
                if n > remaining:
                    if offset == 0:
                        _bad_prefix(path, 0, f"first document claims {n} bytes but the file has {size}")
                    skips.add("truncated_tail", f"{path}: last document at offset {offset} claims {n} bytes but only {remaining} remain (truncated file); skipped")
                    return
                want = n


def iter_raw_documents(
    path: str | os.PathLike, skips: SkipLog | None = None, chunk_size: int = READ_CHUNK
) -> Iterator[tuple[int, bytes]]:
    """Yield (file offset, document bytes) for every document (see iter_document_batches)."""
    for batch in iter_document_batches(path, skips, chunk_size):
        buf = batch.buf
        for start, n in zip(batch.starts.tolist(), batch.lengths.tolist()):
            yield batch.base + start, buf[start : start + n]


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


def _count_array_documents(doc: bytes, start: int, end: int) -> tuple[int, int]:
    """(elements, elements without image bytes) of the `imgs` array, each a `{picture: ...}` document."""
    count, empty, i = 0, 0, start + 4
    while i < end - 1:
        etype = doc[i]
        i = _cstring_end(doc, i + 1) + 1
        if etype != 0x03:
            raise ValueError(f"imgs element {count} has BSON type 0x{etype:02x}, expected a document")
        nxt = _skip_value(doc, etype, i)
        empty += nxt - i <= EMPTY_ENTRY_BYTES
        i, count = nxt, count + 1
    return count, empty


def parse_header(doc: bytes, path: str | os.PathLike = "?", offset: int = -1) -> DocHeader:
    """Read `_id`, the number of images and `category_id` from one raw document.

    Why not a full decode (decode_document): the index scan of 58 GB only needs these three fields; walking the
    element headers skips the JPEG payloads without copying them.
    """
    product_id, n_imgs, category_id, empty = None, -1, -1, 0
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
                n_imgs, empty = _count_array_documents(doc, i, nxt)
            i = nxt
    except (ValueError, struct.error, IndexError) as e:
        raise BsonDocumentError(f"{path}: malformed document at offset {offset}: {e}") from None
    if product_id is None:
        raise BsonDocumentError(f"{path}: document at offset {offset} has no integer _id")
    return DocHeader(product_id, n_imgs, category_id, empty)


_ID_HEAD = np.frombuffer(b"\x10_id\x00", np.uint8)  # int32 _id at byte 4
_IMGS_HEAD = np.frombuffer(b"\x04imgs\x00", np.uint8)  # imgs array at byte 13
_CATEGORY_TAIL = np.frombuffer(b"\x10category_id\x00", np.uint8)  # int32 category_id, 18 bytes from the end
_MAX_FAST_IMAGES = 8


def _gather(arr: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """arr[at + 0..width-1] per row, clipped into the buffer (rows that overrun are rejected later)."""
    return arr[np.minimum(at[:, None] + np.arange(width), len(arr) - 1)]


def _matches(arr: np.ndarray, at: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    return (_gather(arr, at, len(pattern)) == pattern).all(axis=1)


def _int32_at(arr: np.ndarray, at: np.ndarray) -> np.ndarray:
    b = _gather(arr, at, 4).astype(np.uint32)
    return (b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16 | b[:, 3] << 24).view(np.int32).astype(np.int64)


def parse_headers_fast(batch: DocumentBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, n_imgs, category_ids, empty image entries, ok) for a batch of documents in the official layout, in numpy.

    Why: the index of 7M products is built in one pass, and per-document Python costs ~10 us.
    The official layout is fixed (`_id` int32 at byte 4, `imgs` at byte 13, `category_id` last or
    absent), so each field sits at a known place or is found by a few vectorised hops. Rows with
    ok=False use any other layout and must go through `parse_header`.
    """
    arr = np.frombuffer(batch.buf, np.uint8)
    s, e = batch.starts, batch.starts + batch.lengths
    ok = (batch.lengths >= 24) & _matches(arr, s + 4, _ID_HEAD) & _matches(arr, s + 13, _IMGS_HEAD)
    ids = _int32_at(arr, s + 9)
    array_end = s + 19 + _int32_at(arr, s + 19)  # one past the imgs array
    labelled = ok & (array_end == e - 18) & _matches(arr, e - 18, _CATEGORY_TAIL)
    ok &= labelled | (array_end == e - 1)
    categories = np.where(labelled, _int32_at(arr, e - 5), -1)
    n_imgs, empty, pos = np.zeros(len(s), np.int64), np.zeros(len(s), np.int64), s + 23  # first array element
    for _ in range(_MAX_FAST_IMAGES):
        active = ok & (pos < array_end - 1)
        head = _gather(arr, pos, 3)  # {type 3, 1-char key, NUL}
        element = active & (head[:, 0] == 0x03) & (head[:, 2] == 0)
        ok &= element | ~active
        n_imgs += element
        length = _int32_at(arr, pos + 3)
        empty += element & (length <= EMPTY_ENTRY_BYTES)
        pos = np.where(element, pos + 3 + length, pos)
    ok &= pos == array_end - 1
    return ids, n_imgs, categories, empty, ok


def decode_document(doc: bytes, path: str | os.PathLike = "?", offset: int = -1) -> dict:
    """Full decode of one document, with the file and offset in the error message."""
    try:
        doc = bytes(doc)
        value, end = _decode_doc(doc, 0, len(doc))
        if end != len(doc):
            raise ValueError(f"{len(doc) - end} bytes after the document's end")
        return value
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise BsonDocumentError(f"{path}: cannot decode document at offset {offset}: {e}") from None


def encode_product(product_id: int, images: Sequence[bytes], category_id: int | None = None) -> bytes:
    """One product in the official layout, byte for byte: `_id`, `imgs`, then `category_id`."""
    doc: dict = {"_id": int(product_id), "imgs": [{"picture": bytes(jpeg)} for jpeg in images]}
    if category_id is not None:
        doc["category_id"] = int(category_id)
    return encode_document(doc)


# ----------------------------------------------------------------------------- the codec
# The subset of BSON (bsonspec.org) a product document can hold, in Python: no pymongo needed (a bare
# GPU machine has none); tests/test_bson.py checks it byte for byte against pymongo's bson.

_DOUBLE = struct.Struct("<d")


def _name_end(buf: bytes, pos: int, stop: int) -> int:
    end = buf.find(b"\x00", pos, stop)
    if end < 0:
        raise ValueError("an element name runs past its document")
    return end


def _decode_doc(buf: bytes, pos: int, limit: int, as_list: bool = False) -> tuple[dict | list, int]:
    """(the document or array at `pos`, the position after it); ValueError on anything malformed."""
    if pos + MIN_DOC_BYTES > limit:
        raise ValueError("truncated document")
    (size,) = _INT32.unpack_from(buf, pos)
    stop = pos + size
    if size < MIN_DOC_BYTES or stop > limit or buf[stop - 1] != 0:
        raise ValueError(f"bad document length {size}")
    out, pos = {}, pos + 4
    while pos < stop - 1:
        kind, name_end = buf[pos], _name_end(buf, pos + 1, stop - 1)
        name = buf[pos + 1 : name_end].decode()
        out[name], pos = _decode_value(kind, buf, name_end + 1, stop - 1)
    if pos != stop - 1:
        raise ValueError("an element overruns its document")
    return (list(out.values()) if as_list else out), stop


def _decode_value(kind: int, buf: bytes, pos: int, limit: int):
    if kind in (0x03, 0x04):
        return _decode_doc(buf, pos, limit, as_list=kind == 0x04)
    if kind in (0x02, 0x05):  # string / binary: int32 length first
        (size,) = _INT32.unpack_from(buf, pos)
        start = pos + 4 + (kind == 0x05)  # binary: a subtype byte
        end = start + size
        if size < (1 if kind == 0x02 else 0) or end > limit:
            raise ValueError(f"bad {'string' if kind == 0x02 else 'binary'} length {size}")
        return (buf[start : end - 1].decode() if kind == 0x02 else buf[start:end]), end
    fixed = {0x01: (8, lambda at: _DOUBLE.unpack_from(buf, at)[0]), 0x08: (1, lambda at: bool(buf[at])), 0x0A: (0, lambda at: None),
             0x10: (4, lambda at: _INT32.unpack_from(buf, at)[0]), 0x12: (8, lambda at: _INT64.unpack_from(buf, at)[0])}
    if kind not in fixed:
        raise ValueError(f"BSON type 0x{kind:02x} is not one a product holds")
    size, read = fixed[kind]
    if pos + size > limit:
        raise ValueError("a value runs past its document")
    return read(pos), pos + size


def encode_document(doc: dict | list) -> bytes:
    """BSON of a dict (a list: an array, keys "0", "1", ...) of ints, floats, str, bytes, bool, None, dicts and lists."""
    items = enumerate(doc) if isinstance(doc, list) else doc.items()
    body = b"".join(_encode_element(str(k), v) for k, v in items)
    return _INT32.pack(len(body) + 5) + body + b"\x00"


def _encode_element(name: str, v) -> bytes:
    key = name.encode() + b"\x00"
    if isinstance(v, bool):
        return b"\x08" + key + (b"\x01" if v else b"\x00")
    if isinstance(v, int):  # int32 when it fits, as pymongo writes it
        return (b"\x10" + key + _INT32.pack(v)) if -(2**31) <= v < 2**31 else (b"\x12" + key + _INT64.pack(v))
    if isinstance(v, float):
        return b"\x01" + key + _DOUBLE.pack(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return b"\x05" + key + _INT32.pack(len(v)) + b"\x00" + bytes(v)
    if isinstance(v, str):
        raw = v.encode()
        return b"\x02" + key + _INT32.pack(len(raw) + 1) + raw + b"\x00"
    if v is None:
        return b"\x0a" + key
    if isinstance(v, (dict, list)):
        return (b"\x04" if isinstance(v, list) else b"\x03") + key + encode_document(v)
    raise TypeError(f"{name}: cannot encode {type(v).__name__} as BSON")


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
        """Close and delete the temporary file: nothing appears at `path`."""
        self._f.close()
        error = RuntimeError("BsonWriter aborted")
        self._ctx.__exit__(RuntimeError, error, None)

    def __enter__(self) -> "BsonWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
