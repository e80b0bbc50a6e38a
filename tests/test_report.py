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
