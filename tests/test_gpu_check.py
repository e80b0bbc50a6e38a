"""bench/gpu_check.sh, the one command for a GPU machine, here on the CPU at its smallest setting on a
machine without pymongo (bson), xgboost or anything but torch, torchvision, timm, opencv, numpy,
pandas and PyYAML (the others blocked): every kind of full recipe measured or skipped with its
reason, no error entry, and the plan reads what it wrote."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common.paths import REPO, WorkDir
from common.pipeline import RunOptions, build_graph

BLOCKED = ("bson", "pymongo", "xgboost", "matplotlib", "sklearn", "scipy", "dask", "distributed", "pytesseract", "onnxruntime", "fastapi")  # not on a bare GPU machine


def test_gpu_check_on_a_bare_machine_measures_every_full_recipe_kind(tmp_path):
    block = tmp_path / "blocked"
    for module in BLOCKED:
        (block / module).mkdir(parents=True)
        (block / module / "__init__.py").write_text(f"raise ImportError('{module} is blocked: a bare GPU machine has none')\n")
    # a short TMPDIR: multiprocessing's sockets (the loader's workers) live there, and an AF_UNIX path has at
    # most 107 bytes (pytest-xdist's tmp_path is longer)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env = {**os.environ, "PYTHONPATH": str(block), "PYTHON": sys.executable, "TMPDIR": str(scratch)}
    out = tmp_path / "out"
    run = subprocess.run([str(REPO / "bench/gpu_check.sh"), str(out), "--device", "cpu", "--smoke", "--one-per-kind", "--workers", "0", "--budget-s", "900"],
                         capture_output=True, text=True, timeout=600, env=env)
    shutil.rmtree(scratch, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"device.txt", "gpu_throughput.json", "gpu_throughput.md", "loader_cpu_us.txt", "plan_8gpus.txt"}
    result = json.loads((out / "gpu_throughput.json").read_text())
    assert not [s for s, r in result["recipes"].items() if "error" in r], result["recipes"]
    kinds = {(n.recipe.solution, n.recipe.stage) for n in build_graph(RunOptions(profile="full"), WorkDir(tmp_path / "w")).recipes()}
    measured = {(r["solution"], r["stage"]) for r in result["recipes"].values()}
    skipped = {s: why for s, why in result["skipped"].items()}
    assert all("stored features" in why for why in skipped.values()), skipped  # only the heads, which are no CNNs
    assert len(measured) + len(skipped) == len(kinds) and measured >= {("dylan", "image"), ("bestfitting", "composed"), ("convoluted", "base"),
                                                                       ("convoluted", "rank_count_net")}
    for r in result["recipes"].values():
        assert r["train_img_s"]["loader"] > 0 and r["infer_img_s"]["synthetic"] > 0 and r["gpus_per_recipe"] in (1, 2, 4, 8)
    plan = (out / "plan_8gpus.txt").read_text()
    assert "TOTAL wall-hours on 8 GPUs" in plan and f"{len(result['recipes'])} measured" in plan
    assert "| dylan_" in (out / "gpu_throughput.md").read_text() and "after / before" in (out / "loader_cpu_us.txt").read_text()
