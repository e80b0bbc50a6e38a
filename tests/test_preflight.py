"""Checks before the first stage: the full profile's recipes, networks, global batches and weight
files, every problem at once; the fast dev run's recipe transform."""
from __future__ import annotations

import pytest

from common.cli import read_yaml
from common.errors import DataError
from common.paths import REPO
from common.preflight import main
from common.recipe import fast_dev_run, profile_configs
from solutions.bestfitting.train import BestfittingConfig
from solutions.dylan.train import KINDS

CONFIGS = REPO / "solutions"


def test_full_profile_without_weights_names_every_missing_file_at_once(capsys):
    with pytest.raises(DataError) as e:
        main(["--profile", "full", "--nproc", "8"])
    text = str(e.value)
    with_files = [c for c in profile_configs("full") if (c.pretrained or "").startswith("weights/")]
    assert f"{len(with_files)} problems" in text and "nothing was run" in text
    for name in ("dylan/dpn107", "bestfitting/inceptionresnetv2", "convoluted/base_xception"):
        assert f"{name}: weight file" in text
    assert "python scripts/fetch_weights.py" in text and "dpn107" in text and "--out weights" in text
    table = capsys.readouterr().out
    assert "dylan/dpn107: stage image, model dpn107, 98.4M params, global batch 384 = 8 processes x micro-batch 48 x 1 accumulation step" in table


def test_a_global_batch_that_does_not_split_is_caught_before_anything_runs():
    with pytest.raises(DataError) as e:
        main(["--profile", "full", "--nproc", "3"])
    text = str(e.value)
    assert "dylan/dpn92: recipe dpn92: global batch 512 does not split evenly over 3 processes" in text
    assert "dylan/dpn92: weight file" in text  # and the other problems in the same message


def test_fast_dev_run_profile_passes_and_says_random_weights_once(capsys):
    checks = main(["--profile", "full", "--fast-dev-run"])
    out = capsys.readouterr().out
    assert len(checks) == len(profile_configs("full")) and not any(c.problems for c in checks)
    assert out.count("FAST DEV RUN") == 1 and "RANDOM weights" in out


def test_mini_profile_passes_with_its_packaged_weights():
    checks = main(["--profile", "mini", "--nproc", "2"])
    assert checks and not any(c.problems or c.missing for c in checks)


def test_fast_dev_run_keeps_the_architecture_and_shrinks_the_run():
    cfg = KINDS["image"].config(**read_yaml(CONFIGS / "dylan" / "configs" / "dpn107.yaml"))
    dev = fast_dev_run(cfg)
    assert (dev.model, dev.optimizer, dev.label_smoothing, dev.tta) == (cfg.model, cfg.optimizer, cfg.label_smoothing, cfg.tta)
    assert dev.epochs == 1 and dev.input_size == 32 and dev.fast_dev_run and dev.pretrained is None  # no weights here
    assert (dev.global_batch, dev.batch_size, dev.max_images_per_epoch) == (8, 4, 16)
    inception = fast_dev_run(BestfittingConfig(**read_yaml(CONFIGS / "bestfitting" / "configs" / "inceptionresnetv2.yaml")))
    assert inception.input_size == 80 and inception.epochs == 1 and inception.finetune_epochs == 1  # the smallest input its stem takes
