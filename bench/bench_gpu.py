"""GPU throughput of the full recipes: training and inference images/s, fed (a) by the project's
loader over a BSON of real JPEGs and (b) by synthetic tensors already on the device, so the
loader's share shows. Writes the JSON that `python -m common.plan` reads.

    python bench/bench_gpu.py                 # every full CNN recipe at its 180 px, ~10 min on one GPU
    python bench/bench_gpu.py --quick         # fewer steps (~4 min)
    python bench/bench_gpu.py --recipes dylan/dpn107 convoluted/base_dpn92 [--out FILE]
    python bench/bench_gpu.py --cpu --quick --size 64 --batch 8 --recipes dylan/mini_lite0 bestfitting/mini_lite0_strip

Per recipe, as the trainer runs it on one GPU: its network (random init: weights do not change the
speed), its optimiser, its micro-batch and accumulation for one process (common.config.for_world),
bf16 autocast and channels_last on CUDA (common.train; a CPU runs fp32), its on-device
augmentations, its loader (dylan and the 2nd place's base nets: single images; bestfitting:
products of one image count K composed side by side, counted in tiles). Inference is one forward
per TTA view at the recipe's eval batch (cudnn.benchmark off, as in the trainer). `--warmup` steps first (the allocator,
the loader workers' start), then `--steps` timed steps; the BSON (train_example.bson's 82 real
products cycled, bench/bench_bson.py's file) is read from the page cache, so a cold 58 GB file
may feed the loader slower. Heads on stored features (fuse, rank_count) are not CNNs: the plan
bounds them by disk reads. Figures are per GPU (one process); the JSON says the device, and a
CPU run is marked `"gpu": false` (its figures are no GPU figures).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/bench_gpu.py` from anywhere

from bench.bench_bson import bench_file  # noqa: E402
from common.augment import build_augment  # noqa: E402
from common.bench_feed import BenchData, Feed  # noqa: E402
from common.bson_index import build_index  # noqa: E402
from common.bson_reader import BsonReader  # noqa: E402
from common.config import for_world  # noqa: E402
from common.paths import REPO, WorkDir, default_work_dir  # noqa: E402
from common.pipeline import RunOptions, build_graph  # noqa: E402
from common.recipe import load_recipe  # noqa: E402
from common.registry import solution, solution_of_path  # noqa: E402
from common.throughput import DEFAULT_THROUGHPUT  # noqa: E402
from common.train import Batch, Runtime, autocast, build_optimizer, forward, masked_cross_entropy, prepare_model  # noqa: E402


# ----------------------------------------------------------------------------- recipes and data


def recipe(spec: str) -> tuple:
    """`solution/name` (a recipe of that solution's configs folder) or a YAML path there: (config, its RecipeKind)."""
    if spec.endswith(".yaml"):
        sol = solution_of_path(Path(spec))
        if sol is None:
            raise SystemExit(f"--recipes {spec}: not in a solution's configs folder")
        path = Path(spec)
    else:
        sol = solution(spec.split("/")[0])
        path = sol.configs / f"{spec.split('/', 1)[1]}.yaml"
    cfg = load_recipe(path, sol)
    return cfg, sol.kinds()[0][cfg.stage]


def profile_recipes() -> list[tuple]:
    """Every recipe node of the full profile's graph: (config, its RecipeKind)."""
    return [(n.recipe, n.recipe_kind) for n in build_graph(RunOptions(profile="full"), WorkDir()).recipes()]


def adjust(cfg, args):
    """The recipe as measured: one process's split of its global batch, random init, --size / --batch / --workers overrides."""
    changes = {"input_size": args.size or cfg.input_size, "resume": False, "pretrained": None}  # random init: no weight file needed
    if args.batch:
        changes |= {"batch_size": args.batch, "eval_batch_size": args.batch, "accum_steps": 1, "global_batch": 0}
    if args.workers is not None:
        changes["num_workers"] = args.workers
    return for_world(dataclasses.replace(cfg, **changes), 1)


def bench_data(work: Path, size_mb: int) -> BenchData:
    path, _ = bench_file(work, size_mb)
    index = build_index(path, progress=False)
    labels = np.unique(index.category_ids, return_inverse=True)[1].astype(np.int64)
    return BenchData(BsonReader(path, index), np.arange(len(index)), labels, int(index.n_images))


# ----------------------------------------------------------------------------- timing


def images_in(batch: Batch) -> int:
    """Images (tiles) the network saw: [N, C, H, W] or [B, K, C, H, W]."""
    x = batch.inputs[0] if isinstance(batch.inputs, tuple) else batch.inputs
    return int(x.shape[0] * (x.shape[1] if x.dim() == 5 else 1))


def batches(feed: Feed, train: bool, loader: bool, runtime: Runtime) -> Iterator[Batch]:
    """Endless batches: the loader's (a new pass when one ends), or synthetic ones."""
    step = 0
    while True:
        if not loader:
            yield feed.synthetic(step, train)
            step += 1
            continue
        for raw in (feed.train if train else feed.infer)():
            yield feed.to_batch(raw, runtime)


def sync(runtime: Runtime) -> None:
    if runtime.cuda:
        torch.cuda.synchronize(runtime.device)


def timed(step: Callable[[int, Batch], None], source: Iterator[Batch], warmup: int, steps: int, runtime: Runtime) -> float:
    """Images per second over `steps` steps after `warmup` untimed ones (batch fetch included)."""
    for i in range(warmup):
        step(i, next(source))
    sync(runtime)
    seen, start = 0, time.perf_counter()
    for i in range(steps):
        batch = next(source)
        step(warmup + i, batch)
        seen += images_in(batch)
    sync(runtime)
    return seen / (time.perf_counter() - start)


def train_rate(cfg, feed: Feed, loader: bool, args, runtime: Runtime) -> float:
    """The trainer's micro-step: augment, autocast forward, masked cross-entropy, backward; an
    optimiser step every accum_steps micro-steps (common.train.train_one_epoch without DDP)."""
    model = feed.model.train()
    optimizer, transform = build_optimizer(cfg, model), build_augment(cfg.augment)

    def step(i: int, batch: Batch) -> None:
        inputs = transform(batch.inputs) if transform is not None else batch.inputs
        with autocast(cfg, runtime):
            logits = forward(model, inputs)
        loss = masked_cross_entropy(logits.float(), batch.target, batch.valid, cfg.label_smoothing)
        (loss / cfg.accum_steps).backward()
        if (i + 1) % cfg.accum_steps == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    rate = timed(step, batches(feed, True, loader, runtime), args.warmup, args.steps, runtime)
    optimizer.zero_grad(set_to_none=True)  # the gradients go; the optimiser's state goes with this frame
    return rate


@torch.no_grad()
def infer_rate(cfg, feed: Feed, loader: bool, args, runtime: Runtime) -> float:
    """One forward per TTA view (the inference driver's unit), eval batch, autocast."""
    model = feed.model.eval()

    def step(i: int, batch: Batch) -> None:
        with autocast(cfg, runtime):
            forward(model, batch.inputs).float().softmax(1)

    return timed(step, batches(feed, False, loader, runtime), args.warmup, args.steps, runtime)


def measure(cfg, kind, data: BenchData, args, runtime: Runtime) -> dict:
    """Train and infer images/s, loader-fed and synthetic, for one recipe."""
    start = time.perf_counter()
    feed = kind.bench_feed(cfg, data, runtime)
    prepare_model(cfg, feed.model, runtime)
    if runtime.cuda:
        torch.cuda.reset_peak_memory_stats(runtime.device)
    out = {"source": cfg.source, "solution": cfg.solution, "name": cfg.name, "model": cfg.model, "stage": cfg.stage, "input_size": cfg.input_size,
           "micro_batch": cfg.batch_size, "accum_steps": cfg.accum_steps, "eval_batch": cfg.eval_batch_size, "workers": cfg.num_workers,
           "augment": list(cfg.augment), "warmup": args.warmup, "steps": args.steps, "train_img_s": {}, "infer_img_s": {}}
    for feed_name, loader in (("loader", True), ("synthetic", False)):
        out["train_img_s"][feed_name] = round(train_rate(cfg, feed, loader, args, runtime), 1)
        out["infer_img_s"][feed_name] = round(infer_rate(cfg, feed, loader, args, runtime), 1)
    for what in ("train_img_s", "infer_img_s"):  # the throughput the loader costs (0 = the GPU is the limit)
        r = out[what]
        out[what]["loader_share"] = round(max(0.0, 1 - r["loader"] / r["synthetic"]), 3)
    if runtime.cuda:
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(runtime.device) / 1e9, 2)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


# ----------------------------------------------------------------------------- command line


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", default=None, help="solution/name or YAML paths (default: every full CNN recipe)")
    p.add_argument("--quick", action="store_true", help="fewer steps and a smaller BSON (about 4 min for every full recipe)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (smoke test; its figures are no GPU figures)")
    p.add_argument("--size", type=int, default=0, help="input size (default: the recipe's, 180 for every full recipe)")
    p.add_argument("--batch", type=int, default=0, help="override micro and eval batch (default: the recipe's split for one GPU)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the recipe's num_workers)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per measurement (default 20, --quick 6)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 5, --quick 3)")
    p.add_argument("--size-mb", type=int, default=0, help="bench BSON size (default 96, --quick 48; the largest eval batch x steps must fit)")
    p.add_argument("--budget-s", type=float, default=540.0, help="start no recipe after this many seconds (the rest are listed as skipped)")
    p.add_argument("--work", default=None, help="folder of the bench BSON (default: <work dir>/bench_gpu)")
    p.add_argument("--out", default=None, help=f"JSON written (default: {DEFAULT_THROUGHPUT.relative_to(REPO)} on a GPU, <work>/cpu_throughput.json on a CPU)")
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 20)
    args.warmup = args.warmup or (3 if args.quick else 5)
    args.size_mb = args.size_mb or (48 if args.quick else 96)
    return args


def device_name(runtime: Runtime) -> str:
    return torch.cuda.get_device_name(runtime.device) if runtime.cuda else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    runtime = Runtime(torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu"))
    work = Path(args.work) if args.work else default_work_dir() / "bench_gpu"
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (DEFAULT_THROUGHPUT if runtime.cuda else work / "cpu_throughput.json")
    recipes = [recipe(s) for s in args.recipes] if args.recipes else profile_recipes()
    data = bench_data(work, args.size_mb)
    result = {"device": device_name(runtime), "gpu": runtime.cuda, "torch": torch.__version__, "amp": "bf16 autocast" if runtime.cuda else "none (CPU: fp32)",
              "channels_last": runtime.cuda, "size": args.size or "recipe", "quick": args.quick, "bson": {"products": len(data.rows), "images": data.images},
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "recipes": {}, "skipped": {}}
    start = time.perf_counter()
    for cfg, kind in recipes:
        cfg = adjust(cfg, args)
        if kind.bench_feed is None:
            result["skipped"][cfg.source] = f"stage {cfg.stage}: {kind.bench_skip or 'no benchmark feed registered (RecipeKind.bench_feed)'}"
        elif time.perf_counter() - start > args.budget_s:
            result["skipped"][cfg.source] = f"not measured: over the {args.budget_s:.0f} s budget"
        else:
            result["recipes"][cfg.source] = run_one(cfg, kind, data, args, runtime)
        write(out, result)  # after each recipe: a killed run keeps what it measured
    print_table(result)
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    return result


def run_one(cfg, kind, data: BenchData, args, runtime: Runtime) -> dict:
    """One recipe; an error (out of memory, say) is recorded and the next recipe runs."""
    try:
        entry = measure(cfg, kind, data, args, runtime)
    except (RuntimeError, ValueError) as e:
        entry = {"source": cfg.source, "model": cfg.model, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    gc.collect()
    if runtime.cuda:
        torch.cuda.empty_cache()
    return entry


def write(path: Path, result: dict) -> None:
    from common.atomic import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)


def print_table(result: dict) -> None:
    print(f"device {result['device']}, {result['amp']}, channels_last {result['channels_last']}; images/s per GPU (bestfitting: tiles/s)")
    print(f"{'recipe':34s} {'train loader':>12s} {'synthetic':>10s} {'share':>6s} {'infer loader':>12s} {'synthetic':>10s} {'share':>6s}")
    for source, r in result["recipes"].items():
        if "error" in r:
            print(f"{source:34s} {r['error']}")
            continue
        t, i = r["train_img_s"], r["infer_img_s"]
        print(f"{source:34s} {t['loader']:12.1f} {t['synthetic']:10.1f} {t['loader_share']:6.0%} {i['loader']:12.1f} {i['synthetic']:10.1f} {i['loader_share']:6.0%}")
    for source, why in result["skipped"].items():
        print(f"{source:34s} skipped: {why}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
