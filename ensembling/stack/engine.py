"""Where the stacker's boosters train and predict: this process (a QuantileDMatrix streamed from
chunks) or a dask cluster (`--dask SCHEDULER|local[:N]`: xgboost.dask over the same chunks).

Both engines get the same chunks from the same feature builder, so the features, candidates and
top-K are one implementation; only where the trees are grown differs. With dask, this process
builds one chunk at a time and hands it to a worker (round robin), so the feature matrix lives
on the workers, split across machines; the sources' top-K stay here, as on one machine.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import xgboost as xgb

from common.errors import DataError

from .config import LOCAL_CLUSTER
from .features import Chunk

CONNECT_TIMEOUT = "30s"  # to a remote scheduler


class ChunkIter(xgb.DataIter):
    """Feeds chunks to a QuantileDMatrix, rebuilding each on every pass: features are never held
    all at once (the quantised matrix is ~1 byte per value)."""

    def __init__(self, make: Callable[[int], Chunk], n_chunks: int, with_qid: bool):
        super().__init__()
        self.make, self.n_chunks, self.with_qid, self.i = make, n_chunks, with_qid, 0

    def next(self, input_data: Callable) -> bool:
        if self.i >= self.n_chunks:
            return False
        ch = self.make(self.i)
        kwargs = {"qid": ch.qid} if self.with_qid else {}
        input_data(data=ch.X, label=ch.y, **kwargs)
        self.i += 1
        return True

    def reset(self) -> None:
        self.i = 0


class LocalEngine:
    """One process: XGBoost's own threads (the default)."""

    name = "local"

    def train(self, make: Callable[[int], Chunk], n_chunks: int, with_qid: bool, params: dict, rounds: int) -> xgb.Booster:
        dtrain = xgb.QuantileDMatrix(ChunkIter(make, n_chunks, with_qid), max_bin=params["max_bin"])
        return xgb.train(params, dtrain, num_boost_round=rounds)

    def margin(self, booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(X, predict_type="margin"))

    def close(self) -> None:
        pass


class DaskEngine:
    """xgboost.dask through a `distributed.Client`: a scheduler address, or `local[:N]` for a
    LocalCluster of N worker processes on this machine (default 2; the cores split between them)."""

    def __init__(self, address: str):
        import os

        import xgboost.dask  # noqa: F401  (registers xgb.dask)
        from distributed import Client, LocalCluster

        self.cluster = None
        local = LOCAL_CLUSTER.match(address)
        try:
            if local:
                n = int(local.group(1) or 2)
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=max(1, (os.cpu_count() or 1) // n), processes=True,
                                            dashboard_address=None)
                self.client = Client(self.cluster)
            else:
                self.client = Client(address, timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise DataError(f"--dask {address}: cannot reach the scheduler ({e})") from None
        self.workers = sorted(self.client.scheduler_info()["workers"])
        self.name = f"dask ({len(self.workers)} workers at {self.client.scheduler.address})"
        self._next = 0

    def _to_cluster(self, *arrays: np.ndarray) -> list:
        """Dask arrays of one chunk's arrays, all on one worker (chunks go round robin)."""
        import dask
        import dask.array as da

        worker = self.workers[self._next % len(self.workers)]
        self._next += 1
        futures = self.client.scatter(list(arrays), workers=[worker])
        return [da.from_delayed(dask.delayed(f), a.shape, a.dtype) for f, a in zip(futures, arrays)]

    def _chunks(self, make: Callable[[int], Chunk], n_chunks: int) -> Iterator[Chunk]:
        for i in range(n_chunks):
            ch = make(i)
            if len(ch.X):
                yield ch

    def train(self, make: Callable[[int], Chunk], n_chunks: int, with_qid: bool, params: dict, rounds: int) -> xgb.Booster:
        import dask.array as da

        parts = [self._to_cluster(ch.X, ch.y, ch.qid) for ch in self._chunks(make, n_chunks)]
        X, y, qid = (da.concatenate([p[j] for p in parts]) for j in range(3))
        dtrain = xgb.dask.DaskQuantileDMatrix(self.client, X, y, qid=qid if with_qid else None, max_bin=params["max_bin"])
        cluster_params = {k: v for k, v in params.items() if k != "nthread"}  # each worker uses its own threads
        out = xgb.dask.train(self.client, cluster_params, dtrain, num_boost_round=rounds)
        return out["booster"]

    def margin(self, booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
        (x,) = self._to_cluster(X)
        return np.asarray(xgb.dask.inplace_predict(self.client, booster, x, predict_type="margin").compute())

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def open_engine(dask: str) -> LocalEngine | DaskEngine:
    """'' = this process; anything else is a dask scheduler address or local[:N]."""
    return DaskEngine(dask) if dask else LocalEngine()
