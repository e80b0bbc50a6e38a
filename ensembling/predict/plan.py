"""What predicting a source of a trained work dir needs: the sources it is made from, in order
(each after what it reads), read from the summary.json files the stages wrote; a missing one
names the run_all.sh stage that makes it."""
from __future__ import annotations

from common.errors import DataError
from common.paths import WorkDir
from common.registry import SideSource, side_sources
from common.sources import SourceInfo, list_sources, read_source


def needs(work: WorkDir, info: SourceInfo) -> list[str]:
    """The sources `info` is made from, which must be predicted first (the stack: those it stacked)."""
    s = info.summary
    if info.kind in ("model", "ablation"):
        return [f"{info.solution}_{dep}" for dep in recipe_of(work, info).requires()]
    if info.kind in ("solution blend", "team blend"):
        return info.members
    if info.kind == "stack":
        return list(s.get("sources", []))
    return side_source(info).needs(s)


def in_order(work: WorkDir, name: str) -> list[SourceInfo]:
    """`name` and everything it is made from, each after what it needs; a missing one names its stage."""
    order: list[SourceInfo] = []

    def visit(n: str, chain: tuple[str, ...]) -> None:
        if n in chain:
            raise DataError(f"preds/{n}: made from itself ({' -> '.join(chain + (n,))})")
        if any(i.name == n for i in order):
            return
        if not (work.preds(n) / "summary.json").exists():
            hint = stage_hint(n)
            if hint is None:
                names = sorted(s.name for s in list_sources(work, finished=False))
                raise DataError(f"{work.preds(n)}: no such source in the trained work dir (it has: {', '.join(names) or 'none'})")
            raise DataError(f"{work.preds(n)}: not in the trained work dir: run {hint} first")
        info = read_source(work, n)
        for dep in needs(work, info):
            visit(dep, chain + (n,))
        order.append(info)

    visit(name, ())
    return order


def stage_hint(name: str) -> str | None:
    """The run_all.sh stage whose node writes source `name`, by the pipeline graph (None: no node does).
    A recipe of the other profile is looked for there too."""
    from common.pipeline import RunOptions, build_graph

    for profile in ("mini", "full"):
        node = build_graph(RunOptions(profile=profile), WorkDir()).producer(name)
        if node is not None:
            return f"./run_all.sh --only {node.stage}" + (f" --profile {profile}" if profile != "mini" else "") + f" (python -m {node.module})"
    return None


def recipe_of(work: WorkDir, info: SourceInfo):
    """The recipe a model source was trained from: its first fold's config.yaml, in its kind's class."""
    from common.recipe import load_recipe

    name, folds = info.summary["recipe"]["name"], info.summary.get("folds", [])
    if not folds:
        raise DataError(f"{work.preds(info.name)}/summary.json: records no fold")
    return load_recipe(work.model_dir(info.solution, name, folds[0]) / "config.yaml", info.solution)


def side_source(info: SourceInfo) -> SideSource:
    """How the side source loads what its stage fitted (registered by ocr/, md5/: common.registry)."""
    known = side_sources()
    if info.name not in known:
        raise DataError(f"side source {info.name}: no stage registers a loader for it (known: {sorted(known)})")
    return known[info.name]
