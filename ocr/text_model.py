"""The text classifier: TF-IDF of words and character n-grams, then a linear model (scikit-learn).

Why both: words carry the title's meaning when tesseract reads them whole; char_wb n-grams
(inside word boundaries) still match when it drops an accent or a letter ("pélerin" for
"pèlerin", "sauvace" for "sauvage"). Accents are stripped before both, so "été" and "ete" agree.

Honesty: fold k's model learns only from read products outside fold k (fold -1 ones always
learn) and predicts the read products of fold k: those are the OOF rows. Test rows are the
mean of the fold models' probabilities (as the CNN recipes do), so every test prediction comes
from models that together saw all the training text.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import FeatureUnion, Pipeline

from common.errors import log
from common.predictions import TopK, topk_from_dense

WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class TextModelOptions:
    classifier: str = "logreg"  # a key of CLASSIFIERS
    C: float = 10.0  # inverse regularisation (logreg); alpha = 1 / (C * n) for sgd
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: int = 1
    max_iter: int = 1000


CLASSIFIERS: dict[str, Callable[[TextModelOptions, int], object]] = {
    # multinomial logistic regression: calibrated probabilities out of the box
    "logreg": lambda o, n: LogisticRegression(C=o.C, max_iter=o.max_iter),
    # log-loss SGD (one-vs-rest): the option for millions of read products and thousands of classes
    "sgd": lambda o, n: SGDClassifier(loss="log_loss", alpha=1.0 / (o.C * max(n, 1)), max_iter=o.max_iter, tol=1e-4, random_state=0),
}


def has_words(text: str) -> bool:
    """A product counts as read when tesseract returned at least one 2+ letter token."""
    return WORD.search(text) is not None


def make_model(opts: TextModelOptions, n_docs: int) -> Pipeline:
    if opts.classifier not in CLASSIFIERS:
        raise ValueError(f"unknown text classifier {opts.classifier!r}; choose from {sorted(CLASSIFIERS)}")
    features = FeatureUnion([
        ("word", TfidfVectorizer(analyzer="word", ngram_range=tuple(opts.word_ngrams), strip_accents="unicode",
                                 lowercase=True, sublinear_tf=True, min_df=opts.min_df)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(opts.char_ngrams), strip_accents="unicode",
                                 lowercase=True, sublinear_tf=True, min_df=opts.min_df)),
    ])
    return Pipeline([("tfidf", features), ("clf", CLASSIFIERS[opts.classifier](opts, n_docs))])


class TextClassifier:
    """fit(texts, labels) / predict(texts) -> float32[N, num_classes] (0 for labels never seen)."""

    def __init__(self, num_classes: int, opts: TextModelOptions = TextModelOptions()):
        self.num_classes, self.opts = num_classes, opts
        self.model: Pipeline | None = None
        self.only_label: int | None = None  # a training set of one class: predict it with certainty

    def fit(self, texts: list[str], labels: np.ndarray) -> "TextClassifier":
        labels = np.asarray(labels, np.int64)
        classes = np.unique(labels)
        if len(classes) == 0:
            raise ValueError("no training text")
        if len(classes) == 1:
            self.only_label = int(classes[0])
            return self
        self.model = make_model(self.opts, len(texts))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(texts, labels)
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.num_classes), np.float32)
        if not texts:
            return out
        if self.only_label is not None:
            out[:, self.only_label] = 1.0
            return out
        out[:, self.model.classes_] = self.model.predict_proba(texts)
        return out

    def known(self, texts: list[str]) -> np.ndarray:
        """bool[N]: texts sharing at least one feature with the training vocabulary (the others
        would only get the class prior, which is no OCR evidence, so they get no row)."""
        if self.model is None:
            return np.ones(len(texts), bool)
        return self.model.named_steps["tfidf"].transform(texts).getnnz(axis=1) > 0


@dataclass
class FoldTexts:
    """The read products of one split: _ids, texts, and (train) labels and folds."""

    ids: np.ndarray
    texts: list[str]
    labels: np.ndarray | None = None
    folds: np.ndarray | None = None


def _predict_rows(model: TextClassifier, ids: np.ndarray, texts: list[str], k: int) -> TopK:
    keep = model.known(texts)
    probs = model.predict([t for t, ok in zip(texts, keep) if ok])
    return topk_from_dense(ids[keep], probs, k) if keep.any() else TopK.empty(k)


def cross_fit(train: FoldTexts, test: FoldTexts, num_classes: int, opts: TextModelOptions, k: int) -> tuple[list[TopK], list[TopK], list[int]]:
    """Per fold: (OOF part, test part); folds without two training texts are skipped (logged)."""
    oof_parts, test_parts, used = [], [], []
    for fold in sorted(int(f) for f in np.unique(train.folds) if f >= 0):
        learn, score = np.flatnonzero(train.folds != fold), np.flatnonzero(train.folds == fold)
        if len(learn) < 2:
            log.warning("OCR text model fold %d: %d training texts, skipped", fold, len(learn))
            continue
        model = TextClassifier(num_classes, opts).fit([train.texts[i] for i in learn], train.labels[learn])
        oof_parts.append(_predict_rows(model, train.ids[score], [train.texts[i] for i in score], k))
        test_parts.append(_predict_rows(model, test.ids, test.texts, k))
        used.append(fold)
    return oof_parts, test_parts, used
