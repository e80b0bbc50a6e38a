"""Train every fold of one dylan recipe and write its OOF and test predictions.

    python -m solutions.dylan.train --config solutions/dylan/configs/mini_lite0.yaml
    python -m solutions.dylan.train --profile mini          # every recipe of a profile
    torchrun --standalone --nproc_per_node=8 -m solutions.dylan.train --config solutions/dylan/configs/dpn107.yaml

dylan's models are plain single-image classifiers: the shared image fold is the whole recipe.
"""
from __future__ import annotations

from common.cli import run
from common.recipe import IMAGE, train_main

KINDS = {"image": IMAGE}
DEFAULT = "image"  # the stage of a recipe that names none


def main(argv: list[str] | None = None) -> dict | None:
    return train_main("dylan", KINDS, DEFAULT, argv, __doc__)


if __name__ == "__main__":
    run(main)
