"""The machine a run ran on: CPU model, torch's CPU capability, cores, RAM, OS, versions, GPUs.

The runner writes it to WORK/machine.json when a run starts (the machine that started the run; with a
dask scheduler each node's host is in the header of its log); the report shows it beside every
number, and `python -m ensembling.report --readme` puts it under the README's tables. Why it matters:
the same code, data and seed give the same figures, float for float, on the same CPU kind (CPU model,
torch's CPU capability, thread count, torch version); another CPU kind runs other SIMD kernels, which
round differently, and the trained models, hence every accuracy, move. What the run took per stage is
read back from the runner's logs (stage_times: WORK/logs/NODE.log).

    python -m common.machine            # this machine, as JSON
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from pathlib import Path

FILE = "machine.json"
KEEP_EARLIER = 20  # earlier runs' machines kept in machine.json (a work dir continued on another machine says so)


def cpu_model() -> str:
    """The CPU's name: /proc/cpuinfo's 'model name' (x86) or 'Model' / 'Hardware' (ARM), else platform's."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown"


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _torch_facts(import_torch: bool) -> dict:
    """torch's version (from the package metadata: no import), and, when torch is imported (already,
    or here if import_torch), its CPU capability, intra-op threads and the CUDA devices."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return {"torch": None, "torch_cpu_capability": None, "torch_threads": None, "gpus": []}
    facts = {"torch": version, "torch_cpu_capability": None, "torch_threads": None, "gpus": []}
    if "torch" not in sys.modules and not import_torch:
        return facts
    try:
        import torch

        facts["torch"] = str(torch.__version__)  # with its build tag (+cpu, +cu130)
        facts["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        facts["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as e:  # noqa: BLE001 - a broken torch must not stop a run from recording the rest
        facts["torch_error"] = f"{type(e).__name__}: {e}"
    return facts


def describe_machine(import_torch: bool = True) -> dict:
    """This machine, as a JSON-able dict. torch is imported only when installed (and, with
    import_torch=False, only when the process already imported it: its capability is then None)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "architecture": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": ram_gib(),
        "os": platform.platform(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        **_torch_facts(import_torch),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": load,  # 1, 5, 15 min when described: a busy machine makes every wall time longer
        "described_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def describe_machine_in_child() -> dict:
    """describe_machine in a child process: a caller that must not load torch (the report) still gets
    torch's CPU capability; without torch (or when the child fails), what this process can tell."""
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-m", "common.machine"], capture_output=True, text=True, timeout=120, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return describe_machine(import_torch=False)


def cpu_kind(m: dict) -> str:
    """What the figures reproduce exactly on: CPU model, torch's CPU capability, threads, torch version."""
    threads = m.get("torch_threads") or m.get("usable_cores") or m.get("cores")
    return f"{m.get('cpu_model')} / {m.get('torch_cpu_capability') or '?'} / {threads} threads / torch {m.get('torch') or '-'}"


def machine_line(m: dict) -> str:
    """One line for the report and the README."""
    cap = m.get("torch_cpu_capability")
    cores = m.get("cores")
    usable = m.get("usable_cores")
    core_text = f"{cores} cores" + (f" ({usable} usable)" if usable and usable != cores else "")
    gpus = m.get("gpus") or []
    gpu_text = (f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}: " + ", ".join(sorted(set(gpus)))) if gpus else "no GPU"
    ram = f", {m['ram_gib']:.1f} GiB RAM" if m.get("ram_gib") else ""
    return (f"{m.get('cpu_model')} ({m.get('architecture')}; torch CPU capability {cap or 'not read'}), {core_text}{ram}, {gpu_text}; "
            f"{m.get('os')}, Python {m.get('python')}, torch {m.get('torch') or 'not installed'}")


def write_machine(root: str | os.PathLike, run: dict | None = None, machine: dict | None = None) -> Path:
    """WORK/machine.json: this machine and the run that starts (its options); earlier runs' machines
    stay under "earlier" (the last KEEP_EARLIER), so a work dir continued elsewhere says so."""
    from .atomic import write_text

    path = Path(root) / FILE
    earlier = []
    old = read_machine(root)
    if old:
        earlier = [*old.get("earlier", []), {k: old.get(k) for k in ("cpu_model", "torch_cpu_capability", "torch_threads", "torch", "cores",
                                                                      "hostname", "described_at")} | {"cpu_kind": cpu_kind(old)}]
    record = {**(machine or describe_machine()), "run": run or {}, "earlier": earlier[-KEEP_EARLIER:]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def read_machine(root: str | os.PathLike) -> dict | None:
    path = Path(root) / FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- what the run took (from its logs)

ORDER = ("data", "index", "folds", "stats", "ocr", "md5", "stack", "report")  # ties of one second: the graph's order
LOG_HEADER = re.compile(r"^=== (?P<name>.+?): (?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) on (?P<host>\S+?)(?: GPUs [\d,]+)?: ", re.MULTILINE)


def log_runs(root: str | os.PathLike) -> list[dict]:
    """Every run of every node in WORK/logs/NODE.log (the runner writes a start line per run: "=== NODE:
    time on host: command"). A run ends at its log's last write when it is the log's last run, else
    (estimated) where the next node's run starts: nodes run one after another unless a scheduler runs them."""
    runs = []
    for log in sorted((Path(root) / "logs").glob("*.log")):
        heads = list(LOG_HEADER.finditer(log.read_text(errors="replace")))
        for i, m in enumerate(heads):
            start = time.mktime(time.strptime(m["ts"], "%Y-%m-%d %H:%M:%S"))  # the runner's local time
            runs.append({"node": log.stem, "start": start, "host": m["host"], "last": i == len(heads) - 1, "log_end": log.stat().st_mtime})
    starts = sorted(r["start"] for r in runs)
    for r in runs:
        later = [s for s in starts if s > r["start"]]
        end = r["log_end"] if r["last"] else (later[0] if later else r["log_end"])
        r["seconds"], r["estimated"] = max(0.0, end - r["start"]), not r["last"]
    return runs


def stage_of(node: str) -> str:
    """A node's stage: its name up to the first _ (dylan_mini_lite0 -> dylan; md5 shard 0/2 -> md5)."""
    return re.split(r"[_ ]", node, maxsplit=1)[0]


def stage_times(root: str | os.PathLike) -> list[dict]:
    """Per stage (in the order they first ran): seconds = the sum over its nodes of each node's longest
    run (a rerun that found its work done or cached is shorter; an interrupted run too), the nodes with
    theirs, how many runs the logs hold, whether a time is estimated (see log_runs)."""
    best: dict[str, dict] = {}
    count: dict[str, int] = {}
    for r in log_runs(root):
        count[r["node"]] = count.get(r["node"], 0) + 1
        if r["node"] not in best or r["seconds"] > best[r["node"]]["seconds"]:
            best[r["node"]] = r
    stages: dict[str, dict] = {}
    for node, r in sorted(best.items(), key=lambda kv: kv[1]["start"]):
        s = stages.setdefault(stage_of(node), {"stage": stage_of(node), "seconds": 0.0, "nodes": [], "runs": 0, "estimated": False,
                                               "first_start": r["start"]})
        s["seconds"] += r["seconds"]
        s["nodes"].append((node, r["seconds"]))
        s["runs"] += count[node]
        s["estimated"] |= r["estimated"]
    return sorted(stages.values(), key=lambda s: (s["first_start"], ORDER.index(s["stage"]) if s["stage"] in ORDER else len(ORDER) // 2))


def duration(seconds: float) -> str:
    """12 s, 5 min 03 s, 1 h 02 min."""
    s = round(seconds)
    if s < 1:
        return "< 1 s"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min {s % 60:02d} s"


STAGES_HELP = ("Stage times from the runner's logs (WORK/logs/NODE.log): per node its longest run, from its start line to the log's last write "
               "(a run followed by another: to the next node's start, marked estimated); a stage sums its nodes.")
STAGE_COLUMNS = ["stage", "seconds", "wall_time", "runs_in_logs", "estimated", "nodes"]


def stage_rows(root: str | os.PathLike) -> list[dict]:
    """stage_times as table rows (STAGE_COLUMNS)."""
    return [{"stage": s["stage"], "seconds": round(s["seconds"]), "wall_time": duration(s["seconds"]), "runs_in_logs": s["runs"],
             "estimated": s["estimated"], "nodes": ", ".join(f"{n} {duration(t)}" for n, t in s["nodes"])} for s in stage_times(root)]


def stage_markdown(rows: list[dict]) -> list[str]:
    """stage_rows as a markdown table (lines, a blank one first), their sum, and where the times come from."""
    if not rows:
        return []
    lines = ["", "| stage | wall time | nodes (longest run each) |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {duration(r['seconds'])}{' (estimated)' if r['estimated'] else ''} | {r['nodes']} |" for r in rows]
    lines += [f"| **all stages** | **{duration(sum(r['seconds'] for r in rows))}** | their sum: the run, one node after another |"]
    return lines + ["", STAGES_HELP]


def run_machine(root: str | os.PathLike) -> tuple[dict, str]:
    """(machine, one line) of the run in WORK: machine.json when the runner wrote it, else this machine
    (in a child process: torch's capability without loading torch here), said so; a warning when earlier
    runs on the work dir ran on another CPU kind."""
    recorded = read_machine(root)
    m = recorded or describe_machine_in_child()
    started = (m.get("run") or {}).get("started")
    text = machine_line(m) + (f". Recorded in {Path(root) / FILE} when the run started" + (f" ({started})" if started else "") if recorded else
                              ". Not recorded by the run (the work dir predates machine.json): the machine the report ran on")
    others = sorted({e["cpu_kind"] for e in (m.get("earlier") or []) if e.get("cpu_kind") and e["cpu_kind"] != cpu_kind(m)})
    if others:
        text += f". WARNING: earlier runs on this work dir ran on other CPU kinds ({'; '.join(others)}): its figures may mix them"
    return m, text


def reproduction_text(m: dict) -> str:
    return (f"These figures reproduce exactly on the same CPU kind ({cpu_kind(m)}): the same code, data and seed give the same files. "
            "Another CPU kind (another model or SIMD capability, another thread count) runs other kernels that round floats differently, "
            "and every trained model, hence every figure, moves: by how much was not measured here (one CPU kind was available to this work).")


if __name__ == "__main__":
    print(json.dumps(describe_machine(), indent=1))
