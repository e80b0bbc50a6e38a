"""MD5 as a node of the pipeline (common/pipeline.py) and as a side source of the predictor
(ensembling.predict): `load` reads the dictionary the stage saved and votes for new products. Under a scheduler its
hashing is split into shards (one per worker, md5/shards/), which the last task concatenates."""
from __future__ import annotations

from common.costs import StageContext, stage_row
from common.paths import WorkDir
from common.pipeline import BLEND, CPU, Node, RunOptions, flag
from common.registry import SideSource, register_side_source, register_stage

SOURCE = "md5"


@register_stage
def md5_stage(opts: RunOptions, work: WorkDir, before: list[Node]) -> list[Node]:
    args = ("--work", str(work.root), *flag(opts.accept_lost_products, "--accept-lost-products"))

    def shards(n: int) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
        return [("--work", str(work.root), "--shard", f"{i}/{n}") for i in range(n)], args

    blends = tuple(n.name for n in before if n.kind == BLEND)
    return [Node(SOURCE, "md5", CPU, "md5.run", args, blends, done=(f"preds/{SOURCE}/summary.json", "md5/dictionary.npz"), shards=shards,
                 cost=md5_cost, note="duplicate images' labels; overrides the blends")]


def md5_cost(ctx: StageContext) -> list[dict]:
    from common.plan_figures import BENCH_README

    return [stage_row("md5", *ctx.fitted("md5", ctx.products), f"{BENCH_README}; {ctx.every_core}")]


def load(work: WorkDir, summary: dict):
    """The dictionary the stage saved (work/md5/dictionary.npz), loaded once to vote for new products."""
    from .lookup import load_dictionary

    return load_dictionary(work, summary)


register_side_source(SOURCE, SideSource(lambda s: [], load))  # its votes read no other source
