"""The MD5 dictionary: exact duplicate images between products, as a prediction source.

    python -m ensembling.md5 --work work [--alpha 2] [--max-labels 5] [--override-base dylan] [--write-submissions]

Sellers reuse pictures: on the real data 12.37M train images have 7.77M distinct MD5s, and the
3rd place gave a test image whose MD5 appears in train that train label (+0.003..0.005 LB).

1. Hash every train and test image, streaming the BSON through the index (work/md5/{train,test}
   _hashes.npy: per image its index row, rank and 16-byte MD5; reused while the index is current).
2. Per hash, the label counts of the train products holding it (a product counts once per hash).
   Honesty: fold k's products are looked up in the counts WITHOUT fold k (fold -1 products always
   count, excluded products never), so no product sees its own label or its fold's.
3. A hash votes with weight purity**alpha (purity = its top label's share); a hash shared by
   >= max_labels distinct labels, or less pure than min_purity, is ignored: "no photo"
   placeholders repeat across unrelated categories and would otherwise vote blindly. For OOF
   rows this too is decided on the dictionary without the fold (deciding it with the fold's own
   labels would drop exactly the votes that a product's own odd label makes wrong: a leak).
4. Per product: the weighted mean of its hashes' label shares, times a confidence = the largest
   weight among them (a 100%-pure hash gives its label probability 1, a hash split 60/40 gives
   0.6**alpha spread over the two). The rest of the mass is left unassigned, so a later stacker
   can read a low total as low trust. Products without a usable match get no row.
5. Override (the 3rd place's rule): a product whose usable hashes all point to ONE label takes
   it. Reported on OOF (share, accuracy) and test; applied to --override-base sources, whose
   accuracy before/after is reported (and, with --write-submissions, submitted).

Writes work/preds/md5/{oof,test}.npz + summary.json.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from common.atomic import write_json, write_npy
from common.blend import Labels
from common.bson_index import first_occurrence
from common.bson_reader import BsonReader
from common.config import parse_stage_args
from common.known_test_labels import known_test_labels
from common.metrics import accuracy
from common.paths import WorkDir
from common.predictions import TopK, concat_topk, load_topk, save_topk
from common.recipe import EXCLUDED, FoldData, load_fold_data
from common.submission import submission_from_topk

SOURCE = "md5"
SOLUTION_BLENDS = ("dylan", "bestfitting", "convoluted")
HASH_DTYPE = np.dtype([("row", "<i8"), ("rank", "<i1"), ("md5", "S16")])


@dataclass
class Md5Options:
    alpha: float = 2.0  # vote weight = purity ** alpha
    max_labels: int = 5  # a hash carried by this many distinct labels or more is ignored (placeholders)
    min_purity: float = 0.0  # a hash whose top label share is below this is ignored
    topk: int = 20
    workers: int = 0  # hashing processes; 0 = every core
    override_base: list[str] = field(default_factory=list)  # sources to apply the override to (default: the solution blends)
    write_submissions: bool = False  # write submissions/<base>_md5_override.csv.gz


# ---------------------------------------------------------------------------------------------
# 1. hashing

_READER: BsonReader | None = None


def _init_hasher(reader: BsonReader) -> None:
    global _READER
    _READER = reader


def _hash_range(span: tuple[int, int]) -> np.ndarray:
    """Per image of rows [start, stop): (row, rank, md5)."""
    out = []
    for row in range(*span):
        for rank, jpeg in enumerate(_READER[row].images):
            out.append((row, rank, hashlib.md5(jpeg).digest()))
    return np.array(out, HASH_DTYPE)


def hash_images(reader: BsonReader, workers: int, progress: bool = True, span: int = 2048) -> np.ndarray:
    """Every image of the file, in index order; products are read one by one (never the whole file)."""
    n = len(reader)
    spans = [(s, min(s + span, n)) for s in range(0, n, span)]
    bar = dict(total=len(spans), desc=f"md5 {reader.path.name}", unit="chunk", mininterval=2, disable=not progress)
    if workers <= 1 or len(spans) <= 1:
        _init_hasher(reader)
        parts = [_hash_range(s) for s in tqdm(spans, **bar)]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers, initializer=_init_hasher, initargs=(reader,)) as pool:
            parts = list(tqdm(pool.imap(_hash_range, spans), **bar))
    return np.concatenate(parts) if parts else np.zeros(0, HASH_DTYPE)


def hashes_path(work: WorkDir, split: str) -> Path:
    return work.root / "md5" / f"{split}_hashes.npy"


def load_or_hash(work: WorkDir, split: str, reader: BsonReader, workers: int, progress: bool = True) -> tuple[np.ndarray, dict]:
    """The split's image hashes, recomputed only when the index changed since they were saved."""
    path, meta_path = hashes_path(work, split), hashes_path(work, split).with_suffix(".json")
    index_meta = {k: reader.index.meta.get(k) for k in ("source", "size", "mtime_ns", "products", "images")}
    if path.exists() and meta_path.exists():
        saved = json.loads(meta_path.read_text())
        if saved.get("index") == index_meta:
            return np.load(path, allow_pickle=False), {**saved, "reused": True}
    t0 = time.perf_counter()
    hashes = hash_images(reader, workers, progress)
    seconds = time.perf_counter() - t0
    write_npy(path, hashes)
    meta = {"index": index_meta, "images": int(len(hashes)), "seconds": round(seconds, 2),
            "images_per_second": round(len(hashes) / seconds, 1) if seconds else None, "workers": workers}
    write_json(meta_path, meta)
    return hashes, {**meta, "reused": False}


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


# ---------------------------------------------------------------------------------------------
# 2-4. dictionary and votes


@dataclass
class Dictionary:
    """Per hash id: label counts of the train products holding it (csr [H, C])."""

    counts: sp.csr_matrix

    @classmethod
    def build(cls, hash_of_pair: np.ndarray, label_of_pair: np.ndarray, n_hash: int, n_classes: int) -> "Dictionary":
        m = sp.csr_matrix((np.ones(len(hash_of_pair), np.float32), (hash_of_pair, label_of_pair)), shape=(n_hash, n_classes))
        m.sum_duplicates()
        return cls(m)

    def __sub__(self, other: "Dictionary") -> "Dictionary":
        m = (self.counts - other.counts).tocsr()
        m.eliminate_zeros()
        return Dictionary(m)

    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(products, distinct labels, purity) per hash (purity 0 where no product)."""
        n = np.asarray(self.counts.sum(axis=1)).ravel()
        distinct = np.diff(self.counts.indptr)
        top = self.counts.max(axis=1).toarray().ravel()
        return n, distinct, np.divide(top, n, out=np.zeros_like(n), where=n > 0)

    def weights(self, opts: Md5Options) -> np.ndarray:
        """purity ** alpha, 0 for hashes without products and for ignored (placeholder-like) ones."""
        n, distinct, purity = self.stats()
        usable = (n > 0) & (distinct < opts.max_labels) & (purity >= opts.min_purity)
        return np.where(usable, purity ** opts.alpha, 0.0)

    def shares(self) -> sp.csr_matrix:
        n = np.asarray(self.counts.sum(axis=1)).ravel()
        return sp.diags(np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)) @ self.counts


@dataclass
class Votes:
    """Per query product (in query order): its flags; and the vote predictions of the matched ones."""

    ids: np.ndarray  # _id per query product
    preds: TopK  # rows only for products with a usable match (sorted by _id)
    any_match: np.ndarray  # bool: some image's hash is in the dictionary at all (before ignoring any)
    unique_label: np.ndarray  # bool: its usable matches all point to one label (the override applies)
    unique_of: np.ndarray  # that label (-1 elsewhere)

    @classmethod
    def concat(cls, parts: list["Votes"]) -> "Votes":
        return cls(np.concatenate([v.ids for v in parts]), concat_topk([v.preds for v in parts]),
                   *(np.concatenate([getattr(v, f) for v in parts]) for f in ("any_match", "unique_label", "unique_of")))


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs of non-negative ints, via one int64 key (np.unique(axis=0) is far slower)."""
    if len(a) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    span = int(b.max()) + 1
    key = np.unique(a.astype(np.int64) * span + b)
    return key // span, key % span


def product_hash_pairs(hashes: np.ndarray, hash_ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query position, hash id), once per pair, for the images of the given index rows."""
    pos = np.full(int(hashes["row"].max(initial=-1)) + 1, -1, np.int64)
    pos[rows[rows < len(pos)]] = np.flatnonzero(rows < len(pos))
    q = pos[hashes["row"]] if len(hashes) else np.zeros(0, np.int64)
    keep = q >= 0
    return unique_pairs(q[keep], hash_ids[keep])


def vote(d: Dictionary, query_q: np.ndarray, query_h: np.ndarray, ids: np.ndarray, opts: Md5Options) -> Votes:
    """Weighted label shares of each query product's hashes (see the module docstring)."""
    n_query, (n_hash, n_classes) = len(ids), d.counts.shape
    w = d.weights(opts)
    n = np.asarray(d.counts.sum(axis=1)).ravel()
    any_match = np.zeros(n_query, bool)
    any_match[query_q[n[query_h] > 0]] = True
    q = sp.csr_matrix((w[query_h], (query_q, query_h)), shape=(n_query, n_hash))
    q.eliminate_zeros()
    v = (q @ d.shares()).tocsr()
    v.eliminate_zeros()
    total = np.asarray(q.sum(axis=1)).ravel()
    conf = q.max(axis=1).toarray().ravel()
    has = total > 0
    scaled = (sp.diags(np.divide(conf, total, out=np.zeros_like(total), where=has)) @ v).tocsr()
    unique = has & (np.diff(v.indptr) == 1)
    unique_of = np.full(n_query, -1, np.int64)
    unique_of[unique] = v.indices[v.indptr[:-1][unique]]
    once = has & first_occurrence(ids)  # a repeated test _id is voted for from its first document only
    preds = sparse_topk(scaled[np.flatnonzero(once)], ids[once], min(opts.topk, n_classes))
    return Votes(np.asarray(ids, np.int64), preds, any_match, unique, unique_of)


def sparse_topk(m: sp.csr_matrix, ids: np.ndarray, k: int) -> TopK:
    """Top-K of each row of a sparse matrix, as the common prediction format (ids sorted)."""
    coo = m.tocoo()
    order = np.lexsort((-coo.data, coo.row))
    rows, cols, vals = coo.row[order], coo.col[order], coo.data[order]
    start = np.searchsorted(rows, np.arange(m.shape[0]))
    rank = np.arange(len(rows)) - start[rows]
    keep = rank < k
    labels = np.full((m.shape[0], k), -1, np.int16)
    probs = np.zeros((m.shape[0], k), np.float16)
    labels[rows[keep], rank[keep]] = cols[keep]
    probs[rows[keep], rank[keep]] = vals[keep]
    by_id = np.argsort(ids, kind="stable")
    return TopK(np.asarray(ids, np.int64)[by_id], labels[by_id], probs[by_id])


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class HashedData:
    data: FoldData
    train: np.ndarray  # HASH_DTYPE per train image
    test: np.ndarray
    train_hash: np.ndarray  # hash id per train image
    test_hash: np.ndarray
    n_hash: int


def hash_data(work: WorkDir, data: FoldData, workers: int, progress: bool) -> tuple[HashedData, dict]:
    train, m_train = load_or_hash(work, "train", data.train, workers, progress)
    test, m_test = load_or_hash(work, "test", data.test, workers, progress)
    ids, n_hash = group_ids(np.concatenate([digest_keys(train["md5"]), digest_keys(test["md5"])]))
    return HashedData(data, train, test, ids[: len(train)], ids[len(train) :], n_hash), {"train": m_train, "test": m_test}


def train_dictionaries(h: HashedData) -> tuple[Dictionary, dict[int, Dictionary]]:
    """The dictionary of every usable labelled train product, and each fold's share of it."""
    data = h.data
    hsh, rows = unique_pairs(h.train_hash, h.train["row"])
    usable = (data.labels[rows] >= 0) & (data.fold[rows] != EXCLUDED)
    hsh, rows = hsh[usable], rows[usable]
    c = len(data.tree)
    full = Dictionary.build(hsh, data.labels[rows], h.n_hash, c)
    folds = sorted(int(f) for f in np.unique(data.fold) if f >= 0)
    per_fold = {k: Dictionary.build(hsh[data.fold[rows] == k], data.labels[rows][data.fold[rows] == k], h.n_hash, c) for k in folds}
    return full, per_fold


def oof_votes(h: HashedData, full: Dictionary, per_fold: dict[int, Dictionary], opts: Md5Options) -> Votes:
    """Each fold's products voted by the dictionary without that fold (fold -1 never queried)."""
    parts = []
    for k, fold_dict in per_fold.items():
        rows = np.flatnonzero(h.data.fold == k)
        q, hh = product_hash_pairs(h.train, h.train_hash, rows)
        parts.append(vote(full - fold_dict, q, hh, np.asarray(h.data.train.index.ids[rows], np.int64), opts))
    return Votes.concat(parts) if parts else vote(full, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), opts)


def test_votes(h: HashedData, full: Dictionary, opts: Md5Options) -> Votes:
    rows = np.arange(len(h.data.test.index))
    q, hh = product_hash_pairs(h.test, h.test_hash, rows)
    return vote(full, q, hh, np.asarray(h.data.test.index.ids, np.int64), opts)


def override(base: TopK, ids: np.ndarray, labels: np.ndarray) -> TopK:
    """The base predictions with each given product's prediction replaced by its unique MD5 label."""
    rows, have = rows_of(base.ids, ids)
    out = TopK(base.ids, base.labels.copy(), base.probs.copy())
    r = rows[have]
    out.labels[r], out.probs[r] = -1, 0
    out.labels[r, 0], out.probs[r, 0] = labels[have], 1.0
    return out


def rows_of(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of ids in sorted_ids, bool mask of the ids present)."""
    rows = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
    return rows, (sorted_ids[rows] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)


def top1_for(preds: TopK, ids: np.ndarray) -> np.ndarray:
    """Top-1 per id, -1 where the source has no row (scored wrong, as a submission would be)."""
    rows, have = rows_of(preds.ids, ids)
    return np.where(have, preds.top1[rows], -1)


# ---------------------------------------------------------------------------------------------
# reports


def dictionary_report(full: Dictionary, h: HashedData, opts: Md5Options, top: int = 3) -> dict:
    """Hash counts, conflicting labels, and the ignored hashes that carry the most products."""
    n, distinct, purity = full.stats()
    w = full.weights(opts)
    ignored = np.flatnonzero((n > 0) & (w == 0))
    worst = ignored[np.argsort(-n[ignored], kind="stable")[:top]]
    first_image = np.full(h.n_hash, -1, np.int64)
    first_image[h.train_hash[::-1]] = np.arange(len(h.train_hash))[::-1]
    indptr, indices, level1 = full.counts.indptr, full.counts.indices, h.data.tree.level1_of

    def describe(hid: int) -> dict:
        digest = np.ascontiguousarray(h.train["md5"][first_image[hid] : first_image[hid] + 1]).view("u1").tobytes().hex()
        return {"md5": digest, "train_products": int(n[hid]), "distinct_labels": int(distinct[hid]),
                "level1_groups": len(set(level1[indices[indptr[hid] : indptr[hid + 1]]])), "purity": round(float(purity[hid]), 3)}

    return {
        "train_images": int(len(h.train)), "test_images": int(len(h.test)), "distinct_hashes": h.n_hash,
        "distinct_train_hashes": int(len(np.unique(h.train_hash))),
        "hashes_of_labelled_train_products": int((n > 0).sum()),
        "hashes_with_conflicting_labels": int((distinct > 1).sum()),
        "ignored_hashes": int(len(ignored)),
        "most_shared_ignored_hashes": [describe(int(hid)) for hid in worst],
    }


def votes_report(v: Votes, true: np.ndarray | None) -> dict:
    """Match shares; with the truth per query product, the vote source's and the override's accuracy."""
    n = len(v.ids)
    out = {"products": n, "share_with_any_match": float(v.any_match.mean()) if n else None,
           "share_with_usable_match": len(v.preds) / n if n else None,
           "share_with_unique_label_match": float(v.unique_label.mean()) if n else None,
           "override_products": int(v.unique_label.sum()),
           "mean_top_probability_on_matched": float(v.preds.probs[:, 0].astype(np.float32).mean()) if len(v.preds) else None}
    if true is not None and n:
        order = np.argsort(v.ids, kind="stable")
        true_of_pred = true[order[np.searchsorted(v.ids[order], v.preds.ids)]]
        out["vote_accuracy_on_matched"] = accuracy(v.preds.top1, true_of_pred) if len(v.preds) else None
        out["override_accuracy_on_unique"] = accuracy(v.unique_of[v.unique_label], true[v.unique_label]) if v.unique_label.any() else None
    return out


def base_report(work: WorkDir, base: str, oof_v: Votes, test_v: Votes, labels: Labels, data: FoldData,
                truth: np.ndarray | None, write: bool) -> dict:
    """A source's OOF (and mini test) accuracy before and after the override; optional submission."""
    oof, test = load_topk(work.preds(base) / "oof.npz"), load_topk(work.preds(base) / "test.npz")
    new_oof = override(oof, oof_v.ids[oof_v.unique_label], oof_v.unique_of[oof_v.unique_label])
    new_test = override(test, test_v.ids[test_v.unique_label], test_v.unique_of[test_v.unique_label])
    unique_ids = oof_v.ids[oof_v.unique_label]
    out = {"oof_accuracy": accuracy(oof.top1, labels.of(oof.ids)), "oof_accuracy_with_override": accuracy(new_oof.top1, labels.of(new_oof.ids)),
           "oof_base_accuracy_on_overridden": accuracy(top1_for(oof, unique_ids), labels.of(unique_ids)),
           "oof_changed": int((oof.top1 != new_oof.top1).sum()), "test_changed": int((test.top1 != new_test.top1).sum())}
    if truth is not None:
        ids, known = np.asarray(data.test.index.ids, np.int64), truth >= 0
        out["test_accuracy"] = accuracy(top1_for(test, ids[known]), truth[known])
        out["test_accuracy_with_override"] = accuracy(top1_for(new_test, ids[known]), truth[known])
        sel = known & test_v.unique_label  # test_v is in index-row order
        out["test_base_accuracy_on_overridden"] = accuracy(top1_for(test, ids[sel]), truth[sel])
    if write:
        prior = int(np.bincount(labels.labels[labels.labels >= 0]).argmax())
        sub, _ = submission_from_topk(work.submissions / f"{base}_md5_override.csv.gz", new_test, np.asarray(data.test.index.ids), data.tree, prior)
        out["submission"] = str(sub)
    return out


# ---------------------------------------------------------------------------------------------
# the stage


def run_md5(work: WorkDir, opts: Md5Options, progress: bool = True) -> dict:
    """Hash, build the dictionaries, vote, write preds/md5/ and its summary; returns the summary."""
    t0 = time.perf_counter()
    data = load_fold_data(work)
    h, hashing = hash_data(work, data, opts.workers or os.cpu_count() or 1, progress)
    full, per_fold = train_dictionaries(h)
    oof_v, test_v = oof_votes(h, full, per_fold, opts), test_votes(h, full, opts)
    out = work.preds(SOURCE)
    save_topk(out / "oof.npz", oof_v.preds)
    save_topk(out / "test.npz", test_v.preds)
    labels, truth = Labels.load(work), known_test_labels(work, data)
    bases = opts.override_base or [s for s in SOLUTION_BLENDS if (work.preds(s) / "test.npz").exists()]
    summary = {
        "source": SOURCE, "options": asdict(opts), "hashing": hashing,
        "dictionary": dictionary_report(full, h, opts),
        "oof": votes_report(oof_v, labels.of(oof_v.ids)),
        "test": votes_report(test_v, truth),
        "override": {b: base_report(work, b, oof_v, test_v, labels, data, truth, opts.write_submissions) for b in bases},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "summary.json", summary)
    return summary


def print_summary(s: dict) -> None:
    d = s["dictionary"]
    print(f"md5: {d['train_images']} train + {d['test_images']} test images, {d['distinct_hashes']} distinct hashes, "
          f"{d['hashes_with_conflicting_labels']} with conflicting labels, {d['ignored_hashes']} ignored (>= {s['options']['max_labels']} labels)")
    for x in d["most_shared_ignored_hashes"]:
        print(f"  ignored {x['md5']}: {x['train_products']} train products, {x['distinct_labels']} labels in {x['level1_groups']} level-1 groups")
    for split in ("oof", "test"):
        r = s[split]
        line = (f"  {split}: {r['products']} products, any match {r['share_with_any_match']:.3f}, usable {r['share_with_usable_match']:.3f}, "
                f"unique label {r['share_with_unique_label_match']:.3f}")
        if r.get("override_accuracy_on_unique") is not None:
            line += f"; override accuracy {r['override_accuracy_on_unique']:.4f}, vote accuracy on matched {r['vote_accuracy_on_matched']:.4f}"
        print(line)
    for base, r in s["override"].items():
        line = (f"  override on {base}: OOF {r['oof_accuracy']:.4f} -> {r['oof_accuracy_with_override']:.4f} "
                f"({base} alone on the overridden products: {r['oof_base_accuracy_on_overridden']:.4f})")
        if "test_accuracy" in r:
            line += (f", mini test {r['test_accuracy']:.4f} -> {r['test_accuracy_with_override']:.4f} "
                     f"({base} alone on the overridden: {r['test_base_accuracy_on_overridden']:.4f})")
        print(line)


def main(argv: list[str] | None = None) -> dict:
    work, opts, progress = parse_stage_args(argv, __doc__, Md5Options)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = run_md5(WorkDir(work), opts, progress=progress)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
