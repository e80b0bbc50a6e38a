"""The data-layer benchmark runs end to end on a tiny file and prints positive figures."""
from __future__ import annotations

import re

from bench.bench_bson import main, plan
from common.bson_index import build_index, load_index
from common.paths import TRAIN_EXAMPLE_BSON


def test_plan_reaches_the_target():
    assert plan([10, 20, 30], 60) == (3, 60)
    assert plan([10, 20, 30], 61) == (4, 70)


def test_bench_smoke(tmp_path, capsys):
    results = main(["--size-mb", "4", "--work", str(tmp_path), "--reads", "300"])
    printed = capsys.readouterr().out
    for key in ("sequential_mb_s", "index_mb_s", "raw_mb_s", "raw_reads_s", "decoded_products_s", "ratio", "peak_rss_mb"):
        assert results[key] > 0, key
    ratio = re.search(r"ratio index build / sequential read: ([\d.]+)", printed)
    assert ratio and float(ratio.group(1)) > 0
    assert "index build (build_index)" in printed and "random reads, decoded products" in printed
    bson = tmp_path / "bench_4mb.bson"
    assert bson.stat().st_size >= 4 << 20
    sample_lengths = build_index(TRAIN_EXAMPLE_BSON, progress=False).lengths.tolist()
    expected_products, expected_size = plan(sample_lengths, 4 << 20)
    assert bson.stat().st_size == expected_size
    index = load_index(tmp_path / "bench_4mb")
    assert len(index) == results["products"] == expected_products
    assert (index.ids == range(len(index))).all()  # fresh increasing _ids
    # a second run reuses the file instead of rewriting it
    mtime = bson.stat().st_mtime_ns
    main(["--size-mb", "4", "--work", str(tmp_path), "--reads", "10"])
    assert bson.stat().st_mtime_ns == mtime and "reusing" in capsys.readouterr().out
    # a file of the wrong size is rebuilt
    bson.write_bytes(bson.read_bytes()[:1000])
    main(["--size-mb", "4", "--work", str(tmp_path), "--reads", "10"])
    assert bson.stat().st_size == expected_size and "writing" in capsys.readouterr().out
