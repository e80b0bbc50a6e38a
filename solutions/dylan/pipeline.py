"""Registers the solution with the pipeline (common/registry.py): its recipes (configs/*.yaml),
its trainer (train.py) and its blend (submit.py)."""
from __future__ import annotations

from pathlib import Path

from common.registry import Solution, register_solution

SOLUTION = register_solution(Solution("dylan", __package__, Path(__file__).parent / "configs"))
