"""Run recipes (as tests/ddp_predict.py) and record, per rank and per fold, the trained weights and
how many backward passes all-reduced gradients (a DDP comm hook counts the last bucket of each).

    python tests/ddp_global_batch.py OUT WORK SOLUTION=RECIPE.yaml ...
    torchrun --standalone --nproc_per_node=N tests/ddp_global_batch.py OUT WORK SOLUTION=RECIPE.yaml ...

Writes OUT/<name>_fold<k>_rank<r>.pt: {"state": model.state_dict(), "world": N, "synced": count or None}.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import common.recipe
from tests.ddp_predict import main as run_recipes

_DDP = nn.parallel.DistributedDataParallel
_last: list = []


class CountingDDP(_DDP):
    """DDP whose gradient all-reduce counts the backward passes that communicate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        synced = [0]  # not self: a hook holding its DDP is a cycle that outlives fit

        def hook(_state, bucket):
            if bucket.is_last():
                synced[0] += 1
            return allreduce_hook(None, bucket)

        self.register_comm_hook(None, hook)
        _last[:] = [synced]


def recording_fit(out: Path):
    fit = common.recipe.fit

    def wrapped(cfg, model, train, val, to_batch, out_dir, runtime, *args, **kwargs):
        _last.clear()
        trained = fit(cfg, model, train, val, to_batch, out_dir, runtime, *args, **kwargs)
        synced = _last[0][0] if _last else None
        torch.save({"state": {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}, "world": runtime.world, "synced": synced},
                   out / f"{cfg.name}_{Path(out_dir).name}_rank{runtime.rank}.pt")
        return trained

    return wrapped


def main(argv: list[str]) -> None:
    out, *rest = argv
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nn.parallel.DistributedDataParallel = CountingDDP  # common.train looks it up at each fit
    common.recipe.fit = recording_fit(out)
    run_recipes(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
