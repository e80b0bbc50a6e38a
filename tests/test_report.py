"""The leaderboard report over the designed sources of test_stack (one stack run per module)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.paths import WorkDir
from ensembling.report import build_report, main as report_main
from ensembling.stack import StackConfig, run_stack
from tests.conftest import make_tiny_work
from tests.test_stack import FAST, write_designed_sources


@pytest.fixture(scope="module")
def reported_work(tmp_path_factory):
    work = make_tiny_work(tmp_path_factory.mktemp("report"), n_train=240, n_test=30, n_folds=2)
    write_designed_sources(work)
    run_stack(WorkDir(work), StackConfig(**FAST))
    build_report(WorkDir(work))
    return work


def test_report_writes_table_and_embedded_plots(reported_work):
    page = (reported_work / "report" / "index.html").read_text()
    assert "<table>" in page and "not comparable" in page
    assert page.count("data:image/png;base64,") >= 6  # 5 plots + the stats figure
    assert "<img" in page and "src=\"http" not in page and "src=\"/" not in page  # self-contained
    assert "kaggle competitions submit -c cdiscount-image-classification-challenge -f work/submissions/stack.csv.gz" in page
    assert "Stacker gain over the best single source" in page


def test_leaderboard_csv_rows_and_columns(reported_work):
    table = pd.read_csv(reported_work / "report" / "leaderboard.csv")
    assert table["source"].tolist() == ["a_ablation_x", "a_model", "b_model", "convoluted", "md5", "stack"]
    for col in ("kind", "measured_on", "oof_image_accuracy", "oof_product_accuracy", "mini_test_accuracy", "team_recorded", "team_private_lb",
                "kaggle_public", "kaggle_private"):
        assert col in table.columns
    row = table.set_index("source")
    assert row.loc["stack", "kind"] == "stack" and row.loc["convoluted", "kind"] == "team blend" and row.loc["md5", "kind"] == "side source"
    assert row.loc["a_ablation_x", "kind"] == "ablation"
    assert row.loc["convoluted", "team_private_lb"] == pytest.approx(0.79352)
    assert row.loc["a_model", "oof_image_accuracy"] == pytest.approx(0.55)
    assert row.loc["md5", "oof_products"] < row.loc["a_model", "oof_products"]
    assert row["measured_on"].str.startswith("mini (synthetic").all()
    assert row.loc["stack", "oof_product_accuracy"] > row.loc["a_model", "oof_product_accuracy"]
    assert np.isfinite(row["mini_test_accuracy"]).all()
    assert row["kaggle_private"].isna().all()


def test_scores_csv_fills_kaggle_columns(reported_work, tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("source,public,private\nstack,0.791,0.792\n")
    report_main(["--work", str(reported_work), "--scores", str(scores)])
    row = pd.read_csv(reported_work / "report" / "leaderboard.csv").set_index("source")
    assert row.loc["stack", "kaggle_public"] == pytest.approx(0.791) and row.loc["stack", "kaggle_private"] == pytest.approx(0.792)
    assert pd.isna(row.loc["a_model", "kaggle_private"])
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
    row = pd.read_csv(reported_work / "report" / "leaderboard.csv").set_index("source")
    assert row.loc["a_model", "team_recorded"] == pytest.approx(0.55) and pd.isna(row.loc["b_model", "team_recorded"])


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
