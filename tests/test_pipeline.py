"""The pipeline graph (common/pipeline.py, `python -m common.pipeline --list`): every stage and recipe
of a profile as a node in dependency order, with what it needs and what marks it done; the stacker
reads every non-baseline source; the side sources and CPU stages carry their cost models."""
from __future__ import annotations

import subprocess
import sys

import pytest

from common.paths import REPO
from common.pipeline import BLEND, CPU, RECIPE, main


@pytest.mark.parametrize("profile, recipes", [("mini", 6), ("full", 32)])
def test_every_node_comes_after_what_it_requires(profile, recipes, tmp_path, capsys):
    graph = main(["--list", "--profile", profile, "--work", str(tmp_path)])
    out = capsys.readouterr().out
    names = [n.name for n in graph.nodes]
    assert len(graph.recipes()) == recipes and len(set(names)) == len(names)
    for i, node in enumerate(graph.nodes):
        assert set(node.requires) <= set(names[:i]), node.name
        assert f" {node.name} " in out
    assert graph.stages == ["data", "index", "folds", "stats", "dylan", "bestfitting", "convoluted", "ocr", "md5", "stack", "report"]
    assert [n.name for n in graph.nodes if n.kind == BLEND] == ["dylan", "bestfitting", "convoluted"]
    assert names[-2:] == ["stack", "report"] and set(graph["report"].requires) >= {"stack", "ocr", "md5"}
    assert all(n.gpus == 1 and n.done == (f"preds/{n.name}/summary.json",) and n.recipe_kind.cost for n in graph.recipes())
    stacked = set(graph["stack"].requires)
    for n in graph.recipes():  # baselines and ablations are reported, never stacked
        assert (n.name in stacked) == (not (n.recipe.baseline or n.recipe.ablation)), n.name
    assert all(graph[name].cost for name in ("index", "stats", "ocr", "md5", "stack", "report"))
    assert graph["ocr"].shards and graph["md5"].shards and graph["folds"].kind == CPU


def test_a_recipe_node_requires_the_recipes_its_recipe_names(tmp_path):
    graph = main(["--profile", "full", "--work", str(tmp_path)])
    fuse = graph["convoluted_fuse_gated"]
    assert fuse.kind == RECIPE and "folds" in fuse.requires
    assert {f"convoluted_{b}" for b in fuse.recipe.bases} <= set(fuse.requires)


def test_the_command_line_lists_the_full_profile():
    out = subprocess.run([sys.executable, "-m", "common.pipeline", "--list", "--profile", "full"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("pipeline of the full profile: 43 nodes (32 recipes)")
    assert "dylan_dpn107" in out.stdout and "GPU x1" in out.stdout


def test_compile_reaches_every_recipe_and_nothing_else(tmp_path):
    """run_all.sh --compile: each recipe node's trainer gets --compile (TrainConfig.compile); CPU nodes do not."""
    from common.paths import WorkDir
    from common.pipeline import RunOptions, build_graph

    graph = build_graph(RunOptions(profile="full", compile=True), WorkDir(tmp_path))
    assert all(n.args[-1] == "--compile" for n in graph.recipes()) and len(graph.recipes()) == 32
    assert not any("--compile" in (n.args or ()) for n in graph.nodes if n.kind != RECIPE)
    assert not any("--compile" in n.args for n in build_graph(RunOptions(profile="full"), WorkDir(tmp_path)).recipes())
