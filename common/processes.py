"""The one way this codebase starts worker pools.

Forking a process that already runs threads (torch's, a dask worker's, pyarrow's jemalloc
background thread) copies whatever locks those threads held at that instant, and the child can
block on one forever: a test run hung that way. 'forkserver' forks each worker from a small
server process started clean (single-threaded), so it is safe from any caller; 'spawn' where the
platform has no forkserver. Pool functions and their arguments must therefore be picklable.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """The multiprocessing context for worker pools: forkserver where available, else spawn."""
    return multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
