"""Hash every image of a BSON file (streamed through its index, in worker processes) and cache the
hashes per split (work/md5/{train,test}_hashes.npy: per image its index row, rank and 16-byte MD5),
reused while the index they were made from is current."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

from common.atomic import write_json, write_npy
from common.bson_reader import BsonReader
from common.errors import SkipLog
from common.paths import WorkDir
from common.progress import track

HASH_DTYPE = np.dtype([("row", "<i8"), ("rank", "<i2"), ("md5", "S16")])  # rank as wide as the index's n_imgs
HASHING = 2  # 2: entries without picture bytes are not hashed (their MD5s would all "match"); rank int16


_READER: BsonReader | None = None


def _init_hasher(reader: BsonReader) -> None:
    global _READER
    _READER = reader


def _hash_range(span: tuple[int, int]) -> np.ndarray:
    """Per image of rows [start, stop): (row, rank, md5)."""
    out = []
    for row in range(*span):
        for rank, jpeg in enumerate(_READER[row].images):
            if jpeg:
                out.append((row, rank, hashlib.md5(jpeg).digest()))
    return np.array(out, HASH_DTYPE)


def hash_images(reader: BsonReader, workers: int, progress: bool = True, span: int = 2048) -> np.ndarray:
    """Every image of the file, in index order; products are read one by one (never the whole file)."""
    n = len(reader)
    spans = [(s, min(s + span, n)) for s in range(0, n, span)]
    bar = dict(desc=f"md5 {reader.path.name}", total=len(spans), enabled=progress, unit="chunk")
    if workers <= 1 or len(spans) <= 1:
        _init_hasher(reader)
        parts = [_hash_range(s) for s in track(spans, **bar)]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers, initializer=_init_hasher, initargs=(reader,)) as pool:
            parts = list(track(pool.imap(_hash_range, spans), **bar))
    return np.concatenate(parts) if parts else np.zeros(0, HASH_DTYPE)


def hashes_path(work: WorkDir, split: str) -> Path:
    return work.root / "md5" / f"{split}_hashes.npy"


def load_or_hash(work: WorkDir, split: str, reader: BsonReader, workers: int, progress: bool = True) -> tuple[np.ndarray, dict]:
    """The split's image hashes, recomputed only when the index changed since they were saved."""
    path, meta_path = hashes_path(work, split), hashes_path(work, split).with_suffix(".json")
    index_meta = {k: reader.index.meta.get(k) for k in ("source", "fingerprint", "rows_sha256", "products", "images")}
    index_meta["hashing"] = HASHING
    if path.exists() and meta_path.exists():
        saved = json.loads(meta_path.read_text())
        if saved.get("index") == index_meta:
            hashes = np.load(path, allow_pickle=False)
            return hashes, {**saved, "reused": True, "skipped": unhashed_products(reader, hashes, split)}
    t0 = time.perf_counter()
    hashes = hash_images(reader, workers, progress)
    seconds = time.perf_counter() - t0
    write_npy(path, hashes)
    meta = {"index": index_meta, "images": int(len(hashes)), "seconds": round(seconds, 2),
            "images_per_second": round(len(hashes) / seconds, 1) if seconds else None, "workers": workers}
    write_json(meta_path, meta)
    return hashes, {**meta, "reused": False, "skipped": unhashed_products(reader, hashes, split)}


def unhashed_products(reader: BsonReader, hashes: np.ndarray, split: str) -> dict:
    """Products with images of which some were not hashed (entries without picture bytes): they
    vote with the rest of their images, or not at all; counted and named by their first _ids."""
    n_imgs = np.clip(np.asarray(reader.index.n_imgs, np.int64), 0, None)
    short = np.flatnonzero(np.bincount(hashes["row"], minlength=len(n_imgs))[: len(n_imgs)] < n_imgs)
    skips = SkipLog(f"md5 {split}", max_logged=0)
    ids = np.asarray(reader.index.ids)[short]
    skips.add_ids("unhashed_image", f"{len(short)} products have image entries without picture bytes (not hashed)", ids[: skips.max_ids],
                  count=len(short))
    skips.report()
    return skips.to_dict()


def digest_keys(md5: np.ndarray) -> np.ndarray:
    """uint64[N, 2] view of 16-byte digests (exact bytes; S16 elements would drop trailing zeros)."""
    return np.ascontiguousarray(md5).view("<u8").reshape(-1, 2)


def group_ids(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense id per distinct row of uint64[N, 2] (a lexsort: far faster than np.unique on bytes)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), 0
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    k = keys[order]
    new = np.ones(len(k), bool)
    new[1:] = (k[1:] != k[:-1]).any(axis=1)
    ids = np.empty(len(k), np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, int(new.sum())
