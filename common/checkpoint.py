"""Checkpoints: last.pt after every epoch, step.pt inside one (every `checkpoint_minutes`), and
resuming from them (common/train.py's `fit`). Atomic writes; `torch.load(..., weights_only=True)`:
a checkpoint is data, never code.

step.pt holds, besides the model, optimiser, scaler and RNG, the epoch it was taken in, the optimizer
step and the number of batches done, each rank's running figures and the process count. A rerun
goes on from there with the same batches in the same order: the epoch's sampler draws its
permutation from (seed, epoch) as always, the batches done are dropped as indices (no image is
read), and the RNG is restored once the loader has started (starting one draws its workers' seed).
"""
from __future__ import annotations

import csv
import itertools
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .atomic import atomic_path
from .config import TrainConfig, config_changes
from .errors import DataError, log

if TYPE_CHECKING:
    from .train import Runtime

STEP_CHECKPOINT = "step.pt"  # the mid-epoch checkpoint beside last.pt (removed once its epoch's last.pt is written)


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint is not whole, from the CRC-32 its zip archive (torch.save's format) carries
    for every member: torch.load reads a flipped bit without a word; None when every member checks."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"not a whole checkpoint ({type(e).__name__}: {e})"
    return f"its member {bad} fails its CRC-32 check (a flipped bit or a bad disk)" if bad else None


def load_checkpoint(path: Path) -> dict:
    """weights_only=True: a checkpoint is data, never code; its checksums checked first."""
    problem = checkpoint_problem(path)
    if problem:
        raise DataError(f"{path}: unreadable checkpoint: {problem}; delete it to restart the fold")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign file: name it and stop
        raise DataError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); delete it to restart the fold") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_summary(path: Path, history: list[dict]) -> None:
    """Per-epoch figures as CSV (rewritten whole from the checkpoint's history: resume-safe). The
    date an epoch ended is in epochs.jsonl, not here (the CSV's columns stay what they were)."""
    rows = [{k: v for k, v in row.items() if k != "date"} for row in history]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


class _Remaining(Sampler):
    """A loader's batches of the epoch from the `start`-th on: the skipped batches' indices are drawn
    (the same permutation from (seed, epoch)) and dropped; none of their images is read."""

    def __init__(self, batches: Sampler, start: int):
        self.batches, self.start = batches, start

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.start, None)

    def __len__(self) -> int:
        return max(len(self.batches) - self.start, 0)


def remaining_batches(loader: DataLoader, start: int) -> DataLoader:
    """The same loader (dataset, collate, workers) over its epoch's batches from `start` on: where a
    run stopped by a mid-epoch checkpoint goes on (set the epoch on `loader` first)."""
    if loader.batch_sampler is None:
        raise DataError("a mid-epoch checkpoint needs a loader of batches (an iterable dataset cannot skip to a step)")
    kw = dict(collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory, timeout=loader.timeout,
              worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
              persistent_workers=loader.persistent_workers)
    if loader.num_workers:
        kw["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, batch_sampler=_Remaining(loader.batch_sampler, start), **kw)


def resume_fit(cfg: TrainConfig, model: nn.Module, optimizer, scaler, out_dir: Path, runtime: Runtime) -> tuple[int, list, dict | None]:
    """(first epoch to train, history, the mid-epoch state to go on from): from last.pt, then from
    step.pt when it continues the epoch after last.pt's (its RNG is restored by train_one_epoch)."""
    last, step_file = out_dir / "last.pt", out_dir / STEP_CHECKPOINT
    if not cfg.resume:
        if runtime.is_main:
            step_file.unlink(missing_ok=True)  # another run's position: never resumed into this one
        return 0, [], None
    state = _checked(load_checkpoint(last), last, cfg) if last.exists() else None
    if state is not None:
        set_rng_state(state["rng"])
    start_epoch = state["epoch"] + 1 if state is not None else 0
    partial = mid_epoch_state(step_file, cfg, runtime, start_epoch) if start_epoch < cfg.epochs else None
    chosen = partial if partial is not None else state
    if chosen is None:
        return 0, [], None
    model.load_state_dict(chosen["model"])
    optimizer.load_state_dict(chosen["optimizer"])
    scaler.load_state_dict(chosen["scaler"])
    if runtime.is_main:
        where = f"epoch {start_epoch} step {partial['step']}/{partial['steps']}" if partial is not None else f"epoch {start_epoch}"
        log.info("resumed %s at %s", step_file if partial is not None else last, where)
    return start_epoch, chosen["history"], partial


def _checked(state: dict, path: Path, cfg: TrainConfig) -> dict:
    changed = config_changes(state.get("config", {}), asdict(cfg))
    if changed:
        raise DataError(f"{path}: a checkpoint of another recipe ({'; '.join(changed)}): resuming would mix them. "
                        "Rerun with --no-resume (or --force) to train this fold from scratch")
    return state


def mid_epoch_state(path: Path, cfg: TrainConfig, runtime: Runtime, epoch: int) -> dict | None:
    """step.pt when it continues `epoch` with the same batches (the same processes, micro-batch and
    accumulation; else the epoch restarts, said once); None when absent or of an epoch done."""
    state = _checked(load_checkpoint(path), path, cfg) if path.exists() else None
    if state is None or state.get("epoch") != epoch:
        return None  # (stopped between its epoch's last.pt and removing it: last.pt is further on)
    made = (state.get("world"), state["config"].get("batch_size"), state["config"].get("accum_steps"))
    if made == (runtime.world, cfg.batch_size, cfg.accum_steps):
        return state
    if runtime.is_main:
        log.warning("%s: taken with %d processes x micro-batch %d x %d accumulation steps, this run has %d x %d x %d: its step is not "
                    "one of this run's; epoch %d restarts from its beginning", path, *made, runtime.world, cfg.batch_size, cfg.accum_steps, epoch)
    return None
