"""The pipeline's data stage (common/pipeline.py): the embedded mini dataset, generated once
into <work>/mini when no --data folder is given."""
from __future__ import annotations

from common.paths import WorkDir
from common.pipeline import CPU, Node, RunOptions, flag
from common.registry import register_stage


@register_stage
def data_stage(opts: RunOptions, work: WorkDir, before: list[Node]) -> list[Node]:
    if opts.data:
        return []
    out = work.root / "mini"
    return [Node("data", "data", CPU, "mini", ("--work", str(work.root), "--out", str(out), "--preset", opts.preset, "--seed", str(opts.seed),
                 *flag(opts.force, "--force")), done=("mini/mini.json",), always=True, note=f"the mini dataset, preset {opts.preset}")]
