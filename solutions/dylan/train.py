"""Train every fold of one dylan recipe and write its OOF and test predictions.

    python -m solutions.dylan.train --config solutions/dylan/configs/mini_lite0_48.yaml
    torchrun --standalone --nproc_per_node=8 -m solutions.dylan.train --config solutions/dylan/configs/dpn107.yaml

dylan's models are plain single-image classifiers: the shared image task is the whole recipe.
"""
from __future__ import annotations

from common.recipe import IMAGE_TASK, train_main

if __name__ == "__main__":
    train_main(IMAGE_TASK, description=__doc__)
