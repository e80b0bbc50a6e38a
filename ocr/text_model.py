"""The text classifier: TF-IDF of words and character n-grams, then a linear model (scikit-learn).

Why both: words carry the title's meaning when tesseract reads them whole; char_wb n-grams
(inside word boundaries) still match when it drops an accent or a letter ("pélerin" for
"pèlerin", "sauvace" for "sauvage"). Accents are stripped before both, so "été" and "ete" agree.

Honesty: fold k's model learns only from read products outside fold k (fold -1 ones always
learn) and predicts the read products of fold k: those are the OOF rows. Test rows are the
mean of the fold models' probabilities (as the CNN recipes do), so every test prediction comes
from models that together saw all the training text.

Saving (`TextClassifier.save` / `.load`): one npz without pickle holding what predicting needs:
the options (JSON), the seen columns, the TF-IDF state (hashed: each analyzer's idf_; exact
vocabulary: each analyzer's terms and idf_) and the linear model's coef_, intercept_, classes_.
Loading rebuilds the same scikit-learn objects with `make_model` and sets those fitted
attributes, so a loaded model predicts through the very `predict_topk` a fitted one does.
"""
from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import FeatureUnion, Pipeline

from common.atomic import atomic_path
from common.checks import at_least, positive
from common.errors import DataError, log
from common.predictions import TopK, concat_topk, topk_from_dense

WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class TextModelOptions:
    classifier: str = "sgd"  # a key of CLASSIFIERS
    C: Annotated[float, positive()] = 10.0  # inverse regularisation (logreg); alpha = 1 / (C * n) for sgd
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: Annotated[int, at_least(1)] = 1  # exact vocabulary only (n_features 0)
    max_iter: Annotated[int, at_least(1)] = 1000
    n_features: Annotated[int, at_least(0)] = 2**18  # hashed features per analyzer (word, char); 0 = the exact vocabulary (grows with the corpus)
    predict_chunk: Annotated[int, at_least(1)] = 8192  # texts predicted at once (probabilities over the seen classes, then top-K)


CLASSIFIERS: dict[str, Callable[[TextModelOptions, int], object]] = {
    # log-loss SGD, one-vs-rest over every core: a few passes over the texts per class; memory =
    # the coefficients (classes x seen columns). The default: on the mini covers it scores as the
    # multinomial model (0.8069 OOF either way with hashed features) in a seventh of the time.
    "sgd": lambda o, n: SGDClassifier(loss="log_loss", alpha=1.0 / (o.C * max(n, 1)), max_iter=o.max_iter, tol=1e-4, random_state=0,
                                      n_jobs=-1),
    # multinomial logistic regression (L-BFGS): its history holds ~20 copies of the coefficients,
    # which at full scale (~500 classes x 500k columns) is far past 32 GB: for small data only
    "logreg": lambda o, n: LogisticRegression(C=o.C, max_iter=o.max_iter),
}


def has_words(text: str) -> bool:
    """A product counts as read when tesseract returned at least one 2+ letter token."""
    return WORD.search(text) is not None


def tfidf(analyzer: str, ngrams: tuple[int, int], opts: TextModelOptions) -> Pipeline | TfidfVectorizer:
    """TF-IDF of one analyzer. Hashed (the default): a fixed number of columns and no vocabulary
    dict, whatever the corpus (char 2-5 grams of a million titles are millions of strings);
    a collision only merges two rare n-grams' weights. Exact vocabulary with n_features 0."""
    common = dict(analyzer=analyzer, ngram_range=tuple(ngrams), strip_accents="unicode", lowercase=True)
    if not opts.n_features:
        return TfidfVectorizer(**common, sublinear_tf=True, min_df=opts.min_df)
    return Pipeline([("hash", HashingVectorizer(**common, n_features=opts.n_features, alternate_sign=False, norm=None)),
                     ("idf", TfidfTransformer(sublinear_tf=True))])


def make_model(opts: TextModelOptions, n_docs: int) -> tuple[FeatureUnion, object]:
    """(the features, the classifier)."""
    if opts.classifier not in CLASSIFIERS:
        raise ValueError(f"unknown text classifier {opts.classifier!r}; choose from {sorted(CLASSIFIERS)}")
    features = FeatureUnion([("word", tfidf("word", opts.word_ngrams, opts)), ("char", tfidf("char_wb", opts.char_ngrams, opts))])
    return features, CLASSIFIERS[opts.classifier](opts, n_docs)


MODEL_FORMAT = "cdiscount-ocr-text-model/1"


def options_from_json(d: dict) -> TextModelOptions:
    """TextModelOptions from its asdict() as JSON wrote it (lists back to tuples)."""
    return TextModelOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _pack_strings(terms: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 UTF-8 bytes of all terms, int64 end offset of each): any string, no pickle."""
    encoded = [t.encode("utf-8") for t in terms]
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), np.cumsum([len(e) for e in encoded], dtype=np.int64)


def _unpack_strings(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    raw, starts = blob.tobytes(), np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [raw[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())]


class TextClassifier:
    """fit(texts, labels) / predict_topk(ids, texts, k): top-K over the classes seen in training,
    chunk by chunk (never a dense N x 5270 array: 21 GB for a million texts); save(path) /
    TextClassifier.load(path): the fitted state as arrays + JSON in one npz (no pickle)."""

    def __init__(self, num_classes: int, opts: TextModelOptions = TextModelOptions()):
        self.num_classes, self.opts = num_classes, opts
        self.features: FeatureUnion | None = None
        self.clf = None
        self.seen: np.ndarray | None = None  # the feature columns some training text has (the classifier's inputs)
        self.only_label: int | None = None  # a training set of one class: predict it with certainty
        self.n_docs = 0  # training texts (make_model's argument: sgd's alpha)

    def fit(self, texts: list[str], labels: np.ndarray) -> "TextClassifier":
        labels = np.asarray(labels, np.int64)
        classes = np.unique(labels)
        if len(classes) == 0:
            raise ValueError("no training text")
        if len(classes) == 1:
            self.only_label = int(classes[0])
            return self
        self.n_docs = len(texts)
        self.features, self.clf = make_model(self.opts, len(texts))
        X = self.features.fit_transform(texts).tocsc()
        self.seen = np.flatnonzero(X.getnnz(axis=0) > 0)  # hashed columns no text has would only widen the coefficients
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(X[:, self.seen].tocsr(), labels)
        return self

    # -- saving ---------------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """What predicting needs, as arrays (the JSON of the rest under "meta")."""
        meta = {"format": MODEL_FORMAT, "num_classes": int(self.num_classes), "options": asdict(self.opts), "only_label": self.only_label,
                "n_docs": int(self.n_docs), "classifier": type(self.clf).__name__ if self.clf is not None else None,
                "sklearn": sklearn.__version__}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()}
        if self.only_label is not None:
            return arrays
        if self.clf is None:
            raise ValueError("the text classifier is not fitted: nothing to save")
        arrays["seen"] = np.asarray(self.seen, np.int64)
        for name, part in self.features.transformer_list:
            if self.opts.n_features:
                arrays[f"{name}.idf"] = part.named_steps["idf"].idf_
            else:
                vocab = part.vocabulary_
                terms = sorted(vocab, key=vocab.__getitem__)
                arrays[f"{name}.vocab"], arrays[f"{name}.vocab_ends"] = _pack_strings(terms)
                arrays[f"{name}.idf"] = part.idf_
        arrays.update(coef=self.clf.coef_, intercept=np.asarray(self.clf.intercept_), classes=np.asarray(self.clf.classes_))
        return arrays

    def save(self, path: str | os.PathLike) -> None:
        """One npz (written atomically, no pickle)."""
        arrays = self.state()
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], where: str = "<state>") -> "TextClassifier":
        meta = json.loads(arrays["meta"].tobytes().decode())
        if meta.get("format") != MODEL_FORMAT:
            raise DataError(f"{where}: not an OCR text model of this version (format {meta.get('format')!r}, expected {MODEL_FORMAT!r})")
        model = cls(int(meta["num_classes"]), options_from_json(meta["options"]))
        model.n_docs = int(meta["n_docs"])
        if meta["only_label"] is not None:
            model.only_label = int(meta["only_label"])
            return model
        model.features, model.clf = make_model(model.opts, model.n_docs)  # the same objects fit() makes, given their fitted state
        model.seen = arrays["seen"]
        for name, part in model.features.transformer_list:
            if model.opts.n_features:
                idf = part.named_steps["idf"]
                idf.idf_, idf.n_features_in_ = arrays[f"{name}.idf"], model.opts.n_features
            else:
                terms = _unpack_strings(arrays[f"{name}.vocab"], arrays[f"{name}.vocab_ends"])
                part.vocabulary_ = {t: i for i, t in enumerate(terms)}
                part.idf_ = arrays[f"{name}.idf"]
        clf = model.clf
        clf.coef_, clf.intercept_, clf.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
        clf.n_features_in_ = clf.coef_.shape[1]
        return model

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextClassifier":
        """A model `save` wrote; a DataError naming the file when it is missing or not one."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such OCR text model")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
            return cls.from_state(arrays, str(path))
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: not a valid OCR text model ({type(e).__name__}: {e})") from None

    # -- predicting -------------------------------------------------------------------------------

    def predict_topk(self, ids: np.ndarray, texts: list[str], k: int) -> TopK:
        """Rows only for texts that share a feature with the training texts (the others would get
        the class prior, which is no OCR evidence)."""
        if self.only_label is not None:
            labels = np.full((len(ids), k), -1, np.int16)
            labels[:, 0] = self.only_label
            probs = np.zeros((len(ids), k), np.float16)
            probs[:, 0] = 1.0
            return TopK(np.asarray(ids, np.int64), labels, probs)
        parts = [self._predict_chunk(ids[i : i + self.opts.predict_chunk], texts[i : i + self.opts.predict_chunk], k)
                 for i in range(0, len(texts), self.opts.predict_chunk)]
        return concat_topk(parts, k)

    def _predict_chunk(self, ids: np.ndarray, texts: list[str], k: int) -> TopK:
        X = self.features.transform(texts).tocsc()[:, self.seen].tocsr()
        known = X.getnnz(axis=1) > 0
        if not known.any():
            return TopK.empty(k)
        clf = self.clf
        top = topk_from_dense(ids[known], clf.predict_proba(X[known]).astype(np.float32), min(k, len(clf.classes_)))
        labels = np.full((len(top), k), -1, np.int16)
        probs = np.zeros((len(top), k), np.float16)
        labels[:, : top.k] = np.where(top.labels >= 0, clf.classes_[np.maximum(top.labels, 0)], -1)
        probs[:, : top.k] = top.probs
        return TopK(top.ids, labels, probs)


@dataclass
class FoldTexts:
    """The read products of one split: _ids, texts, and (train) labels and folds."""

    ids: np.ndarray
    texts: list[str]
    labels: np.ndarray | None = None
    folds: np.ndarray | None = None


def cross_fit(train: FoldTexts, test: FoldTexts, num_classes: int, opts: TextModelOptions, k: int,
              keep: Callable[[int, TextClassifier], None] | None = None) -> tuple[list[TopK], list[TopK], list[int]]:
    """Per fold: (OOF part, test part); folds without two training texts are skipped (logged).
    `keep(fold, model)` gets each trained fold model as soon as it is fitted (the stage saves it)."""
    oof_parts, test_parts, used = [], [], []
    for fold in sorted(int(f) for f in np.unique(train.folds) if f >= 0):
        learn, score = np.flatnonzero(train.folds != fold), np.flatnonzero(train.folds == fold)
        if len(learn) < 2:
            log.warning("OCR text model fold %d: %d training texts, skipped", fold, len(learn))
            continue
        model = TextClassifier(num_classes, opts).fit([train.texts[i] for i in learn], train.labels[learn])
        oof_parts.append(model.predict_topk(train.ids[score], [train.texts[i] for i in score], k))
        test_parts.append(model.predict_topk(test.ids, test.texts, k))
        used.append(fold)
        if keep is not None:
            keep(fold, model)
    return oof_parts, test_parts, used
