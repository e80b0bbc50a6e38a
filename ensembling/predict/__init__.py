"""Classify new products with a trained work dir: `python -m ensembling.predict` and `Predictor`.

The new products become a BSON file in the official layout and a scratch work dir whose test split
they are (products.py, workspace.py); every source the chosen one needs is rebuilt there by the
stage that made it, so a new product gets what a test product of the run got. See README.md.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "Predictor":  # deferred: `python -m ensembling.predict --help` loads no stage
        from .predictor import Predictor

        return Predictor
    raise AttributeError(name)
