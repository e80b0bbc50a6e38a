"""OCR for new products, loaded once from a trained work dir (the side source's `load`, common/registry.py):

    loaded = load_ocr(work, summary)        # summary: preds/ocr/summary.json of that work dir
    top = loaded.predict(reader, inputs)    # reader: a common.bson_reader.MemoryReader of new products,
                                            # inputs: selection source name -> its TopK of them

It does what the stage does for its test products, through the stage's own functions: the products
whose mean media mass over the selection sources reaches the threshold (ocr.select.select_test),
their first `max_images` images read with the recorded settings (queue_products / ImageTexts /
product_texts of ocr.run), those with a word (products_with_words) predicted by each saved fold
model (TextClassifier.predict_topk) and averaged (mean_of_folds). Nothing is refitted, and the
trained work dir is never written: its text cache is read as a FrozenCache (sqlite immutable),
images read since are kept in memory. The fold models and tesseract workers live as long as the
loaded object (`close()` stops the workers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.bson_reader import MemoryReader
from common.errors import DataError, SkipLog
from common.fingerprint import fingerprint
from common.paths import WorkDir
from common.predictions import TopK

from .reader import FrozenCache, ImageTexts, Readers, ReadSettings, check_tesseract
from .run import (
    MANIFEST,
    MANIFEST_FORMAT,
    SOURCE,
    TEXT_MODELS,
    mean_of_folds,
    product_texts,
    products_with_words,
    queue_products,
)
from .select import select_test
from .text_model import TextClassifier

RERUN = "./run_all.sh --only ocr"


class LoadedOcr:
    """The saved fold text models and the recorded selection / reading settings of one OCR run."""

    def __init__(self, manifest: dict, models: list[TextClassifier], cache_path: Path | None, workers: int | None = None):
        self.manifest, self.models = manifest, models
        self.sources = list(manifest["selection_sources"])
        self.media = np.zeros(int(manifest["num_classes"]), bool)
        self.media[np.asarray(manifest["media_labels"], np.int64)] = True
        self.threshold, self.max_images, self.k = float(manifest["threshold"]), int(manifest["max_images"]), int(manifest["topk"])
        read = manifest["read"]
        self.settings = ReadSettings(tuple(read["preprocess"]), read["lang"], int(read["psm"]))
        self.workers = workers if workers is not None else (int(manifest["workers"]) or os.cpu_count() or 1)
        self.batch, self.chunk_images = int(manifest["batch"]), int(manifest["chunk_images"])
        self.cache = FrozenCache(cache_path, self.settings.key)
        self.readers: Readers | None = None

    def _readers(self) -> Readers:
        """A pool of tesseract workers started once (at the first product to read) and kept; one
        worker reads inline, its settings set again per call (they are a process global)."""
        if self.readers is None or self.readers.pool is None:
            self.readers = Readers(self.settings, self.workers, self.batch).__enter__()
        return self.readers

    def read(self, reader, rows: np.ndarray) -> list[str]:
        """The texts of the products at `rows` of `reader`, as read_selected reads a split's."""
        texts = ImageTexts(self.cache, self._readers(), self.chunk_images, progress=False)
        skips = SkipLog("ocr predict")
        digests = queue_products(reader, rows, texts, self.max_images, skips)
        texts.close()
        skips.report()
        return product_texts(digests, texts.texts)

    def predict(self, reader: MemoryReader, inputs: dict[str, TopK]) -> TopK:
        """Top-K of the products of `reader` the stage would read and find words in (no row for the others)."""
        missing = [s for s in self.sources if s not in inputs]
        if missing:
            raise DataError(f"ocr: the predictions of its selection sources {missing} are not given (inputs has {sorted(inputs)})")
        ids = np.asarray(reader.index.ids, np.int64)
        rows, _ = select_test([inputs[s] for s in self.sources], self.media, ids, self.threshold)
        if not len(rows) or not self.models:
            return TopK.empty(self.k)
        test = products_with_words(ids, rows, self.read(reader, rows))
        return mean_of_folds([m.predict_topk(test.ids, test.texts, self.k) for m in self.models], self.k)

    def close(self) -> None:
        if self.readers is not None:
            self.readers.__exit__(None, None, None)
            self.readers = None
        self.cache.close()

    def __enter__(self) -> "LoadedOcr":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stale(path: Path, why: str) -> DataError:
    return DataError(f"{path}: {why}: rerun {RERUN}")


def load_manifest(work: WorkDir, summary: dict) -> tuple[Path, dict]:
    """The manifest this summary was written with (its path and content), refused when missing or stale."""
    record = summary.get("text_models")
    path = work.root / (record["manifest"] if isinstance(record, dict) and "manifest" in record else TEXT_MODELS / MANIFEST)
    if not isinstance(record, dict) or not path.is_file():
        raise _stale(path, f"missing: the OCR stage of this work dir saved no text models (an older version, or an interrupted run of {work.preds(SOURCE)})")
    if fingerprint(path) != record.get("fingerprint"):
        raise _stale(path, f"not the text models {work.preds(SOURCE) / 'summary.json'} was written with (stale)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise _stale(path, f"not valid JSON ({e})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise _stale(path, f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if "options" in summary and manifest.get("options") != summary["options"]:
        raise _stale(path, "made with other options than the summary records (stale)")
    return path, manifest


def load_ocr(work: WorkDir, summary: dict, workers: int | None = None) -> LoadedOcr:
    """The OCR side source of a trained work dir, loaded once (the fold models read here, never again).
    `workers`: tesseract processes (default: the stage's setting, 0 = every core)."""
    path, manifest = load_manifest(work, summary)
    models = []
    for fold in manifest["folds"]:
        entry = manifest["fold_models"][str(fold)]
        model_path = path.parent / entry["path"]
        if not model_path.is_file():
            raise _stale(model_path, f"missing (fold {fold} of the saved OCR text models)")
        if fingerprint(model_path) != entry["fingerprint"]:
            raise _stale(model_path, f"not the fold {fold} model {path.name} lists (stale)")
        models.append(TextClassifier.load(model_path))
    check_tesseract(manifest["read"]["lang"])
    cache = Path(manifest["cache"])
    return LoadedOcr(manifest, models, cache if cache.is_absolute() else work.root / cache, workers)
