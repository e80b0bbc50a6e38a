from common.cli import run

from .generate import main

run(main)
