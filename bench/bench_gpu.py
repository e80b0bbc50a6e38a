"""GPU throughput of the full recipes: training and inference images/s, fed (a) by the project's
loader over a BSON of real JPEGs and (b) by synthetic tensors already on the device, so the
loader's share shows; then torch.compile'd training while the budget lasts. Writes the JSON that
`python -m common.plan` reads (and a markdown table). bench/gpu_check.sh is the one command to run
on a GPU machine; it calls this.

    python bench/bench_gpu.py [--budget-s 390] [--out F.json] [--markdown F.md]
    python bench/bench_gpu.py --recipes dylan/dpn107 convoluted/base_dpn92
    python bench/bench_gpu.py --device cpu --smoke --one-per-kind     # the wiring on a CPU in minutes (no GPU figures)

Per recipe, costliest first (the plan's GPU-hours: a budget cut drops the cheap ones), as the
trainer runs it under the schedule of the pipeline graph: of the G GPUs the plan gives the recipe on
a machine of --gpus N (default 8), one process's micro-batch and accumulation (common.config.for_world);
its network (random init: weights do not change the speed), optimiser (fused on CUDA), bf16 autocast
and channels_last on CUDA (a CPU runs fp32), its crop, its on-device augmentations and its loader
(single images; bestfitting: products of K images composed side by side, counted in tiles) with
the workers one GPU's process gets of this machine's cores. A training step is common.train's
micro_step; inference one forward per TTA view at the recipe's eval batch. `--warmup` steps first
(the allocator, the loader workers' start, cudnn), then `--steps` timed steps. The BSON
(train_example.bson's 82 real products cycled) is read from the page cache: a cold 58 GB file may
feed slower. Heads on stored features (fuse, rank_count) are no CNNs: skipped with the reason (the
plan bounds them by disk reads). Every other recipe is measured, or skipped with why (the budget, a
config this setting cannot build), or recorded with its error: the run itself never stops on one.
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
from common.bench_feed import BenchData, Feed  # noqa: E402
from common.bson_index import build_index  # noqa: E402
from common.bson_reader import BsonReader  # noqa: E402
from common.config import for_world  # noqa: E402
from common.models import is_timm_model, smallest_input  # noqa: E402
from common.paths import REPO, WorkDir, default_work_dir  # noqa: E402
from common.recipe import load_recipe, sized  # noqa: E402
from common.registry import solution, solution_of_path  # noqa: E402
from common.throughput import DEFAULT_THROUGHPUT, network  # noqa: E402
from common.train import Batch, Runtime, autocast, build_optimizer, forward, micro_step, optimizer_step, prepare_model, train_transform  # noqa: E402

COMPILE_MIN_S = 90.0  # the compile pass starts a recipe only with this much budget left (inductor takes a minute or two per network)


# ----------------------------------------------------------------------------- recipes


@dataclasses.dataclass
class Planned:
    cfg: object
    kind: object
    gpus: int  # G: the GPUs the schedule gives the recipe
    gpu_hours: float  # the plan's figure (the order of the measurements)


def recipe(spec: str):
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


def planned_recipes(args) -> list[Planned]:
    """The full profile's recipes (or --recipes) with the G and GPU-hours of the plan on --gpus N, costliest first."""
    from common.pipeline import RunOptions, build_graph
    from common.plan import PlanOptions, plan

    p = plan(PlanOptions(profile="full", gpus=args.gpus, throughput=""), WorkDir(Path(args.work) / "plan"))
    gpus, hours = p["schedule"]["gpus_per_recipe"], {r["source"]: r["gpu_hours"] for r in p["recipes"]}
    if args.recipes:
        pairs = [recipe(s) for s in args.recipes]
    else:
        pairs = [(n.recipe, n.recipe_kind) for n in build_graph(RunOptions(profile="full"), WorkDir()).recipes()]
    out = [Planned(cfg, kind, gpus.get(cfg.source, 1), hours.get(cfg.source, 0.0)) for cfg, kind in pairs]
    if args.one_per_kind:
        out = one_per_kind(out)
    return sorted(out, key=lambda r: -r.gpu_hours)


def one_per_kind(recipes: list[Planned]) -> list[Planned]:
    """Per (solution, stage): the recipe with the smallest network (a smoke test of every kind's feed)."""
    def params(r: Planned) -> float:
        return network(r.cfg.model).params if is_timm_model(r.cfg.model) else 0

    best: dict[tuple, Planned] = {}
    for r in recipes:
        key = (r.cfg.solution, r.cfg.stage)
        if key not in best or params(r) < params(best[key]):
            best[key] = r
    return list(best.values())


def adjust(r: Planned, args) -> object:
    """The recipe as measured: one of its G processes' split of the global batch, random init, and
    the --smoke / --size / --batch / --workers overrides (a size below the stem's smallest is raised to it)."""
    cfg = for_world(r.cfg, r.gpus)
    changes = {"resume": False, "pretrained": None, "num_workers": args.workers if args.workers is not None else default_workers(cfg, args)}
    if is_timm_model(cfg.model) and (args.smoke or args.size):
        changes |= sized(cfg, max(args.size, smallest_input(cfg.model)) if args.size else smallest_input(cfg.model))
    batch = args.batch or (2 if args.smoke else 0)
    if batch:
        changes |= {"batch_size": batch, "eval_batch_size": batch, "accum_steps": 1, "global_batch": 0}
    return dataclasses.replace(cfg, **changes)


def default_workers(cfg, args) -> int:
    """The loader workers one GPU's process gets when every GPU of the machine trains: its cores / --gpus."""
    return max(1, min(cfg.num_workers, (os.cpu_count() or 2) // max(args.gpus, 1)))


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


def timed(step: Callable[[int, Batch], None], source: Iterator[Batch], warmup: int, steps: int, runtime: Runtime) -> tuple[float, float]:
    """(images per second over `steps` steps, seconds of the `warmup` untimed ones before); the batch fetch is timed."""
    start = time.perf_counter()
    for i in range(warmup):
        step(i, next(source))
    sync(runtime)
    warm_s, seen, start = time.perf_counter() - start, 0, time.perf_counter()
    for i in range(steps):
        batch = next(source)
        step(warmup + i, batch)
        seen += images_in(batch)
    sync(runtime)
    return seen / (time.perf_counter() - start), warm_s


def train_rate(cfg, feed: Feed, net: torch.nn.Module, loader: bool, args, runtime: Runtime) -> tuple[float, float]:
    """The trainer's micro-step (common.train.micro_step), an optimiser step every accum_steps (no DDP: one process's share)."""
    model = feed.model.train()
    optimizer, transform = build_optimizer(cfg, model, runtime.cuda), train_transform(cfg, model)
    scaler = torch.amp.GradScaler(enabled=runtime.cuda and cfg.amp == "fp16")

    def step(i: int, batch: Batch) -> None:
        micro_step(cfg, net, batch, transform, scaler, runtime)
        if (i + 1) % cfg.accum_steps == 0:
            optimizer_step(optimizer, scaler)

    rate = timed(step, batches(feed, True, loader, runtime), args.warmup, args.steps, runtime)
    optimizer.zero_grad(set_to_none=True)
    return rate


@torch.no_grad()
def infer_rate(cfg, feed: Feed, loader: bool, args, runtime: Runtime) -> float:
    """One forward per TTA view (the inference driver's unit), eval batch, autocast."""
    model = feed.model.eval()

    def step(i: int, batch: Batch) -> None:
        with autocast(cfg, runtime):
            forward(model, batch.inputs).float().softmax(1)

    return timed(step, batches(feed, False, loader, runtime), args.warmup, args.steps, runtime)[0]


def describe(cfg, r: Planned, args) -> dict:
    return {"source": cfg.source, "solution": cfg.solution, "name": cfg.name, "model": cfg.model, "stage": cfg.stage,
            "input_size": cfg.crop or cfg.input_size, "gpus_per_recipe": r.gpus, "per_gpu_batch": cfg.batch_size * cfg.accum_steps,
            "micro_batch": cfg.batch_size, "accum_steps": cfg.accum_steps, "eval_batch": cfg.eval_batch_size, "workers": cfg.num_workers,
            "amp": cfg.amp, "channels_last": cfg.channels_last, "augment": list(cfg.augment), "plan_gpu_hours": round(r.gpu_hours, 2),
            "warmup": args.warmup, "steps": args.steps}


def measure(cfg, r: Planned, data: BenchData, args, runtime: Runtime) -> dict:
    """Pass 1, eager: train and infer images/s, synthetic and loader-fed."""
    start = time.perf_counter()
    feed = r.kind.bench_feed(cfg, data, runtime)
    prepare_model(cfg, feed.model, runtime)
    if runtime.cuda:
        torch.cuda.reset_peak_memory_stats(runtime.device)
    out = describe(cfg, r, args) | {"train_img_s": {}, "infer_img_s": {}}
    for feed_name, loader in (("synthetic", False), ("loader", True)):
        out["train_img_s"][feed_name] = round(train_rate(cfg, feed, feed.model, loader, args, runtime)[0], 1)
        out["infer_img_s"][feed_name] = round(infer_rate(cfg, feed, loader, args, runtime), 1)
    for what in ("train_img_s", "infer_img_s"):  # the throughput the loader costs (0 = the GPU is the limit)
        rates = out[what]
        rates["loader_share"] = round(max(0.0, 1 - rates["loader"] / rates["synthetic"]), 3)
    if runtime.cuda:
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(runtime.device) / 1e9, 2)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def measure_compiled(cfg, r: Planned, data: BenchData, args, runtime: Runtime) -> dict:
    """Pass 2: synthetic-fed training through torch.compile (the warm-up steps pay the compile)."""
    start = time.perf_counter()
    torch._dynamo.reset()
    feed = r.kind.bench_feed(cfg, data, runtime)
    prepare_model(cfg, feed.model, runtime)
    rate, warm_s = train_rate(cfg, feed, torch.compile(feed.model), False, args, runtime)
    return {"synthetic": round(rate, 1), "compile_and_warmup_s": round(warm_s, 1), "seconds": round(time.perf_counter() - start, 1)}


def guarded(fn: Callable[[], dict], source: str) -> dict:
    """One measurement; an error (out of memory, a network this setting cannot build) is recorded in one line and the bench goes on."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - whatever one recipe raises, the others are still measured
        print(f"{source}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", flush=True)
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the run


def run_passes(recipes: list[Planned], data: BenchData, args, runtime: Runtime, result: dict, out: Path, start: float) -> None:
    """Pass 1 (eager) over every recipe, then pass 2 (compile) over the measured ones, within --budget-s; written after each."""
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    measured = []
    for r in recipes:
        source = r.cfg.source
        if r.kind.bench_feed is None:
            result["skipped"][source] = f"stage {r.cfg.stage}: {r.kind.bench_skip or 'no benchmark feed registered (RecipeKind.bench_feed)'}"
        elif left() <= 0:
            result["skipped"][source] = f"not measured: over the {args.budget_s:.0f} s budget (--budget-s)"
        else:
            cfg = guarded(lambda: adjust(r, args), source)
            if isinstance(cfg, dict):
                result["skipped"][source] = f"cannot be set up at this setting: {cfg['error']}"
            else:
                result["recipes"][source] = guarded(lambda: measure(cfg, r, data, args, runtime), source) | {"source": source}
                measured.append((r, cfg))
        write(out, args.markdown, result)
    for r, cfg in measured if args.compile else []:
        entry = result["recipes"][r.cfg.source]
        if "error" in entry:
            continue
        if left() < COMPILE_MIN_S:
            entry["compiled"] = {"skipped": f"under {COMPILE_MIN_S:.0f} s of the budget left"}
        else:
            entry["compiled"] = guarded(lambda: measure_compiled(cfg, r, data, args, runtime), r.cfg.source)
        write(out, args.markdown, result)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", default=None, help="solution/name or YAML paths (default: every full recipe)")
    p.add_argument("--one-per-kind", action="store_true", help="per solution and stage only the recipe with the smallest network")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="the smallest setting: each stem's smallest input, batch 2, 1 + 1 steps, a 1 MB BSON, no compile")
    p.add_argument("--quick", action="store_true", help="fewer steps and a smaller BSON")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the machine planned: the schedule's G per recipe and the cores per GPU (default 8)")
    p.add_argument("--size", type=int, default=0, help="what the network sees (default: the recipe's input size or crop)")
    p.add_argument("--batch", type=int, default=0, help="override micro and eval batch (default: the recipe's split for its G GPUs)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the recipe's, at most this machine's cores / --gpus)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per measurement (default 20, --quick 8, --smoke 1)")
    p.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 5, --quick 3, --smoke 1)")
    p.add_argument("--size-mb", type=int, default=0, help="bench BSON size (default 96, --quick 48, --smoke 1)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="pass 2, torch.compile'd training (default: on CUDA, not with --smoke)")
    p.add_argument("--budget-s", type=float, default=390.0, help="start no measurement after this many seconds (the rest are listed as skipped)")
    p.add_argument("--work", default=None, help="folder of the bench BSON (default: <work dir>/bench_gpu)")
    p.add_argument("--out", default=None, help=f"JSON written (default: {DEFAULT_THROUGHPUT.relative_to(REPO)} on a GPU, <work>/cpu_throughput.json on a CPU)")
    p.add_argument("--markdown", default=None, help="also write the table as markdown here")
    args = p.parse_args(argv)
    smoke = lambda full, quick: 1 if args.smoke else quick if args.quick else full  # noqa: E731
    args.steps, args.warmup, args.size_mb = args.steps or smoke(20, 8), args.warmup or smoke(5, 3), args.size_mb or smoke(96, 48)
    if args.compile is None:
        args.compile = args.device == "cuda" and not args.smoke
    return args


def device_name(runtime: Runtime) -> str:
    return torch.cuda.get_device_name(runtime.device) if runtime.cuda else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    runtime = Runtime(torch.device(args.device))
    args.work = str(Path(args.work) if args.work else default_work_dir() / "bench_gpu")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (DEFAULT_THROUGHPUT if runtime.cuda else Path(args.work) / "cpu_throughput.json")
    start = time.perf_counter()
    recipes, data = planned_recipes(args), bench_data(Path(args.work), args.size_mb)
    result = {"device": device_name(runtime), "gpu": runtime.cuda, "torch": torch.__version__, "amp": "the recipe's (bf16) autocast" if runtime.cuda else "none (CPU: fp32)",
              "channels_last": runtime.cuda, "cores": os.cpu_count(), "planned_gpus": args.gpus, "size": args.size or ("smallest" if args.smoke else "recipe"),
              "quick": args.quick, "smoke": args.smoke, "budget_s": args.budget_s, "bson": {"products": len(data.rows), "images": data.images},
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "recipes": {}, "skipped": {}}
    run_passes(recipes, data, args, runtime, result, out, start)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write(out, args.markdown, result)
    print(markdown(result))
    print(f"wrote {out}{' and ' + args.markdown if args.markdown else ''} ({result['seconds']:.0f} s)")
    return result


def write(path: Path, md: str | None, result: dict) -> None:
    """The JSON (and the markdown) as they stand: a killed run keeps what it measured."""
    from common.atomic import atomic_path, write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    if md:
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(md)) as tmp:
            Path(tmp).write_text(markdown(result) + "\n")


def markdown(result: dict) -> str:
    """The figures as a markdown table (images/s per GPU; bestfitting: tiles/s), then the skipped recipes."""
    lines = [f"{result['device']}, torch {result['torch']}, {result['amp']}, channels_last {result['channels_last']}, {result['cores']} cores; "
             f"per-GPU split of the schedule on {result['planned_gpus']} GPUs; images/s per GPU (bestfitting: tiles/s)", "",
             "| recipe | G | batch/GPU (micro x accum) | px | train loader | train synthetic | train compiled | infer loader | infer synthetic | loader share (train) | peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for source, r in result["recipes"].items():
        if "error" in r:
            lines.append(f"| {source} | error: {r['error'][:120]} |||||||||")
            continue
        t, i, c = r["train_img_s"], r["infer_img_s"], r.get("compiled", {})
        compiled = f"{c['synthetic']:.1f}" if "synthetic" in c else c.get("skipped", c.get("error", "-"))[:40]
        lines.append(f"| {source} | {r['gpus_per_recipe']} | {r['per_gpu_batch']} ({r['micro_batch']} x {r['accum_steps']}) | {r['input_size']} | "
                     f"{t['loader']:.1f} | {t['synthetic']:.1f} | {compiled} | {i['loader']:.1f} | {i['synthetic']:.1f} | {t['loader_share']:.0%} | "
                     f"{r.get('peak_gpu_memory_gb', '-')} |")
    lines += [f"- {source}: skipped, {why}" for source, why in result["skipped"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
