"""The OCR source: read the covers of the products predicted to be media, classify their text.

    python -m ocr.run --work work [--sources dylan bestfitting] [--threshold 0.3] [--workers N]
    python -m ocr.run --work work --config my_ocr.yaml            # any option below, as YAML

Writes work/preds/ocr/{oof,test}.npz (top-K; a product not read, or read without a known word,
has no row) and summary.json; the per-image text cache is work/ocr/cache.sqlite3; each fold's
text model is saved to work/ocr/text_models/fold<k>.npz with predict.json, what the loaded
predictor (ocr/predict.py) needs to answer new products without refitting them.

Spreading the reading over machines (the slowest CPU stage at full scale; on the mini data one
core reads ~35 covers/s with 64 images per tesseract process):
    machine i of n:  python -m ocr.run --work W --shard i/n --cache W/ocr/cache_shard_i.sqlite3
                     (reads only its products, chosen by a hash of _id, fills its cache, stops)
    then, on one:    python -m ocr.run --work W --merge-caches cache_shard_*.sqlite3
                     (merges them into W/ocr/cache.sqlite3; every image is then a cache hit, and
                     the text model trains on all of them)
Within a machine, `--workers` tesseract processes (default: every core) share the images.
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from common.atomic import write_json
from common.checks import at_least, between, positive
from common.bson_reader import BsonReader
from common.cli import parse_shard, parse_stage, run
from common.errors import SkipLog
from common.fingerprint import fingerprint
from common.images import image_problem
from common.metrics import accuracy
from common.paths import WorkDir
from common.predictions import TopK, average_topk, concat_topk, save_topk
from common.sources import write_summary
from common.workdata import FoldData, load_fold_data

from .evaluate import media_accuracy
from .reader import (
    ImageTexts,
    Readers,
    ReadSettings,
    TextCache,
    check_steps,
    check_tesseract,
    merge_caches,
)
from .select import (
    Selection,
    default_sources,
    load_sources,
    media_labels,
    select_products,
    selection_report,
)
from .text_model import (
    FoldTexts,
    TextClassifier,
    TextModelOptions,
    cross_fit,
    has_words,
)

SOURCE = "ocr"
REAL_MEDIA_GROUPS = ["LIBRAIRIE", "MUSIQUE", "DVD - BLU-RAY", "JEUX VIDEO"]
RECORDED = {"value": None, "what": "dylan: tesseract OCR not accurate enough alone; bestfitting fed OCR features (no number)", "measured_on": ""}


@dataclass
class OcrOptions:
    # which products
    sources: list[str] = field(default_factory=list)  # CNN sources choosing the products (default: the solution / team blends)
    media_groups: list[str] = field(default_factory=lambda: list(REAL_MEDIA_GROUPS))
    threshold: Annotated[float, between(0, 1)] = 0.3  # minimum mean media probability mass to read a product
    max_images: Annotated[int, between(1, 4)] = 4  # images read per product (in the seller's order; 4 = all)
    # how to read (bench/bench_ocr.py measured the steps)
    preprocess: list[str] = field(default_factory=lambda: ["pad", "otsu"])  # steps of ocr.reader.PREPROCESS, in order
    lang: str = "fra+eng"
    psm: Annotated[int, between(0, 13)] = 11  # sparse text: +10 points of keyword read rate over the automatic layout (3) on the mini covers
    workers: Annotated[int, at_least(0)] = 0  # tesseract processes; 0 = every core
    batch: Annotated[int, at_least(1)] = 64  # images per tesseract process (it spends ~0.18 s loading its models per call)
    chunk_images: Annotated[int, at_least(1)] = 4096  # images buffered between cache look-ups (a few batches per worker)
    cache: str | None = None  # default: <work>/ocr/cache.sqlite3
    merge_caches: list[str] = field(default_factory=list)  # caches of other machines to merge first
    shard: str = ""  # "i/n": read only this machine's share (then stop)
    # the text model
    classifier: str = "sgd"  # a key of ocr.text_model.CLASSIFIERS (logreg: the multinomial model, small data only)
    C: Annotated[float, positive()] = 10.0
    word_ngram_max: Annotated[int, at_least(1)] = 2
    char_ngram_min: Annotated[int, at_least(1)] = 2
    char_ngram_max: Annotated[int, at_least(1)] = 5
    min_df: Annotated[int, at_least(1)] = 1  # exact vocabulary only (n_features 0)
    n_features: Annotated[int, at_least(0)] = 2**18  # hashed TF-IDF columns per analyzer (bounded memory at any corpus size); 0 = exact vocabulary
    topk: Annotated[int, at_least(1)] = 20

    def __post_init__(self) -> None:
        check_steps(self.preprocess)
        if self.shard:
            parse_shard(self.shard)

    @property
    def settings(self) -> ReadSettings:
        return ReadSettings(tuple(self.preprocess), self.lang, self.psm)

    @property
    def text_model(self) -> TextModelOptions:
        return TextModelOptions(self.classifier, self.C, (1, self.word_ngram_max), (self.char_ngram_min, self.char_ngram_max), self.min_df,
                                n_features=self.n_features)


def shard_mask(ids: np.ndarray, shard: str) -> np.ndarray:
    """bool per _id: its share of a multiplicative hash (even across shards whatever the id order)."""
    i, n = parse_shard(shard)
    mixed = (np.asarray(ids).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return mixed % np.uint64(n) == np.uint64(i)


# ---------------------------------------------------------------------------------------------
# reading


def queue_products(reader: BsonReader, rows: np.ndarray, texts: ImageTexts, max_images: int, skips: SkipLog) -> list[list[bytes]]:
    """Each product's image MD5s (first `max_images`), the images queued for reading; a product
    without images or with an image no decoder reads (it reads as no text) goes in `skips`."""
    out = []
    for r in rows:
        product = reader[int(r)]
        if not product.images:
            skips.add("no_images", f"product _id={product.product_id} has no images: no text", product.product_id)
        for k, jpeg in enumerate(product.images[:max_images]):
            problem = image_problem(jpeg)
            if problem:
                skips.add("unreadable_image", f"product _id={product.product_id} image {k}: {problem} (read as no text)", product.product_id)
        out.append([texts.add(jpeg) for jpeg in product.images[:max_images]])
    return out


def product_texts(digests: list[list[bytes]], texts: dict[bytes, str]) -> list[str]:
    return [" \n ".join(texts[d] for d in ds if texts[d]) for ds in digests]


def read_selected(data: FoldData, sel: Selection, opts: OcrOptions, cache_path: Path, progress: bool) -> tuple[list[str], list[str], dict]:
    """Texts of the selected train and test products (index-row order), and the reading figures."""
    settings = opts.settings
    version = check_tesseract(settings.lang)
    cache = TextCache(cache_path, settings.key)
    try:
        with Readers(settings, opts.workers or os.cpu_count() or 1, opts.batch) as readers:
            texts = ImageTexts(cache, readers, opts.chunk_images, progress)
            skips = {split: SkipLog(f"ocr {split}") for split in ("train", "test")}
            train_digests = queue_products(data.train, sel.train_rows, texts, opts.max_images, skips["train"])
            test_digests = queue_products(data.test, sel.test_rows, texts, opts.max_images, skips["test"])
            stats = texts.close()
        cached = len(cache)
    finally:
        cache.close()
    for split_skips in skips.values():
        split_skips.report()
    report = {"tesseract": version, "settings": settings.key, "cache": str(cache_path), "cache_rows": cached, **stats.as_dict(),
              "skipped": {split: split_skips.to_dict() for split, split_skips in skips.items()}}
    return product_texts(train_digests, texts.texts), product_texts(test_digests, texts.texts), report


# ---------------------------------------------------------------------------------------------
# the stage


def select(work: WorkDir, data: FoldData, opts: OcrOptions) -> tuple[Selection, list[str], dict, dict, np.ndarray]:
    """The products to read, the sources that chose them, their predictions, and the media mask."""
    media = media_labels(data.tree, opts.media_groups)
    sources = opts.sources or default_sources(work)
    oofs, tests = load_sources(work, sources)
    sel = select_products(oofs, tests, media, np.asarray(data.train.index.ids), data.labels, data.fold,
                          np.asarray(data.test.index.ids), opts.threshold)
    return sel, sources, dict(zip(sources, oofs)), dict(zip(sources, tests)), media


def selection_summary(data: FoldData, sel: Selection, media: np.ndarray, test_true: np.ndarray | None) -> dict:
    known = data.labels >= 0
    usable = known & (data.fold >= -1)
    train_sel = np.zeros(len(data.labels), bool)
    train_sel[sel.train_rows] = True
    out = {"train": {**selection_report(train_sel & usable, usable & media[np.where(known, data.labels, 0)]),
                     "chosen_by_own_label": sel.by_label}}
    test_sel = np.zeros(len(data.test.index), bool)
    test_sel[sel.test_rows] = True
    out["test"] = {"selected": int(test_sel.sum())}
    if test_true is not None:
        have = test_true >= 0
        out["test"] = selection_report(test_sel & have, have & media[np.where(have, test_true, 0)])
    return out


def products_with_words(ids: np.ndarray, rows: np.ndarray, texts: list[str]) -> FoldTexts:
    """The products of `rows` (their `texts`, as read) whose text has a word, sorted by _id: the
    test products the fold models predict (the stage's, and the loaded predictor's new ones)."""
    read = np.array([has_words(t) for t in texts], bool)
    return _sorted(FoldTexts(np.asarray(np.asarray(ids)[np.asarray(rows)[read]], np.int64), [t for t, ok in zip(texts, read) if ok]))


def mean_of_folds(parts: list[TopK], k: int) -> TopK:
    """The test prediction: the mean of the fold models' top-K (average_topk), over those with rows."""
    parts = [p for p in parts if len(p)]
    return average_topk(parts, k) if parts else TopK.empty(k)


def classify(data: FoldData, sel: Selection, train_texts: list[str], test_texts: list[str], opts: OcrOptions,
             keep: Callable[[int, TextClassifier], None] | None = None) -> tuple[TopK, TopK, dict]:
    """OOF (fold models on their own fold) and test (mean of fold models) top-K predictions;
    `keep(fold, model)` gets each fold's model as it is trained (run_ocr saves them)."""
    read_tr = np.array([has_words(t) for t in train_texts], bool) & (data.labels[sel.train_rows] >= 0)
    rows_tr = sel.train_rows[read_tr]
    train = FoldTexts(np.asarray(data.train.index.ids[rows_tr], np.int64), [t for t, ok in zip(train_texts, read_tr) if ok],
                      data.labels[rows_tr], data.fold[rows_tr])
    test = products_with_words(data.test.index.ids, sel.test_rows, test_texts)
    k = min(opts.topk, len(data.tree))
    oof_parts, test_parts, folds = cross_fit(_sorted(train), test, len(data.tree), opts.text_model, k, keep)
    oof = concat_topk([p for p in oof_parts if len(p)], k)
    test_preds = mean_of_folds(test_parts, k)
    counts = {"train_products_with_text": int(read_tr.sum()), "test_products_with_text": len(test.ids), "folds_trained": folds}
    return oof, test_preds, counts


def _sorted(t: FoldTexts) -> FoldTexts:
    order = np.argsort(t.ids, kind="stable")
    pick = lambda a: None if a is None else a[order]  # noqa: E731
    return FoldTexts(t.ids[order], [t.texts[i] for i in order], pick(t.labels), pick(t.folds))


def run_ocr(work: WorkDir, opts: OcrOptions, progress: bool = True) -> dict:
    """The whole stage; returns the summary (also written to preds/ocr/summary.json)."""
    t0 = time.perf_counter()
    cache_path = Path(opts.cache) if opts.cache else work.root / "ocr" / "cache.sqlite3"
    merged = merge_caches(cache_path, opts.merge_caches) if opts.merge_caches else 0
    data = load_fold_data(work)
    sel, sources, oofs, tests, media = select(work, data, opts)
    if opts.shard:
        keep_tr = shard_mask(data.train.index.ids[sel.train_rows], opts.shard)
        keep_te = shard_mask(data.test.index.ids[sel.test_rows], opts.shard)
        sel = Selection(sel.train_rows[keep_tr], sel.test_rows[keep_te], sel.train_mass, sel.test_mass, sel.by_label)
    train_texts, test_texts, reading = read_selected(data, sel, opts, cache_path, progress)
    if opts.shard:
        print(f"ocr shard {opts.shard}: {len(sel.train_rows)} train + {len(sel.test_rows)} test products read into {cache_path}; "
              "merge the shard caches with --merge-caches and rerun without --shard")
        return {"shard": opts.shard, "reading": reading}
    models = clear_text_models(work)
    oof, test, counts = classify(data, sel, train_texts, test_texts, opts, keep=lambda fold, model: model.save(fold_model_path(models, fold)))
    saved = write_text_models(work, counts["folds_trained"], sources, media, opts, min(opts.topk, len(data.tree)), cache_path)
    out = work.preds(SOURCE)
    save_topk(out / "oof.npz", oof)
    save_topk(out / "test.npz", test)
    summary = make_summary(work, data, sel, media, sources, oofs, tests, oof, test, reading, counts, opts)
    return write_summary(work, SOURCE, "side source", **summary, text_models=saved, merged_cache_rows=merged,
                         seconds=round(time.perf_counter() - t0, 1))


# ---------------------------------------------------------------------------------------------
# the saved text models (what ocr/predict.py loads to answer new products)

TEXT_MODELS = Path("ocr") / "text_models"  # under the work dir
MANIFEST = "predict.json"
MANIFEST_FORMAT = "cdiscount-ocr-predict/1"


def text_models_dir(work: WorkDir) -> Path:
    return work.root / TEXT_MODELS


def fold_model_path(folder: Path, fold: int) -> Path:
    return folder / f"fold{fold}.npz"


def clear_text_models(work: WorkDir) -> Path:
    """Remove the previous run's manifest first, then its fold models: an interrupted run leaves
    no manifest, so no mix of old and new folds is ever loaded."""
    folder = text_models_dir(work)
    (folder / MANIFEST).unlink(missing_ok=True)
    for old in folder.glob("fold*.npz"):
        old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the work dir when inside it (the work dir may move), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def write_text_models(work: WorkDir, folds: list[int], sources: list[str], media: np.ndarray, opts: OcrOptions, k: int,
                      cache_path: Path) -> dict:
    """predict.json beside the fold models: what predicting new products needs (the selection, the
    reading, the folds, each file's fingerprint); returns the summary's record of it (its path and
    fingerprint: a loader refuses a manifest that is not the one this summary was written with)."""
    folder = text_models_dir(work)
    manifest = {
        "format": MANIFEST_FORMAT, "run": uuid.uuid4().hex,
        "folds": [int(f) for f in folds],
        "fold_models": {str(f): {"path": fold_model_path(folder, f).name, "fingerprint": fingerprint(fold_model_path(folder, f))} for f in folds},
        "selection_sources": list(sources), "media_groups": list(opts.media_groups),
        "media_labels": np.flatnonzero(media).tolist(), "num_classes": len(media),
        "threshold": opts.threshold, "max_images": opts.max_images,
        "read": {"preprocess": list(opts.preprocess), "lang": opts.lang, "psm": opts.psm, "settings_key": opts.settings.key},
        "workers": opts.workers, "batch": opts.batch, "chunk_images": opts.chunk_images, "topk": int(k),
        "cache": _relative(cache_path, work.root), "options": asdict(opts),
    }
    write_json(folder / MANIFEST, manifest)
    return {"manifest": str(TEXT_MODELS / MANIFEST), "fingerprint": fingerprint(folder / MANIFEST), "folds": manifest["folds"]}


def make_summary(work, data, sel, media, sources, oofs, tests, oof, test, reading, counts, opts) -> dict:
    test_true = data.test_truth()
    oof_true = data.labels[data.train.index.positions_of(oof.ids)]
    train_ids = np.asarray(data.train.index.ids)
    true_media_rows = np.flatnonzero((data.fold >= 0) & (data.labels >= 0) & media[np.clip(data.labels, 0, None)])
    k = min(opts.topk, len(data.tree))
    summary = {
        "recorded": RECORDED, "options": asdict(opts), "selection_sources": sources, "media_groups_present": sorted(set(data.tree.level1_names[media])),
        "selection": selection_summary(data, sel, media, test_true),
        "reading": reading, **counts,
        "oof_products": len(oof), "test_products": len(test),
        "oof_accuracy_ocr_alone": accuracy(oof.top1, oof_true) if len(oof) else None,
        "media_accuracy_oof": media_accuracy(oofs, oof, train_ids[true_media_rows], data.labels[true_media_rows], k),
    }
    if test_true is not None:
        rows = np.flatnonzero((test_true >= 0) & media[np.clip(test_true, 0, None)])
        test_ids = np.asarray(data.test.index.ids)
        best = summary["media_accuracy_oof"].get("best_cnn")  # the source chosen on OOF, not on test
        summary["media_accuracy_test"] = media_accuracy(tests, test, test_ids[rows], test_true[rows], k, best)
        truth = test_true[data.test.index.positions_of(test.ids)]
        summary["test_accuracy_ocr_alone"] = accuracy(test.top1, truth) if len(test) else None
    return summary


def print_summary(s: dict) -> None:
    if "shard" in s:
        return
    r, sel = s["reading"], s["selection"]
    print(f"ocr: sources {s['selection_sources']}, threshold {s['options']['threshold']}")
    for split in ("train", "test"):
        x = sel[split]
        if "recall" in x:
            print(f"  {split}: {x['selected']} products selected, {x['true_media_caught']} of {x['true_media']} media products caught "
                  f"(recall {x['recall'] or 0:.3f}, precision {x['precision'] or 0:.3f})")
        else:
            print(f"  {split}: {x['selected']} products selected")
    print(f"  images: {r['image_occurrences']} in the selected products, {r['unique_images']} distinct, {r['cache_hits']} cache hits, "
          f"{r['images_read_now']} read now in {r['ocr_wall_seconds']} s ({r['images_per_second_per_core']} images/s per core, {r['workers']} workers)")
    print(f"  products with text: train {s['train_products_with_text']}, test {s['test_products_with_text']}; "
          f"OOF rows {s['oof_products']}, OCR-alone OOF accuracy {s['oof_accuracy_ocr_alone'] or float('nan'):.4f}")
    for split in ("oof", "test"):
        m = s.get(f"media_accuracy_{split}")
        if m and "best_cnn" in m:
            print(f"  media products ({split}, {m['products']}): {m['best_cnn']} alone {m['cnn_alone'][m['best_cnn']]:.4f}, "
                  f"+ OCR mean {m['best_cnn_plus_ocr_mean']:.4f}, + OCR product {m['best_cnn_plus_ocr_product']:.4f}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, __doc__, OcrOptions)
    summary = run_ocr(args.work, args.options, progress=args.progress)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    run(main)
