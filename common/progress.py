"""Progress that suits where the output goes: a tqdm bar on a terminal; a log line every `every`
of the way (default 25 %) when stderr is a file or a pipe, so a run's log holds a few readable
lines instead of hundreds of KB of carriage returns."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from .errors import log

T = TypeVar("T")


def on_terminal() -> bool:
    return sys.stderr.isatty()


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
