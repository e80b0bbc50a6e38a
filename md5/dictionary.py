"""The dictionary (per hash, the label counts of the train products holding it) and the votes it
gives a product (see md5/run.py for the rules)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from common.ids import first_occurrence
from common.predictions import TopK, concat_topk

if TYPE_CHECKING:
    from .run import Md5Options


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

    def tables(self, opts: Md5Options) -> VoteTables:
        """What vote() reads, over the whole dictionary: computed once per dictionary and options
        (the stage per call of vote(); md5/lookup.py once at load, so a call costs its query only)."""
        return VoteTables(np.asarray(self.counts.sum(axis=1)).ravel(), self.weights(opts), self.shares())


@dataclass
class VoteTables:
    """Per hash id: its train products, its vote weight (under given options) and its label shares."""

    n: np.ndarray  # products per hash
    weights: np.ndarray  # purity ** alpha, 0 where ignored (Dictionary.weights)
    shares: sp.csr_matrix  # [H, C] label shares (Dictionary.shares)


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


@dataclass
class Rule:
    """An override rule's outcome per query product: whether it applies, and the label it gives."""

    name: str
    ids: np.ndarray
    applies: np.ndarray  # bool
    label: np.ndarray  # -1 where it does not apply

    @classmethod
    def concat(cls, parts: list["Rule"]) -> "Rule":
        return cls(parts[0].name, *(np.concatenate([getattr(r, f) for r in parts]) for f in ("ids", "applies", "label")))


def image_rule(v: Votes) -> Rule:
    """Ours: a product whose usable image hashes all point to one label takes it."""
    return Rule("image", v.ids, v.unique_label, v.unique_of)


def product_keys(sets: list[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
    """Per product of each (row, hash id, products) set, an id of its whole set of distinct image
    hashes, equal across sets for equal sets (-1: no hashed image). The 3rd place's key
    (predict/md5_predict.py: ','.join(sorted(set(hashes))))."""
    width = max([1] + [int(np.bincount(q).max()) for q, _, _ in sets if len(q)])
    rows = []
    for q, h, n in sets:  # (q, h) distinct pairs sorted by q then h (unique_pairs)
        m = np.full((n, width), -1, np.int64)
        start = np.searchsorted(q, q, side="left")
        m[q, np.arange(len(q)) - start] = h
        rows.append(m)
    stacked = np.ascontiguousarray(np.concatenate(rows))
    _, key = np.unique(stacked.view(np.dtype((np.void, 8 * width))).ravel(), return_inverse=True)
    key = np.where(stacked[:, 0] >= 0, key.ravel(), -1)
    return np.split(key, np.cumsum([n for _, _, n in sets])[:-1])


def product_rule(d: Dictionary, keys: np.ndarray, ids: np.ndarray) -> Rule:
    """The 3rd place's rule: the product's whole hash set is a train product's, all of one label."""
    n, distinct, _ = d.stats()
    safe = np.maximum(keys, 0)
    applies = (keys >= 0) & (n[safe] > 0) & (distinct[safe] == 1)
    label = np.full(len(keys), -1, np.int64)
    label[applies] = d.counts.indices[d.counts.indptr[keys[applies]]]  # the one label of the key's row
    return Rule("product", np.asarray(ids, np.int64), applies, label)


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


def vote(d: Dictionary | VoteTables, query_q: np.ndarray, query_h: np.ndarray, ids: np.ndarray, opts: Md5Options) -> Votes:
    """Weighted label shares of each query product's hashes (see the module docstring). `d`: a
    dictionary, or its tables under these options (Dictionary.tables: then nothing here is
    O(dictionary), as the loaded predictor needs)."""
    t = d.tables(opts) if isinstance(d, Dictionary) else d
    n_query, (n_hash, n_classes), w, n = len(ids), t.shares.shape, t.weights, t.n
    any_match = np.zeros(n_query, bool)
    any_match[query_q[n[query_h] > 0]] = True
    q = sp.csr_matrix((w[query_h], (query_q, query_h)), shape=(n_query, n_hash))
    q.eliminate_zeros()
    v = (q @ t.shares).tocsr()
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


def override(base: TopK, ids: np.ndarray, labels: np.ndarray) -> TopK:
    """The base predictions with each given product's prediction replaced by its unique MD5 label."""
    rows, have = base.lookup(ids)
    out = TopK(base.ids, base.labels.copy(), base.probs.copy())
    r = rows[have]
    out.labels[r], out.probs[r] = -1, 0
    out.labels[r, 0], out.probs[r, 0] = labels[have], 1.0
    return out
