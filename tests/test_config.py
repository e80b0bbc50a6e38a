"""Recipe config: YAML defaults, command-line overrides, saved resolved config, bad YAML."""
from __future__ import annotations

import argparse

import pytest
import yaml

from common.cli import add_fields, build_options, parse_stage, read_yaml
from common.config import TrainConfig, load_yaml
from common.errors import DataError
from common.paths import REPO


def parse(argv, yaml_path):
    p = argparse.ArgumentParser()
    add_fields(p, TrainConfig)
    return build_options(p.parse_args(argv), read_yaml(yaml_path) if yaml_path else {}, TrainConfig)


def test_cli_overrides_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: resnet18\nlr: 0.01\nlr_milestones: [3, 6]\nhflip: true\npretrained: some.pth\n")
    cfg = parse(["--lr", "0.5", "--no-hflip", "--lr-milestones", "1", "2", "4", "--pretrained", "none"], path)
    assert (cfg.model, cfg.lr, cfg.hflip, cfg.lr_milestones, cfg.pretrained) == ("resnet18", 0.5, False, [1, 2, 4], None)
    assert parse([], path).lr == 0.01 and parse([], None) == TrainConfig()


def test_saved_config_round_trips(tmp_path):
    cfg = TrainConfig(model="dpn92", lr_milestones=[2], tta=["orig"])
    cfg.save(tmp_path / "config.yaml")
    assert TrainConfig(**yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


@pytest.mark.parametrize("text, problem", [("lr: [oops\n", "invalid YAML"), ("- a\n- b\n", "mapping"), ("learning_rate: 1\n", "unknown options")])
def test_bad_yaml(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=f"bad.yaml.*{problem}"):
        load_yaml(path)


def test_every_shipped_recipe_parses_and_profiles_order_their_requirements():
    from common.recipe import load_recipe, profile_recipes
    from common.registry import solution

    recipes = sorted((REPO / "solutions").glob("*/configs/*.yaml"))
    assert len(recipes) >= 25
    for name in ("dylan", "bestfitting", "convoluted"):
        sol = solution(name)
        kinds, _ = sol.kinds()
        for path in sol.configs.glob("*.yaml"):
            cfg = load_recipe(path, sol)
            assert cfg.name == path.stem and cfg.solution == name and cfg.stage in kinds, path
        for profile in ("mini", "full"):
            order = [p.stem for p in profile_recipes(sol, profile)]
            assert order and all(p.startswith("mini_") == (profile == "mini") and not p.startswith("ablation") for p in order)
            for i, recipe in enumerate(order):  # a head after its base nets, whatever the file names
                assert set(load_recipe(sol.configs / f"{recipe}.yaml", sol).requires()) <= set(order[:i])


def test_a_recipe_takes_its_solution_and_name_from_its_file(tmp_path):
    """In a solution's configs folder the folder and the file name say whose recipe it is; a YAML
    that says otherwise is refused; a recipe file elsewhere belongs to the trainer running it (never
    to dylan by default, as TrainConfig's old default had it)."""
    from common.recipe import identity, load_recipe
    from common.registry import solution

    dylan, convoluted = solution("dylan"), solution("convoluted")
    cfg = load_recipe(dylan.configs / "mini_lite0.yaml", dylan)
    assert (cfg.solution, cfg.name) == ("dylan", "mini_lite0") and TrainConfig().solution == ""
    with pytest.raises(DataError, match="a recipe of dylan, not of convoluted"):
        load_recipe(dylan.configs / "mini_lite0.yaml", convoluted)
    with pytest.raises(DataError, match="name: 'other'.*file name"):
        identity(dylan.configs / "mini_lite0.yaml", dylan, {"name": "other"})
    with pytest.raises(DataError, match="solution: 'bestfitting'"):
        identity(dylan.configs / "mini_lite0.yaml", dylan, {"solution": "bestfitting"})
    (tmp_path / "mine.yaml").write_text("model: resnet10t\n")
    assert identity(tmp_path / "mine.yaml", convoluted, {}) == {"solution": "convoluted", "name": "mine"}
    assert identity(tmp_path / "mine.yaml", convoluted, {"name": "tb"}) == {"solution": "convoluted", "name": "tb"}


def test_every_stage_takes_the_same_command_line(tmp_path):
    """--work, --config YAML, a flag per field that wins over the YAML, for a CPU stage's options too."""
    from ensembling.stack import StackConfig

    (tmp_path / "s.yaml").write_text("rounds: 7\nmin_child_weight: 3.0\n")
    args = parse_stage(["--work", str(tmp_path), "--config", str(tmp_path / "s.yaml"), "--subsample", "0.5", "--max-bin", "64"], None, StackConfig)
    assert (args.options.rounds, args.options.min_child_weight, args.options.subsample, args.options.max_bin) == (7, 3.0, 0.5, 64)
    assert args.work.root == tmp_path and args.progress
    with pytest.raises(DataError, match="objective"):
        parse_stage(["--objective", "ranking"], None, StackConfig)


@pytest.mark.parametrize("field, value", [("optimizer", "adagrad"), ("schedule", "poly"), ("amp", "fp8"), ("aggregate", "median"), ("decode_on", "gpu"), ("tta", ["vflip"])])
def test_bad_choices_fail_when_read(field, value):
    with pytest.raises(DataError, match=field):
        TrainConfig(**{field: value})


def test_a_number_written_as_yaml_reads_it_is_checked_when_the_recipe_loads(tmp_path):
    """YAML 1.1 reads 4e-05 (no dot) as a string: it is the number it spells; a word is one clear line."""
    from common.config import load_yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text("weight_decay: 4e-05\nepochs: 3\n")
    assert load_yaml(recipe) == {"weight_decay": 4e-05, "epochs": 3}
    recipe.write_text("lr: fast\nepochs: 3\n")
    with pytest.raises(DataError, match=r"r\.yaml: recipe model: lr: 'fast' \(not a number\)"):
        load_yaml(recipe)
    recipe.write_text("epochs: '3'\n")
    with pytest.raises(DataError, match="epochs: '3'"):
        load_yaml(recipe)


def test_a_baseline_is_trained_by_its_profile_but_reported_as_an_ablation():
    """bestfitting's single-image controls run in the full profile; an ablation never does."""
    from common.recipe import load_recipe, profile_recipes

    full = [p.stem for p in profile_recipes("bestfitting", "full")]
    assert {"single_resnet50", "single_inceptionresnetv2"} <= set(full) and "ablation_mini_lite0_grid" not in full
    assert all(not p.startswith("ablation") for p in full)
    cfg = load_recipe(REPO / "solutions/bestfitting/configs/single_resnet50.yaml", "bestfitting")
    assert cfg.baseline and cfg.stage == "image" and cfg.model == "resnet50"
