"""The 2nd place's feature store: a base net's penultimate features per image, clipped to
[0, clip] and quantised to uint8 in a memory-mapped file, read back by product.

    <dir>/<split>.u8        uint8[n_images, n_views, dim]  (image order = the BSON index's; a view per TTA view)
    <dir>/<split>.ok.u8     uint8[n_images]                1 = written and decoded
    <dir>/<split>.json      dim, views (e.g. orig, hflip), clip, n_images, model

Why: at full scale a base net's features are tens of GB (12.4M images x 2 flips x 2048 bytes
= 51 GB), far beyond RAM, yet the fusion heads want random access by product. A memmap of
fixed-size rows gives that, and uint8 is 4x smaller than float32 at a precision far below the
features' noise (the team's choice). Writers in several DDP ranks, on one node or several
sharing a filesystem, fill disjoint rows of one pre-sized file; the file is renamed into place
only when complete (a crash leaves no store). The ranks write with pwrite at their rows' byte
offsets, never through a writable memmap: a node writes back whole pages of a shared mapping,
and on a network filesystem (NFS) each node has its own page cache, so a page holding rows of
two ranks (at the boundary of their blocks of products, and everywhere in the 1-byte-per-image
ok file) written back by one node would overwrite the other node's rows with its stale zeros.
Every rank fsyncs its rows (flush) before the barrier after which rank 0 renames the file.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import read_json, write_json, write_npy
from common.errors import DataError

MAX_VIEWS = 4  # products are padded / cut to 4 images


def image_offsets(n_imgs: np.ndarray) -> np.ndarray:
    """First image row of every product (products in index order)."""
    return np.concatenate([[0], np.cumsum(np.asarray(n_imgs, np.int64))])


def quantise(x: np.ndarray, clip: float) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, clip) * (255.0 / clip)).astype(np.uint8)


def dequantise(q, clip):
    """uint8 -> float32 (numpy array or torch tensor); `clip` a number or one per feature."""
    return q.astype(np.float32) * (clip / 255.0) if isinstance(q, np.ndarray) else q.float() * (clip / 255.0)


class FeatureWriter:
    """Pre-sizes the store (sparse file), takes per-image features in any order, then commits.

    Under DDP: rank 0 creates (create=True), the others open the file after a barrier; every rank
    writes its own rows and flushes (fsync); after a barrier rank 0 commits (renames into place)."""

    def __init__(self, directory: Path, split: str, n_imgs: np.ndarray, dim: int, views: list[str], clip: float, model: str, create: bool = True):
        self.dir, self.split, self.dim, self.views, self.clip, self.model = Path(directory), split, dim, list(views), clip, model
        self.flips = flips = len(self.views)
        self.offsets = image_offsets(n_imgs)
        self.n_images = int(self.offsets[-1])
        self.row_bytes = flips * dim
        self.tmp = self.dir / f"{split}.u8.tmp"
        self.tmp_ok = self.dir / f"{split}.ok.u8.tmp"
        rows = max(self.n_images, 1)
        if create:  # rank 0 creates, the other ranks open after a barrier
            self.dir.mkdir(parents=True, exist_ok=True)
            for path, size in ((self.tmp, rows * self.row_bytes), (self.tmp_ok, rows)):
                with open(path, "wb") as f:  # sparse: unwritten rows read as zeros (ok = 0)
                    f.truncate(size)
                    os.fsync(f.fileno())
        self._fds: tuple[int, int] | None = (os.open(self.tmp, os.O_RDWR), os.open(self.tmp_ok, os.O_RDWR))

    def write(self, product_rows: np.ndarray, ranks: np.ndarray, features: np.ndarray, ok: np.ndarray) -> None:
        """features float[n, flips, dim] of images (product row, rank); ok[n] marks decoded images."""
        if features.shape[1:] != (self.flips, self.dim):
            raise ValueError(f"features of shape {features.shape[1:]}, store holds {(self.flips, self.dim)}")
        if self._fds is None:
            raise RuntimeError(f"{self.tmp}: writer already closed")
        at = (self.offsets[np.asarray(product_rows)] + np.asarray(ranks)).astype(np.int64)
        order = np.argsort(at, kind="stable")  # a repeated image: the last write wins, as in an array
        at = at[order]
        q = quantise(np.asarray(features), self.clip)[order].reshape(len(at), self.row_bytes)
        flags = np.asarray(ok, np.uint8)[order]
        starts = np.r_[0, np.flatnonzero(np.diff(at) != 1) + 1, len(at)]  # runs of consecutive images: one pwrite each
        fd, fd_ok = self._fds
        for s, e in itertools.pairwise(starts):
            _pwrite_all(fd, q[s:e], int(at[s]) * self.row_bytes)
            _pwrite_all(fd_ok, flags[s:e], int(at[s]))

    def flush(self) -> None:
        """Every rank fsyncs its rows (on any node) before rank 0 renames the file into place."""
        if self._fds is not None:
            for fd in self._fds:
                os.fsync(fd)

    def close(self) -> None:
        """Flush and close (a rank that is done writing)."""
        if self._fds is not None:
            self.flush()
            for fd in self._fds:
                os.close(fd)
            self._fds = None

    def __del__(self) -> None:
        if getattr(self, "_fds", None) is not None:
            for fd in self._fds:
                os.close(fd)

    def commit(self, rows: np.ndarray) -> "FeatureStore":
        """Flush, record which products were written, rename into place (main process only)."""
        self.close()
        meta = {"dim": self.dim, "views": self.views, "clip": self.clip, "n_images": self.n_images, "model": self.model}
        write_npy(self.dir / f"{self.split}.rows.npy", np.asarray(np.sort(rows), np.int64))
        os.replace(self.tmp_ok, self.dir / f"{self.split}.ok.u8")
        os.replace(self.tmp, self.dir / f"{self.split}.u8")
        write_json(self.dir / f"{self.split}.json", meta)  # last: its presence marks a complete store
        _fsync_dir(self.dir)
        return FeatureStore(self.dir, self.split)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _fsync_dir(directory: Path) -> None:
    """The renames themselves durable (POSIX: a directory entry is data of the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StoreMeta:
    dim: int
    views: list[str]
    clip: float
    n_images: int
    model: str


class FeatureStore:
    """Read side: product rows -> padded views, without loading the file."""

    def __init__(self, directory: Path, split: str):
        self.dir, self.split = Path(directory), split
        meta_path = self.dir / f"{split}.json"
        if not meta_path.exists():
            raise DataError(f"{meta_path}: no feature store (train the base net first: its fold extracts the features)")
        try:
            self.meta = StoreMeta(**read_json(meta_path, "retrain the base net (--force): its fold extracts the features"))
        except TypeError as e:
            raise DataError(f"{meta_path}: not a feature store record ({e})") from None
        self.shape = (max(self.meta.n_images, 1), self.flips, self.meta.dim)
        path = self.dir / f"{split}.u8"
        if path.stat().st_size != int(np.prod(self.shape)):
            raise DataError(f"{path}: {path.stat().st_size} bytes, expected {int(np.prod(self.shape))} (a truncated store: delete it and extract again)")
        self.rows = np.load(self.dir / f"{split}.rows.npy")
        self._features: np.memmap | None = None
        self._ok: np.memmap | None = None

    @property
    def flips(self) -> int:
        return len(self.meta.views)

    def __getstate__(self) -> dict:
        """Loader workers reopen the memmaps (pickling one would copy the whole file)."""
        return {**self.__dict__, "_features": None, "_ok": None}

    @property
    def features(self) -> np.memmap:
        if self._features is None:
            self._features = np.memmap(self.dir / f"{self.split}.u8", np.uint8, "r", shape=self.shape)
        return self._features

    @property
    def ok(self) -> np.memmap:
        if self._ok is None:
            self._ok = np.memmap(self.dir / f"{self.split}.ok.u8", np.uint8, "r", shape=(self.shape[0],))
        return self._ok

    @staticmethod
    def exists(directory: Path, split: str) -> bool:
        return (Path(directory) / f"{split}.json").exists()

    def check_index(self, n_imgs: np.ndarray) -> np.ndarray:
        """The store must match the index it is read with; returns the image offsets."""
        offsets = image_offsets(n_imgs)
        if int(offsets[-1]) != self.meta.n_images:
            raise DataError(f"{self.dir / self.split}: made for {self.meta.n_images} images, the index has {int(offsets[-1])}: extract again")
        return offsets

    def views(self, offsets: np.ndarray, n_imgs: np.ndarray, rows: np.ndarray, max_views: int = MAX_VIEWS) -> tuple[np.ndarray, np.ndarray]:
        """(uint8[B, max_views, flips, dim], mask bool[B, max_views]) for product rows; missing
        views (fewer images, or undecodable) are zeros with mask False."""
        rows = np.asarray(rows)
        out = np.zeros((len(rows), max_views, self.flips, self.meta.dim), np.uint8)
        mask = np.zeros((len(rows), max_views), bool)
        for v in range(max_views):
            has = np.asarray(n_imgs)[rows] > v
            at = offsets[rows[has]] + v
            out[has, v] = self.features[at]
            mask[has, v] = self.ok[at] > 0
        return out, mask

    def images(self, offsets: np.ndarray, rows: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8[n, flips, dim], ok[n]) of single images (product row, rank)."""
        at = offsets[np.asarray(rows)] + np.asarray(ranks)
        return self.features[at], self.ok[at] > 0
