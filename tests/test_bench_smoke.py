"""The data-layer benchmark runs end to end on a tiny file and prints positive figures."""
from __future__ import annotations

import os
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


def test_bench_scale_runs_every_stage_as_a_measured_process(tmp_path):
    from bench.bench_scale import STAGES
    from bench.bench_scale import main as scale_main

    summary = scale_main(["--products", "1200", "--steps", "1", "--stack-rounds", "3", "--text-sizes", "400", "--work", str(tmp_path),
                          "--skip-throughput"])
    by_stage = {r["stage"]: r for r in summary["results"]}
    assert set(by_stage) == set(STAGES)
    assert by_stage["index"]["products"] == 1200 + 300 and by_stage["folds"]["products"] == 1200
    assert by_stage["ocr_text"]["products"] == 400
    for stage in STAGES[1:]:  # each a real child process: a Python interpreter alone is over 10 MB
        assert by_stage[stage]["seconds"] > 0 and by_stage[stage]["peak_mb"] > 10, stage
    assert (tmp_path / "data" / "preds" / "stack" / "summary.json").exists()  # the stacker really ran to its end
    assert (tmp_path / "bench_scale.json").exists()


def test_synthetic_sources_have_distinct_labels_and_the_truth_mostly_first():
    import numpy as np

    from bench.bench_scale import synthetic_topk

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5270, 5000)
    top = synthetic_topk(np.arange(5000), truth, 5270, rng)
    assert all(len(set(row)) == top.k for row in top.labels.tolist())
    assert top.labels.min() >= 0 and top.labels.max() < 5270
    assert 0.72 < (top.labels[:, 0] == truth).mean() < 0.78
    assert ((top.labels[:, 1:] == truth[:, None]).sum() == 0)
    assert (np.diff(top.probs.astype(np.float32), axis=1) <= 0).all()


def test_projection_scales_measured_rates_and_never_invents_gpu_figures():
    import math

    from bench.bench_scale import FULL, STAGES, Measure, fit_memory, projection

    results = [Measure(stage, n, n / 1000.0, 100 + 2 * n / 1e4) for stage in STAGES for n in (10_000, 20_000)]
    a, b = fit_memory(results, "stack")
    assert math.isclose(a, 100, abs_tol=1e-6) and math.isclose(b, 200, rel_tol=1e-9)  # MB per million products
    rates = {"ocr_images_per_s_per_core": 50.0}
    rows = {r[0]: r for r in projection(results, rates, cores=16, machines=4, gpu_images_per_s=None)}
    all_products = FULL["train_products"] + FULL["test_products"]
    hours = all_products / 1000 / 3600
    assert math.isclose(float(rows["index"][2]), hours, abs_tol=0.01)
    assert rows["index"][3] == f"{hours:.2f} (one process)"  # a single process: no faster on 16 cores
    here = os.cpu_count() or 1
    assert rows["stack"][3].startswith(f"{hours * here / 16:.2f} (XGBoost threads x 16")  # every core: scaled, and said so
    assert rows["stack"][5] == f"{(100 + 200 * all_products / 1e6) / 1024:.1f} GB"
    assert rows["train / infer (GPU)"][3:6] == ["not measured"] * 3
    measured = {r[0]: r for r in projection(results, rates, 16, 4, gpu_images_per_s=1000.0)}
    assert math.isclose(float(measured["train epoch (GPU)"][3]), FULL["train_images"] / 1000 / 3600, abs_tol=0.1)


def test_a_noisy_fit_never_projects_below_what_was_measured():
    from bench.bench_scale import Measure, fit_time, projected_peak_mb

    # the larger size ran faster and smaller (start-up noise): no negative slope reaches the projection
    results = [Measure("index", 50_000, 0.9, 154.0), Measure("index", 100_000, 0.8, 150.0)]
    t0, per_million = fit_time(results, "index")
    assert per_million > 0 and t0 + per_million * 10.0 >= 0.8  # through the largest size's own rate: 8 s per million
    assert projected_peak_mb(results, "index", 10e6) == 154.0
