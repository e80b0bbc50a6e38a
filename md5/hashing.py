"""Hash every image of a BSON file (streamed through its index, in worker processes) and cache the
hashes per split (work/md5/{train,test}_hashes.npy: per image its index row, rank and 16-byte MD5),
reused while the index they were made from is current."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from common.atomic import read_json, write_json, write_npy
from common.bson_reader import BsonReader
from common.errors import DataError, SkipLog, log
from common.paths import WorkDir
from common.processes import pool_context
from common.progress import track

HASH_DTYPE = np.dtype([("row", "<i8"), ("rank", "<i2"), ("md5", "S16")])  # rank as wide as the index's n_imgs
HASHING = 2  # 2: entries without picture bytes are not hashed (their MD5s would all "match"); rank int16


_READER: BsonReader | None = None


def _init_hasher(reader: BsonReader) -> None:
    global _READER
    _READER = reader


def hash_rows(reader: BsonReader, span: tuple[int, int]) -> np.ndarray:
    """Per image of rows [start, stop): (row, rank, md5)."""
    out = []
    for row in range(*span):
        for rank, jpeg in enumerate(reader[row].images):
            if jpeg:
                out.append((row, rank, hashlib.md5(jpeg).digest()))
    return np.array(out, HASH_DTYPE)


def _hash_range(span: tuple[int, int]) -> np.ndarray:
    """hash_rows in a worker process, on the reader _init_hasher gave it."""
    return hash_rows(_READER, span)


def hash_images(reader: BsonReader, workers: int, progress: bool = True, span: int = 2048, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Every image of index rows [start, stop) (default: the file), in index order; products are
    read one by one (never the whole file)."""
    start, n = rows or (0, len(reader))
    spans = [(s, min(s + span, n)) for s in range(start, n, span)]
    bar = dict(desc=f"md5 {reader.path.name}", total=len(spans), enabled=progress, unit="chunk")
    if workers <= 1 or len(spans) <= 1:  # in this process: no module state (the loaded predictor may call it from threads)
        parts = [hash_rows(reader, s) for s in track(spans, **bar)]
    else:
        with pool_context().Pool(workers, initializer=_init_hasher, initargs=(reader,)) as pool:
            parts = list(track(pool.imap(_hash_range, spans), **bar))
    return np.concatenate(parts) if parts else np.zeros(0, HASH_DTYPE)


def hashes_path(work: WorkDir, split: str) -> Path:
    return work.root / "md5" / f"{split}_hashes.npy"


def index_key(reader: BsonReader) -> dict:
    """What a saved hash file was made from: the index's content and the hashing version."""
    return {**{k: reader.index.meta.get(k) for k in ("source", "fingerprint", "rows_sha256", "products", "images")}, "hashing": HASHING}


def shard_rows(n_rows: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Machine i of n hashes a contiguous share of the index rows, so the shards concatenated in
    order are exactly the single-machine array."""
    bounds = np.linspace(0, n_rows, shard[1] + 1).astype(np.int64)
    return int(bounds[shard[0]]), int(bounds[shard[0] + 1])


def shard_path(work: WorkDir, split: str, shard: tuple[int, int]) -> Path:
    return work.root / "md5" / "shards" / f"{split}_{shard[0]}of{shard[1]}.npy"


def hash_and_save(path: Path, reader: BsonReader, workers: int, progress: bool, rows: tuple[int, int] | None = None, **meta) -> tuple[np.ndarray, dict]:
    t0 = time.perf_counter()
    hashes = hash_images(reader, workers, progress, rows=rows)
    seconds = time.perf_counter() - t0
    write_npy(path, hashes)
    meta = {"index": index_key(reader), **meta, "images": int(len(hashes)), "seconds": round(seconds, 2),
            "images_per_second": round(len(hashes) / seconds, 1) if seconds else None, "workers": workers}
    write_json(path.with_suffix(".json"), meta)
    return hashes, meta


def hash_shard(work: WorkDir, split: str, reader: BsonReader, workers: int, shard: tuple[int, int], progress: bool = True) -> dict:
    """This machine's share of a split (--shard i/n): md5/shards/<split>_<i>of<n>.npy."""
    rows = shard_rows(len(reader), shard)
    return hash_and_save(shard_path(work, split, shard), reader, workers, progress, rows=rows, rows_hashed=list(rows))[1]


def saved_if_current(path: Path, key: dict) -> np.ndarray | None:
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        return None
    try:  # a cache cut short is no cache: hashed again
        return np.load(path, allow_pickle=False) if read_json(meta_path).get("index") == key else None
    except (DataError, ValueError, OSError, EOFError) as e:
        log.warning("%s: unreadable saved hashes (%s): hashing again", path, type(e).__name__)
        return None


def merged_shards(work: WorkDir, split: str, key: dict) -> tuple[np.ndarray, int] | None:
    """Every shard of one i/n set, all made from this index: concatenated in order (else None)."""
    for n in sorted({int(p.stem.rsplit("of", 1)[1]) for p in (work.root / "md5" / "shards").glob(f"{split}_*of*.npy")}):
        parts = [saved_if_current(shard_path(work, split, (i, n)), key) for i in range(n)]
        if all(p is not None for p in parts):
            return np.concatenate(parts), n
    return None


def load_or_hash(work: WorkDir, split: str, reader: BsonReader, workers: int, progress: bool = True) -> tuple[np.ndarray, dict]:
    """The split's image hashes: the saved file while the index is the same, else the merged
    shards of other machines (--shard), else hashed here."""
    path, key = hashes_path(work, split), index_key(reader)
    hashes = saved_if_current(path, key)
    if hashes is not None:
        saved = read_json(path.with_suffix(".json"))
        return hashes, {**saved, "reused": True, "skipped": unhashed_products(reader, hashes, split)}
    merged = merged_shards(work, split, key)
    if merged is not None:
        hashes, n = merged
        write_npy(path, hashes)
        meta = {"index": key, "images": int(len(hashes)), "merged_shards": n}
        write_json(path.with_suffix(".json"), meta)
        return hashes, {**meta, "reused": False, "skipped": unhashed_products(reader, hashes, split)}
    hashes, meta = hash_and_save(path, reader, workers, progress)
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
