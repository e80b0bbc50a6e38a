"""Data-layer benchmark: index build against a plain sequential read, and random product reads.

    python bench/bench_bson.py [--size-mb 1024] [--work work/bench] [--reads 100000] [--cold]

The benchmark file is the official sample's 82 products (their real JPEGs) repeated with fresh
increasing _ids up to --size-mb, written once with BsonWriter and reused while it has the
expected size. One run measures, on that same file:

  1. a plain sequential read in 8 MB chunks (the baseline: nothing but read()),
  2. common.bson_index.build_index (one scan of the length prefixes + header parse per product),
  3. random-access reads through BsonReader at rows drawn with a fixed seed: raw document bytes
     (os.pread) and decoded products (bson.decode -> Product).

Page cache: by default the sequential read runs twice, the first pass only to warm the cache,
so every reported figure is from the page cache. From cache the index scan is CPU-bound, and
the ratio "index build / sequential read" is what that CPU work costs against bare I/O. On a cold
58 GB train.bson both are bounded by the disk instead. With --cold (root only, needs a writable
/proc/sys/vm/drop_caches) the caches are dropped before each measurement instead.

MB here means 2**20 bytes. Peak RSS (getrusage) is printed after each step: it stays far below
the file size because indexing streams the file in 8 MB chunks and never loads it.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/bench_bson.py` from anywhere

from common.bson_format import READ_CHUNK, BsonWriter, encode_product  # noqa: E402
from common.bson_index import build_index, save_index  # noqa: E402
from common.bson_reader import BsonReader, iter_products  # noqa: E402
from common.paths import TRAIN_EXAMPLE_BSON, default_work_dir  # noqa: E402

MB = 1 << 20
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def plan(lengths: list[int], target: int) -> tuple[int, int]:
    """(products, bytes) of the file: the sample's documents cycled until `target` bytes."""
    cycles, size = divmod(target, sum(lengths))
    n, size = cycles * len(lengths), cycles * sum(lengths)
    while size < target:
        size += lengths[n % len(lengths)]
        n += 1
    return n, size


def bench_file(work: Path, size_mb: int) -> tuple[Path, int]:
    """Build the file once; rebuild when missing or not the planned size (e.g. other code wrote it).

    Ids stay int32, so every copy of a sample document encodes to the same length as the sample.
    """
    products = list(iter_products(TRAIN_EXAMPLE_BSON))
    lengths = [len(encode_product(0, p.images, p.category_id)) for p in products]
    n, size = plan(lengths, size_mb * MB)
    path = work / f"bench_{size_mb}mb.bson"
    if path.exists() and path.stat().st_size == size:
        print(f"reusing {path} ({size / MB:.0f} MB, {n:,} products)")
        return path, n
    print(f"writing {path}: {n:,} products, {size / MB:.0f} MB from the sample's real JPEGs ...")
    with BsonWriter(path) as w:
        for i in range(n):
            p = products[i % len(products)]
            w.write(i, p.images, p.category_id)
    return path, n


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def sequential_read(path: Path) -> int:
    """The baseline: read the whole file in 8 MB chunks into one reused buffer, nothing else."""
    total, buf = 0, bytearray(READ_CHUNK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def random_reads(reader: BsonReader, rows: np.ndarray, decode: bool) -> int:
    """Bytes read for `rows`; with decode, each document also becomes a Product."""
    total = 0
    for row in rows.tolist():
        if decode:
            total += sum(map(len, reader[row].images))
        else:
            total += len(reader.read_raw(row))
    return total


def timed(fn: Callable, *args, cold: bool = False) -> tuple[object, float]:
    if cold:
        drop_caches()
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def run(path: Path, n_reads: int, seed: int, cold: bool, index_prefix: Path) -> dict:
    """Every measurement on the same file, in the order that makes the cache state known."""
    size, rows = path.stat().st_size, []
    results = {"file": str(path), "size_mb": size / MB, "cold": cold}

    def row(name: str, seconds: float, nbytes: int, count: int | None = None, unit: str = "") -> float:
        rate = f"{count / seconds:,.0f} {unit}" if count is not None else ""
        rows.append((name, seconds, nbytes / MB / seconds, rate, peak_rss_mb()))
        return nbytes / MB / seconds

    if not cold:
        _, s = timed(sequential_read, path)
        row("sequential read, 1st pass (warms cache)", s, size)
    _, s = timed(sequential_read, path, cold=cold)
    results["sequential_mb_s"] = row("sequential read, 8 MB chunks", s, size)
    index, s = timed(build_index, path, False, cold=cold)
    results["index_mb_s"] = row("index build (build_index)", s, size, len(index), "products/s")
    results.update(products=len(index), images=index.n_images, index_seconds=s)
    save_index(index, index_prefix)
    reader = BsonReader(path, index)
    picks = np.random.default_rng(seed).integers(0, len(index), n_reads)
    nbytes, s = timed(random_reads, reader, picks, False, cold=cold)
    results["raw_mb_s"] = row("random reads, raw documents (pread)", s, nbytes, n_reads, "reads/s")
    results["raw_reads_s"] = n_reads / s
    nbytes, s = timed(random_reads, reader, picks, True, cold=cold)
    results["decoded_mb_s"] = row("random reads, decoded products", s, nbytes, n_reads, "products/s")
    results["decoded_products_s"] = n_reads / s
    reader.close()
    results["ratio"] = results["index_mb_s"] / results["sequential_mb_s"]
    results["peak_rss_mb"] = peak_rss_mb()
    print_table(rows, "cold (caches dropped before each step)" if cold else "page cache (warm)")
    return results


def print_table(rows: list[tuple], cache: str) -> None:
    print(f"\nall figures from: {cache}")
    print(f"{'measurement':<42}{'seconds':>9}{'MB/s':>10}{'rate':>24}{'peak RSS MB':>13}")
    for name, seconds, mb_s, rate, rss in rows:
        print(f"{name:<42}{seconds:>9.2f}{mb_s:>10.0f}{rate:>24}{rss:>13.0f}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1024, help="benchmark file size (MB = 2**20 bytes)")
    p.add_argument("--work", type=Path, default=default_work_dir() / "bench", help="where the file and its index go")
    p.add_argument("--reads", type=int, default=100_000, help="random product reads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cold", action="store_true", help="drop the page cache before each step (root only)")
    args = p.parse_args(argv)
    if args.cold and not can_drop_caches():
        p.error(f"--cold needs root and a writable {DROP_CACHES}")
    path, n = bench_file(args.work, args.size_mb)
    results = run(path, args.reads, args.seed, args.cold, args.work / path.stem)
    assert results["products"] == n, f"index found {results['products']} products, expected {n}"
    print(f"\nfile {results['size_mb']:.0f} MB, {results['products']:,} products, {results['images']:,} images; "
          f"peak RSS {results['peak_rss_mb']:.0f} MB (the file is never loaded)")
    print(f"ratio index build / sequential read: {results['ratio']:.2f} "
          f"({results['index_mb_s']:.0f} vs {results['sequential_mb_s']:.0f} MB/s, "
          f"{'cold' if args.cold else 'both from page cache'})")
    return results


if __name__ == "__main__":
    main()
