"""The machine a run ran on (common/machine.py): described, written by the runner at a run's start, and
the stage times read back from the runner's logs."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from common.machine import (FILE, cpu_kind, describe_machine, describe_machine_in_child, duration, log_runs, machine_line, read_machine,
                            stage_markdown, stage_rows, stage_times, write_machine)
from common.paths import WorkDir


def test_describe_machine_names_the_cpu_without_loading_torch_unasked():
    torch_loaded = "torch" in sys.modules
    m = describe_machine(import_torch=False)
    assert ("torch" in sys.modules) == torch_loaded  # import_torch=False imports nothing new
    assert m["cpu_model"] and m["cpu_model"] != "unknown" and m["cores"] >= 1 and m["usable_cores"] >= 1 and m["python"]
    assert {"ram_gib", "os", "torch", "torch_cpu_capability", "gpus", "load_average", "architecture"} <= set(m)
    line = machine_line(m)
    assert line.startswith(m["cpu_model"]) and f"{m['cores']} cores" in line
    json.dumps(m)  # JSON-able


def test_describe_machine_in_a_child_reads_torchs_cpu_capability():
    pytest.importorskip("torch")
    m = describe_machine_in_child()
    assert isinstance(m["torch_cpu_capability"], str) and m["torch_cpu_capability"]  # DEFAULT, AVX2, AVX512, ...
    assert m["torch"] and m["torch_threads"] >= 1
    assert m["torch_cpu_capability"] in cpu_kind(m) and f"torch CPU capability {m['torch_cpu_capability']}" in machine_line(m)


def test_write_machine_keeps_the_earlier_runs_machines(tmp_path):
    first = {**describe_machine(import_torch=False), "cpu_model": "Other CPU", "torch_cpu_capability": "AVX2"}
    write_machine(tmp_path, {"started": "a"}, machine=first)
    write_machine(tmp_path, {"started": "b"}, machine=describe_machine(import_torch=False))
    m = read_machine(tmp_path)
    assert m["run"] == {"started": "b"} and len(m["earlier"]) == 1 and m["earlier"][0]["cpu_kind"].startswith("Other CPU / AVX2")
    from common.machine import run_machine

    _, text = run_machine(tmp_path)
    assert "WARNING: earlier runs on this work dir ran on other CPU kinds (Other CPU / AVX2" in text and "Recorded in" in text


def test_runner_writes_machine_json_when_a_run_starts(tmp_path, monkeypatch):
    """A one-node graph (its command: python -m common.machine) through run_pipeline: machine.json is
    written before the node runs, with the run's options; the node's log gives its stage time."""
    import common.runner as runner
    from common.pipeline import CPU, Graph, Node, RunOptions

    monkeypatch.setattr(runner, "build_graph", lambda opts, work: Graph([Node("hello", "hello", CPU, "common.machine")]))
    monkeypatch.setattr(runner, "preflight", lambda graph, opts, nproc: None)
    work = WorkDir(tmp_path / "w")
    assert runner.run_pipeline(RunOptions(nproc=0), work) == 0
    m = read_machine(work.root)
    assert m and m["cpu_model"] == describe_machine(import_torch=False)["cpu_model"]
    assert m["run"]["options"]["nproc"] == 0 and m["run"]["options"]["profile"] == "mini" and m["run"]["started"]
    assert os.path.getmtime(work.root / FILE) <= os.path.getmtime(work.root / "logs" / "hello.log")  # before the node
    (stage,) = stage_times(work.root)
    assert stage["stage"] == "hello" and stage["runs"] == 1 and not stage["estimated"] and stage["seconds"] < 120


def _log(root, node: str, starts: list[str], end: float) -> None:
    path = root / "logs" / f"{node}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"\n=== {node}: {s} on vm: /usr/bin/python -m x\nsome output\n" for s in starts))
    os.utime(path, (end, end))


def _t(s: str) -> float:
    return time.mktime(time.strptime(s, "%Y-%m-%d %H:%M:%S"))


def test_stage_times_from_the_logs_longest_run_per_node(tmp_path):
    _log(tmp_path, "dylan_mini_lite0", ["2026-01-01 10:00:00"], _t("2026-01-01 10:20:00"))
    _log(tmp_path, "dylan", ["2026-01-01 10:20:01"], _t("2026-01-01 10:20:03"))
    _log(tmp_path, "ocr", ["2026-01-01 10:20:03", "2026-01-01 12:00:00"], _t("2026-01-01 12:00:02"))  # a rerun, cached: 2 s
    _log(tmp_path, "md5", ["2026-01-01 10:20:30"], _t("2026-01-01 10:20:31"))
    runs = log_runs(tmp_path)
    assert len(runs) == 5
    stages = {s["stage"]: s for s in stage_times(tmp_path)}
    assert list(stages) == ["dylan", "ocr", "md5"]
    assert stages["dylan"]["seconds"] == pytest.approx(1202, abs=1) and [n for n, _ in stages["dylan"]["nodes"]] == ["dylan_mini_lite0", "dylan"]
    assert stages["ocr"]["seconds"] == pytest.approx(27, abs=1) and stages["ocr"]["estimated"] and stages["ocr"]["runs"] == 2  # to md5's start
    assert stages["md5"]["seconds"] == pytest.approx(1, abs=1) and not stages["md5"]["estimated"]
    rows = stage_rows(tmp_path)
    assert rows[0]["wall_time"] == "20 min 02 s" and "dylan_mini_lite0 20 min 00 s" in rows[0]["nodes"]
    md = stage_markdown(rows)
    assert any(line.startswith("| ocr | 27 s (estimated) |") for line in md) and any(line.startswith("| **all stages** | **20 min 30 s**") for line in md)


def test_duration():
    assert [duration(s) for s in (0.2, 5, 65, 3600 + 125)] == ["< 1 s", "5 s", "1 min 05 s", "1 h 02 min 05 s"]
