"""The pipeline's shared preparation stages (nodes of common/pipeline.py): index both BSON files,
make the folds, the dataset paper's statistics. Index and folds always run: each checks by
content what it would reuse (an index of other bytes, folds made otherwise stop or rebuild)."""
from __future__ import annotations

from .costs import StageContext, stage_row
from .pipeline import CPU, Node, RunOptions, dataset_files, flag
from .paths import WorkDir
from .registry import register_stage


@register_stage
def preparation(opts: RunOptions, work: WorkDir, before: list[Node]) -> list[Node]:
    files, w = dataset_files(opts, work), str(work.root)
    data = tuple(n.name for n in before if n.stage == "data")
    labels = ("--test-labels", files["test_labels"]) if files["test_labels"] else ()
    return [
        Node("index", "index", CPU, "common.prepare", ("--work", w, "--train", files["train"], "--test", files["test"],
             "--categories", files["categories"], *labels), data, done=("index/train.json", "index/test.json"), always=True,
             cost=index_cost, note="reuses an index of the same bytes"),
        Node("folds", "folds", CPU, "common.folds", ("--work", w, "--protocol", opts.protocol, "--n-folds", str(opts.n_folds),
             "--holdout-fraction", str(opts.holdout_fraction), "--seed", str(opts.seed), *flag(opts.force, "--force")), ("index",),
             done=("folds.json",), always=True, note="stops when the work dir's folds were made otherwise"),
        Node("stats", "stats", CPU, "common.stats", ("--work", w), ("index",), done=("stats/test/stats.json",), cost=stats_cost),
    ]


def index_cost(ctx: StageContext) -> list[dict]:
    """RAM from bench_scale's fit; time: both BSON files read once at the cold read rate."""
    from .plan_figures import BENCH_README, COLD_READ_MB_S

    ram, _ = ctx.fitted("index", ctx.products)
    return [stage_row("index", ram, ctx.counts.bson_bytes / (COLD_READ_MB_S * 1e6),
                      f"{BENCH_README}; time = both BSON files at the {COLD_READ_MB_S:,.0f} MB/s cold read")]


def stats_cost(ctx: StageContext) -> list[dict]:
    from .plan_figures import BENCH_README

    return [stage_row("stats", *ctx.fitted("stats", ctx.products), BENCH_README)]
