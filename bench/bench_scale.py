"""Scale benchmark: every CPU stage of the full profile on a large BSON in the official format,
measured at several sizes, then projected to the full dataset.

    python bench/bench_scale.py --quick                       # 40,000-160,000 train products, text 10k-100k: < 10 min here
    python bench/bench_scale.py [--products 200000] [--steps 3] [--protocol holdout|kfold] [--stack-rounds 200]
                                [--text-sizes 100000 300000 1000000] [--work work/bench_scale]
    python bench/bench_scale.py --report work/bench_scale/bench_scale.json    # re-print the tables

Data: train products cycle the real JPEGs of train_example.bson with fresh _ids and category ids
drawn from the real per-category counts; test products (a quarter as many) carry no category_id.
At each size every stage runs as its own process, as run_all.sh runs it; wall time and peak RSS:

  read       plain sequential read of train.bson + test.bson in 8 MB chunks (the I/O baseline)
  index      python -m common.prepare (index train and test)
  stats      python -m common.stats on train.bson (md5 of every image, counts, figures)
  folds      python -m common.folds, the full profile's protocol by default: one holdout of the
             2nd team's share (50,000 of 7,069,896 products), every other product fold -1
  select     the OCR stage's product selection (ocr.run.select) over the solution blends
  md5        python -m md5.run (hash every image, fold-honest dictionary, votes, override)
  stack      python -m ensembling.stack over the sources (--stack-rounds, default 200 as the stage; CV + final model)
  report     python -m ensembling.report
  ocr_text   the OCR text model (the stage's defaults) on --text-sizes synthetic French cover texts
             over the real media categories: one fold model, then top-K for a quarter as many

Sources: those the full profile leaves for the stacker, from the recipe registry (prediction
recipes, solution blends, OCR; MD5's is real), synthetic top-20 lists (first label right w.p.
0.75). Memory and time are fitted as a + b x products. Then, once, at the largest size: loader
images/s (1 and 2 workers) against a bare decode+resize, mini-model inference products/s and
tesseract images/s per core; everything goes to <work>/bench_scale.json and the projection for the
full dataset (peak memory against a 32 GB machine) is printed last. GPU cells stay "not measured"
unless --gpu-images-per-s comes from a measured run (bench/bench_train.py --device cuda).
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
from common.sources import write_summary  # noqa: E402
from ensembling.stack.config import StackConfig  # noqa: E402
from bench.scale_text import category_weights  # noqa: E402

MB = 1 << 20
# the full dataset (../shared/reference/winning-solutions.md)
FULL = {"train_products": 7_069_896, "test_products": 1_768_182, "train_images": 12_371_293, "test_images": 3_095_080,
        "train_bytes": 58.2e9, "test_bytes": 14.5e9}
STAGES = ("read", "index", "stats", "folds", "select", "md5", "stack", "report", "ocr_text")


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


def full_profile_sources() -> dict[str, str]:
    """name -> kind of every source the full profile's run_all.sh leaves for the stacker, from the
    recipe registry (so it grows with the recipes): each prediction recipe, each solution's blend,
    and OCR (MD5 runs as its own measured stage and adds its real source)."""
    from common.recipe import profile_configs

    import importlib

    configs = [c for c in profile_configs("full") if c.stage != "base"]  # base nets store features, not predictions
    sources = {f"{c.solution}_{c.name}": "model" for c in configs}
    blends = {c.solution: importlib.import_module(f"solutions.{c.solution}.submit").BLEND.kind for c in configs}
    return sources | blends | {"ocr": "side source"}


def write_sources(work: WorkDir, sources: dict[str, str], seed: int = 0) -> None:
    """Synthetic top-K for every source over the products its stage predicts: the OOF products of
    the folds (under the holdout protocol: the holdout only) and every test product; OCR only
    over the share of products that are media."""
    from common.prepare import DatasetPaths
    from common.workdata import Labels, load_fold_data

    labels, data = Labels.load(work), load_fold_data(work)
    predicted = np.isin(labels.ids, data.train.index.ids[data.fold >= 0])
    test_ids = np.sort(np.asarray(DatasetPaths.load(work).index(work, "test").ids, np.int64))
    n_classes = len(data.tree)
    rng = np.random.default_rng(seed)
    test_truth = rng.integers(0, n_classes, len(test_ids))
    for name, kind in sources.items():
        share = media_image_share() if name == "ocr" else 1.0
        for split, ids, truth in (("oof", labels.ids[predicted], labels.labels[predicted]), ("test", test_ids, test_truth)):
            keep = rng.random(len(ids)) < share
            save_topk(work.preds(name) / f"{split}.npz", synthetic_topk(np.asarray(ids[keep], np.int64), truth[keep], n_classes, rng))
        members = [m for m, k in sources.items() if k == "model" and m.startswith(f"{name}_")] if kind == "solution blend" else []
        write_summary(work, name, kind, solution="bench", members=members)


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
    sel = select(WorkDir(work), data, OcrOptions())[0]  # the default sources: every solution / team blend
    print(f"selected {len(sel.train_rows)} train, {len(sel.test_rows)} test products")


# The full profile's holdout: the 2nd team's 50,000 products of 7,069,896 (common/plan.py OFFICIAL),
# but never under MIN_HOLDOUT products (the stacker's inner CV needs some in every fold).
HOLDOUT_SHARE, MIN_HOLDOUT = 50_000 / 7_069_896, 200


def holdout_fraction(n_train: int) -> float:
    return max(HOLDOUT_SHARE, min(0.5, MIN_HOLDOUT / n_train))


def stage_commands(work: Path, paths: tuple[Path, Path], n_train: int, rounds: int, max_train: int = 0, protocol: str = "holdout") -> dict[str, list[str]]:
    py = sys.executable
    folds = ["--protocol", "holdout", "--holdout-fraction", f"{holdout_fraction(n_train):.6f}"] if protocol == "holdout" else ["--n-folds", "3"]
    return {
        "index": [py, "-m", "common.prepare", "--train", str(paths[0]), "--test", str(paths[1]), "--work", str(work), "--no-progress"],
        "stats": [py, "-m", "common.stats", "--bson", str(paths[0]), "--out", str(work / "stats" / "train"), "--no-progress"],
        "folds": [py, "-m", "common.folds", "--work", str(work), *folds],
        "md5": [py, "-m", "md5.run", "--work", str(work)],
        "select": [py, "-c", f"from bench.bench_scale import select_main; select_main({str(work)!r})"],
        "stack": [py, "-m", "ensembling.stack", "--work", str(work), "--rounds", str(rounds), "--max-train-products", str(max_train)],
        "report": [py, "-m", "ensembling.report", "--work", str(work)],
    }


def measure_size(work: Path, n_train: int, tree: CategoryTree, rounds: int, max_train: int = 0, protocol: str = "holdout") -> list[Measure]:
    """Every stage at one size, on fresh files and a fresh work dir, in run_all.sh's order."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = write_bsons(work, n_train, tree)
    n_all = n_train + n_train // 4
    cmds = stage_commands(work, paths, n_train, rounds, max_train, protocol)
    sequential_read(paths)  # warm the page cache: every figure is from memory, as in bench_bson
    results = [Measure("read", n_all, *sequential_read(paths))]
    for stage in ("index", "stats", "folds"):
        results.append(Measure(stage, n_all if stage == "index" else n_train, *run_measured(cmds[stage], work)))
    write_sources(WorkDir(work), full_profile_sources())
    for stage in ("select", "md5", "stack", "report"):
        results.append(Measure(stage, n_all, *run_measured(cmds[stage], work)))
    for m in results:
        print(f"  {m.stage:7s} {m.products:9,d} products {m.seconds:8.1f} s {m.products_per_s:11,.0f} products/s  peak {m.peak_mb:7.0f} MB")
    return results



def measure_text_model(work: Path, sizes: tuple[int, ...]) -> list[Measure]:
    out = []
    for n in sizes:
        cmd = [sys.executable, "-c", f"from bench.scale_text import text_model_main; text_model_main({n})"]
        out.append(Measure("ocr_text", n, *run_measured(cmd, work)))
        print(f"  ocr_text {n:9,d} read products {out[-1].seconds:8.1f} s  peak {out[-1].peak_mb:7.0f} MB")
    return out


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
    """(start-up seconds, seconds per million products): the slope leaves process start-up out.
    Where start-up noise hides the growth (slope <= 0), the largest size's own rate through the
    origin is used instead: an upper bound, never a stage that gets faster with more data."""
    t0, slope = fit_line(results, stage, "seconds")
    if slope > 0 or not np.isfinite(slope):
        return t0, slope
    largest = max((m for m in results if m.stage == stage), key=lambda m: m.products)
    return 0.0, largest.seconds / (largest.products / 1e6)


def projected_peak_mb(results: list[Measure], stage: str, units: float) -> float:
    """The fitted line at `units`, never below the largest peak measured (a noisy or flat fit)."""
    a, b = fit_memory(results, stage)
    measured = max(m.peak_mb for m in results if m.stage == stage)
    return max(measured, a + (b if np.isfinite(b) else 0.0) * units / 1e6)


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


MACHINE_GB = 32  # the budget every CPU stage must fit at full scale (issue: a 32 GB machine)
MULTI_MACHINE = {"ocr read": "--shard i/{n}, then --merge-caches", "md5": "--shard i/{n}, then one run merges", "stack": "--dask tcp://scheduler:8786 (xgboost.dask)"}


def full_units(stage: str) -> tuple[float, str]:
    """What a stage's fit is evaluated at on the real data, and its label."""
    all_products = FULL["train_products"] + FULL["test_products"]
    if stage == "folds":
        return FULL["train_products"], f"{FULL['train_products']:,} train products"
    if stage == "ocr_text":
        n = media_image_share() * FULL["train_products"]  # read train products, one fold model (holdout) + predict a quarter as many
        return n, f"{n:,.0f} read train products (one fold model)"
    return all_products, f"{all_products:,} products"


PARALLEL = {"md5": "hashing processes", "stack": "XGBoost threads", "ocr_text": "one-vs-rest jobs"}  # use every core


def projection(results: list[Measure], rates: dict[str, float], cores: int, machines: int, gpu_images_per_s: float | None) -> list[list[str]]:
    """Rows: stage, what it scales with, hours measured here, hours on a `cores`-core machine
    (stages in PARALLEL divided by cores / cores here: linear scaling assumed, not measured), on N
    machines, peak memory, and whether it fits MACHINE_GB."""
    here = os.cpu_count() or 1
    rows = []
    for stage in STAGES:
        if not any(m.stage == stage for m in results):
            continue
        units, label = full_units(stage)
        t0, per_million = fit_time(results, stage)
        hours = (t0 + per_million * units / 1e6) / 3600
        big = f"{hours * here / cores:.2f} ({PARALLEL[stage]} x {cores}, assumed linear)" if stage in PARALLEL else f"{hours:.2f} (one process)"
        gb = projected_peak_mb(results, stage, units) / 1024
        memory = "-" if stage == "read" else f"{gb:.1f} GB"
        fits = "-" if stage == "read" else ("yes" if gb <= MACHINE_GB else "NO")
        many = MULTI_MACHINE.get(stage, "same (one process)").format(n=machines)
        rows.append([stage, label, f"{hours:.2f}", big, many, memory, fits])
    ocr_images = media_image_share() * (FULL["train_images"] + FULL["test_images"])
    ocr_hours = ocr_images / rates["ocr_images_per_s_per_core"] / 3600
    rows.append(["ocr read", f"{ocr_images:,.0f} media images", f"{ocr_hours / here:.1f}", f"{ocr_hours / cores:.1f} (tesseract x {cores})",
                 f"{ocr_hours / cores / machines:.1f} ({MULTI_MACHINE['ocr read'].format(n=machines)})", "per worker ~ tesseract", "yes"])
    if gpu_images_per_s:
        epoch = FULL["train_images"] / gpu_images_per_s / 3600
        rows.append(["train epoch (GPU)", f"{FULL['train_images']:,} images", "-", f"{epoch:.1f}", f"{epoch / machines:.1f} (torchrun)", "-", "-"])
    else:
        rows.append(["train / infer (GPU)", "images", "-", "not measured", "not measured", "not measured", "-"])
    return rows


def index_bytes_per_product(data: Path) -> float:
    n = sum(len(np.load(p, mmap_mode="r")) for p in (data / "index").glob("*.npy"))
    return sum(p.stat().st_size for p in (data / "index").iterdir() if p.is_file()) / n


def preds_bytes_per_product(data: Path) -> float:
    """One source's OOF + test files over the products they hold."""
    from common.predictions import load_topk

    first = next(iter(full_profile_sources()))
    files = [data / "preds" / first / f for f in ("oof.npz", "test.npz")]
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
    p.add_argument("--stack-rounds", type=int, default=StackConfig().rounds, help="the stacker's default: its time is the stage's")
    p.add_argument("--stack-max-train-products", type=int, default=0, help="the stacker's --max-train-products (0: every product)")
    p.add_argument("--cores", type=int, default=16, help="cores of the projected machine")
    p.add_argument("--machines", type=int, default=4, help="N for the N-machine column")
    p.add_argument("--gpu-images-per-s", type=float, default=None, help="a measured training rate (bench_train.py --device cuda)")
    p.add_argument("--protocol", default="holdout", choices=("holdout", "kfold"), help="the folds (holdout: the full profile's)")
    p.add_argument("--text-sizes", type=int, nargs="*", default=[100_000, 300_000, 1_000_000], help="read products for the OCR text model")
    p.add_argument("--quick", action="store_true", help="40,000 to 160,000 train products, text 10k-100k: under 10 min on 2 cores")
    p.add_argument("--skip-throughput", action="store_true", help="only the per-size stages")
    p.add_argument("--report", default=None, help="re-print the projection from a saved bench_scale.json (no measuring)")
    args = p.parse_args(argv)
    if args.quick:
        args.products, args.steps, args.text_sizes = 160_000, 3, [10_000, 30_000, 100_000]
    if args.report:
        return report(Path(args.report), args)
    work = Path(args.work) if args.work else default_work_dir() / "bench_scale"
    tree = CategoryTree.from_csv(CATEGORY_NAMES_CSV)
    results: list[Measure] = []
    for k in reversed(range(args.steps)):
        n = args.products >> k
        print(f"size {n:,} train + {n // 4:,} test products")
        results += measure_size(work / "data", n, tree, args.stack_rounds, args.stack_max_train_products, args.protocol)
    print("OCR text model (synthetic French titles over the real media categories)")
    results += measure_text_model(work, tuple(args.text_sizes))
    rates: dict[str, float] = {}
    if not args.skip_throughput:
        scale = 4 if args.quick else 1
        rates = {**loader_rates(work, n_images=2048 // scale), "mini_inference_products_per_s": inference_rate(work / "data", 2000 // scale),
                 "ocr_images_per_s_per_core": ocr_rate(256 // scale)}
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
                        (*fit_memory(results, s), *fit_time(results, s)))) for s in STAGES if any(m.stage == s for m in results)}
    print("\nfitted over the sizes: peak memory = a + b x products, wall time = t0 + c x products")
    for stage, fit in fits.items():
        print(f"  {stage:8s} a {fit['intercept_mb']:6.0f} MB  b {fit['mb_per_million_products']:7.0f} MB/M products   "
              f"t0 {fit['startup_s']:6.1f} s  c {fit['s_per_million_products']:8.1f} s/M products")
    out: dict = {"fits": fits}
    if rates:
        proj = projection(results, rates, args.cores, args.machines, args.gpu_images_per_s)
        disk = disk_rows(sizes["index_bytes_per_product"], sizes["preds_bytes_per_product"])
        print("\nFull dataset (7,069,896 train + 1,768,182 test products), projected from the figures above:\n")
        here = os.cpu_count() or 1
        print(markdown(["stage", "scales with", f"hours here ({here} cores)", f"hours, {args.cores} cores", f"{args.machines} machines",
                        "peak memory", f"fits {MACHINE_GB} GB"], proj))
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
