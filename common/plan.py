"""What a profile costs before any GPU hour is spent: per recipe the images it trains and predicts,
GPU-hours from a throughput table, the wall-hours of the pipeline graph scheduled on M machines of
N GPUs (common/schedule.py), disk per stage, peak RAM of the CPU stages.

    python -m common.plan --profile full [--gpus 8] [--gpus-per-recipe G] [--machines M]
                          [--protocol holdout|kfold] [--n-folds 5]
                          [--holdout-fraction 0.05] [--data DIR --work W [--build-index]]
                          [--throughput bench/results/gpu_throughput.json] [--speeds estimated|recorded]
                          [--json plan.json]

Trains nothing and runs in seconds on a CPU (FLOPs and parameters are counted on torch's meta
device, without weights). Without --data it plans the official Kaggle data (7,069,896 train
products / 12,371,293 images, 1,768,182 test / 3,095,080); with --data DIR the counts of DIR's
train.bson / test.bson, read from the index `common.prepare` built in --work (--build-index builds
it with the same code). Every figure says where it comes from:
  measured   bench_gpu.json on <device>: bench/gpu_check.sh (default file read when present)
  estimated  timm's published AMP tables (RTX 3090) x the H100's memory bandwidth ratio, scaled
             by FLOPs to the recipe's input size: the default for what is not measured
  recorded   the winners' own logs (images/s on their machines, fp32, 2017 GPUs): --speeds recorded
  scaled by FLOPs from <model>  an extrapolation from the nearest listed model
  assumed: ...                  a stated assumption (e.g. inference = 3 x training images/s)
  bench/README.md               the CPU stages measured by bench/bench_scale.py
Wall-hours are the makespan of the schedule: recipes side by side, each on its G GPUs (without
--gpus-per-recipe the G per recipe the schedule finds fastest), with the scaling model and its
assumptions that common/schedule.py states (the plan prints them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from .atomic import write_json
from .checks import Range, at_least, positive
from .cli import parse_stage, run
from .errors import DataError
from .paths import WorkDir
from .plan_figures import COLD_READ_MB_S, HASH_BYTES, INDEX_BYTES
from .costs import Cost, CostContext, Counts, Split, StageContext, data_counts, official_counts, protocol_split
from .schedule import ASSUMPTIONS, Job, choose_gpus, critical_path, fixed_gpus, simulate
from .throughput import TIMM_SETUP, TIMM_TABLES, load_throughput

GB = 1e9


def recipe_costs(graph, split: Split, c: Counts, table: dict, read_mb_s: float, speeds: str = "estimated") -> list[Cost]:
    """Each recipe node's cost, by the cost model its kind registered (RecipeKind.cost)."""
    ctx = CostContext(split, c, table, {n.name: n.recipe for n in graph.recipes()}, read_mb_s, speeds)
    costs = []
    for node in graph.recipes():
        if node.recipe_kind.cost is None:
            raise DataError(f"recipe {node.name}: its kind ({node.recipe.stage}) registers no cost model (RecipeKind.cost)")
        costs.append(node.recipe_kind.cost(node.recipe, ctx))
    return costs


# ----------------------------------------------------------------------------- CPU stages and disk


def cpu_stages(graph, ctx: StageContext) -> dict[str, list[dict]]:
    """Each CPU node's rows of peak RAM and time, by the cost model it carries (Node.cost)."""
    return {n.name: n.cost(ctx) for n in graph.nodes if n.kind != "recipe" and n.cost is not None}


def disk_by_stage(c: Counts, costs: list[Cost], split: Split) -> dict:
    """Bytes each stage leaves in the work dir (the Kaggle files themselves not included)."""
    row = 8 + 4 * 20
    side = 6 * row * (split.models * split.oof_products + c.test_products)  # 3 solution blends, ocr, md5, stack
    by = {"index": INDEX_BYTES * (c.train_products + c.test_products), "md5 hashes": HASH_BYTES * (c.train_images + c.test_images)}
    for what in ("checkpoints", "predictions", "features"):
        by[f"{what} (recipes)"] = sum(cost.disk.get(what, 0.0) for cost in costs)
    by["predictions (3 blends, ocr, md5, stack; an upper bound)"] = side
    return by


# ----------------------------------------------------------------------------- the schedule


def jobs_of(graph, costs: list[Cost], cpu: dict[str, list[dict]]) -> dict[str, Job]:
    """The graph's nodes in order, as the schedule sees them (a CPU node without a cost model takes no time)."""
    by_source, names = {c.source: c for c in costs}, {n.name for n in graph.nodes}
    jobs = {}
    for n in graph.nodes:
        requires = tuple(r for r in n.requires if r in names)
        if n.kind == "recipe":
            c = by_source[n.name]
            jobs[n.name] = Job(n.name, requires, True, c.gpu_s.get("train", 0.0), c.gpu_s.get("predict", 0.0) + c.gpu_s.get("features", 0.0),
                               c.io_s, steps=c.steps, global_batch=c.global_batch, micro_batch=c.micro_batch, params=c.params)
        else:
            seconds = sum(r["seconds"] or 0.0 for r in cpu.get(n.name, []))
            jobs[n.name] = Job(n.name, requires, False, cpu_s=seconds, shards=n.shards is not None)
    return jobs


def schedule(jobs: dict[str, Job], opts: PlanOptions) -> dict:
    """The run's schedule (--gpus-per-recipe G, else the fastest found), beside one after another on every GPU."""
    per = opts.gpus
    gpus = fixed_gpus(jobs, opts.gpus_per_recipe, per) if opts.gpus_per_recipe else choose_gpus(jobs, opts.machines, per)
    sched = simulate(jobs, gpus, opts.machines, per)
    try:
        sequential = simulate(jobs, fixed_gpus(jobs, per, per), 1, per).makespan / 3600
    except DataError as e:
        sequential = str(e)
    return {"gpus_per_recipe": sched.gpus, "chosen": not opts.gpus_per_recipe, "machines": opts.machines, "per_machine": per,
            "start_h": {n: t / 3600 for n, t in sched.start.items()}, "end_h": {n: t / 3600 for n, t in sched.end.items()},
            "machine": sched.machine, "wall_hours": sched.makespan / 3600, "utilisation": sched.utilisation(),
            "critical_path": [{"node": n, "after": how} for n, how in critical_path(jobs, sched)],
            "one_after_another_wall_hours": sequential, "assumptions": ASSUMPTIONS}


# ----------------------------------------------------------------------------- the plan


@dataclass
class PlanOptions:
    profile: str = "full"  # mini | full: the recipes planned
    data: str = ""  # a Kaggle-layout folder (train.bson, test.bson): its counts (from --work's index); empty = the official counts
    gpus: Annotated[int, at_least(1)] = 1  # GPUs per machine
    gpus_per_recipe: Annotated[int, at_least(0)] = 0  # every recipe on G GPUs of one machine (0: the G per recipe the schedule finds fastest)
    machines: Annotated[int, at_least(1)] = 1  # machines alike, each with --gpus GPUs (a dask scheduler's workers)
    protocol: str = ""  # holdout | kfold (default: holdout for full, kfold for mini, as run_all.sh)
    n_folds: Annotated[int, at_least(2)] = 5  # kfold: models per recipe
    holdout_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.05  # holdout when the 2nd team's 50,000 ids are not in the data
    throughput: str = ""  # bench/bench_gpu.py's JSON (default bench/results/gpu_throughput.json when present)
    speeds: str = "estimated"  # recipes it does not measure: estimated (timm's AMP tables, scaled to an H100) | recorded (the 3rd place's 2017 logs)
    json: str = ""  # also write the plan as JSON here
    build_index: bool = False  # with --data: build the missing index (what common.prepare does) instead of stopping
    cores: Annotated[int, at_least(1)] = 16  # CPU cores of the machine the CPU stages run on (OCR, MD5, the text model and the stacker use every core)
    read_mb_s: Annotated[float, positive()] = COLD_READ_MB_S  # disk read rate for the heads on stored features
    stack_rounds: Annotated[int, at_least(1)] = 200  # the stacker's boosting rounds (ensembling/stack/config.py default)


def plan(opts: PlanOptions, work: WorkDir) -> dict:
    if opts.gpus < 1 or opts.machines < 1 or opts.gpus_per_recipe < 0:
        raise DataError(f"--gpus {opts.gpus} --machines {opts.machines} --gpus-per-recipe {opts.gpus_per_recipe}: whole numbers, at least 1 "
                        "(--gpus-per-recipe 0: the schedule's choice)")
    protocol = opts.protocol or ("holdout" if opts.profile == "full" else "kfold")
    counts = data_counts(opts.data, work, opts.build_index) if opts.data else official_counts()
    split = protocol_split(counts, protocol, opts.n_folds, opts.holdout_fraction)
    table = load_throughput(opts.throughput)
    from .pipeline import RunOptions, build_graph

    graph = build_graph(RunOptions(profile=opts.profile, protocol=protocol), work)
    costs = recipe_costs(graph, split, counts, table, opts.read_mb_s, opts.speeds)
    by_node = cpu_stages(graph, StageContext(counts, split, opts.cores, opts.stack_rounds))
    cpu = [row | {"node": name} for name, rows in by_node.items() for row in rows]
    disk = disk_by_stage(counts, costs, split)
    sched = schedule(jobs_of(graph, costs, by_node), opts)
    return {"profile": opts.profile, "gpus": opts.gpus, "machines": opts.machines, "speeds": opts.speeds, "counts": dataclasses.asdict(counts),
            "split": dataclasses.asdict(split), "throughput_file": table.get("file"),
            "recipes": [dataclasses.asdict(x) | {"gpu_hours": x.gpu_hours} for x in costs], "cpu_stages": cpu, "disk_bytes": disk,
            "schedule": sched, "totals": totals(costs, cpu, disk, sched)}


def totals(costs: list[Cost], cpu: list[dict], disk: dict, sched: dict) -> dict:
    gpu_h = sum(x.gpu_hours for x in costs)
    by_part = {p: sum(x.gpu_s.get(p, 0.0) for x in costs) / 3600 for p in ("train", "predict", "features")}
    peak = max((s for s in cpu if s["peak_bytes"]), key=lambda s: s["peak_bytes"])
    return {"gpu_hours": gpu_h, "gpu_hours_by_part": by_part, "heads_io_hours": sum(x.io_s for x in costs) / 3600,
            "cpu_stage_hours": sum(s["seconds"] or 0.0 for s in cpu) / 3600, "wall_hours": sched["wall_hours"],
            "disk_bytes": sum(disk.values()), "peak_ram_bytes": peak["peak_bytes"], "peak_ram_stage": peak["stage"]}


# ----------------------------------------------------------------------------- printing


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f}M"


def _h(seconds: float) -> str:
    return f"{seconds / 3600:,.1f}"


def machines_text(p: dict) -> str:
    gpus = f"{p['gpus']} GPU{'s' * (p['gpus'] > 1)}"
    return gpus if p["machines"] == 1 else f"{p['machines']} machines x {gpus}"


def header(p: dict) -> list[str]:
    c, s = p["counts"], p["split"]
    models = "1 model per recipe" if s["models"] == 1 else f"{s['models']} models per recipe"
    kinds = {k: sum(r["speed"] == k for r in p["recipes"]) for k in ("measured", "estimated", "recorded", "I/O")}
    fallback = {"estimated": f"{TIMM_TABLES}, {TIMM_SETUP}", "recorded": "the 3rd place's 2017 MXNet logs"}[p["speeds"]]
    throughput = (f"{p['throughput_file'] or 'no bench_gpu.json (bench/gpu_check.sh writes it)'}; recipes it does not measure: "
                  f"{p['speeds']} ({fallback}); speeds: " + ", ".join(f"{n} {k}" for k, n in kinds.items() if n))
    return [f"Plan of the {p['profile']} profile on {machines_text(p)}: protocol {s['protocol']}, {models}, each trains on "
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
    lines = [f"{'recipe':34s} {'epochs':>11s} {'train img':>9s} {'pred img':>9s} {'train/s':>8s} {'infer/s':>8s} {'speed':>9s} src "
             f"{'GPU-h train':>11s} {'predict':>8s} {'features':>8s} {'GPU-h':>8s} {'G':>2s} {'wall-h':>7s} {'disk GB':>8s}"]
    sched = p["schedule"]
    for r in p["recipes"]:
        g, (train, infer) = r["gpu_s"], _rates(r)
        wall = sched["end_h"][r["source"]] - sched["start_h"][r["source"]]
        lines.append(f"{r['solution'] + '/' + r['source'].split('_', 1)[1]:34s} {r['epochs']:>11s} {_m(r['train_images']):>9s} "
                     f"{_m(r['predict_images'] + r['feature_images']):>9s} {train:>8s} {infer:>8s} {r['speed']:>9s} {chr(97 + sources.index(r['rate'])):>3s} "
                     f"{_h(g.get('train', 0)):>11s} {_h(g.get('predict', 0)):>8s} {_h(g.get('features', 0)):>8s} {r['gpu_hours']:8,.1f} "
                     f"{sched['gpus_per_recipe'][r['source']]:2d} {wall:7,.1f} {sum(r['disk'].values()) / GB:8,.1f}")
    return lines, [f"  [{chr(97 + i)}] {s}" for i, s in enumerate(sources)]


def solution_table(p: dict) -> list[str]:
    lines = [f"{'solution':14s} {'GPU-hours':>10s} {'heads I/O h':>11s} {'disk GB':>9s} {'blend done at h':>16s}"]
    end = p["schedule"]["end_h"]
    for sol in dict.fromkeys(r["solution"] for r in p["recipes"]):
        rs = [r for r in p["recipes"] if r["solution"] == sol]
        gpu = sum(r["gpu_hours"] for r in rs)
        io = sum(r["io_s"] for r in rs) / 3600
        done = end.get(sol, max(end[r["source"]] for r in rs))
        lines.append(f"{sol:14s} {gpu:10,.1f} {io:11,.1f} {sum(sum(r['disk'].values()) for r in rs) / GB:9,.1f} {done:16,.1f}")
    return lines


def schedule_table(p: dict) -> list[str]:
    """Each recipe's GPUs, machine, start and end hour, then the critical path and the comparison."""
    s = p["schedule"]
    how = "the G per recipe found fastest" if s["chosen"] else f"--gpus-per-recipe {next(iter(s['gpus_per_recipe'].values()), 0)}"
    lines = [f"Schedule on {machines_text(p)} ({how}; list scheduling, longest remaining path first; {s['assumptions']}):",
             f"  {'node':40s} {'G':>2s} {'machine':>7s} {'start h':>8s} {'end h':>8s}"]
    for n in sorted(s["start_h"], key=lambda n: (s["start_h"][n], n)):
        g = s["gpus_per_recipe"].get(n)
        lines.append(f"  {n:40s} {g if g else 'CPU':>2} {s['machine'][n]:7d} {s['start_h'][n]:8,.1f} {s['end_h'][n]:8,.1f}")
    path = "".join({"needs": " -> ", "gpus": " => ", "": ""}[c["after"]] + c["node"] for c in s["critical_path"])
    seq = s["one_after_another_wall_hours"]
    lines += [f"Critical path (-> needs, => waits for the GPUs the node before frees): {path}", f"GPU utilisation {s['utilisation']:.0%} of {p['machines'] * p['gpus']} GPUs over {s['wall_hours']:,.1f} h",
              "One after another, each recipe on all GPUs of one machine (run_all.sh without a scheduler): " +
              (f"{seq:,.1f} h" if isinstance(seq, float) else seq)]
    return lines


def render(p: dict) -> str:
    t = p["totals"]
    rows, notes = recipe_table(p)
    out = header(p) + ["", "Per recipe (images summed over the protocol's models; pred img = per-epoch validation + OOF/test x TTA views"
                           " + the feature pass; throughput per GPU):"] + rows + ["Throughput sources:"] + notes
    out += ["", "Per solution:"] + solution_table(p)
    out += [""] + schedule_table(p)
    out += ["", "Disk per stage (GB):"] + [f"  {k:58s} {v / GB:10,.1f}" for k, v in p["disk_bytes"].items()]
    out += ["", "CPU stages (peak RAM, time on one machine; folds and the blends: not measured, seconds):"]
    for s in p["cpu_stages"]:
        ram = f"{s['peak_bytes'] / GB:6.1f} GB" if s["peak_bytes"] else "     n/a "
        time = f"{s['seconds'] / 3600:6.2f} h" if s["seconds"] is not None else "   n/a  "
        out.append(f"  {s['stage']:16s} {ram} {time}  {s['source']}")
    parts = ", ".join(f"{k} {v:,.1f}" for k, v in t["gpu_hours_by_part"].items())
    out += ["", f"TOTAL GPU-hours {t['gpu_hours']:,.1f} ({parts})",
            f"TOTAL wall-hours on {machines_text(p)} {t['wall_hours']:,.1f} (the schedule's makespan; critical path above; "
            f"{t['heads_io_hours']:,.1f} h of heads on stored features, I/O-bound, and {t['cpu_stage_hours']:,.1f} h of CPU stages within it)",
            f"TOTAL disk {t['disk_bytes'] / GB:,.1f} GB (work dir; the Kaggle files add {p['counts']['bson_bytes'] / GB:,.1f} GB); "
            f"peak RAM of the CPU stages {t['peak_ram_bytes'] / GB:,.1f} GB ({t['peak_ram_stage']})"]
    return "\n".join(out)


def fastest_gpus(run, work: WorkDir, gpus: int) -> dict[str, int]:
    """The G per recipe the schedule finds fastest for a run (common.runner's default on N > 1 GPUs)."""
    from .bson_index import index_is_current

    data = run.data if run.data and all(index_is_current(work.index(s), Path(run.data) / f"{s}.bson") for s in ("train", "test")) else ""
    opts = PlanOptions(profile=run.profile, data=data, gpus=gpus, protocol=run.protocol, n_folds=run.n_folds,
                       holdout_fraction=run.holdout_fraction)
    return plan(opts, work)["schedule"]["gpus_per_recipe"]


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, __doc__, PlanOptions)
    result = plan(args.options, args.work)
    print(render(result))
    if args.options.json:
        write_json(args.options.json, result)
    return result


if __name__ == "__main__":
    run(main)
