"""What a profile costs before any GPU hour is spent: per recipe the images it trains and predicts,
GPU-hours from a throughput table, wall-hours on N GPUs, disk per stage, peak RAM of the CPU stages.

    python -m common.plan --profile full [--gpus 8] [--protocol holdout|kfold] [--n-folds 5]
                          [--holdout-fraction 0.05] [--data DIR --work W [--build-index]]
                          [--throughput bench/results/gpu_throughput.json] [--json plan.json]

Trains nothing and runs in seconds on a CPU (FLOPs and parameters are counted on torch's meta
device, without weights). Without --data it plans the official Kaggle data (7,069,896 train
products / 12,371,293 images, 1,768,182 test / 3,095,080); with --data DIR the counts of DIR's
train.bson / test.bson, read from the index `common.prepare` built in --work (--build-index builds
it with the same code). Every figure says where it comes from:
  bench_gpu.json on <device>    measured by bench/bench_gpu.py (default file read when present)
  recorded: <where>             the winners' own logs (images/s on their machines, fp32, 2017 GPUs)
  scaled by FLOPs from <model>  an extrapolation from a recorded model (FLOPs counted here at 180 px)
  assumed: ...                  a stated assumption (e.g. inference = 3 x training images/s)
  bench/README.md               the CPU stages measured by bench/bench_scale.py
Wall-hours on N GPUs are GPU-hours / N: linear scaling is assumed, never measured here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .atomic import write_json
from .cli import parse_stage, run
from .errors import DataError
from .paths import WorkDir
from .plan_figures import (BENCH_CORES, BENCH_README, COLD_READ_MB_S, CPU_FITS, HASH_BYTES, INDEX_BYTES, MEDIA_IMAGE_SHARE, PARALLEL_STAGES,
                           STACK_FIT_ROUNDS, STACK_SOURCES_NOTE, TESSERACT_IMAGES_S_CORE)
from .costs import Cost, CostContext, Counts, Split, data_counts, official_counts, protocol_split
from .throughput import load_throughput

GB = 1e9


def recipe_costs(graph, split: Split, c: Counts, table: dict, read_mb_s: float) -> list[Cost]:
    """Each recipe node's cost, by the cost model its kind registered (RecipeKind.cost)."""
    ctx = CostContext(split, c, table, {n.name: n.recipe for n in graph.recipes()}, read_mb_s)
    costs = []
    for node in graph.recipes():
        if node.recipe_kind.cost is None:
            raise DataError(f"recipe {node.name}: its kind ({node.recipe.stage}) registers no cost model (RecipeKind.cost)")
        costs.append(node.recipe_kind.cost(node.recipe, ctx))
    return costs


# ----------------------------------------------------------------------------- CPU stages and disk

def fitted(stage: str, units: float, cores: int, rounds: int = 200) -> tuple[float, float]:
    """(peak bytes, seconds) of a stage from bench_scale's fit at `units` (millions x 1e6): a stage
    that uses every core is scaled from the bench's cores to `cores`, the stacker by its rounds."""
    a, b, s, fixed = CPU_FITS[stage]
    scale = rounds / STACK_FIT_ROUNDS[stage] if stage in STACK_FIT_ROUNDS else 1.0
    if stage in PARALLEL_STAGES:
        scale *= BENCH_CORES / cores
    return (a + b * units / 1e6) * 1e6, (s * units / 1e6 + fixed) * scale


def cpu_stages(c: Counts, split: Split, cores: int, rounds: int) -> list[dict]:
    """Peak RAM and time of each CPU stage (measured per-unit figures; 'not measured' where none exist)."""
    every = c.train_products + c.test_products
    images = c.train_images + c.test_images
    held = split.models * split.oof_products + c.test_products  # the rows the stacker holds
    stack, stack_units = ("stack_holdout", every) if split.protocol == "holdout" else ("stack_all", held)
    cored = f"time: every core, {BENCH_CORES} measured -> {cores} assumed, linear scaling assumed"
    read = MEDIA_IMAGE_SHARE * c.train_products
    text_ram, text_s = fitted("ocr_text", read, cores)  # one fold model; the protocol's models one after another
    rows = [("index", *fitted("index", every, cores), f"{BENCH_README}; time = both BSON files at the {COLD_READ_MB_S:,.0f} MB/s cold read"),
            ("stats", *fitted("stats", every, cores), BENCH_README),
            ("ocr (selection)", *fitted("ocr_select", every, cores), BENCH_README),
            ("ocr (tesseract)", None, MEDIA_IMAGE_SHARE * images / (TESSERACT_IMAGES_S_CORE * cores),
             f"bench/README.md: {TESSERACT_IMAGES_S_CORE} images/s per core on {MEDIA_IMAGE_SHARE:.1%} of the images, {cores} cores assumed; "
             "RAM: one tesseract process per core, not measured"),
            ("ocr (text model)", text_ram, text_s * split.models,
             f"{BENCH_README}: one fold model on {read:,.0f} read train products ({MEDIA_IMAGE_SHARE:.1%}), x {split.models} model(s); {cored}"),
            ("md5", *fitted("md5", every, cores), f"{BENCH_README}; {cored}"),
            ("stack", *fitted(stack, stack_units, cores, rounds), f"{BENCH_README}, " + (
                f"the holdout protocol's shape ({STACK_SOURCES_NOTE}), {every:,.0f} products" if stack == "stack_holdout" else
                f"every OOF product trains, {held:,.0f} products held (OOF + test); fit from an older run with 3 synthetic sources, "
                f"not the full profile's: more than 32 GB at full scale, cap it with --max-train-products") + f", time x {rounds}/{STACK_FIT_ROUNDS[stack]} rounds; {cored}"),
            ("report", *fitted("report", every, cores), BENCH_README)]
    out = [{"stage": s, "peak_bytes": ram, "seconds": t, "source": src} for s, ram, t, src in rows]
    out[0]["seconds"] = c.bson_bytes / (COLD_READ_MB_S * 1e6)
    return out


def disk_by_stage(c: Counts, costs: list[Cost], split: Split) -> dict:
    """Bytes each stage leaves in the work dir (the Kaggle files themselves not included)."""
    row = 8 + 4 * 20
    side = 6 * row * (split.models * split.oof_products + c.test_products)  # 3 solution blends, ocr, md5, stack
    by = {"index": INDEX_BYTES * (c.train_products + c.test_products), "md5 hashes": HASH_BYTES * (c.train_images + c.test_images)}
    for what in ("checkpoints", "predictions", "features"):
        by[f"{what} (recipes)"] = sum(cost.disk.get(what, 0.0) for cost in costs)
    by["predictions (3 blends, ocr, md5, stack; an upper bound)"] = side
    return by


# ----------------------------------------------------------------------------- the plan


@dataclass
class PlanOptions:
    profile: str = "full"  # mini | full: the recipes planned
    data: str = ""  # a Kaggle-layout folder (train.bson, test.bson): its counts (from --work's index); empty = the official counts
    gpus: int = 1  # GPUs the training stages share (wall-hours = GPU-hours / gpus: linear scaling assumed)
    protocol: str = ""  # holdout | kfold (default: holdout for full, kfold for mini, as run_all.sh)
    n_folds: int = 5  # kfold: models per recipe
    holdout_fraction: float = 0.05  # holdout when the 2nd team's 50,000 ids are not in the data
    throughput: str = ""  # bench/bench_gpu.py's JSON (default bench/results/gpu_throughput.json when present)
    json: str = ""  # also write the plan as JSON here
    build_index: bool = False  # with --data: build the missing index (what common.prepare does) instead of stopping
    cores: int = 16  # CPU cores of the machine the CPU stages run on (OCR, MD5, the text model and the stacker use every core)
    read_mb_s: float = COLD_READ_MB_S  # disk read rate for the heads on stored features
    stack_rounds: int = 200  # the stacker's boosting rounds (ensembling/stack/config.py default)


def plan(opts: PlanOptions, work: WorkDir) -> dict:
    if opts.gpus < 1:
        raise DataError(f"--gpus {opts.gpus}: at least 1")
    protocol = opts.protocol or ("holdout" if opts.profile == "full" else "kfold")
    counts = data_counts(opts.data, work, opts.build_index) if opts.data else official_counts()
    split = protocol_split(counts, protocol, opts.n_folds, opts.holdout_fraction)
    table = load_throughput(opts.throughput)
    from .pipeline import RunOptions, build_graph

    graph = build_graph(RunOptions(profile=opts.profile, protocol=protocol), work)
    costs = recipe_costs(graph, split, counts, table, opts.read_mb_s)
    cpu = cpu_stages(counts, split, opts.cores, opts.stack_rounds)
    disk = disk_by_stage(counts, costs, split)
    return {"profile": opts.profile, "gpus": opts.gpus, "counts": dataclasses.asdict(counts), "split": dataclasses.asdict(split),
            "throughput_file": table.get("file"), "recipes": [dataclasses.asdict(x) | {"gpu_hours": x.gpu_hours} for x in costs],
            "cpu_stages": cpu, "disk_bytes": disk, "totals": totals(costs, cpu, disk, opts.gpus)}


def totals(costs: list[Cost], cpu: list[dict], disk: dict, gpus: int) -> dict:
    gpu_h = sum(x.gpu_hours for x in costs)
    by_part = {p: sum(x.gpu_s.get(p, 0.0) for x in costs) / 3600 for p in ("train", "predict", "features")}
    heads_h = sum(x.io_s for x in costs) / 3600
    cpu_h = sum(s["seconds"] or 0.0 for s in cpu) / 3600
    peak = max((s for s in cpu if s["peak_bytes"]), key=lambda s: s["peak_bytes"])
    return {"gpu_hours": gpu_h, "gpu_hours_by_part": by_part, "wall_hours_gpu": gpu_h / gpus, "heads_io_hours": heads_h,
            "cpu_stage_hours": cpu_h, "wall_hours": gpu_h / gpus + heads_h + cpu_h, "disk_bytes": sum(disk.values()),
            "peak_ram_bytes": peak["peak_bytes"], "peak_ram_stage": peak["stage"], "scaling": f"GPU-hours / {gpus}: linear scaling assumed"}


# ----------------------------------------------------------------------------- printing


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f}M"


def _h(seconds: float) -> str:
    return f"{seconds / 3600:,.1f}"


def header(p: dict) -> list[str]:
    c, s = p["counts"], p["split"]
    models = "1 model per recipe" if s["models"] == 1 else f"{s['models']} models per recipe"
    throughput = p["throughput_file"] or "no bench_gpu.json (bench/bench_gpu.py writes it): the winners' recorded figures"
    return [f"Plan of the {p['profile']} profile on {p['gpus']} GPU{'s' * (p['gpus'] > 1)}: protocol {s['protocol']}, {models}, each trains on "
            f"{s['train_products']:,.0f} products / {s['train_images']:,.0f} images and predicts {s['oof_products']:,.0f} / "
            f"{s['oof_images']:,.0f} out of fold ({s['what']}) and the test set",
            f"Data: {c['train_products']:,.0f} train products / {c['train_images']:,.0f} images, {c['test_products']:,.0f} test / "
            f"{c['test_images']:,.0f}; train products by image count {c['by_k']} ({c['source']})",
            f"Throughput: {throughput}"]


def _rates(r: dict) -> tuple[str, str]:
    """(train, inference) images/s per GPU of a recipe line; heads on stored features have none."""
    g = r["gpu_s"]
    if not g:
        return "I/O", "I/O"
    infer = (r["predict_images"] + r["feature_images"]) / (g.get("predict", 0.0) + g.get("features", 0.0))
    return f"{r['train_images'] / g['train']:.1f}", f"{infer:.1f}"


def recipe_table(p: dict) -> tuple[list[str], list[str]]:
    """One line per recipe, its throughput source as a footnote letter."""
    sources: list[str] = list(dict.fromkeys(r["rate"] for r in p["recipes"]))
    lines = [f"{'recipe':34s} {'epochs':>11s} {'train img':>9s} {'pred img':>9s} {'train/s':>8s} {'infer/s':>8s} src "
             f"{'GPU-h train':>11s} {'predict':>8s} {'features':>8s} {'GPU-h':>8s} {'wall-h':>7s} {'disk GB':>8s}"]
    for r in p["recipes"]:
        g, (train, infer) = r["gpu_s"], _rates(r)
        wall = r["gpu_hours"] / p["gpus"] + r["io_s"] / 3600
        lines.append(f"{r['solution'] + '/' + r['source'].split('_', 1)[1]:34s} {r['epochs']:>11s} {_m(r['train_images']):>9s} "
                     f"{_m(r['predict_images'] + r['feature_images']):>9s} {train:>8s} {infer:>8s} {chr(97 + sources.index(r['rate'])):>3s} "
                     f"{_h(g.get('train', 0)):>11s} {_h(g.get('predict', 0)):>8s} {_h(g.get('features', 0)):>8s} {r['gpu_hours']:8,.1f} "
                     f"{wall:7,.1f} {sum(r['disk'].values()) / GB:8,.1f}")
    return lines, [f"  [{chr(97 + i)}] {s}" for i, s in enumerate(sources)]


def solution_table(p: dict) -> list[str]:
    lines = [f"{'solution':14s} {'GPU-hours':>10s} {'wall-h on ' + str(p['gpus']):>12s} {'heads I/O h':>11s} {'disk GB':>9s}"]
    for sol in dict.fromkeys(r["solution"] for r in p["recipes"]):
        rs = [r for r in p["recipes"] if r["solution"] == sol]
        gpu = sum(r["gpu_hours"] for r in rs)
        io = sum(r["io_s"] for r in rs) / 3600
        lines.append(f"{sol:14s} {gpu:10,.1f} {gpu / p['gpus']:12,.1f} {io:11,.1f} {sum(sum(r['disk'].values()) for r in rs) / GB:9,.1f}")
    return lines


def render(p: dict) -> str:
    t = p["totals"]
    rows, notes = recipe_table(p)
    out = header(p) + ["", "Per recipe (images summed over the protocol's models; pred img = per-epoch validation + OOF/test x TTA views"
                           " + the feature pass; throughput per GPU):"] + rows + ["Throughput sources:"] + notes
    out += ["", "Per solution:"] + solution_table(p)
    out += ["", "Disk per stage (GB):"] + [f"  {k:58s} {v / GB:10,.1f}" for k, v in p["disk_bytes"].items()]
    out += ["", "CPU stages (peak RAM, time on one machine):"]
    for s in p["cpu_stages"]:
        ram = f"{s['peak_bytes'] / GB:6.1f} GB" if s["peak_bytes"] else "     n/a "
        time = f"{s['seconds'] / 3600:6.2f} h" if s["seconds"] is not None else "   n/a  "
        out.append(f"  {s['stage']:16s} {ram} {time}  {s['source']}")
    parts = ", ".join(f"{k} {v:,.1f}" for k, v in t["gpu_hours_by_part"].items())
    out += ["", f"TOTAL GPU-hours {t['gpu_hours']:,.1f} ({parts})",
            f"TOTAL wall-hours on {p['gpus']} GPU{'s' * (p['gpus'] > 1)} {t['wall_hours']:,.1f} = {t['wall_hours_gpu']:,.1f} GPU stages "
            f"({t['scaling']}) + {t['heads_io_hours']:,.1f} heads on stored features (I/O-bound) + {t['cpu_stage_hours']:,.1f} CPU stages",
            f"TOTAL disk {t['disk_bytes'] / GB:,.1f} GB (work dir; the Kaggle files add {p['counts']['bson_bytes'] / GB:,.1f} GB); "
            f"peak RAM of the CPU stages {t['peak_ram_bytes'] / GB:,.1f} GB ({t['peak_ram_stage']})"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, __doc__, PlanOptions)
    result = plan(args.options, args.work)
    print(render(result))
    if args.options.json:
        write_json(args.options.json, result)
    return result


if __name__ == "__main__":
    run(main)
