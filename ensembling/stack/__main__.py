"""python -m ensembling.stack --work W [--any StackConfig field]: see ensembling/stack/__init__.py."""
from common.cli import run

from .run import main

run(main)
