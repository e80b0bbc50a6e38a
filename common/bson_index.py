"""Offset index of a BSON file: one sequential scan, saved as .npy, reloaded instantly (mmap).
`python -m common.prepare` builds both splits' indexes into a work dir."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from .atomic import read_json, write_json, write_npy
from .bson_format import (
    DocumentBatch,
    iter_document_batches,
    parse_header,
    parse_headers_fast,
)
from .errors import BsonDocumentError, DataError, SkipLog, log
from .fingerprint import fingerprint
from .ids import lookup
from .progress import bar

INDEX_DTYPE = np.dtype(
    [("id", "<i8"), ("offset", "<i8"), ("length", "<i4"), ("n_imgs", "<i2"), ("category_id", "<i8")]
)


class ProductIndex:
    """Per product: _id, offset, length, n_imgs, category_id (-1 for test), in file order."""

    def __init__(self, rows: np.ndarray, meta: dict | None = None):
        if rows.dtype != INDEX_DTYPE:
            raise DataError(f"index rows have dtype {rows.dtype}, expected {INDEX_DTYPE}")
        self.rows = rows
        self.meta = meta or {}

    def __len__(self) -> int:
        return len(self.rows)

    ids = property(lambda self: self.rows["id"])
    offsets = property(lambda self: self.rows["offset"])
    lengths = property(lambda self: self.rows["length"])
    n_imgs = property(lambda self: self.rows["n_imgs"])
    category_ids = property(lambda self: self.rows["category_id"])

    @property
    def has_labels(self) -> bool:
        """Any product labelled: a train file (products without category_id are reported, then excluded by folds)."""
        return bool((self.rows["category_id"] >= 0).any())

    @property
    def lost_products(self) -> int:
        """Documents the scan saw (their `imgs` key) but could not index: malformed, or inside
        skipped bytes. A submission over this index lacks them (see `submission_from_topk`)."""
        return max(int(self.meta.get("documents_marked", len(self.rows))) - len(self.rows), 0)

    @property
    def n_images(self) -> int:
        return int(np.clip(self.rows["n_imgs"], 0, None).sum())

    def positions_of(self, product_ids: np.ndarray) -> np.ndarray:
        """Row positions of the given _ids (-1 where absent), vectorised."""
        order = np.argsort(self.ids, kind="stable")
        pos, found = lookup(self.ids[order], product_ids)
        return np.where(found, order[pos], -1)


def _batch_rows(batch: DocumentBatch, path: Path, skips: SkipLog) -> np.ndarray:
    """Index rows of one batch: the vectorised parse, and the general parser where it declines."""
    ids, n_imgs, categories, empty, ok = parse_headers_fast(batch)
    keep = np.ones(len(ids), bool)
    for i in np.flatnonzero(~ok):
        start, offset = int(batch.starts[i]), batch.base + int(batch.starts[i])
        try:
            head = parse_header(batch.buf[start : start + int(batch.lengths[i])], path, offset)
        except BsonDocumentError as e:
            skips.add("malformed_document", str(e))
            keep[i] = False
            continue
        ids[i], n_imgs[i], categories[i], empty[i] = head.product_id, max(head.n_imgs, 0), head.category_id, head.empty_imgs
    rows = np.empty(int(keep.sum()), INDEX_DTYPE)
    rows["id"], rows["offset"], rows["length"] = ids[keep], batch.base + batch.starts[keep], batch.lengths[keep]
    rows["n_imgs"], rows["category_id"] = n_imgs[keep], categories[keep]
    for row in rows[rows["n_imgs"] == 0]:
        skips.add("no_images", f"{path}: product _id={row['id']} at offset {row['offset']} has no images (kept with n_imgs=0)", row["id"])
    for row, n in zip(rows[empty[keep] > 0], empty[keep][empty[keep] > 0]):
        skips.add("empty_image", f"{path}: product _id={row['id']} at offset {row['offset']}: {n} of its {row['n_imgs']} image entries "
                  "hold no picture bytes (unusable: its other images predict it, else the fallback label)", row["id"])
    return rows


def build_index(bson_path: str | os.PathLike, progress: bool = True) -> ProductIndex:
    """Scan the file once; skip (and report) malformed documents and a truncated tail.

    Documents without `imgs` are kept with n_imgs = 0: a test product must still get a row in
    the submission. Duplicate _ids are reported in the meta.
    """
    bson_path = Path(bson_path)
    size = bson_path.stat().st_size
    if size == 0:
        raise DataError(f"{bson_path} is empty (0 bytes)")
    skips = SkipLog(str(bson_path))
    start, parts, done = time.perf_counter(), [], 0
    with bar(size, f"index {bson_path.name}", "B", enabled=progress, unit_scale=True) as progress_bar:
        lost = [0]  # products held by skipped bytes (their `imgs` keys): the scan's independent count
        for batch in iter_document_batches(bson_path, skips, lost=lost):
            parts.append(_batch_rows(batch, bson_path, skips))
            end = batch.base + int(batch.starts[-1] + batch.lengths[-1])
            progress_bar.update(end - done)
            done = end
    rows = np.concatenate(parts) if parts else np.empty(0, INDEX_DTYPE)
    _report_ids_and_labels(rows, bson_path, skips)
    marked = len(rows) + skips.counts.get("malformed_document", 0) + lost[0]
    unread = lost[0] - sum(skips.counts.get(k, 0) for k in ("truncated_tail", "corrupt_bytes"))  # beyond one per skipped region
    if unread > 0:
        skips.add("unread_documents", f"{bson_path}: {marked} documents carry an `imgs` key but {len(rows)} were indexed: "
                  f"{unread} more products than the skipped regions are lost inside them")
    meta = {
        "source": str(bson_path.resolve()),
        "size": size,
        "mtime_ns": bson_path.stat().st_mtime_ns,
        "fingerprint": fingerprint(bson_path),  # content: a file rewritten in place with its mtime kept is not "current"
        "rows_sha256": hashlib.sha256(rows.tobytes()).hexdigest(),  # what later stages record as "the index"
        "products": int(len(rows)),
        "images": int(rows["n_imgs"].sum()),
        "documents_marked": marked,  # indexed + malformed + the `imgs` keys inside skipped bytes, for comparison with "products"
        "has_labels": bool((rows["category_id"] >= 0).any()),
        "build_seconds": round(time.perf_counter() - start, 3),
        "skipped": skips.to_dict(),
    }
    skips.report()
    return ProductIndex(rows, meta)


def _report_ids_and_labels(rows: np.ndarray, path: Path, skips: SkipLog) -> None:
    ids = np.sort(rows["id"])
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if len(repeated):
        skips.add_ids("duplicate_ids", f"{path}: {len(repeated)} products repeat an _id already seen (kept; later stages decide)",
                      repeated[: skips.max_ids], count=len(repeated))
    labelled = rows["category_id"] >= 0
    if labelled.any() and not labelled.all():
        skips.add_ids("missing_category", f"{path}: {(~labelled).sum()} of {len(rows)} products have no category_id",
                      rows["id"][~labelled][: skips.max_ids], count=int((~labelled).sum()))


def save_index(index: ProductIndex, prefix: str | os.PathLike) -> None:
    """Write PREFIX.npy (rows) and PREFIX.json (meta); the .npy is written first, the .json last,
    so a present .json means a complete index."""
    prefix = Path(prefix)
    write_npy(prefix.with_suffix(".npy"), index.rows)
    write_json(prefix.with_suffix(".json"), index.meta)


def load_index(prefix: str | os.PathLike, mmap: bool = True) -> ProductIndex:
    prefix = Path(prefix)
    meta_path, rows_path = prefix.with_suffix(".json"), prefix.with_suffix(".npy")
    if not meta_path.exists() or not rows_path.exists():
        raise FileNotFoundError(f"no index at {prefix} (.json/.npy); build it with python -m common.prepare")
    meta = read_json(meta_path, "rebuild the index with python -m common.prepare")
    try:
        rows = np.load(rows_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # a file cut short: name it, never a numpy traceback
        raise DataError(f"{rows_path}: unreadable index ({e}); rebuild it with python -m common.prepare") from None
    if len(rows) != meta.get("products"):
        raise DataError(f"{rows_path} has {len(rows)} rows but {meta_path} says {meta.get('products')}: rebuild the index")
    return ProductIndex(rows, meta)


def index_is_current(prefix: str | os.PathLike, bson_path: str | os.PathLike) -> bool:
    """True when a saved index exists and was built from this very file: size, mtime and content
    fingerprint (common/fingerprint.py: whole file up to 256 MB, sampled blocks above)."""
    meta_path = Path(prefix).with_suffix(".json")
    if not meta_path.exists():
        return False
    try:
        meta = read_json(meta_path)
    except DataError:  # cut short: no index of anything, rebuilt
        log.warning("%s: unreadable index record: the index is built again", meta_path)
        return False
    st = Path(bson_path).stat()
    same_stat = meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns
    return same_stat and meta.get("fingerprint") == fingerprint(bson_path)


def get_index(bson_path: str | os.PathLike, prefix: str | os.PathLike, progress: bool = True) -> ProductIndex:
    """Load the saved index if it matches the file, else build and save it."""
    if not index_is_current(prefix, bson_path):
        save_index(build_index(bson_path, progress=progress), prefix)
    return load_index(prefix)
