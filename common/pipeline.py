"""The pipeline as one graph: every stage and every recipe of a profile, with its edges, the
command that runs it, what it needs (GPUs or a CPU), the file that marks it done, its cost model
for the plan and its benchmark feed. run_all.sh (through common.runner), the plan, the GPU bench
and predict read it; nothing else knows the stage order.

    python -m common.pipeline --list [--profile full] [--work W]      # the nodes in order

Nodes come from the parts listed in pyproject.toml (`[tool.cdiscount] pipeline`, common/registry.py):
a stage factory (mini's data, the index / folds / stats of common/stages.py, OCR, MD5, the stack,
the report) returns its nodes; a registered solution gives one node per recipe of the profile
(named by its source, `<solution>_<recipe>`, each after the recipes it requires and the folds)
and its blend (named by the solution). A node's `stage` is run_all.sh's stage name
(`--from` / `--only`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

from .checks import Range, at_least, check_fields, positive
from .errors import DataError
from .paths import WorkDir
from .registry import Solution, parts

CPU, RECIPE, BLEND = "cpu", "recipe", "blend"


@dataclass
class RunOptions:
    profile: str = "mini"  # mini | full: the recipes the graph holds
    data: str = ""  # a folder with the Kaggle files (train.bson, test.bson[, category_names.csv]); "": the mini dataset in <work>/mini
    preset: str = "default"  # mini dataset preset (tiny | default | dev)
    seed: Annotated[int, at_least(0)] = 0  # mini data and folds seed
    n_folds: Annotated[int, at_least(0)] = 0  # k-fold folds (0: 3 for mini, 5 for full)
    protocol: str = ""  # kfold | holdout ("": holdout for full, kfold for mini)
    holdout_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.05  # the holdout's share when the 2nd team's 50,000 ids are not in the data
    fast_dev_run: bool = False  # every recipe a few steps at a small input (the wiring check)
    compile: bool = False  # every recipe's training net through torch.compile (its `compile: true`)
    force: bool = False  # rerun every selected node, and pass --force to the stages that take it
    accept_lost_products: bool = False  # write the submissions although a cut test.bson lost products
    nproc: Annotated[int, at_least(-1)] = -1  # processes per recipe when recipes run one after another (-1: one per visible GPU)
    gpus_per_recipe: Annotated[int, at_least(0)] = 0  # >0: every ready recipe at once on its own G GPUs, through dask (see --scheduler)
    scheduler: str = ""  # local[:N] (a LocalCluster over N GPUs, or N CPU slots) | tcp://HOST:PORT (workers with --resources GPU=N)
    from_stage: str = ""  # run this stage and every later one (run_all.sh --from)
    only: str = ""  # run this stage (or node) alone (run_all.sh --only)
    progress_s: Annotated[float, positive()] = 60.0  # seconds between the progress lines of the running recipes (scheduler)

    def __post_init__(self) -> None:
        check_fields(self, "run options")
        if self.n_folds == 1:
            raise DataError("--n-folds 1: k-fold needs at least 2 folds (0: the profile's default)")
        if self.profile not in ("mini", "full"):
            raise DataError(f"--profile {self.profile!r}: choose mini or full")
        self.protocol = self.protocol or ("holdout" if self.profile == "full" else "kfold")
        if self.protocol not in ("kfold", "holdout"):
            raise DataError(f"--protocol {self.protocol!r}: choose kfold or holdout")
        self.n_folds = self.n_folds or (3 if self.profile == "mini" else 5)


@dataclass(frozen=True)
class Node:
    """One step of the pipeline: `python -m <module> <args>` (torchrun for a recipe on several GPUs)."""

    name: str
    stage: str  # run_all.sh's stage it belongs to
    kind: str  # cpu | recipe | blend
    module: str
    args: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    gpus: int = 0  # a recipe: the GPUs it trains on under a scheduler (0: a CPU task)
    done: tuple[str, ...] = ()  # files under the work dir it writes last: older than what it is made from = stale
    always: bool = False  # runs every time (it checks by content inside what it reuses); its done files still date its output
    inputs: tuple[str, ...] = ()  # files outside the work dir it is made from (a recipe's YAML)
    shards: Callable[[int], tuple[list[tuple[str, ...]], tuple[str, ...]]] | None = None  # n -> (each shard's args, the merge's args)
    recipe: Any = None  # a recipe node's config (TrainConfig subclass)
    recipe_kind: Any = None  # and its RecipeKind (fold function, cost model, benchmark feed)
    cost: Callable | None = None  # a CPU node: (common.costs.StageContext) -> its rows of the plan's CPU table (None: not measured)
    note: str = ""

    @property
    def resources(self) -> str:
        return f"GPU x{self.gpus}" if self.gpus else "CPU"


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)

    def __getitem__(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(n.stage for n in self.nodes))

    def recipes(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == RECIPE]

    def dependants(self, name: str) -> list[str]:
        """Every node that needs `name`, directly or not, in order."""
        out: set[str] = {name}
        for n in self.nodes:
            if out & set(n.requires):
                out.add(n.name)
        return [n.name for n in self.nodes if n.name in out and n.name != name]

    def with_gpus(self, gpus: dict[str, int]) -> Graph:
        return Graph([dataclasses.replace(n, gpus=gpus.get(n.name, n.gpus)) if n.kind == RECIPE else n for n in self.nodes])

    def producer(self, source: str) -> Node | None:
        """The node that writes prediction source `source` (preds/<source>/summary.json)."""
        return next((n for n in self.nodes if f"preds/{source}/summary.json" in n.done), None)


def dataset_files(opts: RunOptions, work: WorkDir) -> dict[str, str]:
    """train / test / categories / test_labels ("" when none): the Kaggle folder's, or the mini dataset's."""
    if opts.data:
        folder = Path(opts.data).resolve()
        categories = folder / "category_names.csv"
        from .paths import CATEGORY_NAMES_CSV

        return {"train": str(folder / "train.bson"), "test": str(folder / "test.bson"),
                "categories": str(categories if categories.is_file() else CATEGORY_NAMES_CSV), "test_labels": ""}
    mini = work.root / "mini"
    return {"train": str(mini / "train.bson"), "test": str(mini / "test.bson"), "categories": str(mini / "category_names.csv"),
            "test_labels": str(mini / "test_labels.csv")}


def flag(on: bool, name: str) -> tuple[str, ...]:
    return (name,) if on else ()


# ----------------------------------------------------------------------------- solutions' nodes


def solution_nodes(sol: Solution, opts: RunOptions, work: WorkDir, before: list[Node]) -> list[Node]:
    """One node per recipe of the profile (after the folds and the recipes it requires), then the blend."""
    from .recipe import load_recipe, profile_recipes

    kinds, _ = sol.kinds()
    w = str(work.root)
    nodes, members = [], []
    for path in profile_recipes(sol, opts.profile):
        cfg = load_recipe(path, sol)
        requires = ("folds", *(f"{sol.name}_{dep}" for dep in cfg.requires()))
        nodes.append(Node(cfg.source, sol.name, RECIPE, sol.trainer, ("--config", str(path), "--work", w, *flag(opts.fast_dev_run, "--fast-dev-run"),
                          *flag(opts.force, "--force"), *flag(opts.compile, "--compile")), requires, gpus=1, done=(f"preds/{cfg.source}/summary.json",), inputs=(str(path),),
                          recipe=cfg, recipe_kind=kinds[cfg.stage], note=f"{cfg.stage} {cfg.model}" + (" (baseline)" if cfg.baseline else "")))
        if not (cfg.ablation or cfg.baseline):
            members.append(cfg.source)
    nodes.append(Node(sol.name, sol.name, BLEND, sol.blend_module, ("--work", w, "--profile", opts.profile,
                      *flag(opts.accept_lost_products, "--accept-lost-products")), tuple(members), done=(f"preds/{sol.name}/summary.json",),
                      note=f"{sol.name}'s blend"))
    return nodes


def build_graph(opts: RunOptions, work: WorkDir) -> Graph:
    """Every part's nodes, in the order of pyproject's list; a `requires` naming no node is a bug of its part."""
    nodes: list[Node] = []
    for kind, part in parts():
        nodes += solution_nodes(part, opts, work, nodes) if kind == "solution" else part(opts, work, list(nodes))
    names = [n.name for n in nodes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"pipeline: two nodes named {twice} (a recipe's source clashes with a stage)")
    order = topological(nodes)
    return Graph(order)


def topological(nodes: list[Node]) -> list[Node]:
    """Each node after what it requires; otherwise the registration order."""
    by_name = {n.name: n for n in nodes}
    out: list[Node] = []
    seen: set[str] = set()

    def visit(n: Node, chain: tuple[str, ...]) -> None:
        if n.name in seen:
            return
        if n.name in chain:
            raise DataError(f"pipeline: a cycle {' -> '.join((*chain, n.name))}")
        for dep in n.requires:
            if dep not in by_name:
                raise DataError(f"pipeline: {n.name} requires {dep!r}, which is no node")
            visit(by_name[dep], (*chain, n.name))
        seen.add(n.name)
        out.append(n)

    for n in nodes:
        visit(n, ())
    return out


def render(graph: Graph, opts: RunOptions) -> str:
    lines = [f"pipeline of the {opts.profile} profile: {len(graph.nodes)} nodes ({len(graph.recipes())} recipes), stages {' '.join(graph.stages)}",
             f"{'#':>3s} {'node':38s} {'stage':12s} {'kind':7s} {'needs':8s} {'done when':44s} requires"]
    for i, n in enumerate(graph.nodes):
        lines.append(f"{i:3d} {n.name:38s} {n.stage:12s} {n.kind:7s} {n.resources:8s} {(' + '.join(n.done) + (' (always runs)' if n.always else '')):44s} "
                     f"{', '.join(n.requires) or '-'}" + (f"   [{n.note}]" if n.note else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Graph:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the nodes in order (the default)")
    p.add_argument("--profile", default="mini", choices=["mini", "full"], help="the recipes the graph holds")
    p.add_argument("--work", default=None, help="work dir the commands write to (default: $CDISCOUNT_WORK or ./work)")
    p.add_argument("--data", default="", help="a Kaggle-layout folder (default: the mini dataset)")
    args = p.parse_args(argv)
    opts = RunOptions(profile=args.profile, data=args.data)
    graph = build_graph(opts, WorkDir(args.work))
    print(render(graph, opts))
    return graph


if __name__ == "__main__":
    from .cli import run

    run(main)
