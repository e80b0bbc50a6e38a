"""Recipe config: YAML defaults, command-line overrides, saved resolved config, bad YAML."""
from __future__ import annotations

import argparse

import pytest
import yaml

from common.config import TrainConfig, add_config_arguments, load_yaml, parse_config
from common.errors import DataError
from common.paths import REPO


def parse(argv, yaml_path):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return parse_config(p.parse_args(argv), yaml_path)


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


def test_every_shipped_recipe_parses():
    from solutions.bestfitting.train import BestfittingConfig
    from solutions.convoluted.train import stage_of

    classes = {"bestfitting": lambda path: BestfittingConfig, "convoluted": lambda path: stage_of(path).config}
    recipes = sorted((REPO / "solutions").glob("*/configs/*.yaml"))
    assert len(recipes) >= 25
    for path in recipes:
        cls = classes.get(path.parent.parent.name, lambda path: TrainConfig)(path)
        cfg = cls(**load_yaml(path, cls))
        assert cfg.name == path.stem and cfg.solution == path.parent.parent.name, path


@pytest.mark.parametrize("field, value", [("optimizer", "adagrad"), ("schedule", "poly"), ("amp", "fp8"), ("aggregate", "median"), ("decode_on", "gpu"), ("tta", ["vflip"])])
def test_bad_choices_fail_when_read(field, value):
    with pytest.raises(DataError, match=field):
        TrainConfig(**{field: value})
