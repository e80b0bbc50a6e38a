"""The stacker and the report as nodes of the pipeline (common/pipeline.py): the stack reads
every source before it (recipes, blends, side sources), the report every node's output."""
from __future__ import annotations

from common.costs import StageContext, stage_row
from common.paths import WorkDir
from common.pipeline import CPU, RECIPE, Node, RunOptions, flag
from common.registry import register_stage


@register_stage
def final_stages(opts: RunOptions, work: WorkDir, before: list[Node]) -> list[Node]:
    w = str(work.root)
    sources = tuple(n.name for n in before if n.done and any(d.startswith("preds/") for d in n.done)
                    and not (n.kind == RECIPE and (n.recipe.baseline or n.recipe.ablation)))
    stack = Node("stack", "stack", CPU, "ensembling.stack", ("--work", w, *flag(opts.accept_lost_products, "--accept-lost-products")),
                 sources, done=("preds/stack/summary.json",), cost=stack_cost, note="XGBoost over every source; the final submission")
    report = Node("report", "report", CPU, "ensembling.report", ("--work", w), tuple(n.name for n in before if n.stage != "data") + ("stack",),
                  done=("report/index.html",), cost=report_cost, note="every source beside the leaderboard")
    return [stack, report]


def stack_cost(ctx: StageContext) -> list[dict]:
    """The holdout's shape fitted on every product; k-fold: every OOF row trains (an older, smaller bench)."""
    from common.plan_figures import BENCH_README, STACK_FIT_ROUNDS, STACK_SOURCES_NOTE

    split, rounds = ctx.split, ctx.stack_rounds
    held = split.models * split.oof_products + ctx.counts.test_products  # the rows the stacker holds
    fit, units = ("stack_holdout", ctx.products) if split.protocol == "holdout" else ("stack_all", held)
    shape = (f"the holdout protocol's shape ({STACK_SOURCES_NOTE}), {ctx.products:,.0f} products" if fit == "stack_holdout" else
             f"every OOF product trains, {held:,.0f} products held (OOF + test); fit from an older run with 3 synthetic sources, "
             f"not the full profile's: more than 32 GB at full scale, cap it with --max-train-products")
    return [stage_row("stack", *ctx.fitted(fit, units, rounds), f"{BENCH_README}, {shape}, time x {rounds}/{STACK_FIT_ROUNDS[fit]} rounds; "
                      f"{ctx.every_core}")]


def report_cost(ctx: StageContext) -> list[dict]:
    from common.plan_figures import BENCH_README

    return [stage_row("report", *ctx.fitted("report", ctx.products), BENCH_README)]
