"""The registries the pipeline's parts plug into: solutions (their recipes, trainer and blend),
stages (nodes of the pipeline graph beyond the recipes) and side sources (how their stage reruns
for new products).

The shared layer never imports a solution, a side source or the ensembling stages by name: the
parts are listed once, in stage order, in pyproject.toml (`[tool.cdiscount] pipeline`), and each
listed module registers itself here when `load_plugins()` imports it (timm's registries, with
the list where a plugin system keeps its entry points). Registering imports nothing heavy: a
solution's trainer (torch) is imported only when its recipe kinds are asked for.
"""
from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import DataError
from .paths import REPO

PLUGINS_FILE = REPO / "pyproject.toml"


@dataclass(frozen=True)
class Solution:
    """A solution package: `<package>.train` (KINDS, DEFAULT, runnable with -m), `<package>.submit`
    (BLEND, runnable with -m) and its recipes, configs/*.yaml."""

    name: str
    package: str
    configs: Path

    @property
    def trainer(self) -> str:
        return f"{self.package}.train"

    @property
    def blend_module(self) -> str:
        return f"{self.package}.submit"

    def kinds(self) -> tuple[dict, str]:
        """The registered recipe kinds (stage -> RecipeKind) and the stage of a recipe naming none."""
        module = importlib.import_module(self.trainer)
        return module.KINDS, module.DEFAULT

    def blend(self) -> Any:
        """Its SolutionBlend (ensembling.blend): members, power, what the team recorded."""
        return importlib.import_module(self.blend_module).BLEND


@dataclass(frozen=True)
class SideSource:
    """Which sources a side source reads (from the summary.json its stage wrote), and how the
    loaded predictor (ensembling.predict) loads what its stage fitted, once, to answer new products:
    `load(work, summary)` returns an object whose `predict(reader, inputs)` gives the top-K of the
    products of `reader` (a common.bson_reader.MemoryReader) from `inputs` (source name -> TopK of
    those products, for every source `needs` names), as the stage's test predictions would be."""

    needs: Callable[[dict], list[str]]  # summary -> the sources it is made from
    load: Callable[[Any, dict], Any]  # (trained WorkDir, summary) -> a loaded side source


StageFactory = Callable[..., list]  # (RunOptions, WorkDir, the nodes before it) -> its nodes (common.pipeline.Node)

_PARTS: list[tuple[str, Any]] = []  # ("solution", Solution) | ("stage", factory), in registration order
_SIDE_SOURCES: dict[str, SideSource] = {}
_LOADED = False


def register_solution(solution: Solution) -> Solution:
    if not any(kind == "solution" and part.name == solution.name for kind, part in _PARTS):
        _PARTS.append(("solution", solution))
    return solution


def register_stage(factory: StageFactory) -> StageFactory:
    if ("stage", factory) not in _PARTS:
        _PARTS.append(("stage", factory))
    return factory


def register_side_source(name: str, side: SideSource) -> SideSource:
    _SIDE_SOURCES[name] = side
    return side


def plugin_modules(path: Path = PLUGINS_FILE) -> list[str]:
    """The modules of `[tool.cdiscount] pipeline`, in stage order."""
    try:
        table = tomllib.loads(path.read_text())["tool"]["cdiscount"]["pipeline"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{path}: no [tool.cdiscount] pipeline list of plugin modules ({e})") from None
    return list(table)


def load_plugins() -> None:
    """Import every listed part once (each registers itself); registration order = the list's."""
    global _LOADED
    if _LOADED:
        return
    for name in plugin_modules():
        importlib.import_module(name)
    order = {name: i for i, name in enumerate(plugin_modules())}
    _PARTS.sort(key=lambda p: order.get(_module_of(p), len(order)))
    _LOADED = True


def _module_of(part: tuple[str, Any]) -> str:
    kind, obj = part
    return f"{obj.package}.pipeline" if kind == "solution" else obj.__module__


def parts() -> list[tuple[str, Any]]:
    load_plugins()
    return list(_PARTS)


def solutions() -> list[Solution]:
    return [part for kind, part in parts() if kind == "solution"]


def solution(name: str) -> Solution:
    for s in solutions():
        if s.name == name:
            return s
    raise DataError(f"solution {name!r}: not registered (registered: {', '.join(s.name for s in solutions())}; {PLUGINS_FILE.name} lists them)")


def solution_of_path(path: Path) -> Solution | None:
    """The solution whose configs folder holds `path` (None: a recipe file elsewhere)."""
    folder = Path(path).resolve().parent
    return next((s for s in solutions() if s.configs.resolve() == folder), None)


def side_sources() -> dict[str, SideSource]:
    load_plugins()
    return dict(_SIDE_SOURCES)
