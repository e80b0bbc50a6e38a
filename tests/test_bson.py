"""The BSON data layer on the official sample and on broken files."""
from __future__ import annotations

import numpy as np
import pytest

from common.bson_format import encode_product, iter_raw_documents, parse_header
from common.bson_index import build_index, get_index, index_is_current, load_index, save_index
from common.bson_reader import BsonReader, iter_products
from common.paths import TRAIN_EXAMPLE_BSON
from common.errors import BsonDocumentError, DataError, NotBsonError, SkipLog
from tests.conftest import solid_jpeg


def test_index_of_official_sample(sample_bson):
    index = build_index(sample_bson, progress=False)
    assert len(index) == 82 and index.n_images == 110
    assert np.bincount(index.n_imgs, minlength=5)[1:].tolist() == [67, 7, 3, 5]
    assert index.ids[0] == 0 and index.has_labels
    assert len(np.unique(index.category_ids)) == 36
    # offsets tile the file exactly: every byte belongs to one document
    assert index.offsets[0] == 0
    assert (index.offsets[1:] == index.offsets[:-1] + index.lengths[:-1]).all()
    assert index.offsets[-1] + index.lengths[-1] == sample_bson.stat().st_size
    assert index.meta["skipped"]["counts"] == {}


def test_index_save_reload_and_staleness(sample_bson, tmp_path):
    prefix = tmp_path / "index" / "train"
    index = get_index(sample_bson, prefix, progress=False)
    assert index_is_current(prefix, sample_bson)
    again = load_index(prefix)
    assert isinstance(again.rows, np.memmap)  # memory-mapped: reload costs nothing
    assert (again.rows == index.rows).all()
    copy = tmp_path / "copy.bson"
    copy.write_bytes(sample_bson.read_bytes()[: index.offsets[10]])
    assert not index_is_current(prefix, copy)


def test_a_file_rewritten_in_place_with_its_mtime_kept_is_not_current(sample_bson, tmp_path):
    """Same size, same mtime, other category ids: size and mtime alone called the old index current."""
    import os

    path = tmp_path / "train.bson"
    path.write_bytes(sample_bson.read_bytes())
    prefix = tmp_path / "index" / "train"
    old = get_index(path, prefix, progress=False)
    st = path.stat()
    data = bytearray(path.read_bytes())
    end = int(old.offsets[5] + old.lengths[5])
    other = int(old.category_ids[2])
    assert other != old.category_ids[5]
    data[end - 5 : end - 1] = other.to_bytes(4, "little")  # product 5's category_id, same length
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert not index_is_current(prefix, path)
    assert get_index(path, prefix, progress=False).category_ids[5] == other


def test_half_written_index_is_not_valid(sample_bson, tmp_path):
    prefix = tmp_path / "train"
    save_index(build_index(sample_bson, progress=False), prefix)
    npy = prefix.with_suffix(".npy")
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    with pytest.raises(DataError, match=r"train\.npy"):
        load_index(prefix)


def test_reader_matches_stream(sample_bson):
    index = build_index(sample_bson, progress=False)
    reader = BsonReader(sample_bson, index)
    streamed = list(iter_products(sample_bson))
    for row in [0, 5, 40, 81, 3]:
        a, b = reader[row], streamed[row]
        assert (a.product_id, a.category_id, a.images) == (b.product_id, b.category_id, b.images)
        assert len(a.images) == index.n_imgs[row]
    assert all(img[:2] == b"\xff\xd8" for p in streamed for img in p.images)


def test_reader_survives_pickle_and_fork(sample_bson):
    import multiprocessing as mp
    import pickle

    index = build_index(sample_bson, progress=False)
    reader = BsonReader(sample_bson, index)
    reader[0]  # opens the descriptor in this process
    clone = pickle.loads(pickle.dumps(reader))
    assert clone[7].images == reader[7].images
    with mp.get_context("fork").Pool(2) as pool:
        ids = pool.map(_read_id, [(reader, r) for r in range(0, 82, 9)])
    assert ids == index.ids[0:82:9].tolist()


def _read_id(args):
    reader, row = args
    return reader[row].product_id


def test_writer_rewrites_official_sample_byte_for_byte(sample_bson, tmp_path):
    from common.bson_format import BsonWriter

    out = tmp_path / "rewrite.bson"
    with BsonWriter(out) as w:
        for p in iter_products(sample_bson):
            w.write(p.product_id, p.images, p.category_id)
    assert out.read_bytes() == sample_bson.read_bytes()


def test_writer_is_atomic_on_error(tmp_path):
    from common.bson_format import BsonWriter

    out = tmp_path / "partial.bson"
    with pytest.raises(RuntimeError):
        with BsonWriter(out) as w:
            w.write(1, [solid_jpeg(1)], 10)
            raise RuntimeError("crash while writing")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_test_file_has_no_labels(write_bson):
    path = write_bson("test.bson", [(3, [solid_jpeg(3)], None), (8, [solid_jpeg(8), solid_jpeg(9)], None)])
    index = build_index(path, progress=False)
    assert not index.has_labels and index.category_ids.tolist() == [-1, -1]
    assert [p.category_id for p in iter_products(path)] == [None, None]


def test_truncated_tail_is_skipped_and_reported(sample_bson, tmp_path):
    data = sample_bson.read_bytes()
    full = build_index(sample_bson, progress=False)
    cut = tmp_path / "truncated.bson"
    cut.write_bytes(data[: int(full.offsets[-1]) + 100])  # last document cut after 100 bytes
    index = build_index(cut, progress=False)
    assert len(index) == 81 and (index.rows == full.rows[:81]).all()
    assert index.meta["skipped"]["counts"] == {"truncated_tail": 1}
    message = index.meta["skipped"]["messages"][0]
    assert str(cut) in message and str(int(full.offsets[-1])) in message
    skips = SkipLog(str(cut))
    assert len(list(iter_products(cut, skips))) == 81 and skips.counts["truncated_tail"] == 1


def test_stray_bytes_after_last_document(sample_bson, tmp_path):
    path = tmp_path / "stray.bson"
    path.write_bytes(sample_bson.read_bytes() + b"\x01\x02")
    index = build_index(path, progress=False)
    assert len(index) == 82 and index.meta["skipped"]["counts"] == {"truncated_tail": 1}


@pytest.mark.parametrize("content", [b"this is not BSON at all, just text\n" * 50, b"\xff\xd8\xff\xe0" + b"\x00" * 100])
def test_not_bson_raises_naming_the_file(tmp_path, content):
    path = tmp_path / "notes.bson"
    path.write_bytes(content)
    with pytest.raises(NotBsonError, match="notes.bson"):
        build_index(path, progress=False)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.bson"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty.bson.*empty"):
        build_index(path, progress=False)


def test_corrupt_length_mid_file_resynchronises(sample_bson, tmp_path):
    data = bytearray(sample_bson.read_bytes())
    full = build_index(sample_bson, progress=False)
    bad = int(full.offsets[30])
    data[bad : bad + 4] = (10**9).to_bytes(4, "little")  # garbage length prefix of product 30
    path = tmp_path / "corrupt.bson"
    path.write_bytes(bytes(data))
    index = build_index(path, progress=False)
    assert len(index) == 81  # only product 30 is lost
    assert index.ids.tolist() == np.delete(full.ids, 30).tolist()
    assert index.meta["skipped"]["counts"] == {"corrupt_bytes": 1}
    assert f"offset {bad}" in index.meta["skipped"]["messages"][0]


def _corrupt_prefix(data: bytes, offset: int, value: int, path):
    out = bytearray(data)
    out[offset : offset + 4] = int(value).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(out))
    return build_index(path, progress=False)


def test_an_in_range_length_ending_on_a_nul_byte_is_not_trusted(sample_bson, tmp_path):
    """The issue's case: product 30's prefix rewritten to jump ~200 KB onto a 0x00 byte used to
    swallow the 27 documents inside it (55 of 82 kept); only product 30 may be lost."""
    data, full = sample_bson.read_bytes(), build_index(sample_bson, progress=False)
    bad = int(full.offsets[30])
    target = bad + 200_000
    n = data.index(b"\x00", target) + 1 - bad  # the claimed document ends on a NUL, like a real one
    index = _corrupt_prefix(data, bad, n, tmp_path / "corrupt.bson")
    assert index.ids.tolist() == np.delete(full.ids, 30).tolist()
    assert index.meta["skipped"]["counts"] == {"corrupt_bytes": 1}


def test_random_in_range_prefixes_never_lose_an_untouched_document(sample_bson, tmp_path):
    """Property: a corrupted prefix at a random document with a random in-range value (half of
    them chosen to end on a 0x00 byte) loses at most that document."""
    data, full = sample_bson.read_bytes(), build_index(sample_bson, progress=False)
    rng = np.random.default_rng(0)
    nuls = np.flatnonzero(np.frombuffer(data, np.uint8) == 0)
    for trial in range(40):
        k = int(rng.integers(len(full)))
        bad = int(full.offsets[k])
        if trial % 2:
            after = nuls[nuls > bad + 4]
            n = int(rng.choice(after[: 5000])) + 1 - bad
        else:
            n = int(rng.integers(5, len(data) - bad + 1))
        index = _corrupt_prefix(data, bad, n, tmp_path / f"c{trial}.bson")
        if n == int(full.lengths[k]):
            continue  # the true length: nothing was corrupted
        assert set(np.delete(full.ids, k).tolist()) <= set(index.ids.tolist()), (trial, k, n)


def test_document_without_imgs_is_kept_and_reported(write_bson, tmp_path):
    import bson

    path = write_bson("noimgs.bson", [(1, [solid_jpeg(1)], 1000010653)])
    with open(path, "ab") as f:
        f.write(bson.encode({"_id": 2, "category_id": 1000010653}))
    index = build_index(path, progress=False)
    assert index.ids.tolist() == [1, 2] and index.n_imgs.tolist() == [1, 0]
    assert index.meta["skipped"]["counts"] == {"no_images": 1}
    assert "_id=2" in index.meta["skipped"]["messages"][0]
    assert BsonReader(path, index)[1].images == []


def test_malformed_document_is_skipped_with_its_offset(write_bson):
    import bson

    path = write_bson("bad.bson", [(1, [solid_jpeg(1)], 1000010653)])
    good_size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(bson.encode({"_id": 2, "imgs": "not an array", "category_id": 5}))
        f.write(encode_product(3, [solid_jpeg(3)], 1000010653))
    index = build_index(path, progress=False)
    assert index.ids.tolist() == [1, 3]
    assert index.meta["skipped"]["counts"] == {"malformed_document": 1}
    assert f"offset {good_size}" in index.meta["skipped"]["messages"][0]


def test_parse_header_matches_full_decode(sample_products):
    for p in sample_products[:20]:
        raw = encode_product(p.product_id, p.images, p.category_id)
        head = parse_header(raw)
        assert (head.product_id, head.n_imgs, head.category_id) == (p.product_id, len(p.images), p.category_id)
    with pytest.raises(BsonDocumentError, match="offset 123"):
        parse_header(b"\x0c\x00\x00\x00\x10_id\x00\x01\x00", "x.bson", 123)


def test_int64_ids_are_read(tmp_path):
    import bson
    from bson.int64 import Int64

    path = tmp_path / "int64.bson"
    path.write_bytes(bson.encode({"_id": Int64(5), "imgs": [{"picture": solid_jpeg(5)}], "category_id": Int64(1000010653)}))
    index = build_index(path, progress=False)
    assert index.ids.tolist() == [5] and index.category_ids.tolist() == [1000010653]


def test_duplicate_ids_are_reported(write_bson):
    path = write_bson("dup.bson", [(1, [solid_jpeg(1)], 1000010653), (1, [solid_jpeg(2)], 1000010653)])
    index = build_index(path, progress=False)
    assert len(index) == 2 and index.meta["skipped"]["counts"] == {"duplicate_ids": 1}


def test_raw_scan_small_chunks_equals_large(sample_bson):
    small = [(o, len(d)) for o, d in iter_raw_documents(sample_bson, chunk_size=1000)]
    large = [(o, len(d)) for o, d in iter_raw_documents(sample_bson)]
    assert small == large and len(small) == 82


def test_fast_header_parse_agrees_with_general_parser(tmp_path):
    """Odd layouts must either parse identically in numpy or be handed to the general parser."""
    import bson
    from bson.int64 import Int64

    from common.bson_format import iter_document_batches, parse_headers_fast

    pic = {"picture": solid_jpeg(1, size=8)}
    docs = [
        encode_product(1, [solid_jpeg(1, size=8)], 1000010653),
        encode_product(2, [solid_jpeg(2, size=8)] * 4, None),  # test layout
        encode_product(3, [], 1000010653),  # empty imgs array
        encode_product(4, [solid_jpeg(4, size=8)] * 12, 1000010653),  # two-character array keys
        bson.encode({"_id": Int64(5), "imgs": [pic], "category_id": 1000010653}),  # int64 _id
        bson.encode({"_id": 6, "imgs": [pic], "category_id": Int64(1000010653)}),  # int64 category
        bson.encode({"_id": 7, "imgs": [pic], "category_id": 1000010653, "extra": "x"}),  # extra field
        bson.encode({"category_id": 1000010653, "_id": 8, "imgs": [pic]}),  # other field order
        bson.encode({"_id": 9, "category_id": 1000010653}),  # no imgs
    ]
    path = tmp_path / "odd.bson"
    path.write_bytes(b"".join(docs))
    (batch,) = list(iter_document_batches(path))
    ids, n_imgs, categories, empty, ok = parse_headers_fast(batch)
    for i, raw in enumerate(docs):
        head = parse_header(raw)
        if ok[i]:
            assert (ids[i], n_imgs[i], categories[i]) == (head.product_id, head.n_imgs, head.category_id), i
    assert ok.tolist()[:3] == [True, True, True] and not ok[3]
    index = build_index(path, progress=False)
    assert index.ids.tolist() == list(range(1, 10))
    assert index.n_imgs.tolist() == [1, 4, 0, 12, 1, 1, 1, 1, 0]
    assert index.category_ids.tolist() == [1000010653, -1, 1000010653, 1000010653, 1000010653, 1000010653, 1000010653, 1000010653, 1000010653]


def _raw_bson(path, docs: list[dict]):
    import bson

    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    return path


def test_image_entries_without_bytes_are_counted_by_the_index_and_read_as_unusable(tmp_path):
    """An `imgs` entry without picture bytes passed the index and aborted inference hours later
    (the reader raised); the index now counts it and the reader hands an unusable (empty) image."""
    from common.bson_reader import BsonReader

    jpeg = solid_jpeg(3)
    path = _raw_bson(tmp_path / "t.bson", [{"_id": 1, "imgs": [{"picture": jpeg}, {}], "category_id": 5},
                                           {"_id": 2, "imgs": [{"picture": b""}], "category_id": 5},
                                           {"_id": 3, "imgs": [{"picture": jpeg}], "category_id": 5}])
    index = build_index(path, progress=False)
    assert index.n_imgs.tolist() == [2, 1, 1]
    assert index.meta["skipped"]["counts"] == {"empty_image": 2}
    assert "_id=1" in index.meta["skipped"]["messages"][0]
    reader = BsonReader(path, index)
    assert [len(im) for im in reader[0].images] == [len(jpeg), 0] and reader[1].images == [b""]


def test_more_than_127_images_do_not_wrap(write_bson):
    path = write_bson("many.bson", [(1, [solid_jpeg(1)] * 200, 5)])
    assert build_index(path, progress=False).n_imgs.tolist() == [200]


@pytest.mark.parametrize("bad_id", ["abc", "objectid"])
def test_stats_and_index_skip_a_non_integer_id_alike(tmp_path, bad_id, category_csv):
    """A string or ObjectId `_id`: the index skipped it, common.stats crashed with a traceback."""
    import bson

    from common.categories import CategoryTree
    from common.stats import compute_stats

    value = bson.ObjectId() if bad_id == "objectid" else bad_id
    path = _raw_bson(tmp_path / "odd.bson", [{"_id": 1, "imgs": [{"picture": solid_jpeg(1)}], "category_id": 1000010653},
                                             {"_id": value, "imgs": [{"picture": solid_jpeg(2)}], "category_id": 1000010653}])
    index = build_index(path, progress=False)
    stats = compute_stats(path, CategoryTree.from_csv(category_csv), tmp_path / "out", progress=False)
    assert len(index) == stats["products"] == 1
    assert index.meta["skipped"]["counts"] == stats["skipped"]["counts"] == {"malformed_document": 1}


def test_documents_lost_inside_an_unreadable_region_are_counted_independently(sample_bson, tmp_path):
    """Prefixes and `_id` keys of three documents wiped: the scan reports one unreadable region;
    the independent count of `imgs` keys says two more products were lost in it."""
    data, full = bytearray(sample_bson.read_bytes()), build_index(sample_bson, progress=False)
    for k in (30, 31, 32):
        at = int(full.offsets[k])
        data[at : at + 9] = bytes(9)
    path = tmp_path / "wiped.bson"
    path.write_bytes(bytes(data))
    index = build_index(path, progress=False)
    assert len(index) == 79 and index.meta["documents_marked"] == 82
    assert index.meta["skipped"]["counts"] == {"corrupt_bytes": 1, "unread_documents": 1}
    assert "2 more products than the skipped regions are lost" in " ".join(index.meta["skipped"]["messages"])


def test_a_skip_log_names_the_first_ids_and_does_not_flood_the_log(caplog):
    """10,000 products without images: counted exactly, the first 10 _ids kept, five warnings as
    they happen, one 'further ... counted' line and one summary (not 10,000 lines)."""
    skips = SkipLog("train.bson", max_logged=5)
    for pid in range(100, 10_100):
        skips.add("no_images", f"product _id={pid} has no images", pid)
    skips.add_ids("unusable_input", "3 inputs", [5, 6, 7])
    skips.report()
    assert skips.counts == {"no_images": 10_000, "unusable_input": 3}
    assert skips.to_dict()["first_ids"] == {"no_images": list(range(100, 110)), "unusable_input": [5, 6, 7]}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 + 1 + 1 + 1 and "further no_images are counted" in lines[5]
    assert lines[-1] == "train.bson: skipped no_images=10000 (first _ids 100, 101, 102, 103, 104, 105, 106, 107, 108, 109), unusable_input=3 (first _ids 5, 6, 7)"


def test_the_codec_matches_pymongo_byte_for_byte():
    """common.bson_format's own codec (no pymongo at run time: a bare GPU machine has none) against
    pymongo's bson, on the real products of train_example.bson and on every type a document may hold."""
    import bson

    from common.bson_format import decode_document, encode_document, iter_raw_documents

    docs = [bytes(raw) for _, raw in iter_raw_documents(TRAIN_EXAMPLE_BSON)]
    assert len(docs) == 82
    for raw in docs:
        assert decode_document(raw) == bson.decode(raw)
        assert encode_document(bson.decode(raw)) == raw
    odd = {"_id": 2**40, "neg": -5, "f": 1.5, "s": "é", "b": True, "n": None, "nested": {"x": [1, b"", {"picture": b"\x00\xff"}]}}
    assert encode_document(odd) == bson.encode(odd) and decode_document(bson.encode(odd)) == odd
    for cut in (3, 10, len(docs[0]) - 1):
        with pytest.raises(BsonDocumentError, match="cannot decode document at offset 7"):
            decode_document(docs[0][:cut], "x.bson", 7)
