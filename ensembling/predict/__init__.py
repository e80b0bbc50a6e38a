"""Classify new products with a trained work dir: `python -m ensembling.predict` and `Predictor`.

Every source the chosen one is made from is loaded once (loaded.py, in the order plan.py gives);
new products (products.py) then go through them in memory, each through the function its stage
predicted its test products with, so a new product gets what a test product of the run got. See README.md.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "Predictor":  # deferred: `python -m ensembling.predict --help` loads no stage
        from .predictor import Predictor

        return Predictor
    raise AttributeError(name)
