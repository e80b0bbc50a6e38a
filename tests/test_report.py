"""The leaderboard report over the designed sources of test_stack (one stack run per module)."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from common.machine import describe_machine, machine_line, write_machine
from common.paths import WorkDir
from common.predictions import load_topk, save_topk
from common.sources import write_summary
from ensembling.report import build_report, main as report_main
from ensembling.stack import StackConfig, run_stack
from tests.conftest import make_tiny_work
from tests.test_stack import FAST, write_designed_sources


@pytest.fixture(scope="module")
def reported_work(tmp_path_factory):
    work = make_tiny_work(tmp_path_factory.mktemp("report"), n_train=240, n_test=30, n_folds=2)
    write_designed_sources(work)
    run_stack(WorkDir(work), StackConfig(**FAST))
    wd = WorkDir(work)  # a one-member solution blend: the same predictions as its model (dylan's and bestfitting's on the mini default)
    for split in ("oof", "test"):
        save_topk(wd.preds("solo") / f"{split}.npz", load_topk(wd.preds("a_model") / f"{split}.npz"))
    write_summary(wd, "solo", "solution blend", members=["a_model"], weights=[1.0], power=1.0, leaderboard={"place": 3, "private": 0.79046})
    write_machine(work, {"started": "2026-01-01 00:00:00 +0000"}, machine=describe_machine(import_torch=False))  # the runner's file, cheaply
    build_report(wd)
    return work


def _csv(work) -> pd.DataFrame:
    return pd.read_csv(work / "report" / "leaderboard.csv", dtype={"rank": "Int64"})


def test_report_writes_table_and_embedded_plots(reported_work):
    page = (reported_work / "report" / "index.html").read_text()
    assert "<table>" in page and "not comparable" in page
    assert page.count("data:image/png;base64,") >= 6  # 5 plots + the stats figure
    assert "<img" in page and "src=\"http" not in page and "src=\"/" not in page  # self-contained
    assert "Stacker gain over the best single source" in page


def test_kaggle_commands_use_the_given_work_dir(reported_work):
    page = (reported_work / "report" / "index.html").read_text()
    assert f"kaggle competitions submit -c cdiscount-image-classification-challenge -f {reported_work}/submissions/stack.csv.gz" in page
    assert f"python -m ensembling.report --work {reported_work}" in page
    assert " work/submissions" not in page and "--work work" not in page


def test_leaderboard_csv_rows_and_columns(reported_work):
    table = _csv(reported_work)
    assert sorted(table["source"]) == ["a_ablation_x", "b_model", "convoluted", "md5", "solo", "stack"]  # a_model: one row with solo
    for col in ("rank", "kind", "measured_on", "oof_image_accuracy", "oof_product_accuracy", "mini_test_accuracy", "team_recorded", "team_private_lb",
                "kaggle_public", "kaggle_private", "oof_coverage", "stack_on_same_products", "best_cnn", "best_cnn_on_same_products"):
        assert col in table.columns
    row = table.set_index("source")
    assert row.loc["stack", "kind"] == "stack" and row.loc["convoluted", "kind"] == "team blend" and row.loc["md5", "kind"] == "side source"
    assert row.loc["a_ablation_x", "kind"] == "ablation"
    assert row.loc["convoluted", "team_private_lb"] == pytest.approx(0.79352)
    assert row.loc["solo", "oof_image_accuracy"] == pytest.approx(0.55)
    assert row.loc["md5", "oof_products"] < row.loc["b_model", "oof_products"]
    assert row["measured_on"].str.startswith("mini (synthetic").all()
    assert row.loc["stack", "oof_product_accuracy"] > row.loc["solo", "oof_product_accuracy"]
    assert np.isfinite(row["mini_test_accuracy"]).all()
    assert row["kaggle_private"].isna().all()


def test_rows_ranked_by_accuracy_side_sources_last(reported_work):
    table = _csv(reported_work)
    ranked, side = table[table["rank"].notna()], table[table["rank"].isna()]
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1)) and ranked["source"].iloc[0] == "stack"
    assert ranked["oof_product_accuracy"].is_monotonic_decreasing
    assert side["source"].tolist() == ["md5"] and table.index[table["source"] == "md5"][0] == len(table) - 1  # below every ranked row
    assert (ranked["oof_coverage"] >= 0.9).all() and float(side["oof_coverage"].iloc[0]) < 0.3


def test_side_sources_beside_the_stack_and_the_best_cnn_on_their_products(reported_work):
    """md5 covers a seventh of the products: its row says so and sets the stack's and the best CNN's accuracy on them beside it."""
    from common.workdata import Labels

    wd = WorkDir(reported_work)
    table = _csv(reported_work).set_index("source")
    row, labels = table.loc["md5"], Labels.load(wd)
    md5 = load_topk(wd.preds("md5") / "oof.npz")
    ids = md5.ids[np.isin(md5.ids, labels.ids)]
    stack = load_topk(wd.preds("stack") / "oof.npz")
    assert row["oof_products"] == len(ids) and row["oof_coverage"] == pytest.approx(len(ids) / table["oof_products"].max(), abs=1e-4)
    assert row["stack_on_same_products"] == pytest.approx(np.mean(stack.top1_of(ids, labels.fallback) == labels.of(ids)), abs=1e-4)
    assert row["best_cnn"] in ("a_model", "b_model")
    best = load_topk(wd.preds(row["best_cnn"]) / "oof.npz")
    assert row["best_cnn_on_same_products"] == pytest.approx(np.mean(best.top1_of(ids, labels.fallback) == labels.of(ids)), abs=1e-4)
    side = pd.read_csv(reported_work / "report" / "side_sources.csv").set_index("source")
    assert side.loc["md5", "test_products"] > 0 and 0 < side.loc["md5", "test_coverage"] < 1 and np.isfinite(side.loc["md5", "stack_test_on_same_products"])
    page = (reported_work / "report" / "index.html").read_text()
    assert "Side sources, on the products they cover" in page


def test_one_member_blend_is_one_row_naming_its_model(reported_work):
    row = _csv(reported_work).set_index("source")
    assert "a_model" not in row.index and row.loc["solo", "same_as"] == "a_model"
    assert row.loc["solo", "team_recorded_what"].endswith("its one model a_model: the team recorded 0.55000 (a recipe, somewhere)")
    assert row.loc["solo", "team_private_lb"] == pytest.approx(0.79046)


def test_csv_floats_are_rounded(reported_work):
    text = (reported_work / "report" / "leaderboard.csv").read_text()
    decimals = [len(m) for m in re.findall(r"(?<![\w.])\d+\.(\d+)(?![\w.])", text)]
    assert decimals and max(decimals) <= 5
    table = _csv(reported_work)
    for col in ("oof_product_accuracy", "mini_test_accuracy", "oof_coverage", "ece_raw"):
        assert (table[col].dropna().round(4) == table[col].dropna()).all(), col


def test_report_names_the_machine_from_machine_json(reported_work):
    page = (reported_work / "report" / "index.html").read_text()
    machine = describe_machine(import_torch=False)
    assert machine["cpu_model"] and machine["cpu_model"] in page
    assert f"Recorded in {reported_work}/machine.json when the run started (2026-01-01 00:00:00 +0000)" in page
    assert "<h2>Stage times</h2>" in page


def test_report_without_machine_json_describes_this_machine(reported_work, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(reported_work, work)
    (work / "machine.json").unlink()
    build_report(WorkDir(work))
    page = (work / "report" / "index.html").read_text()
    assert "Not recorded by the run" in page and describe_machine(import_torch=False)["cpu_model"] in page
    assert "torch CPU capability" in page


def test_readme_tables_between_the_markers_idempotent(reported_work, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n\n<!-- results:begin (generated) -->\nold table\n<!-- results:end -->\n\nafter\n")
    report_main(["--work", str(reported_work), "--readme", "--readme-path", str(readme)])
    once = readme.read_text()
    assert once.startswith("# Title\n\nbefore\n\n<!-- results:begin (generated) -->\n") and once.endswith("<!-- results:end -->\n\nafter\n")
    block = once.split("<!-- results:begin (generated) -->\n")[1].split("<!-- results:end -->")[0]
    assert "old table" not in block and "| rank | source | kind |" in block and "| 1 | **stack** | stack |" in block
    assert "| side source | OOF products (share) |" in block and "`md5`" in block and "class prior" in block
    assert machine_line(describe_machine(import_torch=False)).split(";")[0].split(" (")[0] in block  # the CPU model
    assert "reproduce exactly on the same CPU kind" in block and "not measured here" in block
    assert f"--work {reported_work} --readme" in block
    report_main(["--work", str(reported_work), "--readme", "--readme-path", str(readme)])
    assert readme.read_text() == once  # idempotent
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        report_main(["--work", str(reported_work), "--readme", "--readme-path", str(bare)])


def test_readme_writes_the_stack_block_of_ensembling_readme_beside_it(reported_work, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:begin -->\n<!-- results:end -->\n")
    (tmp_path / "ensembling").mkdir()
    (tmp_path / "ensembling" / "README.md").write_text("text\n<!-- results:stack:begin (generated) -->\nold\n<!-- results:stack:end -->\nmore\n")
    out = report_main(["--work", str(reported_work), "--readme", "--readme-path", str(readme)])
    assert str(tmp_path / "ensembling" / "README.md") in out["readme"]
    block = (tmp_path / "ensembling" / "README.md").read_text().split("-->\n", 1)[1].split("<!-- results:stack:end -->")[0]
    summary = (reported_work / "preds" / "stack" / "summary.json").read_text()
    s = json.loads(summary)
    assert "old" not in block.splitlines() and f"**{s['oof_product_accuracy']:.4f}**" in block and "candidate recall" in block
    assert "arithmetic mean of the stacked sources" in block and "Largest gains over the best single source" in block


def test_scores_csv_fills_kaggle_columns(reported_work, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("source,public,private\nstack,0.791,0.792\n")
    report_main(["--work", str(reported_work), "--scores", str(scores)])
    row = _csv(reported_work).set_index("source")
    assert row.loc["stack", "kaggle_public"] == pytest.approx(0.791) and row.loc["stack", "kaggle_private"] == pytest.approx(0.792)
    assert pd.isna(row.loc["solo", "kaggle_private"])
    template = (reported_work / "report" / "scores_template.csv").read_text()
    assert template.startswith("source,public,private") and "stack,," in template


def test_recorded_numbers_travel_with_the_recipes():
    """Every shipped recipe and solution blend says what the team recorded; the report reads it from the summary."""
    import yaml

    from common.paths import REPO
    from solutions.bestfitting.submit import BLEND as BF
    from solutions.convoluted.submit import BLEND as CONV
    from solutions.dylan.submit import BLEND as DYLAN

    recorded = {p.stem: yaml.safe_load(p.read_text())["recorded"] for p in (REPO / "solutions").glob("*/configs/*.yaml")}
    assert recorded["mini_fuse_gated"]["value"] == pytest.approx(0.7823) and recorded["mini_fuse_max"]["value"] == pytest.approx(0.7795)
    assert recorded["mini_lite0"]["value"] == pytest.approx(0.7438) and recorded["mini_lite0_strip"]["value"] == pytest.approx(0.772)
    assert all({"value", "what", "measured_on"} == set(r) for r in recorded.values())
    assert DYLAN.recorded["value"] == pytest.approx(0.78998) and [b.leaderboard["place"] for b in (BF, CONV, DYLAN)] == [1, 2, 3]


def test_recorded_value_in_the_table(reported_work):
    row = _csv(reported_work).set_index("source")
    assert pd.isna(row.loc["b_model", "team_recorded"]) and "a recipe" in row.loc["solo", "team_recorded_what"]


def test_ablation_rows_pair_two_sources_or_two_figures_and_count_the_tiles(tmp_path):
    """A row needs both sides; the gain is with - without, by K too; tiles come from every stage's
    summary.csv (a composed recipe's shared model and its fine-tunes)."""
    from common.sources import write_summary
    from ensembling.ablations import ablation_table, markdown

    work = WorkDir(tmp_path)
    by_k = lambda a: {str(k): {"accuracy": a + k / 100, "products": 10} for k in (1, 2, 3, 4)}  # noqa: E731
    for name, kind, acc, recipe in [("dylan_mini_lite0", "model", 0.70, ("dylan", "mini_lite0")),
                                    ("dylan_ablation_mini_lite0_no_smoothing", "ablation", 0.65, ("dylan", "ablation_mini_lite0_no_smoothing")),
                                    ("bestfitting_mini_lite0_strip", "model", 0.72, ("bestfitting", "mini_lite0_strip"))]:
        write_summary(work, name, kind, oof_product_accuracy=acc, oof_by_image_count=by_k(acc), folds=[0],
                      recipe={"solution": recipe[0], "name": recipe[1]})
        for f in ("oof.npz", "test.npz"):
            (work.preds(name) / f).write_bytes(b"")
    write_summary(work, "md5", "side source", override_by_rule={"image": {"dylan": {"oof_accuracy": 0.70, "oof_accuracy_with_override": 0.71}}})
    for f in ("oof.npz", "test.npz"):
        (work.preds("md5") / f).write_bytes(b"")
    fold = work.model_dir("dylan", "mini_lite0", 0)
    (fold / "shared").mkdir(parents=True)
    (fold / "summary.csv").write_text("epoch,image_tiles\n0,100\n1,150\n")
    (fold / "shared" / "summary.csv").write_text("epoch,image_tiles\n0,50\n")
    table = ablation_table(work).set_index("mechanism")
    smoothing = table.loc["label smoothing 0.1 vs 0"]
    assert smoothing["gain"] == pytest.approx(0.05) and smoothing["gain_k3"] == pytest.approx(0.05)
    assert smoothing["train_tiles_with"] == 300 and pd.isna(smoothing["train_tiles_without"])  # no logs on that side
    assert table.loc["MD5 override, image-level rule vs none (dylan)", "gain"] == pytest.approx(0.01)
    assert not any("equal image tiles" in m for m in table.index)  # its without side is missing: no row
    assert "**+0.0500**" in markdown(ablation_table(work))


def _fake_results(n: int):
    """n sources as the plots read them: 3 blends and a stack, the rest one solution's models; long level-1 names."""
    from types import SimpleNamespace

    groups = ["BIJOUX -  LUNETTES - MONTRES", "DECO - LINGE - LUMINAIRE", "TELEPHONIE - GPS", "LIBRAIRIE"]
    pts = [{"confidence": c, "accuracy": c * 0.9, "count": 10} for c in (0.2, 0.5, 0.8)]
    kinds = ["stack", "solution blend", "solution blend", "team blend"] + ["model"] * (n - 4)
    return [SimpleNamespace(name=f"src{i}_{'x' * 20}", kind=k, summary={"solution": "sol"}, report={
        "products": 100, "accuracy": 0.5, "by_image_count": {str(c): {"accuracy": 0.5 + i / 100, "products": 25} for c in (1, 2, 3, 4)},
        "by_level1": {g: {"accuracy": 0.4 + j / 10, "products": 25} for j, g in enumerate(groups)}},
        calibration={"ece_raw": 0.1, "ece": 0.02, "reliability_raw": pts, "reliability": pts}) for i, k in enumerate(kinds)]


def _check_legends(fig) -> int:
    """Every legend: at most 10 entries, its box outside its axes' box (drawn). The number of legends."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        assert len(legend.get_texts()) <= 10, [t.get_text() for t in legend.get_texts()]
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)), ax.get_title()
    return legends


def test_plots_keep_legends_outside_the_data_and_at_most_10_lines_a_panel():
    import matplotlib.pyplot as plt

    from ensembling.plots import figure_by_image_count, figure_by_level1, figure_reliability, figure_training_curves

    results = _fake_results(20)  # 4 blends/stack + 16 models: 3 panels by image count (4; 8 + 8)
    fig = figure_by_image_count(results)
    assert _check_legends(fig) == 3 and all(len(ax.get_lines()) <= 10 for ax in fig.axes)
    plt.close(fig)
    fig = figure_reliability(results)
    assert _check_legends(fig) == 1 and len(fig.axes[0].get_legend().get_texts()) == 8  # 4 sources x stored / calibrated
    plt.close(fig)
    fig = figure_by_level1(results)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "BIJOUX -  LUNETTES - MONTRES" in labels and "DECO - LINGE - LUMINAIRE" in labels  # full group names
    plt.close(fig)
    epochs = pd.DataFrame({"epoch": [0, 1, 2], "val_acc": [0.3, 0.4, 0.5]})
    curves = {"bestfitting/strip": [(f"fold{f}/{p}", epochs.assign(val_acc=epochs["val_acc"] + f / 100)) for f in range(3)
                                    for p in ("shared", "k1", "k2", "k3", "k4")],                                  # 15 runs
              "convoluted/rc": [(f"fold{f}/part{p}", epochs) for f in range(3) for p in range(12)],                # 36 runs, 12 parts
              "dylan/lite0": [(f"fold{f}", epochs) for f in range(3)]}
    fig = figure_training_curves(curves)
    assert _check_legends(fig) == 4  # 5 parts; 12 parts in two panels of 6; 3 folds
    counts = sorted(len(ax.get_legend().get_texts()) for ax in fig.axes if ax.get_legend())
    assert counts == [3, 5, 6, 6] and any("mean of 3 folds" in ax.get_title() for ax in fig.axes)
    plt.close(fig)


def test_report_plots_of_the_work_dir_keep_their_legends_outside(reported_work):
    import matplotlib.pyplot as plt

    from ensembling.plots import figure_accuracy, figure_training_curves, training_curves

    for fig in (figure_accuracy(_csv(reported_work)), figure_training_curves(training_curves(WorkDir(reported_work)))):
        assert _check_legends(fig) >= 1
        plt.close(fig)
