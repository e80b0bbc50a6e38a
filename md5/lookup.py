"""The MD5 dictionary saved for prediction (work/md5/dictionary.npz) and its in-memory vote, so a
loaded predictor (ensembling.predict) answers new products without rebuilding the dictionary.

The stage (md5/run.py) saves, once per run, the full dictionary (label counts per hash over every
usable labelled train product: what its test votes use) restricted to the hashes train images
have, keyed by each hash's 16-byte MD5 (as uint64[H, 2], `digest_keys`, sorted as `group_ids`
numbers them), with the vote options and what it was made from (the train index's key, the class
count). A test-only hash has no train product, so it votes nothing in the stage either: dropping
it (an unknown digest is "no match") changes no prediction. `SavedDictionary.predict` hashes the
new products with the stage's own hashing, looks the digests up and calls the stage's own `vote`
on tables computed once at load, so a call costs its products' images only.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from common.atomic import atomic_path
from common.bson_reader import BsonReader
from common.errors import DataError
from common.paths import WorkDir
from common.predictions import TopK
from common.prepare import DatasetPaths

from .dictionary import Dictionary, VoteTables, product_hash_pairs, vote
from .hashing import digest_keys, hash_images, index_key

if TYPE_CHECKING:
    from .run import Md5Options

VERSION = 1  # of the file's layout; a file of another version is refused (rerun the stage)
VOTE_OPTIONS = ("alpha", "max_labels", "min_purity", "topk")  # what the votes read of Md5Options


def dictionary_path(work: WorkDir) -> Path:
    return work.root / "md5" / "dictionary.npz"


def rebuild_hint(work: WorkDir) -> str:
    return f"run `./run_all.sh --work {work.root} --only md5` (or `python -m md5.run --work {work.root}`) to rebuild it"


def train_index_key(work: WorkDir) -> dict:
    """The key of the work dir's current train index (md5.hashing.index_key), for staleness checks."""
    paths = DatasetPaths.load(work)
    return index_key(BsonReader(paths.train, paths.index(work, "train")))


def save_dictionary(work: WorkDir, full: Dictionary, train_md5: np.ndarray, train_hash: np.ndarray, made_from: dict,
                    opts: Md5Options) -> dict:
    """Write work/md5/dictionary.npz (atomically): the rows of `full` of the hashes of the train
    images (`train_md5` S16 and `train_hash` id per train image), keyed by their digests; returns
    what the summary records of it."""
    hashes, first = np.unique(np.asarray(train_hash, np.int64), return_index=True)  # sorted ids = sorted digests
    keys = digest_keys(train_md5)[first] if len(first) else np.zeros((0, 2), np.uint64)
    counts = full.counts[hashes].tocsr() if len(hashes) else sp.csr_matrix((0, full.counts.shape[1]), dtype=full.counts.dtype)
    counts.sort_indices()  # row slicing keeps each row's order; sorted, as Dictionary.build made them
    meta = {"version": VERSION, "made_by": "md5.run", **made_from, "classes": counts.shape[1], "hashes": len(hashes),
            "options": {k: getattr(opts, k) for k in VOTE_OPTIONS}}
    path = dictionary_path(work)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, digest_keys=keys, data=counts.data, indices=counts.indices, indptr=counts.indptr,
                 shape=np.asarray(counts.shape, np.int64), meta=np.asarray(json.dumps(meta)))
    return {"path": str(path), "hashes": len(hashes), "labelled_pairs": int(counts.nnz), "bytes": path.stat().st_size}


@dataclass
class SavedDictionary:
    """The stage's dictionary, loaded once: `predict(reader)` votes for new products as the stage's
    test votes would."""

    keys: np.ndarray  # uint64[H, 2] digest keys, sorted by (column 0, column 1)
    tables: VoteTables  # per saved hash: products, weight and label shares (computed once, at load)
    opts: Md5Options
    meta: dict

    def hash_ids(self, md5: np.ndarray) -> np.ndarray:
        """The saved hash id of each 16-byte digest (S16), -1 where no train image has it."""
        q = digest_keys(md5)
        lo = np.searchsorted(self.keys[:, 0], q[:, 0], side="left")
        hi = np.searchsorted(self.keys[:, 0], q[:, 0], side="right")
        out = np.full(len(q), -1, np.int64)
        one = np.flatnonzero(hi == lo + 1)  # a first half is one saved row (but for a 64-bit collision)
        out[one] = np.where(self.keys[lo[one], 1] == q[one, 1], lo[one], -1)
        for i in np.flatnonzero(hi > lo + 1):  # rows sharing a first half: sorted by the second
            j = lo[i] + int(np.searchsorted(self.keys[lo[i] : hi[i], 1], q[i, 1]))
            if j < hi[i] and self.keys[j, 1] == q[i, 1]:
                out[i] = j
        return out

    def predict(self, reader, inputs: dict | None = None) -> TopK:
        """The vote top-K of `reader`'s products (a common.bson_reader.MemoryReader or BsonReader),
        sorted by _id, rows only for products with a usable match (a repeated _id: its first
        document). `inputs` (other sources' predictions) is unused: the votes need none."""
        hashes = hash_images(reader, workers=1, progress=False)
        ids = self.hash_ids(hashes["md5"])
        known = ids >= 0
        q, hh = product_hash_pairs(hashes[known], ids[known], np.arange(len(reader)))
        return vote(self.tables, q, hh, np.asarray(reader.index.ids, np.int64), self.opts).preds


def load_dictionary(work: WorkDir, summary: dict | None = None) -> SavedDictionary:
    """work/md5/dictionary.npz, checked against the work dir's train index and class count (and,
    given the stage's summary, against its options); a DataError naming the file and the command
    that rebuilds it when it is missing or stale."""
    from .run import Md5Options

    path = dictionary_path(work)
    if not path.is_file():
        raise DataError(f"{path}: missing (a work dir made before the md5 stage saved its dictionary); {rebuild_hint(work)}")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta, keys = json.loads(str(z["meta"])), z["digest_keys"]
            counts = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(x) for x in z["shape"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # cut short, or not this layout: one line, never a traceback
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e}); {rebuild_hint(work)}") from None
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: stale (file version {meta.get('version')}, this code reads {VERSION}); {rebuild_hint(work)}")
    if meta.get("train_index") != train_index_key(work):
        raise DataError(f"{path}: stale (made from another train index than {work.index('train')}.json); {rebuild_hint(work)}")
    n_classes = len(DatasetPaths.load(work).tree())
    if meta.get("classes") != n_classes or counts.shape[1] != n_classes or len(keys) != counts.shape[0]:
        raise DataError(f"{path}: stale ({meta.get('classes')} classes, {len(keys)} keys for {counts.shape[0]} rows; "
                        f"the work dir has {n_classes} classes); {rebuild_hint(work)}")
    recorded = (summary or {}).get("options", {})
    differ = sorted(k for k in VOTE_OPTIONS if k in recorded and recorded[k] != meta["options"][k])
    if differ:
        raise DataError(f"{path}: stale (its options {differ} differ from preds/md5/summary.json's); {rebuild_hint(work)}")
    opts = Md5Options(**meta["options"])
    return SavedDictionary(keys, Dictionary(counts).tables(opts), opts, meta)
