"""Fetch ImageNet weights ONCE, on a machine with internet, into weights/<model>.pth.

    python scripts/fetch_weights.py dpn107 resnext101_64x4d.gluon_in1k ...   # timm names, with a tag where a recipe names one

`python -m common.preflight --profile full` prints the line that fetches every file the profile lacks.

The pipeline itself never downloads: recipes read these local files (`pretrained: weights/...`).
Copy the weights/ folder to the training machines with the code.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="timm model names")
    p.add_argument("--out", default="weights")
    args = p.parse_args()
    Path(args.out).mkdir(exist_ok=True)
    for name in args.models:
        model = timm.create_model(name, pretrained=True)  # the one deliberate download, run by hand
        path = Path(args.out) / f"{name}.pth"
        torch.save(model.state_dict(), path)
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
