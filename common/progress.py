"""Progress that suits where the output goes: a tqdm bar on a terminal; a log line every `every`
of the way (default 25 %) when stderr is a file or a pipe, so a run's log holds a few readable
lines instead of hundreds of KB of carriage returns. And what a training run says while it runs
(`Watch`: dated progress lines within an epoch, the epoch line, epochs.jsonl, TensorBoard, when a
mid-epoch checkpoint is due): torch-free, common/train.py hands it its figures."""
from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from .atomic import atomic_path
from .errors import DataError, log

T = TypeVar("T")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def stamp() -> str:
    """Now, dated, to the second (2026-12-07 10:12:03): a multi-day run's lines say which day."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def iso_now() -> str:
    """Now as ISO 8601 with the UTC offset (2026-12-07T10:12:03+01:00), for machine-read records."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """Seconds as h:mm:ss (1:50:31; 0:00:42), days as a prefix (2d 3:04:05); '?' when unknown."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


class LogBar:
    """tqdm's update / set_postfix / close, written as a log line at each `every` of `total`."""

    def __init__(self, total: float | None, desc: str, unit: str, every: float | None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.t0, self.next_at, self.postfix = 0.0, time.perf_counter(), every, ""

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.total and self.every and self.n >= self.next_at * self.total:
            while self.next_at * self.total <= self.n:
                self.next_at += self.every
            self._line()

    def set_postfix(self, **kw) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def _line(self) -> None:
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        log.info("%s: %s %s%s in %.0f s %s", self.desc, f"{self.n:,.0f}", self.unit, share, time.perf_counter() - self.t0, self.postfix)

    def close(self) -> None:
        pass

    def __enter__(self) -> "LogBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: float | None, desc: str, unit: str = "it", enabled: bool = True, every: float | None = 0.25, **tqdm_kw):
    """A progress bar for manual update(): tqdm on a terminal, log lines otherwise (none when
    `enabled` is False or `every` is None)."""
    if enabled and on_terminal():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=1, **tqdm_kw)
    return LogBar(total, desc, unit, every if enabled else None)


def track(items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True, every: float | None = 0.25, unit: str = "it") -> Iterator[T]:
    """Iterate with progress (see `bar`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    b = bar(total, desc, unit, enabled, every)
    try:
        for item in items:
            yield item
            b.update(1)
    finally:
        b.close()


# ----------------------------------------------------------------------------- a training run


def run_label(cfg, out_dir: Path) -> str:
    """How a line names the run: the source, its fold, the part below the fold dir (bestfitting's
    shared model and per-K fine-tunes): 'dylan_dpn107 fold 0', 'bestfitting_x fold 1 k2'."""
    name = cfg.source if cfg.solution else cfg.name
    parts = Path(out_dir).parts
    for j in range(len(parts) - 1, -1, -1):
        m = re.fullmatch(r"fold(\d+)", parts[j])
        if m:
            return " ".join([name, "fold", m.group(1), *parts[j + 1 :]])
    return name


def rate_unit(tiles: int) -> str:
    return "img/s" if tiles else "samples/s"  # a head's stored features are not images


def epoch_line(label: str, epochs: int, row: dict) -> str:
    """One short dated line per epoch (the CSV row holds every figure)."""
    rate = row["samples_per_s"] * (row["image_tiles"] / row["samples"] if row["image_tiles"] and row["samples"] else 1)
    unusable = f", {row['unusable_inputs']:,} unusable inputs" if row.get("unusable_inputs") else ""
    return (f"{stamp()} {label} epoch {row['epoch'] + 1}/{epochs} done in {duration(row['seconds'])}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}, val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}, lr {row['lr']:.2e}, "
            f"{rate:,.0f} {rate_unit(row['image_tiles'])}{unusable}")


def write_epochs_jsonl(path: Path, history: list[dict]) -> None:
    """One JSON object per epoch beside summary.csv: the date it ended (ISO 8601; null for an epoch
    trained before dates were kept), then the CSV row's figures (NaN, no validation: null, as JSON
    has no NaN). Rewritten whole from the checkpoint's history: resume-safe."""
    def record(row: dict) -> dict:
        return {"date": row.get("date"), **{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items() if k != "date"}}

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(record(row), allow_nan=False) + "\n" for row in history))


def summary_writer_class() -> type:
    """torch.utils.tensorboard's SummaryWriter. Its `tensorboard` package is not a requirement:
    asked for and missing, one line says how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DataError("--tensorboard needs the tensorboard package, which is not installed: pip install tensorboard") from None
    return SummaryWriter


class Watch:
    """What a training run says while it trains: progress lines within an epoch (main process: date,
    step, the epoch's ETA, the rate, loss and accuracy since the last line, lr), their TensorBoard
    scalars, and when a mid-epoch checkpoint is due. Host-side only: a line reads the epoch's
    figures once; everything else is time.monotonic. `figures`: the loop's EpochFigures (steps,
    fed, tiles, totals()). Several processes: `agree(flag) -> flag` hands rank 0's decision to every
    rank (a broadcast at the loop's existing syncs); the checkpoint is taken at the next optimizer
    step by `save(epoch, batch, step, steps, seconds, figures)`, on every rank."""

    def __init__(self, cfg, label: str, is_main: bool = True, world: int = 1, writer=None, save: Callable | None = None,
                 agree: Callable[[bool], bool] | None = None):
        self.cfg, self.label, self.is_main, self.world, self.writer, self.save, self.agree = cfg, label, is_main, world, writer, save, agree
        self.checkpoint_s = cfg.checkpoint_minutes * 60 if save is not None else 0.0
        self.epoch = self.steps = 0
        self.reset_checkpoint_timer()

    def reset_checkpoint_timer(self) -> None:
        self.next_checkpoint = time.monotonic() + self.checkpoint_s if self.checkpoint_s > 0 else math.inf
        self.pending = False

    def start_epoch(self, epoch: int, steps: int, figures, seconds: float = 0.0) -> None:
        """`figures`: the epoch's so far (restored when resumed mid-epoch); `seconds`: its time so far."""
        self.epoch, self.steps, self.first, self.seconds = epoch, steps, figures.steps, seconds
        self.t0 = self.t_line = time.monotonic()
        self.part = figures.steps * self.cfg.log_epoch_parts // steps
        self.mark = (*figures.totals(), figures.fed, figures.tiles) if self.is_main else None

    def epoch_seconds(self) -> float:
        return self.seconds + time.monotonic() - self.t0

    def line_due(self, step: int) -> bool:
        c = self.cfg
        if not self.is_main or step >= self.steps:
            return False  # the epoch line follows the last step
        return bool((c.log_every_steps and step % c.log_every_steps == 0) or (c.log_epoch_parts and step * c.log_epoch_parts // self.steps > self.part)
                    or (c.log_every_seconds > 0 and time.monotonic() - self.t_line >= c.log_every_seconds))

    def line(self, step: int, figures, lr: float) -> None:
        loss_sum, correct, seen = figures.totals()
        now = time.monotonic()
        d_loss, d_correct, d_seen = loss_sum - self.mark[0], correct - self.mark[1], seen - self.mark[2]
        d_count = figures.tiles - self.mark[4] if figures.tiles else figures.fed - self.mark[3]
        rate = d_count * self.world / max(now - self.t_line, 1e-9)  # equal shards: every rank fed as many
        eta = (self.steps - step) * (now - self.t0) / max(step - self.first, 1)
        loss, acc, unit = d_loss / max(d_seen, 1), d_correct / max(d_seen, 1), rate_unit(figures.tiles)
        log.info("%s %s epoch %d/%d step %s/%s (%.0f %%), epoch ETA %s: %s %s, loss %.4f acc %.4f, lr %.2e", stamp(), self.label, self.epoch + 1,
                 self.cfg.epochs, f"{step:,}", f"{self.steps:,}", 100 * step / self.steps, duration(eta), f"{rate:,.0f}", unit, loss, acc, lr)
        # (the ETA early: the scheduler's progress line shows a log's last line cut at 110 characters)
        if self.writer is not None:
            for tag, value in (("train/loss", loss), ("train/acc", acc), ("train/lr", lr), (f"train/{unit.replace('/', '_per_')}", rate)):
                self.writer.add_scalar(tag, value, self.epoch * self.steps + step)
        self.mark, self.t_line = (loss_sum, correct, seen, figures.fed, figures.tiles), now
        self.part = step * self.cfg.log_epoch_parts // self.steps

    def end_epoch(self, row: dict) -> None:
        """The epoch line, and the epoch's scalars at its last step."""
        log.info("%s", epoch_line(self.label, self.cfg.epochs, row))
        if self.writer is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "samples_per_s"):
                self.writer.add_scalar(f"epoch/{key}", row[key], (row["epoch"] + 1) * self.steps)
            self.writer.flush()

    def poll(self) -> None:
        """At the loop's syncs, on every rank: with several processes, rank 0's clock decides for all."""
        if self.checkpoint_s > 0 and self.agree is not None and not self.pending:
            self.pending = self.agree(time.monotonic() >= self.next_checkpoint)

    def checkpoint_due(self) -> bool:
        if self.checkpoint_s <= 0:
            return False
        return self.pending if self.agree is not None else time.monotonic() >= self.next_checkpoint

    def checkpoint(self, batch: int, figures) -> None:
        self.save(self.epoch, batch, figures.steps, self.steps, self.epoch_seconds(), figures)
        self.reset_checkpoint_timer()
