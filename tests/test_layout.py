"""The seams: CPU stages never load the GPU stack, and the code stays readable (file and function sizes)."""
from __future__ import annotations

import ast
import subprocess
import sys

from common.paths import REPO

PACKAGES = ["common", "solutions", "ocr", "md5", "mini", "ensembling", "bench", "scripts"]


def test_cpu_stage_modules_load_neither_torch_nor_timm():
    """OCR, MD5, the stack, the blends and the report run on machines without a GPU stack."""
    modules = ["ocr.run", "md5.run", "ensembling.stack", "ensembling.stack.run", "ensembling.report", "ensembling.blend",
               "common.workdata", "common.sources", "common.predictions", "common.folds", "common.prepare", "common.stats"]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_source_file_over_500_lines_no_function_over_60():
    problems = []
    for path in sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 500:
            problems.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                problems.append(f"{path.relative_to(REPO)}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert problems == []
