"""The schedule the plan (common/plan.py) times: list scheduling of the pipeline graph on M machines
of N GPUs, each recipe on its own G GPUs of one machine, as common/scheduler.py runs it on dask.

A recipe's wall time on g GPUs is not its GPU time / g. Each optimizer step of its recorded global
batch B gives every GPU B/g samples, in micro-batches of at most the recipe's batch_size; a
micro-batch cannot take less than a floor (kernel launches, the optimizer: LAUNCH_S, assumed), and
a step on g > 1 GPUs adds a ring all-reduce of the fp32 gradients (BUS_GB_S, assumed, not
overlapped with the backward pass: an upper bound). Inference shards the products over the g
processes (linear). Heads on stored features take their read time on any g. CPU nodes start as
soon as what they need is done (beside the GPU recipes: their competition for the cores with the
loaders is not modelled); OCR's and MD5's shards split over the machines.

Ready recipes start longest-remaining-path first on the first machine with g free GPUs (smaller
ones backfill). `choose_gpus` takes the fastest uniform G, then doubles or halves single recipes'
G while the makespan drops: the allocation run_all.sh uses by default on N > 1 GPUs.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from .errors import DataError

LAUNCH_S = 0.02  # assumed: the shortest a micro-batch's forward + backward + optimizer step takes (eager PyTorch, ~100-layer nets)
BUS_GB_S = 100.0  # assumed: all-reduce bus bandwidth between the GPUs of one machine (NVLink; nccl-tests report 100-400)
ASSUMPTIONS = (f"a micro-batch takes at least {LAUNCH_S * 1e3:.0f} ms (launch floor, assumed); g > 1 GPUs add a ring all-reduce of the "
               f"fp32 gradients at {BUS_GB_S:.0f} GB/s (assumed, not overlapped); inference scales linearly")


@dataclass(frozen=True)
class Job:
    """One node of the graph as the schedule sees it: what it needs and what it costs."""

    name: str
    requires: tuple[str, ...]
    gpu: bool  # a recipe (takes GPUs) or a CPU node
    train_s: float = 0.0  # GPU-seconds of training on one GPU (the rate's figure)
    infer_s: float = 0.0  # GPU-seconds of prediction and the feature pass
    io_s: float = 0.0  # heads on stored features: reading the stores
    cpu_s: float = 0.0  # a CPU node's time on one machine
    steps: float = 0.0  # optimizer steps of training
    global_batch: int = 0
    micro_batch: int = 0
    params: float = 0.0
    shards: bool = False  # a CPU node split over the machines


def step_seconds(job: Job, g: int) -> float:
    """One optimizer step of the recipe's global batch on g GPUs."""
    per_gpu = job.global_batch / g
    accum = max(1, math.ceil(per_gpu / job.micro_batch))
    image_s = job.train_s / (job.steps * job.global_batch)
    compute = accum * max(per_gpu / accum * image_s, LAUNCH_S)
    reduce = 0.0 if g == 1 else 2 * (g - 1) / g * 4 * job.params / (BUS_GB_S * 1e9)
    return compute + reduce


def seconds_on(job: Job, g: int, machines: int = 1) -> float:
    """Wall seconds of a job on g GPUs (a CPU node: its time, split over the machines when sharded)."""
    if not job.gpu:
        return job.cpu_s / (machines if job.shards else 1)
    train = job.steps * step_seconds(job, g) if job.steps else 0.0
    return train + job.infer_s / g + job.io_s


def gpu_choices(job: Job, per_machine: int) -> list[int]:
    """The G a recipe can train on: powers of two that fit a machine and split its global batch evenly."""
    return [g for g in (1, 2, 4, 8, 16) if g <= per_machine and (not job.global_batch or job.global_batch % g == 0)]


@dataclass
class Schedule:
    machines: int
    per_machine: int
    gpus: dict[str, int]  # recipe -> its G
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    machine: dict[str, int] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        return max(self.end.values(), default=0.0)

    def utilisation(self) -> float:
        """GPU-seconds busy over the GPU-seconds the machines offer until the last node ends."""
        busy = sum(g * (self.end[n] - self.start[n]) for n, g in self.gpus.items())
        return busy / (self.machines * self.per_machine * self.makespan) if self.makespan else 0.0


def bottom_levels(jobs: dict[str, Job], duration: dict[str, float]) -> dict[str, float]:
    """Each job's longest path to the end of the graph (its own time included): the list's priority."""
    after: dict[str, list[str]] = {n: [] for n in jobs}
    for job in jobs.values():
        for r in job.requires:
            after[r].append(job.name)
    level: dict[str, float] = {}
    for name in reversed(list(jobs)):  # jobs come in topological order
        level[name] = duration[name] + max((level[a] for a in after[name]), default=0.0)
    return level


def simulate(jobs: dict[str, Job], gpus: dict[str, int], machines: int, per_machine: int) -> Schedule:
    """List scheduling: at each finish, start every ready job that fits, highest bottom level first."""
    duration = {n: seconds_on(j, gpus.get(n, 1), machines) for n, j in jobs.items()}
    level = bottom_levels(jobs, duration)
    sched = Schedule(machines, per_machine, {n: gpus.get(n, 1) for n, j in jobs.items() if j.gpu})
    free, running, done, now = [per_machine] * machines, [], set(), 0.0
    waiting = sorted(jobs, key=lambda n: -level[n])
    while waiting or running:
        for name in [n for n in waiting if all(r in done for r in jobs[n].requires)]:
            g = sched.gpus.get(name, 0)
            fits = [m for m in range(machines) if free[m] >= g]
            if not fits:
                continue
            m = fits[0]
            free[m] -= g
            sched.start[name], sched.machine[name] = now, m
            heapq.heappush(running, (now + duration[name], name))
            waiting.remove(name)
        if not running:
            raise DataError(f"the schedule cannot start {waiting[0]}: it needs {sched.gpus.get(waiting[0])} GPUs, a machine has {per_machine}")
        now, name = heapq.heappop(running)
        sched.end[name] = now
        free[sched.machine[name]] += sched.gpus.get(name, 0)
        done.add(name)
    return sched


def critical_path(jobs: dict[str, Job], sched: Schedule) -> list[tuple[str, str]]:
    """From the last node back: (node, how it got its start) where how is "needs" (the requirement that
    finished last), "gpus" (it waited for the GPUs the previous node freed) or "" (the first node)."""
    name, path = max(sched.end, key=sched.end.get), []
    while name:
        start, before = sched.start[name], max(jobs[name].requires, key=lambda r: sched.end[r], default=None)
        how = "needs" if before else ""
        if start > (sched.end[before] if before else 0.0) + 1e-6:  # it waited for GPUs: follow the node that freed them
            freed = [n for n in sched.gpus if n != name and sched.machine.get(n) == sched.machine[name] and abs(sched.end[n] - start) < 1e-6]
            before, how = max(freed, key=lambda n: sched.gpus[n]), "gpus"
        path.append((name, how))
        name = before
    return path[::-1]


def choose_gpus(jobs: dict[str, Job], machines: int, per_machine: int, passes: int = 20) -> dict[str, int]:
    """The fastest of the uniform allocations (every recipe on the largest valid G up to 1, 2, 4, ...),
    then each recipe's G doubled or halved, longest first, while the makespan drops (a local search)."""
    recipes = [n for n, j in jobs.items() if j.gpu]

    def span(gpus: dict[str, int]) -> float:
        return simulate(jobs, gpus, machines, per_machine).makespan

    uniform = [{n: max(g for g in gpu_choices(jobs[n], per_machine) if g <= top) for n in recipes} for top in gpu_choices(Job("", (), True), per_machine)]
    gpus = min(uniform, key=span)
    best = span(gpus)
    for _ in range(passes):
        order = sorted(recipes, key=lambda n: -seconds_on(jobs[n], gpus[n]))
        trials = ({**gpus, n: g} for n in order for g in (gpus[n] * 2, gpus[n] // 2) if g in gpu_choices(jobs[n], per_machine))
        better = next(((t, s) for t in trials if (s := span(t)) < best * (1 - 1e-6)), None)
        if better is None:
            break
        gpus, best = better
    return gpus


def fixed_gpus(jobs: dict[str, Job], g: int, per_machine: int) -> dict[str, int]:
    """Every recipe on g GPUs (run_all.sh --gpus-per-recipe G); refused where the run would refuse it."""
    if g > per_machine:
        raise DataError(f"--gpus-per-recipe {g}: a machine has {per_machine} GPUs (--gpus)")
    for job in jobs.values():
        if job.gpu and job.global_batch and job.global_batch % g:
            raise DataError(f"--gpus-per-recipe {g}: recipe {job.name}'s global batch {job.global_batch} does not split over {g} GPUs")
    return {n: g for n, j in jobs.items() if j.gpu}
