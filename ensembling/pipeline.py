"""The stacker and the report as nodes of the pipeline (common/pipeline.py): the stack reads
every source before it (recipes, blends, side sources), the report every node's output."""
from __future__ import annotations

from common.paths import WorkDir
from common.pipeline import CPU, RECIPE, Node, RunOptions, flag
from common.registry import register_stage


@register_stage
def final_stages(opts: RunOptions, work: WorkDir, before: list[Node]) -> list[Node]:
    w = str(work.root)
    sources = tuple(n.name for n in before if n.done and any(d.startswith("preds/") for d in n.done)
                    and not (n.kind == RECIPE and (n.recipe.baseline or n.recipe.ablation)))
    stack = Node("stack", "stack", CPU, "ensembling.stack", ("--work", w, *flag(opts.accept_lost_products, "--accept-lost-products")),
                 sources, done=("preds/stack/summary.json",), note="XGBoost over every source; the final submission")
    report = Node("report", "report", CPU, "ensembling.report", ("--work", w), tuple(n.name for n in before if n.stage != "data") + ("stack",),
                  done=("report/index.html",), note="every source beside the leaderboard")
    return [stack, report]
