"""The pipeline graph on dask.distributed: every node a task, a recipe's task holding its GPUs as a
worker resource (`resources={"GPU": G}`), so every ready recipe runs at once, each on its own GPUs,
in dependency order; OCR's and MD5's work split into one shard per worker.

    --scheduler local[:N]       a cluster on this machine: N GPUs (default: every visible one; N CPU
                                slots where there is none), one worker per G GPUs, each worker's
                                CUDA_VISIBLE_DEVICES its own G
    --scheduler tcp://HOST:8786 the workers of a running scheduler, on any machines sharing the work
                                dir (same path), each started from the repository with
                                `dask worker tcp://HOST:8786 --resources GPU=N` (N = its GPUs)

A task runs its node's command (common.runner.execute): it takes G of its worker's GPU ids, sets
CUDA_VISIBLE_DEVICES and runs torchrun with G processes when G > 1. A task whose upstream failed is
never run (dask passes the failure on); the driver prints each node as it starts and ends, and
every `progress_s` seconds a line per running node with the last line of its log.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from pathlib import Path

from .errors import DataError
from .paths import WorkDir
from .pipeline import RunOptions
from .runner import NodeFailed, Outcome, RunState, TaskSpec, execute, task_spec, visible_gpus


_CONSOLE = threading.Lock()


def say(line: str) -> None:
    """One console line at a time (start events arrive on dask's thread, results on the main one)."""
    with _CONSOLE:
        print(line, flush=True)


def local_cluster(slots: int, gpus_per_recipe: int, on_gpus: bool):
    """slots // G workers, each with GPU=G (its own CUDA_VISIBLE_DEVICES on a GPU machine) and two
    threads: its recipe and a CPU task beside it. G = 0 (recipes of their own G, the plan's choice):
    one worker holding every GPU, a thread per GPU and two for CPU tasks."""
    from distributed import Nanny, Scheduler, SpecCluster

    g = gpus_per_recipe or slots
    if slots < g or slots % g:
        raise DataError(f"--scheduler local:{slots}: {slots} GPUs do not split into recipes of --gpus-per-recipe {g}")
    workers = {}
    for i in range(slots // g):
        name = f"gpu{i * g}" + (f"-{(i + 1) * g - 1}" if g > 1 else "")
        env = {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in range(i * g, (i + 1) * g))} if on_gpus else {}
        threads = 2 if gpus_per_recipe else slots + 2
        workers[name] = {"cls": Nanny, "options": {"name": name, "nthreads": threads, "resources": {"GPU": g}, "env": env, "host": "127.0.0.1",
                                                   "silence_logs": 50}}
    scheduler = {"cls": Scheduler, "options": {"dashboard": False, "host": "127.0.0.1", "port": 0}}
    return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=50)


def connect(opts: RunOptions):
    """(client, cluster or None): a local cluster (local[:N]) or a running scheduler (tcp://...)."""
    import logging

    from distributed import Client

    logging.getLogger("distributed").setLevel(logging.ERROR)  # the cluster's own chatter; the driver says what ran
    address = opts.scheduler
    if address == "local" or address.startswith("local:"):
        gpus = visible_gpus()
        slots = int(address.split(":", 1)[1]) if ":" in address else (gpus or 1)
        cluster = local_cluster(slots, opts.gpus_per_recipe, gpus > 0)
        return Client(cluster), cluster
    if not address.startswith(("tcp://", "tls://")):
        raise DataError(f"--scheduler {address!r}: local[:N] or tcp://HOST:PORT")
    try:
        return Client(address, timeout="30s"), None
    except (OSError, TimeoutError) as e:
        raise DataError(f"--scheduler {address}: no scheduler answers ({e}); start one with `dask scheduler --port PORT`") from None


def worker_gpus(client) -> dict[str, float]:
    return {addr: w.get("resources", {}).get("GPU", 0) for addr, w in client.scheduler_info()["workers"].items()}


def check_workers(client, need: int, address: str) -> int:
    """The number of workers (one OCR / MD5 shard each); DataError when none offers `need` GPUs."""
    deadline, seen, steady = time.time() + 30, -1, time.time()
    while time.time() < deadline:  # the first worker, then until no new one registers for 2 s
        count = len(client.scheduler_info()["workers"])
        if count != seen:
            seen, steady = count, time.time()
        elif count and time.time() - steady > 2:
            break
        time.sleep(0.25)
    gpus = worker_gpus(client)
    if not gpus:
        raise DataError(f"--scheduler {address}: no worker (start them with `dask worker {address} --resources GPU=N`)")
    if need and max(gpus.values()) < need:
        raise DataError(f"--scheduler {address}: no worker offers GPU={need} (theirs: {sorted(set(gpus.values()))}); start workers with "
                        f"`dask worker {address} --resources GPU=N`, N >= --gpus-per-recipe")
    return len(gpus)


def shard_specs(spec: TaskSpec, node, n: int, local: bool) -> tuple[list[TaskSpec], TaskSpec]:
    """The node's shard tasks (each its share, every core of its machine; on one machine a share of them) and its merge."""
    shards, merge = node.shards(n)
    cores = ("--workers", str(max(1, (os.cpu_count() or 1) // n))) if local else ()
    specs = [dataclasses.replace(spec, name=f"{spec.name} shard {i}/{n}", args=(*args, *cores)) for i, args in enumerate(shards)]
    return specs, dataclasses.replace(spec, args=merge)


def submit_graph(client, state: RunState, work: WorkDir, opts: RunOptions, n_workers: int) -> dict:
    """Every selected node as a task after the tasks of the nodes it requires: {future: node name}."""
    token, futures, by_node = uuid.uuid4().hex[:8], {}, {}
    local = not opts.scheduler.startswith(("tcp://", "tls://"))
    for node in state.graph.nodes:
        if node.name not in state.selected:
            state.outcomes[node.name] = Outcome("not selected")
            continue
        spec = task_spec(node, state.graph, work, opts, 1, echo=False)
        upstream = [by_node[d] for d in node.requires if d in by_node]
        if node.shards and n_workers > 1:
            parts, spec = shard_specs(spec, node, n_workers, local)
            upstream = [client.submit(execute, p, *upstream, key=f"{p.name}-{token}".replace(" ", "_").replace("/", "of"), pure=False) for p in parts]
            futures.update({f: p.name for f, p in zip(upstream, parts)})
        resources = {"GPU": node.gpus} if node.gpus else None
        by_node[node.name] = client.submit(execute, spec, *upstream, key=f"{node.name}-{token}", resources=resources, pure=False)
        futures[by_node[node.name]] = node.name
    return futures


def run_on_dask(state: RunState, work: WorkDir, opts: RunOptions) -> None:
    client, cluster = connect(opts)
    started: dict[str, dict] = {}
    try:
        n_workers = check_workers(client, max((n.gpus for n in state.graph.recipes()), default=0), opts.scheduler)
        say(f"scheduler {client.scheduler.address}: {n_workers} workers, GPUs {sorted(worker_gpus(client).values())}; "
            f"{len(state.graph.recipes())} recipes on {opts.gpus_per_recipe or 1} GPU(s) each; logs in {work.root / 'logs'}")

        def on_start(event) -> None:
            msg = event[1] if isinstance(event, tuple) else event
            started[msg["name"]] = msg
            gpus = f", GPUs {','.join(msg['gpus'])}" if msg.get("gpus") else ""
            say(f"== {msg['name']}: started on {msg['host']} (worker {msg.get('worker_name', msg.get('worker'))}{gpus})")

        client.subscribe_topic("pipeline", on_start)
        futures = submit_graph(client, state, work, opts, n_workers)
        follow(futures, state, started, opts.progress_s, work)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def follow(futures: dict, state: RunState, started: dict, every: float, work: WorkDir) -> None:
    """Report each task as it ends; every `every` seconds a line per running node."""
    from distributed import wait

    pending, last = set(futures), time.time()
    while pending:
        try:
            done, pending = wait(pending, timeout=every, return_when="FIRST_COMPLETED")
        except TimeoutError:  # nothing ended within `every` seconds
            done = set()
        for future in done:
            report(future, futures[future], state, started)
        if time.time() - last >= every and pending:
            last = time.time()
            for name in running(pending, futures, started):
                say(progress_line(name, started[name], work))


def running(pending: set, futures: dict, started: dict) -> list[str]:
    names = {futures[f] for f in pending}
    return [n for n in started if n in names]


def report(future, name: str, state: RunState, started: dict) -> None:
    """One line for a finished task; a node's outcome (its shards only print)."""
    node = name.split(" shard ")[0]
    if future.status == "error":
        error = future.exception()
        if isinstance(error, NodeFailed) and error.name == name:
            say(f"== {name}: FAILED (exit {error.code}); log {error.log}")
            outcome = Outcome("failed", why=f"exit {error.code}", code=error.code)
        else:
            why = error.name if isinstance(error, NodeFailed) else f"{type(error).__name__}: {error}"
            say(f"== {name}: not run: it needs {why}, which did not finish")
            outcome = Outcome("not run", why=why) if isinstance(error, NodeFailed) else Outcome("failed", why=why, code=1)
    else:
        result = future.result()
        say(f"== {name}: " + (f"up to date ({result['why']})" if result["status"] == "up to date" else f"{result['seconds']:.0f}s"))
        outcome = Outcome(result["status"], result["seconds"], result.get("why", ""), result.get("gpus"))
    started.pop(name, None)
    if name == node:
        state.outcomes[node] = outcome


def progress_line(name: str, event: dict, work: WorkDir) -> str:
    minutes = (time.time() - event["start"]) / 60
    log = work.root / "logs" / f"{name.split(' shard ')[0]}.log"
    return f"   {name}: running {minutes:.1f} min" + (f" on GPUs {','.join(event['gpus'])}" if event.get("gpus") else "") + f": {last_line(log)}"


def last_line(log: Path, width: int = 110) -> str:
    """The log's last line as a terminal shows it (after tqdm's carriage returns)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [x.rsplit("\r", 1)[-1].strip() for x in tail.splitlines()]
    line = next((x for x in reversed(lines) if x), "")
    return line if len(line) <= width else line[: width - 3] + "..."
