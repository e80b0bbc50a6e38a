"""Run the pipeline graph (common/pipeline.py): one node after another, or every ready node at once
on dask.distributed, each recipe on its own GPUs. run_all.sh calls it after setting up the
environment; every flag of RunOptions is one of run_all.sh's.

    python -m common.runner --work W [--profile full] [--data DIR] ...                  # one after another
    python -m common.runner --work W --gpus-per-recipe 1 --scheduler local              # side by side on this machine's GPUs
    python -m common.runner --work W --gpus-per-recipe 1 --scheduler tcp://HOST:8786    # on the workers of a running scheduler

A node is skipped when the file marking it done is newer than the files of every node it requires
and than its own inputs (its recipe YAML): make's rule over the graph's edges, so an interrupted run
continues where it stopped; inside, each stage checks by content what it reuses. A node that fails
stops only the nodes that need it; the others go on, and the run ends naming each failure and its
log. Every node's output is appended to work/logs/<node>.log (one log per recipe).
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cli import parse_stage
from .errors import DataError
from .paths import WorkDir
from .pipeline import RECIPE, Graph, Node, RunOptions, build_graph


class NodeFailed(Exception):
    """A node's command exited non-zero: its dependants do not run."""

    def __init__(self, name: str, code: int, log: str):
        super().__init__(f"{name} failed (exit {code}); its log: {log}")
        self.name, self.code, self.log = name, code, log

    def __reduce__(self):  # crosses processes (dask) with its fields
        return NodeFailed, (self.name, self.code, self.log)


@dataclass(frozen=True)
class TaskSpec:
    """What one task runs and how it decides to skip: picklable, resolved on the machine that runs it."""

    name: str  # the node (a shard: "md5 shard 0/2")
    node: str
    module: str
    args: tuple[str, ...]
    work: str
    done: tuple[str, ...] = ()  # absolute paths
    deps_done: tuple[str, ...] = ()  # the done files of the nodes it requires
    inputs: tuple[str, ...] = ()
    always: bool = False
    force: bool = False
    gpus: int = 0  # GPUs taken from the worker's pool (a scheduler), CUDA_VISIBLE_DEVICES for the command
    nproc: int = 1  # processes of the command (torchrun when > 1)
    echo: bool = False  # the command's output on this console too (one after another)
    threads_env: tuple[tuple[str, str | None], ...] = ()  # the driver's thread settings (dask's nanny sets them to 1 in its workers)

    @property
    def log(self) -> Path:
        return Path(self.work) / "logs" / f"{self.node}.log"


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def freshness(spec: TaskSpec) -> tuple[str, str]:
    """("run" | "stale" | "up to date", why): make's rule on the node's done files."""
    if spec.force or spec.always or not spec.done:
        return "run", ""
    done = [_mtime(p) for p in spec.done]
    if None in done:
        return "run", ""
    before = [t for t in (_mtime(p) for p in (*spec.deps_done, *spec.inputs)) if t is not None]
    if not before or min(done) >= max(before):
        return "up to date", spec.done[0]
    return "stale", f"what it is made from is newer than {Path(spec.done[0]).relative_to(spec.work)}"


def command(spec: TaskSpec) -> list[str]:
    """python -m module args, under torchrun (python -m torch.distributed.run) for several processes;
    setpriv ends it when the process that started it dies (a killed run leaves no orphan training)."""
    argv = [sys.executable, "-m", spec.module, *spec.args]
    if spec.nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.nproc}", "-m", spec.module, *spec.args]
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *argv] if setpriv else argv


# ----------------------------------------------------------------------------- the GPUs of a dask worker

_POOL_LOCK = threading.Lock()
_FREE: dict[str, list[str]] = {}


def take_gpus(n: int) -> list[str] | None:
    """n of the worker's GPU ids (its CUDA_VISIBLE_DEVICES, else 0..GPU-1 of its --resources); None outside a worker."""
    if n <= 0:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    with _POOL_LOCK:
        if worker.address not in _FREE:
            total = int(worker.state.total_resources.get("GPU", 0))
            visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
            _FREE[worker.address] = (visible or [str(i) for i in range(total)])[:total]
        free = _FREE[worker.address]
        if len(free) < n:
            raise RuntimeError(f"worker {worker.address}: {n} GPUs asked, {len(free)} free (its --resources GPU= exceeds its devices?)")
        ids, free[:] = free[:n], free[n:]
        return ids


def give_gpus(ids: list[str] | None) -> None:
    if not ids:
        return
    from distributed import get_worker

    with _POOL_LOCK:
        _FREE[get_worker().address].extend(ids)


def announce(event: dict) -> None:
    """A start event for the driver's console (dask's worker events; nothing outside a worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        worker.log_event("pipeline", {**event, "worker_name": str(worker.name)})
    except (ImportError, ValueError):
        pass


# ----------------------------------------------------------------------------- one task


def execute(spec: TaskSpec, *upstream: object) -> dict:
    """Skip the node (up to date) or run its command, its output appended to its log; NodeFailed when it fails.
    `upstream` are the results of the tasks it needs (dask passes them; their order is the graph's)."""
    state, why = freshness(spec)
    if state == "up to date":
        return {"name": spec.name, "status": "up to date", "why": why, "seconds": 0.0}
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    lock = open(spec.log.with_suffix(".lock"), "w")
    if spec.echo:
        print(f"== {spec.name}" + (f": stale ({why}): rerun" if state == "stale" else ""), flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)  # an earlier run's command of this node (an orphan of a killed run) ends first
    ids = take_gpus(spec.gpus)
    t0 = time.time()
    try:
        announce({"name": spec.name, "gpus": ids, "host": os.uname().nodename, "start": t0})
        code = run_command(spec, ids, lock)
    finally:
        give_gpus(ids)
        lock.close()
    seconds = time.time() - t0
    if code != 0:
        raise NodeFailed(spec.name, code, str(spec.log))
    if spec.echo:
        print(f"== {spec.name}: {seconds:.0f}s", flush=True)
    return {"name": spec.name, "status": "stale: rerun" if state == "stale" else "ran", "seconds": seconds, "gpus": ids}


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # distributed.nanny.pre-spawn-environ


SHELL_THREADS = tuple((k, os.environ.get(k)) for k in THREAD_VARS)  # read at import, before dask's cluster sets them in this process too


def run_command(spec: TaskSpec, gpus: list[str] | None, lock) -> int:
    """The node's command with the thread settings of the shell that started the run (a task on a dask
    worker would otherwise run torch on 1 thread, slower and with other float rounding than one after another)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key, value in spec.threads_env:
        env.pop(key, None)
        if value is not None:
            env[key] = value
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    argv = command(spec)
    with open(spec.log, "ab") as log:
        log.write(f"\n=== {spec.name}: {time.strftime('%Y-%m-%d %H:%M:%S')} on {os.uname().nodename}"
                  f"{' GPUs ' + ','.join(gpus) if gpus else ''}: {' '.join(argv)}\n".encode())
        log.flush()
        if not spec.echo:
            return subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock.fileno(),)).returncode
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(lock.fileno(),))
        mutex = threading.Lock()
        pumps = [threading.Thread(target=_pump, args=(pipe, console, log, mutex)) for pipe, console in
                 ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer))]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        return proc.wait()


def _pump(pipe, console, log, mutex: threading.Lock) -> None:
    """Copy a child's output as it comes (tqdm's carriage returns included) to the console and the log."""
    while chunk := os.read(pipe.fileno(), 65536):
        with mutex:
            console.write(chunk)
            console.flush()
            log.write(chunk)
            log.flush()
    pipe.close()


# ----------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    status: str  # ran | stale: rerun | up to date | not selected | failed | not run
    seconds: float = 0.0
    why: str = ""
    gpus: list | None = None
    code: int = 0  # a failed node's exit status


@dataclass
class RunState:
    graph: Graph
    selected: set[str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def select(graph: Graph, opts: RunOptions) -> set[str]:
    """The nodes this run may run: --only a stage (or one node), --from a stage on, else all."""
    stages, names = graph.stages, [n.name for n in graph.nodes]
    for value, what in ((opts.only, "--only"), (opts.from_stage, "--from")):
        if value and value not in stages and value not in names:
            raise DataError(f"{what} {value}: unknown stage (stages: {' '.join(stages)}; or a node: python -m common.pipeline --list)")
    if opts.only:
        return {n.name for n in graph.nodes if opts.only in (n.stage, n.name)}
    if opts.from_stage:
        first = stages.index(opts.from_stage) if opts.from_stage in stages else stages.index(graph[opts.from_stage].stage)
        return {n.name for n in graph.nodes if stages.index(n.stage) >= first}
    return {n.name for n in graph.nodes}


def task_spec(node: Node, graph: Graph, work: WorkDir, opts: RunOptions, nproc: int, echo: bool) -> TaskSpec:
    root = work.root
    deps = tuple(str(root / d) for name in node.requires for d in graph[name].done)
    procs = (node.gpus if opts.scheduler else nproc) if node.kind == RECIPE else 1
    return TaskSpec(node.name, node.name, node.module, node.args, str(root), tuple(str(root / d) for d in node.done), deps, node.inputs,
                    node.always, opts.force, node.gpus if opts.scheduler else 0, max(procs, 1), echo, SHELL_THREADS)


def run_one_after_another(state: RunState, work: WorkDir, opts: RunOptions, nproc: int) -> None:
    """Each selected node in the graph's order, its output on this console; a failure stops its dependants only."""
    said: set[str] = set()
    for node in state.graph.nodes:
        if node.name not in state.selected:
            if node.stage not in said:
                print(f"== {node.stage}: not selected")
            said.add(node.stage)
            state.outcomes[node.name] = Outcome("not selected")
            continue
        blocked = blocking(state, node)
        if blocked:
            print(f"== {node.name}: not run: it needs {blocked}, which did not finish", flush=True)
            state.outcomes[node.name] = Outcome("not run", why=blocked)
            continue
        try:
            result = execute(task_spec(node, state.graph, work, opts, nproc, echo=True))
        except NodeFailed as e:
            print(f"== {node.name}: FAILED (exit {e.code}); log {e.log}", file=sys.stderr, flush=True)
            state.outcomes[node.name] = Outcome("failed", why=f"exit {e.code}", code=e.code)
            continue
        if result["status"] == "up to date":
            print(f"== {node.name}: up to date ({result['why']})", flush=True)
        state.outcomes[node.name] = Outcome(result["status"], result["seconds"], result.get("why", ""))


def blocking(state: RunState, node: Node) -> str:
    return next((d for d in node.requires if state.outcomes.get(d, Outcome("?")).status in ("failed", "not run")), "")


def summary(state: RunState, work: WorkDir, started: float) -> int:
    """The wall time per stage, then every failure with its log; the exit status (the first failure's)."""
    print("\nWall time per stage:")
    for stage in state.graph.stages:
        outs = [state.outcomes[n.name] for n in state.graph.nodes if n.stage == stage and n.name in state.outcomes]
        ran = [o for o in outs if o.status in ("ran", "stale: rerun")]
        if ran:
            print(f"  {stage:12s} {sum(o.seconds for o in ran):.0f}s" + (f" ({len(ran)} nodes)" if len(ran) > 1 else ""))
        elif outs and all(o.status == "up to date" for o in outs):
            print(f"  {stage:12s} skipped")
    print(f"  {'(wall)':12s} {time.time() - started:.0f}s")
    failed = [n for n, o in state.outcomes.items() if o.status == "failed"]
    if not failed:
        print(f"Final submission: {work.submissions / 'stack.csv.gz'}    report: {work.report / 'index.html'}")
        print(f"Outputs under {work.root}")
        return 0
    for name in failed:
        stopped = [d for d in state.graph.dependants(name) if state.outcomes.get(d, Outcome("?")).status == "not run"]
        print(f"FAILED: {name} ({state.outcomes[name].why}), log {work.root / 'logs' / (name + '.log')}; not run because of it: "
              f"{', '.join(stopped) or 'nothing'}", file=sys.stderr)
    return state.outcomes[failed[0]].code or 1


def lock_work(work: WorkDir):
    """One run per work dir at a time (a second would train the same folds)."""
    work.root.mkdir(parents=True, exist_ok=True)
    handle = open(work.root / ".pipeline.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError(f"{work.root}: another run_all.sh is running on this work dir; wait for it or use another --work") from None
    return handle


def preflight(graph: Graph, opts: RunOptions, nproc: int) -> None:
    """Every recipe loads, builds, splits its global batch over the processes it gets, has its weights."""
    from .preflight import PreflightOptions, check_profile, report

    worlds = {n.name: n.gpus for n in graph.recipes()} if opts.scheduler else {}
    checks = PreflightOptions(profile=opts.profile, nproc=max(nproc, 1), fast_dev_run=opts.fast_dev_run, worlds=worlds)
    report(check_profile(checks), checks)


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def default_schedule(opts: RunOptions, gpus: int) -> RunOptions:
    """The full profile on N > 1 GPUs (no --nproc, --scheduler, --gpus-per-recipe given) runs side by
    side on a local cluster, each recipe on the G the plan finds fastest (common.schedule)."""
    if opts.profile != "full" or gpus < 2 or opts.nproc >= 0 or opts.scheduler or opts.gpus_per_recipe:
        return opts
    return dataclasses.replace(opts, scheduler=f"local:{gpus}")


def recipe_gpus(graph: Graph, opts: RunOptions, work: WorkDir, gpus: int) -> dict[str, int]:
    """--gpus-per-recipe G for every recipe; else, on a local cluster of the full profile, the plan's
    fastest G per recipe on this machine's GPUs (the data's counts when indexed, else the official)."""
    if opts.gpus_per_recipe or opts.profile != "full" or not opts.scheduler.startswith("local") or gpus < 2:
        return {n.name: opts.gpus_per_recipe or 1 for n in graph.recipes()}
    from .plan import fastest_gpus

    chosen = fastest_gpus(opts, work, gpus)
    print(f"schedule: the plan's fastest GPUs per recipe on {gpus} GPUs: " +
          ", ".join(f"{n} {g}" for n, g in chosen.items()), flush=True)
    return chosen


def record_machine(work: WorkDir, opts: RunOptions, nproc: int, started: float) -> None:
    """WORK/machine.json: the machine that starts this run and the run's options (common/machine.py; the
    report names it). preflight has imported torch already: its CPU capability costs nothing more."""
    from .machine import write_machine

    write_machine(work.root, {"started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)), "argv": sys.argv[1:],
                              "options": {**dataclasses.asdict(opts), "nproc": nproc}})


def run_pipeline(opts: RunOptions, work: WorkDir) -> int:
    started = time.time()
    handle = lock_work(work)
    try:
        graph = build_graph(opts, work)
        nproc = opts.nproc if opts.nproc >= 0 else visible_gpus()
        opts = default_schedule(opts, nproc)
        if opts.scheduler:
            gpus = recipe_gpus(graph, opts, work, nproc)
            graph = graph.with_gpus(gpus)
            if len(set(gpus.values())) == 1:  # one G for all: a local cluster of one worker per G GPUs
                opts = dataclasses.replace(opts, gpus_per_recipe=next(iter(gpus.values())))
        elif opts.gpus_per_recipe:
            raise DataError("--gpus-per-recipe G runs recipes side by side: give --scheduler local[:N] or tcp://HOST:PORT")
        state = RunState(graph, select(graph, opts))
        preflight(graph, opts, nproc)
        record_machine(work, opts, nproc, started)
        if opts.scheduler:
            from .scheduler import run_on_dask

            run_on_dask(state, work, opts)
        else:
            run_one_after_another(state, work, opts, nproc)
        return summary(state, work, started)
    finally:
        handle.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_stage(argv, __doc__, RunOptions)
    return run_pipeline(args.options, args.work)


if __name__ == "__main__":
    from .cli import run

    def _main() -> None:
        raise SystemExit(main())

    run(_main)
