"""Checks before the first stage: every recipe of the profile loads and validates, its network
builds (on the meta device: no memory, no weights), its global batch splits over the processes,
and every weight file is there, so a run does not stop hours in on a typo or a missing file.

    python -m common.preflight --profile full --nproc 8         # a real run: every problem at once, exit 2
    python -m common.preflight --profile full --fast-dev-run    # missing weights: random init, said once

run_all.sh runs it before any stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from .checks import at_least
from .cli import parse_stage, run
from .config import batch_split
from .errors import DataError
from .models import ModelSpec, check_model, is_timm_model
from .recipe import fast_dev_run, load_recipe, profile_recipes, weights_available
from .registry import Solution, solutions

FETCH = "python scripts/fetch_weights.py"
NUM_CLASSES = 5270  # the official tree: the head every full recipe builds


@dataclass
class PreflightOptions:
    profile: str = "mini"  # mini | full
    nproc: Annotated[int, at_least(1)] = 1  # processes each recipe trains on (its global batch must split over them)
    worlds: dict = field(default_factory=dict)  # {source: processes} for the recipes that run on another count (a scheduler's GPUs per recipe)
    fast_dev_run: bool = False  # the wiring check: a missing weight file means random initial weights, not a stop


@dataclass
class Check:
    solution: str
    recipe: str
    facts: list[str] = field(default_factory=list)  # what was checked, for the table
    problems: list[str] = field(default_factory=list)
    missing: tuple[str, str] | None = None  # (model, weight file) when the file is absent


def check_recipe(sol: Solution, path: Path, opts: PreflightOptions) -> Check:
    cfg = load_recipe(path, sol)
    check = Check(sol.name, path.stem, [f"stage {cfg.stage}", f"model {cfg.model}"])
    if is_timm_model(cfg.model) or cfg.pretrained:
        try:
            check.facts.append(f"{check_model(ModelSpec(cfg.model, NUM_CLASSES, None, cfg.drop_rate)) / 1e6:.1f}M params")
        except DataError as e:
            check.problems.append(str(e))
    if cfg.pretrained and not weights_available(cfg.pretrained):
        check.missing = (cfg.model, str(cfg.pretrained))
        if not opts.fast_dev_run:
            check.problems.append(f"weight file {cfg.pretrained} is missing")
    run_cfg = fast_dev_run(cfg, warn=False) if opts.fast_dev_run else cfg  # the missing files are said once, together
    try:
        check.facts.append(str(batch_split(run_cfg, int(opts.worlds.get(cfg.source, opts.nproc)))))
    except DataError as e:
        check.problems.append(str(e))
    check.facts.append(f"weights {run_cfg.pretrained or 'random init'}")
    return check


def check_profile(opts: PreflightOptions) -> list[Check]:
    checks = []
    for sol in solutions():
        try:
            paths = profile_recipes(sol, opts.profile)
        except DataError as e:
            checks.append(Check(sol.name, "(profile)", problems=[str(e)]))
            continue
        checks += [check_recipe(sol, p, opts) for p in paths]
    return checks


def fetch_line(missing: list[tuple[str, str]]) -> str:
    """The command that writes the missing files (fetch_weights.py saves <out>/<model>.pth)."""
    by_dir: dict[str, list[str]] = {}
    for model, file in missing:
        if Path(file).name != f"{model}.pth":
            continue  # not a file fetch_weights.py names; listed above
        by_dir.setdefault(str(Path(file).parent), []).append(model)
    return "\n".join(f"  {FETCH} {' '.join(sorted(set(models)))} --out {d}" for d, models in by_dir.items())


def report(checks: list[Check], opts: PreflightOptions) -> None:
    """The table; every problem at once (DataError), or the fast dev run's one loud line."""
    print(f"preflight: profile {opts.profile}, {opts.nproc} process(es){', fast dev run' if opts.fast_dev_run else ''}: {len(checks)} recipes")
    for c in checks:
        print(f"  {'ok ' if not c.problems else 'BAD'} {c.solution}/{c.recipe}: {', '.join(c.facts)}")
    missing = [c.missing for c in checks if c.missing]
    problems = [f"{c.solution}/{c.recipe}: {p}" for c in checks for p in c.problems]
    if missing and opts.fast_dev_run:
        print(f"\n!!! FAST DEV RUN: {len(missing)} weight files are missing; those recipes start from RANDOM weights "
              f"(the wiring check only; fetch them before a real run):\n{fetch_line(missing)}\n")
    if problems:
        fetch = f"\nfetch the weights on a machine with internet, then copy them here:\n{fetch_line(missing)}" if missing and not opts.fast_dev_run else ""
        raise DataError(f"{len(problems)} problems in the {opts.profile} profile, nothing was run:\n  " + "\n  ".join(problems) + fetch)


def main(argv: list[str] | None = None) -> list[Check]:
    args = parse_stage(argv, __doc__, PreflightOptions)
    if args.options.profile not in ("mini", "full"):
        raise DataError(f"--profile {args.options.profile!r}: choose from mini, full")
    checks = check_profile(args.options)
    report(checks, args.options)
    return checks


if __name__ == "__main__":
    run(main)
