"""The MD5 dictionary stage: fold-honest duplicate look-ups as a side source (preds/md5), the 3rd place's override.

    python -m md5.run --work work [--alpha 2] [--max-labels 5] [--override-base dylan] [--write-submissions]
    python -m md5.run --work work --shard i/n      # machine i of n: hash its share into work/md5/shards/, stop;
                                                   # with every shard copied there, the plain run merges them

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

Writes work/preds/md5/{oof,test}.npz + summary.json, and work/md5/dictionary.npz: the full
dictionary keyed by MD5, which md5/lookup.py loads once to vote for new products (no rehashing).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated

import numpy as np

from common.checks import at_least, between
from common.cli import parse_shard, parse_stage, run
from common.errors import DataError
from common.folds import EXCLUDED
from common.ids import lookup
from common.metrics import accuracy
from common.paths import WorkDir
from common.predictions import save_topk
from common.sources import BLENDS, list_sources, load_predictions, write_summary
from common.submission import submission_from_topk
from common.workdata import FoldData, Labels, load_fold_data

from .dictionary import (
    Dictionary,
    Rule,
    Votes,
    image_rule,
    override,
    product_hash_pairs,
    product_keys,
    product_rule,
    unique_pairs,
    vote,
)
from .hashing import digest_keys, group_ids, hash_shard, index_key, load_or_hash
from .lookup import save_dictionary

SOURCE = "md5"
RULES = ("image", "product")
RECORDED = {"value": None, "what": "MD5 dictionary: +0.003..0.005 on dylan's ensemble (0.78998 -> 0.79046)", "measured_on": "Kaggle private LB"}


@dataclass
class Md5Options:
    alpha: Annotated[float, at_least(0)] = 2.0  # vote weight = purity ** alpha
    max_labels: Annotated[int, at_least(1)] = 5  # a hash carried by this many distinct labels or more is ignored (placeholders)
    min_purity: Annotated[float, between(0, 1)] = 0.0  # a hash whose top label share is below this is ignored
    topk: Annotated[int, at_least(1)] = 20
    workers: Annotated[int, at_least(0)] = 0  # hashing processes; 0 = every core
    override_base: list[str] = field(default_factory=list)  # sources to apply the override to (default: every solution / team blend)
    write_submissions: bool = False  # write submissions/<base>_md5_override.csv.gz
    accept_lost_products: bool = False  # write them although the test index lost documents of test.bson
    shard: str = ""  # "i/n": hash only this machine's share of train and test into md5/shards/, then stop
    override_rule: str = "image"  # image: ours, image by image; product: the 3rd place's whole sorted set of hashes (both reported)

    def __post_init__(self) -> None:
        if self.shard:
            parse_shard(self.shard)
        if self.override_rule not in RULES:
            raise DataError(f"md5 option override_rule={self.override_rule!r}: choose from {list(RULES)}")


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


def product_rules(h: HashedData) -> tuple[Rule, Rule]:
    """The 3rd place's product-level rule on OOF (a fold looked up without itself) and test."""
    data, c = h.data, len(h.data.tree)
    n_train, n_test = len(data.train.index), len(data.test.index)
    train_key, test_key = product_keys([(*unique_pairs(h.train["row"], h.train_hash), n_train), (*unique_pairs(h.test["row"], h.test_hash), n_test)])
    usable = (train_key >= 0) & (data.labels >= 0) & (data.fold != EXCLUDED)
    n_keys = int(max(train_key.max(initial=-1), test_key.max(initial=-1))) + 1
    full = Dictionary.build(train_key[usable], data.labels[usable], n_keys, c)
    train_ids, parts = np.asarray(data.train.index.ids, np.int64), []
    for k in sorted(int(f) for f in np.unique(data.fold) if f >= 0):
        own = usable & (data.fold == k)
        rows = np.flatnonzero(data.fold == k)
        parts.append(product_rule(full - Dictionary.build(train_key[own], data.labels[own], n_keys, c), train_key[rows], train_ids[rows]))
    empty = Rule("product", np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
    return Rule.concat(parts) if parts else empty, product_rule(full, test_key, np.asarray(data.test.index.ids, np.int64))


def test_votes(h: HashedData, full: Dictionary, opts: Md5Options) -> Votes:
    rows = np.arange(len(h.data.test.index))
    q, hh = product_hash_pairs(h.test, h.test_hash, rows)
    return vote(full, q, hh, np.asarray(h.data.test.index.ids, np.int64), opts)


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
        true_of_pred = true[order[lookup(v.ids[order], v.preds.ids)[0]]]
        out["vote_accuracy_on_matched"] = accuracy(v.preds.top1, true_of_pred) if len(v.preds) else None
        out["override_accuracy_on_unique"] = accuracy(v.unique_of[v.unique_label], true[v.unique_label]) if v.unique_label.any() else None
    return out


def rule_report(r: Rule, true: np.ndarray | None) -> dict:
    """How many products a rule overrides, and (with the truth per query product) how often rightly."""
    out = {"products": int(len(r.ids)), "override_products": int(r.applies.sum())}
    if true is not None and r.applies.any():
        out["override_accuracy"] = accuracy(r.label[r.applies], true[r.applies])
    return out


def base_report(work: WorkDir, base: str, rules: tuple[Rule, Rule], labels: Labels, data: FoldData,
                truth: np.ndarray | None, opts: Md5Options, write: bool = False) -> dict:
    """A source's OOF (and mini test) accuracy before and after a rule's override; optional submission."""
    oof, test = load_predictions(work, base)
    oof_r, test_r = rules
    new_oof = override(oof, oof_r.ids[oof_r.applies], oof_r.label[oof_r.applies])
    new_test = override(test, test_r.ids[test_r.applies], test_r.label[test_r.applies])
    unique_ids = oof_r.ids[oof_r.applies]
    out = {"rule": oof_r.name, "oof_accuracy": accuracy(oof.top1, labels.of(oof.ids)),
           "oof_accuracy_with_override": accuracy(new_oof.top1, labels.of(new_oof.ids)),
           "oof_base_accuracy_on_overridden": accuracy(oof.top1_of(unique_ids), labels.of(unique_ids)),
           "oof_changed": int((oof.top1 != new_oof.top1).sum()), "test_changed": int((test.top1 != new_test.top1).sum())}
    if truth is not None:
        ids, known = np.asarray(data.test.index.ids, np.int64), truth >= 0
        out["test_accuracy"] = accuracy(test.top1_of(ids[known]), truth[known])
        out["test_accuracy_with_override"] = accuracy(new_test.top1_of(ids[known]), truth[known])
        sel = known & test_r.applies  # test rules are in index-row order
        out["test_base_accuracy_on_overridden"] = accuracy(test.top1_of(ids[sel]), truth[sel])
    if write:
        sub, _ = submission_from_topk(work.submissions / f"{base}_md5_override.csv.gz", new_test, np.asarray(data.test.index.ids), data.tree, labels.fallback,
                                      lost_products=data.test.index.lost_products, accept_lost_products=opts.accept_lost_products)
        out["submission"] = str(sub)
    return out


# ---------------------------------------------------------------------------------------------
# the stage


def run_shard(work: WorkDir, data: FoldData, opts: Md5Options, progress: bool) -> dict:
    """Machine i of n: hash its share; the unsharded run finds every shard and concatenates them."""
    shard, workers = parse_shard(opts.shard), opts.workers or os.cpu_count() or 1
    made = {split: hash_shard(work, split, reader, workers, shard, progress) for split, reader in (("train", data.train), ("test", data.test))}
    print(f"md5 shard {opts.shard}: hashed {made['train']['images']:,} train + {made['test']['images']:,} test images into "
          f"{work.root / 'md5' / 'shards'}; copy every machine's shards there and run md5.run without --shard")
    return {"shard": opts.shard, "hashing": made}


def run_md5(work: WorkDir, opts: Md5Options, progress: bool = True) -> dict:
    """Hash, build the dictionaries, vote, write preds/md5/ and its summary; returns the summary."""
    t0 = time.perf_counter()
    data = load_fold_data(work)
    if opts.shard:
        return run_shard(work, data, opts, progress)
    h, hashing = hash_data(work, data, opts.workers or os.cpu_count() or 1, progress)
    full, per_fold = train_dictionaries(h)
    saved = save_dictionary(work, full, h.train["md5"], h.train_hash, {"train_index": index_key(data.train)}, opts)  # for md5/lookup.py
    oof_v, test_v = oof_votes(h, full, per_fold, opts), test_votes(h, full, opts)
    out = work.preds(SOURCE)
    save_topk(out / "oof.npz", oof_v.preds)
    save_topk(out / "test.npz", test_v.preds)
    labels, truth = Labels.load(work), data.test_truth()
    rules = {"image": (image_rule(oof_v), image_rule(test_v)), "product": product_rules(h)}
    bases = opts.override_base or [s.name for s in list_sources(work, BLENDS)]
    by_rule = {name: {b: base_report(work, b, r, labels, data, truth, opts, write=opts.write_submissions and name == opts.override_rule) for b in bases}
               for name, r in rules.items()}
    return write_summary(
        work, SOURCE, "side source", recorded=RECORDED, options=asdict(opts), hashing=hashing,
        dictionary=dictionary_report(full, h, opts), oof=votes_report(oof_v, labels.of(oof_v.ids)), test=votes_report(test_v, truth),
        rules={name: {"oof": rule_report(o, labels.of(o.ids)), "test": rule_report(t, truth)} for name, (o, t) in rules.items()},
        override=by_rule[opts.override_rule], override_by_rule=by_rule, saved_dictionary=saved, seconds=round(time.perf_counter() - t0, 1))


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
    for name, r in s["rules"].items():
        accs = "; ".join(f"{split} {r[split]['override_products']} products" + (f", accuracy {r[split]['override_accuracy']:.4f}" if "override_accuracy" in r[split] else "")
                         for split in ("oof", "test"))
        print(f"  {name} rule: {accs}")
    for rule, base, r in ((rule, b, x) for rule, bases in s["override_by_rule"].items() for b, x in bases.items()):
        line = (f"  {rule} rule on {base}: OOF {r['oof_accuracy']:.4f} -> {r['oof_accuracy_with_override']:.4f} "
                f"({base} alone on the overridden products: {r['oof_base_accuracy_on_overridden']:.4f})")
        if "test_accuracy" in r:
            line += (f", mini test {r['test_accuracy']:.4f} -> {r['test_accuracy_with_override']:.4f} "
                     f"({base} alone on the overridden: {r['test_base_accuracy_on_overridden']:.4f})")
        print(line)


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, __doc__, Md5Options)
    summary = run_md5(args.work, args.options, progress=args.progress)
    if not args.options.shard:
        print_summary(summary)
    return summary


if __name__ == "__main__":
    run(main)
