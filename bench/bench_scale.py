"""Scale benchmark: the CPU stages on a large BSON in the official format, measured at several
sizes, then projected to the full dataset.

    python bench/bench_scale.py [--products 200000] [--steps 3] [--work work/bench_scale] [--stack-rounds 50]
                                [--stack-max-train-products 0] [--report work/bench_scale/bench_scale.json]

Data: train products cycle the real JPEGs of train_example.bson (so their image counts and sizes
are the sample's) with fresh _ids and category ids drawn from the real per-category image counts
of the 5270 categories; test products (a quarter as many) carry no category_id. At each size
(--products / 2**(steps-1) ... --products) every stage runs as its own process, exactly as
run_all.sh runs it, and its wall time and peak RSS (os.wait4) are recorded:

  read       plain sequential read of train.bson + test.bson in 8 MB chunks (the I/O baseline)
  index      python -m common.prepare (index train and test)
  stats      python -m common.stats on train.bson (md5 of every image, counts, figures)
  folds      python -m common.folds
  select     the OCR stage's product selection (ocr.run.select) over 3 synthetic CNN sources
  stack      python -m ensembling.stack over those sources (--stack-rounds rounds, CV + final model;
             --stack-max-train-products caps the products each booster trains on, as at full scale)

The synthetic sources are top-20 lists whose first label is right with probability 0.75, so the
stacker works on realistic candidate counts. Peak memory is fitted as a + b x products (least
squares over the sizes); the slope b (MB per million products) is what grows at full scale.

Then, once, at the largest size: the training loader's images/s with 1 and 2 workers against a
bare decode+resize loop on the same JPEGs (180 px and 48 px), CPU inference products/s of the
mini model (tf_efficientnet_lite0 at 48 px), and tesseract's images/s per core on these real
product photos. Everything is printed and saved to <work>/bench_scale.json; the projection
table for the full dataset (7,069,896 train + 1,768,182 test products) is printed last. GPU
training and inference cells are left "not measured" unless --gpu-images-per-s is given from a
measured run (bench/bench_train.py --device cuda).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/bench_scale.py` from anywhere

from common.bson_format import READ_CHUNK, BsonWriter  # noqa: E402
from common.bson_reader import iter_products  # noqa: E402
from common.categories import CategoryTree  # noqa: E402
from common.paths import CATEGORY_NAMES_CSV, IMAGE_COUNTS, REPO, TRAIN_EXAMPLE_BSON, WorkDir, default_work_dir  # noqa: E402
from common.predictions import DEFAULT_K, TopK, save_topk  # noqa: E402

MB = 1 << 20
# the full dataset (../shared/reference/winning-solutions.md)
FULL = {"train_products": 7_069_896, "test_products": 1_768_182, "train_images": 12_371_293, "test_images": 3_095_080,
        "train_bytes": 58.2e9, "test_bytes": 14.5e9}
SOURCES = ("cnn_a", "cnn_b", "cnn_c")
STAGES = ("read", "index", "stats", "folds", "select", "stack")


@dataclass
class Measure:
    stage: str
    products: int
    seconds: float
    peak_mb: float

    @property
    def products_per_s(self) -> float:
        return self.products / max(self.seconds, 1e-9)


# ------------------------------------------------------------------------------------------ data


def category_weights(tree: CategoryTree) -> np.ndarray:
    """Share of each class in the real train images (level-3 counts shipped in common/resources)."""
    from mini import real_category_sizes

    sizes = np.nan_to_num(real_category_sizes(tree))
    return sizes / sizes.sum()


def write_bsons(work: Path, n_train: int, tree: CategoryTree, seed: int = 0) -> tuple[Path, Path]:
    """train.bson (n_train products) and test.bson (n_train // 4), rewritten for each size."""
    sample = [p.images for p in iter_products(TRAIN_EXAMPLE_BSON)]
    labels = np.random.default_rng(seed).choice(len(tree), size=n_train, p=category_weights(tree))
    category_ids = tree.ids[labels]
    paths = work / "train.bson", work / "test.bson"
    with BsonWriter(paths[0]) as w:
        for i in range(n_train):
            w.write(i, sample[i % len(sample)], int(category_ids[i]))
    with BsonWriter(paths[1]) as w:
        for i in range(n_train // 4):
            w.write(10**9 + i, sample[(i * 7) % len(sample)])
    return paths


def write_sources(work: WorkDir, seed: int = 0) -> None:
    """Three CNN-like top-K sources over every train (OOF) and test product."""
    from common.prepare import DatasetPaths
    from common.sources import write_summary
    from common.workdata import Labels

    labels = Labels.load(work)
    paths = DatasetPaths.load(work)
    test_ids = np.sort(np.asarray(paths.index(work, "test").ids, np.int64))
    n_classes = len(paths.tree())
    rng = np.random.default_rng(seed)
    for name in SOURCES:
        for split, ids, truth in (("oof", labels.ids, labels.labels), ("test", test_ids, rng.integers(0, n_classes, len(test_ids)))):
            save_topk(work.preds(name) / f"{split}.npz", synthetic_topk(np.asarray(ids, np.int64), truth, n_classes, rng))
        write_summary(work, name, "model", solution="bench")


def synthetic_topk(ids: np.ndarray, truth: np.ndarray, n_classes: int, rng: np.random.Generator, k: int = DEFAULT_K) -> TopK:
    """Random distinct labels per row, the truth first with probability 0.75; decreasing probs."""
    offsets = rng.integers(1, (n_classes - 1) // k + 1, (len(ids), k)).cumsum(axis=1)  # distinct, in 1..n_classes-1
    labels = (truth[:, None] + offsets) % n_classes
    right = rng.random(len(ids)) < 0.75
    labels[right, 0] = truth[right]
    probs = np.sort(rng.dirichlet(np.full(k, 0.3), len(ids)), axis=1)[:, ::-1]
    return TopK(ids, labels.astype(np.int16), probs.astype(np.float16))


# ------------------------------------------------------------------------------------- measuring


# Peak RSS through a small launcher: Linux keeps a process's pre-exec high-water mark, so a child
# forked straight from this (large) process would report at least this process's size.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], scratch: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process; its output is shown only on failure."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    peak_file = scratch / "peak_rss_kb"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(peak_file), *cmd], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout.decode(errors='replace')[-3000:]}")
    return seconds, int(peak_file.read_text()) / 1024


def sequential_read(paths: tuple[Path, ...]) -> tuple[float, float]:
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(READ_CHUNK):
                pass
    return time.perf_counter() - start, 0.0


def select_main(work: str) -> None:
    """The OCR stage's selection step alone (run as a child so its memory is its own)."""
    from common.workdata import load_fold_data
    from ocr.run import OcrOptions, select

    data = load_fold_data(WorkDir(work))
    sel = select(WorkDir(work), data, OcrOptions(sources=list(SOURCES)))[0]
    print(f"selected {len(sel.train_rows)} train, {len(sel.test_rows)} test products")


def stage_commands(work: Path, paths: tuple[Path, Path], rounds: int, max_train: int = 0) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "index": [py, "-m", "common.prepare", "--train", str(paths[0]), "--test", str(paths[1]), "--work", str(work), "--no-progress"],
        "stats": [py, "-m", "common.stats", "--bson", str(paths[0]), "--out", str(work / "stats"), "--no-progress"],
        "folds": [py, "-m", "common.folds", "--work", str(work), "--n-folds", "3"],
        "select": [py, "-c", f"from bench.bench_scale import select_main; select_main({str(work)!r})"],
        "stack": [py, "-m", "ensembling.stack", "--work", str(work), "--rounds", str(rounds), "--sources", *SOURCES,
                  "--max-train-products", str(max_train)],
    }


def measure_size(work: Path, n_train: int, tree: CategoryTree, rounds: int, max_train: int = 0) -> list[Measure]:
    """Every stage at one size, on fresh files and a fresh work dir."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = write_bsons(work, n_train, tree)
    n_all = n_train + n_train // 4
    cmds = stage_commands(work, paths, rounds, max_train)
    sequential_read(paths)  # warm the page cache: every figure is from memory, as in bench_bson
    results = [Measure("read", n_all, *sequential_read(paths))]
    for stage in ("index", "stats", "folds"):
        results.append(Measure(stage, n_all if stage == "index" else n_train, *run_measured(cmds[stage], work)))
    write_sources(WorkDir(work))
    for stage in ("select", "stack"):
        results.append(Measure(stage, n_all, *run_measured(cmds[stage], work)))
    for m in results:
        print(f"  {m.stage:7s} {m.products:9,d} products {m.seconds:8.1f} s {m.products_per_s:11,.0f} products/s  peak {m.peak_mb:7.0f} MB")
    return results


def fit_line(results: list[Measure], stage: str, field: str) -> tuple[float, float]:
    """(intercept, slope per million products) of a measured field against products, least squares."""
    rows = [m for m in results if m.stage == stage]
    x = np.array([m.products for m in rows], float) / 1e6
    y = np.array([getattr(m, field) for m in rows])
    if len(rows) < 2:
        return (float(y[0]), float("nan")) if field == "peak_mb" else (0.0, float(y[0] / x[0]))
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def fit_memory(results: list[Measure], stage: str) -> tuple[float, float]:
    """(intercept MB, MB per million products) of peak RSS."""
    return fit_line(results, stage, "peak_mb")


def fit_time(results: list[Measure], stage: str) -> tuple[float, float]:
    """(start-up seconds, seconds per million products): the slope leaves process start-up out."""
    return fit_line(results, stage, "seconds")


# ------------------------------------------------------------------------ throughput, once


def loader_rates(work: Path, sizes: tuple[int, ...] = (180, 48), n_images: int = 2048) -> dict[str, float]:
    """Training loader images/s (1 and 2 workers) against a bare decode+resize loop, per input size."""
    from types import SimpleNamespace

    from bench.bench_train import bench_loader, build_bench_bson

    bson_path, items = build_bench_bson(work / "loader.bson", n_images)
    out: dict[str, float] = {}
    for size in sizes:
        for workers in (1, 2):
            ours, bare = bench_loader(SimpleNamespace(size=size, batch=64, workers=workers), bson_path, items)
            out[f"loader_{size}px_{workers}w"], out[f"bare_decode_{size}px"] = ours, bare
    return out


def inference_rate(work: Path, n_products: int = 2000) -> float:
    """Products/s of the mini model (tf_efficientnet_lite0, 48 px, flip TTA) on this CPU."""
    import torch

    from common.bson_index import load_index
    from common.bson_reader import BsonReader
    from common.config import TrainConfig
    from common.infer import predict_images
    from common.models import ModelSpec, create_model, normalization
    from common.train import Runtime

    index = load_index(work / "index" / "train")
    reader = BsonReader(work / "train.bson", index)
    cfg = TrainConfig(solution="bench", name="infer", model="tf_efficientnet_lite0", input_size=48, eval_batch_size=256, num_workers=2,
                      amp="none", topk=DEFAULT_K)
    torch.manual_seed(0)
    model = create_model(ModelSpec(cfg.model, 5270))
    rows = np.arange(min(n_products, len(index)))
    start = time.perf_counter()
    with torch.inference_mode():
        predict_images(model, reader, rows, cfg, Runtime(torch.device("cpu")), *normalization(model))
    return len(rows) / (time.perf_counter() - start)


def ocr_rate(n_images: int = 256, batch: int = 64) -> float:
    """Tesseract images/s on one core over the sample's real product photos (the stage's settings)."""
    from ocr.reader import ReadSettings, read_jpegs
    from ocr.run import OcrOptions

    opts = OcrOptions()
    settings = ReadSettings(tuple(opts.preprocess), opts.lang, opts.psm)
    jpegs = [img for p in iter_products(TRAIN_EXAMPLE_BSON) for img in p.images]
    jpegs = [jpegs[i % len(jpegs)] for i in range(n_images)]
    start = time.perf_counter()
    for i in range(0, n_images, batch):
        read_jpegs(jpegs[i : i + batch], settings)
    return n_images / (time.perf_counter() - start)


# ------------------------------------------------------------------------------- projection


def media_image_share() -> float:
    """Share of the real train images in the OCR stage's level-1 groups (books, music, DVD, games)."""
    import pandas as pd

    from ocr.run import REAL_MEDIA_GROUPS

    counts = pd.read_csv(IMAGE_COUNTS[1], header=None, names=["group", "images"], keep_default_na=False)
    return float(counts.loc[counts["group"].isin(REAL_MEDIA_GROUPS), "images"].sum() / counts["images"].sum())


def projection(results: list[Measure], rates: dict[str, float], cores: int, machines: int, gpu_images_per_s: float | None) -> list[list[str]]:
    """Rows: stage, what it scales with, hours on one machine, on N machines, peak memory, disk."""
    all_products = FULL["train_products"] + FULL["test_products"]
    all_images = FULL["train_images"] + FULL["test_images"]
    per_stage_products = {"read": all_products, "index": all_products, "stats": all_products, "folds": FULL["train_products"],
                          "select": all_products, "stack": all_products}
    rows = []
    for stage in STAGES:
        t0, per_million = fit_time(results, stage)
        hours = (t0 + per_million * per_stage_products[stage] / 1e6) / 3600
        a, b = fit_memory(results, stage)
        memory = "-" if stage == "read" else f"{(a + b * per_stage_products[stage] / 1e6) / 1024:.1f} GB"
        rows.append([stage, f"{per_stage_products[stage]:,} products", f"{hours:.2f}", f"{hours:.2f} (one process)", memory])
    ocr_images = media_image_share() * all_images
    ocr_hours = ocr_images / rates["ocr_images_per_s_per_core"] / 3600
    rows.append(["ocr read", f"{ocr_images:,.0f} media images", f"{ocr_hours / cores:.1f} ({cores} cores)",
                 f"{ocr_hours / cores / machines:.1f} (--shard i/{machines})", "per worker ~ tesseract"])
    if gpu_images_per_s:
        epoch = FULL["train_images"] / gpu_images_per_s / 3600
        rows.append(["train epoch (GPU)", f"{FULL['train_images']:,} images", f"{epoch:.1f}", f"{epoch / machines:.1f} (torchrun)", "-"])
    else:
        rows.append(["train / infer (GPU)", "images", "not measured", "not measured", "not measured"])
    return rows


def index_bytes_per_product(data: Path) -> float:
    n = sum(len(np.load(p, mmap_mode="r")) for p in (data / "index").glob("*.npy"))
    return sum(p.stat().st_size for p in (data / "index").iterdir() if p.is_file()) / n


def preds_bytes_per_product(data: Path) -> float:
    """One source's OOF + test files over the products they hold."""
    from common.predictions import load_topk

    files = [data / "preds" / SOURCES[0] / f for f in ("oof.npz", "test.npz")]
    return sum(f.stat().st_size for f in files) / sum(len(load_topk(f).ids) for f in files)


def disk_rows(index_bytes: float, preds_bytes: float) -> list[list[str]]:
    """Our own outputs' bytes per product at the largest size, scaled to the full dataset."""
    all_products = FULL["train_products"] + FULL["test_products"]
    features = (FULL["train_images"] + FULL["test_images"]) * 2 * 2048  # uint8, with the flip copy, 2048-d (SE-ResNeXt101)
    gb = 1e9
    return [["train.bson + test.bson", f"{(FULL['train_bytes'] + FULL['test_bytes']) / gb:.1f} GB"],
            ["offset index (train + test)", f"{index_bytes * all_products / gb:.2f} GB ({index_bytes:.0f} B/product)"],
            ["one source's top-20 predictions (OOF + test)", f"{preds_bytes * all_products / gb:.2f} GB ({preds_bytes:.0f} B/product)"],
            ["convoluted feature store, one 2048-d base net", f"{features / gb:.0f} GB"]]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--products", type=int, default=200_000, help="train products at the largest size (test: a quarter)")
    p.add_argument("--steps", type=int, default=3, help="sizes: --products / 2**k for k < steps")
    p.add_argument("--work", default=None, help="default: <work>/bench_scale")
    p.add_argument("--stack-rounds", type=int, default=50)
    p.add_argument("--stack-max-train-products", type=int, default=0, help="the stacker's --max-train-products (0: every product)")
    p.add_argument("--cores", type=int, default=16, help="cores of the projected machine (for OCR)")
    p.add_argument("--machines", type=int, default=4, help="N for the N-machine column")
    p.add_argument("--gpu-images-per-s", type=float, default=None, help="a measured training rate (bench_train.py --device cuda)")
    p.add_argument("--skip-throughput", action="store_true", help="only the per-size stages")
    p.add_argument("--report", default=None, help="re-print the projection from a saved bench_scale.json (no measuring)")
    args = p.parse_args(argv)
    if args.report:
        return report(Path(args.report), args)
    work = Path(args.work) if args.work else default_work_dir() / "bench_scale"
    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV)
    results: list[Measure] = []
    for k in reversed(range(args.steps)):
        n = args.products >> k
        print(f"size {n:,} train + {n // 4:,} test products")
        results += measure_size(work / "data", n, tree, args.stack_rounds, args.stack_max_train_products)
    rates: dict[str, float] = {}
    if not args.skip_throughput:
        rates = {**loader_rates(work), "mini_inference_products_per_s": inference_rate(work / "data"), "ocr_images_per_s_per_core": ocr_rate()}
        for key, value in rates.items():
            print(f"{key:40s} {value:10.1f}")
    summary = {"results": [vars(m) | {"products_per_s": m.products_per_s} for m in results], "rates": rates,
               "index_bytes_per_product": index_bytes_per_product(work / "data"), "preds_bytes_per_product": preds_bytes_per_product(work / "data")}
    summary |= print_projection(results, rates, summary, args)
    (work / "bench_scale.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_projection(results: list[Measure], rates: dict[str, float], sizes: dict, args) -> dict:
    """The fitted lines, then (with the throughput rates) the full-dataset tables."""
    fits = {s: dict(zip(("intercept_mb", "mb_per_million_products", "startup_s", "s_per_million_products"),
                        (*fit_memory(results, s), *fit_time(results, s)))) for s in STAGES}
    print("\nfitted over the sizes: peak memory = a + b x products, wall time = t0 + c x products")
    for stage, fit in fits.items():
        print(f"  {stage:7s} a {fit['intercept_mb']:6.0f} MB  b {fit['mb_per_million_products']:7.0f} MB/M products   "
              f"t0 {fit['startup_s']:6.1f} s  c {fit['s_per_million_products']:8.1f} s/M products")
    out: dict = {"fits": fits}
    if rates:
        proj = projection(results, rates, args.cores, args.machines, args.gpu_images_per_s)
        disk = disk_rows(sizes["index_bytes_per_product"], sizes["preds_bytes_per_product"])
        print("\nFull dataset (7,069,896 train + 1,768,182 test products), projected from the figures above:\n")
        print(markdown(["stage", "scales with", "hours, one machine", f"hours, {args.machines} machines", "peak memory"], proj))
        print()
        print(markdown(["disk", "size"], disk))
        out |= {"projection": proj, "disk": disk}
    return out


def report(path: Path, args) -> dict:
    saved = json.loads(path.read_text())
    keep = {"stage", "products", "seconds", "peak_mb"}
    results = [Measure(**{k: v for k, v in r.items() if k in keep}) for r in saved["results"]]
    data = path.parent / "data"  # the largest size's files, left by the run that saved this
    sizes = {"index_bytes_per_product": saved.get("index_bytes_per_product") or index_bytes_per_product(data),
             "preds_bytes_per_product": saved.get("preds_bytes_per_product") or preds_bytes_per_product(data)}
    return print_projection(results, saved["rates"], sizes, args)


if __name__ == "__main__":
    main()
