"""Run recipes one after another in one process (under torchrun: one process group for all).

    torchrun --standalone --nproc_per_node=N tests/ddp_predict.py WORK SOLUTION=RECIPE.yaml ...
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> None:
    work, *pairs = argv
    for pair in pairs:
        solution, _, recipe = pair.partition("=")
        importlib.import_module(f"solutions.{solution}.train").main(["--config", recipe, "--work", work, "--no-progress"])


if __name__ == "__main__":
    main(sys.argv[1:])
