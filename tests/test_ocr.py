"""The OCR source: tesseract reads French, the cache saves calls, the text model learns, the stage runs."""
from __future__ import annotations

import json
import multiprocessing
import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

import ocr.reader as reader
from common.categories import CategoryTree
from common.images import encode_jpeg
from mini.covers import font
from common.paths import CATEGORY_NAMES_CSV, WorkDir
from common.predictions import TopK, load_topk, save_topk, topk_from_dense
from common.folds import EXCLUDED
from common.sources import write_summary
from common.workdata import load_fold_data
from ocr.reader import ImageTexts, Readers, ReadSettings, TextCache, merge_caches
from ocr.run import OcrOptions, run_ocr, shard_mask
from ocr.select import media_labels, select_products
from ocr.text_model import FoldTexts, TextClassifier, TextModelOptions, cross_fit, has_words

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")


def text_jpeg(lines: list[str], size: int = 34) -> bytes:
    """Dark text on a light cover-like band, as a JPEG (what the stage decodes)."""
    img = Image.new("RGB", (420, 60 + 50 * len(lines)), (235, 230, 220))
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(lines):
        draw.text((20, 25 + 50 * k), line, font=font(size), fill=(20, 20, 30))
    return encode_jpeg(np.asarray(img))


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


@needs_tesseract
def test_tesseract_reads_french_with_accents():
    """The stage's own settings (preprocessing, psm, fra+eng) read accented French words exactly,
    and a batch (one tesseract process) gives each image its own text, in order."""
    settings = OcrOptions().settings
    text = reader.read_image(text_jpeg(["Éducation Française", "été à la forêt"]), settings)
    assert {"éducation", "française", "été", "forêt"} <= words(text), text
    blank = encode_jpeg(np.full((60, 60, 3), 255, np.uint8))
    batch = reader.read_jpegs([text_jpeg(["Château"]), blank, b"not a jpeg", text_jpeg(["Crème brûlée"])], settings)
    assert "château" in words(batch[0]) and batch[1] == "" and batch[2] == "" and {"crème", "brûlée"} <= words(batch[3]), batch


@needs_tesseract
def test_a_pool_started_beside_running_threads_reads_as_inline():
    """Readers' pool (common.processes: forkserver, never a plain fork of a threaded process, which
    once hung the suite) started while another thread runs gives the inline texts, in order."""
    import threading

    settings = OcrOptions().settings
    items = [(bytes([k]) * 16, text_jpeg([line])) for k, line in enumerate(["Château", "Crème brûlée", "forêt", "été"])]
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    try:
        with Readers(settings, 2, batch=1) as pooled:
            assert pooled.pool is not None
            got = dict(t for batch, _ in pooled.imap(items) for t in batch)
    finally:
        stop.set()
    with Readers(settings, 1) as inline:
        want = dict(t for batch, _ in inline.imap(items) for t in batch)
    assert got == want and "château" in words(got[bytes([0]) * 16]), got


def count_calls(monkeypatch) -> list[int]:
    calls = []

    def fake(images, settings):
        calls.extend([1] * len(images))  # one per image read
        return [f"mot{int(img.mean())}" for img in images]

    monkeypatch.setattr(reader, "run_tesseract", fake)
    return calls


def test_cache_makes_a_second_read_free(tmp_path, monkeypatch):
    calls = count_calls(monkeypatch)
    a, b = encode_jpeg(np.full((40, 40, 3), 10, np.uint8)), encode_jpeg(np.full((40, 40, 3), 200, np.uint8))
    settings = ReadSettings()

    def read(images: list[bytes], key_settings=settings):
        cache = TextCache(tmp_path / "cache.sqlite3", key_settings.key)
        with Readers(key_settings, 1) as readers:
            texts = ImageTexts(cache, readers, chunk=2, progress=False)
            digests = [texts.add(j) for j in images]
            stats = texts.close()
        cache.close()
        return [texts.texts[d] for d in digests], stats

    first, stats = read([a, b, a])  # the duplicate costs nothing either
    assert len(calls) == 2 and stats.read == 2 and stats.images == 3 and first[0] == first[2] != first[1]
    again, stats = read([b, a])
    assert len(calls) == 2 and stats.cache_hits == 2 and stats.read == 0 and again == [first[1], first[0]]
    read([a], ReadSettings(psm=6))  # other settings: another text, so read again
    assert len(calls) == 3


def test_caches_merge(tmp_path):
    for name, digest in (("a", b"1" * 16), ("b", b"2" * 16)):
        cache = TextCache(tmp_path / f"{name}.sqlite3", "k")
        cache.put_many([(digest, name), (b"0" * 16, "shared")])
        cache.close()
    assert merge_caches(tmp_path / "a.sqlite3", [tmp_path / "b.sqlite3"]) == 1
    cache = TextCache(tmp_path / "a.sqlite3", "k")
    assert cache.get_many([b"1" * 16, b"2" * 16, b"0" * 16]) == {b"1" * 16: "a", b"2" * 16: "b", b"0" * 16: "shared"}
    cache.close()


def test_text_classifier_learns_a_separable_toy_set():
    vocab = {0: ["océan", "marée", "phare", "navire"], 1: ["guitare", "riff", "ampli", "orage"], 2: ["recette", "gâteau", "tarte", "soupe"]}
    rng = np.random.default_rng(0)
    filler = ["le", "la", "grand", "petit", "secret"]

    def doc(label: int) -> str:
        return " ".join(rng.permutation([*rng.choice(vocab[label], 2, replace=False), *rng.choice(filler, 2)]))

    labels = np.repeat(np.arange(3), 10)
    texts = [doc(y) for y in labels]
    held_out = ["le phare perdu", "AMPLI", "gateau petit", "la maree", "orage grand", "soupe", "zzz"]  # accents dropped, case changed
    ids = np.arange(100, 107)
    for opts in (TextModelOptions(), TextModelOptions(n_features=0), TextModelOptions(classifier="sgd"), TextModelOptions(predict_chunk=2)):
        top = TextClassifier(num_classes=5, opts=opts).fit(texts, labels).predict_topk(ids, held_out, k=5)
        assert top.ids.tolist() == ids[:6].tolist(), opts  # "zzz" shares no feature with the training texts: no row
        assert top.labels[:, 0].tolist() == [0, 1, 2, 0, 1, 2], opts
        assert np.allclose(top.probs.astype(np.float32).sum(1), 1, atol=1e-2) and (top.labels[:, 3:] == -1).all()  # only seen classes
    assert has_words("Océan") and not has_words("| . ;")


def test_cross_fit_never_learns_from_the_fold_it_predicts(monkeypatch):
    trained = []
    fit = TextClassifier.fit
    monkeypatch.setattr(TextClassifier, "fit", lambda self, texts, labels: (trained.append(set(texts)), fit(self, texts, labels))[1])
    ids = np.arange(100, 130)
    labels, folds = ids % 3, np.where(ids < 103, -1, ids % 4)
    texts = [f"p{i} mot{y} {'abc' if y else 'xyz'}" for i, y in zip(ids, labels)]
    test = FoldTexts(np.array([7, 8]), ["mot1 abc", "rien"])
    oof_parts, test_parts, used = cross_fit(FoldTexts(ids, texts, labels, folds), test, 3, OcrOptions().text_model, 3)
    assert used == [0, 1, 2, 3] and len(trained) == 4
    for fold, seen, part in zip(used, trained, oof_parts):
        own = {t for t, f in zip(texts, folds) if f == fold}
        assert not seen & own and set(texts[:3]) <= seen  # never its own fold; fold -1 always learns
        assert set(part.ids.tolist()) <= set(ids[folds == fold].tolist())
    assert all(p.ids.tolist() == [7] for p in test_parts)  # "rien" shares no feature: no row


def test_selection_threshold_picks_media_products():
    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV)
    media = media_labels(tree, ["LIBRAIRIE", "MUSIQUE", "NOT A GROUP"])
    book, book2 = np.flatnonzero(tree.level1_names == "LIBRAIRIE")[:2]
    toy = int(np.flatnonzero(tree.level1_names == "JEUX - JOUETS")[0])
    dense = np.zeros((4, len(tree)), np.float32)
    dense[0, [book, toy]] = [0.7, 0.3]  # clearly media
    dense[1, [book, book2, toy]] = [0.2, 0.15, 0.65]  # media mass 0.35: selected at 0.3
    dense[2, [book, toy]] = [0.1, 0.9]  # 0.1: not selected
    dense[3, toy] = 1.0
    ids = np.array([10, 11, 12, 13])
    a = topk_from_dense(ids, dense, 5)
    b = topk_from_dense(ids[:3], dense[[0, 0, 0]], 5)  # a second source: media mass 0.7 for 10..12, no row for 13
    train_ids = np.array([10, 11, 12, 13, 14, 15])
    labels = np.array([book, book, toy, toy, book, book])
    fold = np.array([0, 1, 0, 1, -1, EXCLUDED])  # 14: always-train, no OOF prediction, a book by its label
    sel = select_products([a], [a], media, train_ids, labels, fold, ids, threshold=0.3)
    assert sel.train_rows.tolist() == [0, 1, 4] and sel.test_rows.tolist() == [0, 1] and sel.by_label == 1
    sel2 = select_products([a, b], [a, b], media, train_ids, labels, fold, ids, threshold=0.35)
    # means over the sources that predict a product: 10 -> 0.7, 11 -> 0.525, 12 -> 0.4, 13 -> 0 (a only)
    assert np.allclose(sel2.test_mass, [0.7, 0.525, 0.4, 0.0], atol=2e-3)
    assert sel2.test_rows.tolist() == [0, 1, 2]


def test_shards_partition_the_products():
    ids = np.arange(1000, 3000, 3)
    masks = [shard_mask(ids, f"{i}/4") for i in range(4)]
    assert (np.sum(masks, axis=0) == 1).all() and min(m.sum() for m in masks) > len(ids) / 8


def fake_cnn_source(work, name: str = "dylan") -> None:
    """A CNN source predicting the true label with 0.8 (OOF: fold products; test: every product)."""
    data = load_fold_data(WorkDir(work))
    n = len(data.tree)

    def preds(ids, labels):
        dense = np.full((len(ids), n), 0.2 / (n - 1), np.float32)
        dense[np.arange(len(ids)), labels] = 0.8
        return topk_from_dense(ids, dense, 5)

    rows = np.flatnonzero(data.fold >= 0)
    save_topk(work / "preds" / name / "oof.npz", preds(data.train.index.ids[rows], data.labels[rows]))
    truth = __import__("pandas").read_csv(json.loads((work / "dataset.json").read_text())["test_labels"])
    test_ids = np.asarray(data.test.index.ids)
    test_labels = data.tree.to_index(truth.set_index("_id").loc[test_ids, "category_id"].to_numpy())
    save_topk(work / "preds" / name / "test.npz", preds(test_ids, test_labels))
    write_summary(WorkDir(work), name, "solution blend", solution=name)


@needs_tesseract
def test_stage_on_the_tiny_work_dir_reads_nothing_and_still_writes(tiny_work):
    """Solid-colour pictures carry no text: valid (empty) predictions and a clear summary."""
    fake_cnn_source(tiny_work)
    summary = run_ocr(WorkDir(tiny_work), OcrOptions(workers=1), progress=False)
    oof, test = load_topk(tiny_work / "preds" / "ocr" / "oof.npz"), load_topk(tiny_work / "preds" / "ocr" / "test.npz")
    data = load_fold_data(WorkDir(tiny_work))
    media = media_labels(data.tree, OcrOptions().media_groups)
    assert summary["selection"]["train"]["selected"] == int(((data.fold >= 0) & media[data.labels]).sum()) > 0
    assert summary["selection"]["train"]["recall"] == 1.0 and summary["selection"]["train"]["precision"] == 1.0
    assert summary["reading"]["images_read_now"] > 0 and summary["train_products_with_text"] == len(oof) == 0 == len(test)
    assert json.loads((tiny_work / "preds" / "ocr" / "summary.json").read_text())["oof_products"] == 0
    again = run_ocr(WorkDir(tiny_work), OcrOptions(workers=1), progress=False)
    assert again["reading"]["images_read_now"] == 0 and again["reading"]["cache_hits"] == summary["reading"]["unique_images"]


def test_stage_with_text_writes_honest_predictions(tiny_work, monkeypatch):
    """With a stand-in OCR whose text names the picture's colour, the text model predicts the
    read products: OOF rows only for selected train products, from models of the other folds."""
    def colour_words(images, settings):
        return [" ".join(f"c{c}x{int(v) // 64}" for c, v in enumerate(img.reshape(-1, 3).mean(0))) for img in images]

    monkeypatch.setattr(reader, "run_tesseract", colour_words)
    fake_cnn_source(tiny_work)
    dense_all = load_topk(tiny_work / "preds" / "dylan" / "oof.npz")
    # make every product look like media to the selection, so the text model sees several classes
    media_label = int(np.flatnonzero(load_fold_data(WorkDir(tiny_work)).tree.level1_names == "MUSIQUE")[0])
    for split in ("oof", "test"):
        p = load_topk(tiny_work / "preds" / "dylan" / f"{split}.npz")
        labels = p.labels.copy()
        labels[:, 1] = media_label
        probs = p.probs.copy()
        probs[:, 1] = 0.5
        labels[labels[:, 0] == media_label, 1] = (media_label + 1) % 5
        save_topk(tiny_work / "preds" / "dylan" / f"{split}.npz", TopK(p.ids, labels, probs))
    summary = run_ocr(WorkDir(tiny_work), OcrOptions(workers=1, preprocess=[], threshold=0.4), progress=False)
    oof, test = load_topk(tiny_work / "preds" / "ocr" / "oof.npz"), load_topk(tiny_work / "preds" / "ocr" / "test.npz")
    assert len(oof) == len(dense_all) and len(test) == summary["test_products"] > 0
    assert summary["folds_trained"] == [0, 1] and summary["oof_accuracy_ocr_alone"] > 0.5
    assert summary["media_accuracy_oof"]["products"] > 0


def test_shards_fill_caches_that_merge(tiny_work, monkeypatch, tmp_path):
    """Two machines read half each into their own caches; after the merge nothing is read again,
    and the predictions are exactly a single machine's."""
    import shutil

    calls = count_calls(monkeypatch)
    fake_cnn_source(tiny_work)
    work, opts = WorkDir(tiny_work), dict(workers=1, preprocess=[])
    single = tmp_path / "single"
    shutil.copytree(tiny_work, single)
    run_ocr(WorkDir(single), OcrOptions(**opts), progress=False)
    read_by_single = len(calls)
    caches = [str(tiny_work / "ocr" / f"cache_shard_{i}.sqlite3") for i in range(2)]
    for i in range(2):
        out = run_ocr(work, OcrOptions(shard=f"{i}/2", cache=caches[i], **opts), progress=False)
        assert out["shard"] == f"{i}/2" and not (tiny_work / "preds" / "ocr").exists()
    read_by_shards = len(calls) - read_by_single
    summary = run_ocr(work, OcrOptions(merge_caches=caches, **opts), progress=False)
    assert len(calls) - read_by_single == read_by_shards == read_by_single > 0 and summary["reading"]["images_read_now"] == 0
    assert summary["merged_cache_rows"] == summary["reading"]["unique_images"]
    for split in ("oof", "test"):
        a, b = load_topk(tiny_work / "preds" / "ocr" / f"{split}.npz"), load_topk(single / "preds" / "ocr" / f"{split}.npz")
        assert len(a) > 0 and np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels) and np.array_equal(a.probs, b.probs)


def test_the_read_names_the_products_whose_images_cannot_be_read(caplog):
    """A product without images and one whose second image is a cut JPEG: both read as no text
    (nothing stops), and both are counted and named by _id in the stage's report."""
    import hashlib
    from types import SimpleNamespace

    from common.errors import SkipLog
    from ocr.run import queue_products

    good = text_jpeg(["LIVRE"])
    products = {0: SimpleNamespace(product_id=7, images=[]), 1: SimpleNamespace(product_id=8, images=[good, good[: len(good) // 2]]),
                2: SimpleNamespace(product_id=9, images=[good])}
    texts = SimpleNamespace(add=lambda jpeg: hashlib.md5(jpeg).digest())
    skips = SkipLog("ocr test")
    digests = queue_products(products, np.array([0, 1, 2]), texts, 4, skips)
    assert [len(d) for d in digests] == [0, 2, 1]  # the cut image is still queued (it reads as '')
    assert skips.counts == {"no_images": 1, "unreadable_image": 1}
    assert skips.first_ids == {"no_images": [7], "unreadable_image": [8]}
    skips.report()
    assert "no_images=1 (first _ids 7), unreadable_image=1 (first _ids 8)" in caplog.text


# ---------------------------------------------------------------------------------------------
# saved text models and the loaded predictor (ocr/predict.py)


def toy_texts(n_per_class: int = 10, classes: int = 3, seed: int = 0) -> tuple[list[str], np.ndarray]:
    vocab = [["océan", "marée", "phare", "navire"], ["guitare", "riff", "ampli", "orage"], ["recette", "gâteau", "tarte", "soupe"],
             ["château", "forêt", "roi", "épée"]][:classes]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    texts = [" ".join(rng.permutation([*rng.choice(vocab[y], 2, replace=False), *rng.choice(["le", "la", "grand", "petit"], 2)])) for y in labels]
    return texts, labels


@pytest.mark.parametrize("classifier", ["sgd", "logreg"])
@pytest.mark.parametrize("n_features", [2**12, 0])
@pytest.mark.parametrize("classes", [3, 2, 1])
def test_a_saved_text_model_predicts_exactly_as_the_fitted_one(tmp_path, classifier, n_features, classes):
    """Both classifiers, hashed and exact-vocabulary features, two classes (one coefficient row)
    and one class (no model: the label with certainty): the loaded model's top-K equals the
    fitted one's bit for bit, from a file numpy reads without pickle."""
    texts, labels = toy_texts(classes=classes)
    labels = labels * 2 + 1  # class numbers that are not 0..n-1: classes_ must be restored, not assumed
    opts = TextModelOptions(classifier=classifier, n_features=n_features, predict_chunk=3)
    fitted = TextClassifier(num_classes=8, opts=opts).fit(texts, labels)
    fitted.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert ("coef" in z.files) == (classes > 1)
    loaded = TextClassifier.load(tmp_path / "m.npz")
    assert loaded.opts == opts and loaded.num_classes == 8 and loaded.only_label == fitted.only_label
    held_out = ["le phare perdu", "AMPLI", "gateau petit", "la maree", "zzz", "orage grand", "soupe", "roi épée", "château riff"]
    ids = np.arange(200, 200 + len(held_out))
    for k in (1, 3, 8):
        a, b = fitted.predict_topk(ids, held_out, k), loaded.predict_topk(ids, held_out, k)
        assert len(a) > 0 and a.k == k
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels) and np.array_equal(a.probs, b.probs), (k, a, b)
    if classes > 1:
        assert np.array_equal(fitted.clf.coef_, loaded.clf.coef_) and loaded.clf is not fitted.clf


def test_a_broken_text_model_file_is_named(tmp_path):
    from common.errors import DataError

    with pytest.raises(DataError, match="nothing.npz"):
        TextClassifier.load(tmp_path / "nothing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: not a valid OCR text model"):
        TextClassifier.load(tmp_path / "bad.npz")


def colour_words(images, settings):
    """A stand-in tesseract whose text names the picture's colour (deterministic, fast); a dark
    picture reads as no word."""
    means = [img.reshape(-1, 3).mean(0) for img in images]
    return [" ".join(f"c{c}x{int(v) // 64}" for c, v in enumerate(m)) if m.mean() > 70 else "| ." for m in means]


def media_looking_run(work, monkeypatch, **options) -> dict:
    """The stage on the tiny work dir with `colour_words` for tesseract and a CNN source that puts
    0.5 on a media label for every product (so the text model sees several classes)."""
    monkeypatch.setattr(reader, "run_tesseract", colour_words)
    fake_cnn_source(work)
    media_label = int(np.flatnonzero(load_fold_data(WorkDir(work)).tree.level1_names == "MUSIQUE")[0])
    for split in ("oof", "test"):
        p = load_topk(work / "preds" / "dylan" / f"{split}.npz")
        labels, probs = p.labels.copy(), p.probs.copy()
        labels[:, 1] = media_label
        probs[:, 1] = np.resize([0.5, 0.3, 0.5, 0.1], len(p))  # some products fall under the threshold (0.4): not read
        labels[labels[:, 0] == media_label, 1] = (media_label + 1) % 5
        save_topk(work / "preds" / "dylan" / f"{split}.npz", TopK(p.ids, labels, probs))
    return run_ocr(WorkDir(work), OcrOptions(**{"workers": 1, "preprocess": [], "threshold": 0.4, **options}), progress=False)


def work_files(root) -> dict:
    import hashlib

    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_loaded_ocr_predicts_the_test_products_as_the_stage(tiny_work, monkeypatch):
    """load_ocr + predict on a MemoryReader of the test BSON's products, with the selection
    sources' test predictions, gives exactly preds/ocr/test.npz: nothing refitted, and the trained
    work dir untouched (not a byte, not a new file) by loading and predicting."""
    from common.bson_reader import MemoryReader, iter_products
    from ocr.pipeline import load as registered_load
    from ocr.predict import LoadedOcr, load_ocr

    summary = media_looking_run(tiny_work, monkeypatch, n_features=2**12, max_images=2)
    expected = load_topk(tiny_work / "preds" / "ocr" / "test.npz")
    folder = tiny_work / "ocr" / "text_models"
    assert summary["folds_trained"] == [0, 1] and sorted(p.name for p in folder.iterdir()) == ["fold0.npz", "fold1.npz", "predict.json"]
    # some test products are not selected, some selected ones read no word: neither has a row
    assert 0 < len(expected) == summary["test_products_with_text"] < summary["selection"]["test"]["selected"] < 16
    before = work_files(tiny_work)
    monkeypatch.setattr(TextClassifier, "fit", lambda *a: pytest.fail("the loaded predictor refitted a text model"))
    recorded = json.loads((tiny_work / "preds" / "ocr" / "summary.json").read_text())
    loaded = registered_load(WorkDir(tiny_work), recorded)
    assert isinstance(loaded, LoadedOcr) and len(loaded.models) == 2
    products = list(iter_products(load_fold_data(WorkDir(tiny_work)).test.path))
    inputs = {"dylan": load_topk(tiny_work / "preds" / "dylan" / "test.npz")}
    for _ in range(2):  # twice: the same answer from the same loaded object
        got = loaded.predict(MemoryReader(products), inputs)
        assert np.array_equal(got.ids, expected.ids) and np.array_equal(got.labels, expected.labels) and np.array_equal(got.probs, expected.probs)
    # one product at a time: its row of the stage's file, or no row when the stage has none
    for product in products[:6]:
        one = loaded.predict(MemoryReader([product]), inputs)
        rows, have = expected.lookup(np.array([product.product_id]))
        assert len(one) == int(have[0]) and (not have[0] or np.array_equal(one.probs[0], expected.probs[rows[0]]))
    assert len(loaded.predict(MemoryReader([]), inputs)) == 0 and loaded.predict(MemoryReader([]), inputs).k == expected.k
    loaded.close()
    # without the run's cache every image is read again, in a pool of 2 workers kept across calls
    (tiny_work / "ocr" / "cache.sqlite3").unlink()
    before.pop("ocr/cache.sqlite3")
    # the stand-in tesseract reaches pool workers only through a plain fork (the pool itself is
    # tested with real tesseract and forkserver in test_a_pool_started_beside_running_threads_reads_as_inline)
    monkeypatch.setattr(reader, "pool_context", lambda: multiprocessing.get_context("fork"))
    with load_ocr(WorkDir(tiny_work), recorded, workers=2) as loaded:
        got = loaded.predict(MemoryReader(products), inputs)
        pool = loaded.readers.pool
        again = loaded.predict(MemoryReader(products[::-1]), inputs)
        assert pool is not None and loaded.readers.pool is pool
    for top in (got, again):
        assert np.array_equal(top.ids, expected.ids) and np.array_equal(top.labels, expected.labels) and np.array_equal(top.probs, expected.probs)
    assert work_files(tiny_work) == before


def test_the_loaded_ocr_refuses_missing_or_stale_models(tiny_work, monkeypatch):
    """A work dir without saved text models (an older version), a missing fold file, a manifest
    or fold model from another run: one-line DataErrors naming the file and the stage to rerun."""
    from common.errors import DataError
    from ocr.predict import load_ocr

    media_looking_run(tiny_work, monkeypatch)
    work = WorkDir(tiny_work)
    summary = json.loads((tiny_work / "preds" / "ocr" / "summary.json").read_text())
    folder = tiny_work / "ocr" / "text_models"
    load_ocr(work, summary).close()

    def refused(summary: dict, name: str) -> str:
        with pytest.raises(DataError) as e:
            load_ocr(work, summary)
        message = str(e.value)
        assert name in message and "./run_all.sh --only ocr" in message and "\n" not in message, message
        return message

    older = {k: v for k, v in summary.items() if k != "text_models"}  # a summary of a version that saved none
    assert "missing" in refused(older, str(folder / "predict.json"))
    fold1 = (folder / "fold1.npz").read_bytes()
    (folder / "fold1.npz").unlink()
    assert "missing" in refused(summary, str(folder / "fold1.npz"))
    (folder / "fold1.npz").write_bytes(fold1[:-1] + bytes([fold1[-1] ^ 1]))
    assert "stale" in refused(summary, str(folder / "fold1.npz"))
    (folder / "fold1.npz").write_bytes(fold1)
    load_ocr(work, summary).close()
    manifest = folder / "predict.json"
    manifest.write_text(manifest.read_text().replace('"threshold": 0.4', '"threshold": 0.5'))
    assert "stale" in refused(summary, str(manifest))
    manifest.unlink()
    assert "missing" in refused(summary, str(manifest))


def test_a_rerun_of_the_stage_replaces_every_saved_model(tiny_work, monkeypatch):
    """A second run removes the first run's manifest and folds before saving its own: what it
    leaves is only its own set, and the first run's summary no longer loads it."""
    from common.errors import DataError
    from ocr.predict import load_ocr

    first = media_looking_run(tiny_work, monkeypatch)
    folder = tiny_work / "ocr" / "text_models"
    (folder / "fold7.npz").write_bytes(b"left over")
    second = run_ocr(WorkDir(tiny_work), OcrOptions(workers=1, preprocess=[], threshold=0.4, classifier="logreg"), progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["fold0.npz", "fold1.npz", "predict.json"]
    assert first["text_models"]["fingerprint"] != second["text_models"]["fingerprint"]
    with pytest.raises(DataError, match="stale"):
        load_ocr(WorkDir(tiny_work), first)
    loaded = load_ocr(WorkDir(tiny_work), second)
    assert [type(m.clf).__name__ for m in loaded.models] == ["LogisticRegression"] * 2
    loaded.close()
