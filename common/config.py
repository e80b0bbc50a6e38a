"""Recipe configuration: one YAML per model recipe, overridable from the command line.

Two passes, as in timm's train.py: `--config recipe.yaml` is parsed first and its values become
the defaults of the full parser, so `--lr 3e-4` on the command line wins over the YAML. The
resolved config is saved beside the checkpoints (config.yaml).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic import write_text
from .augment import AUGMENTS
from .errors import DataError


CHOICES = {
    "optimizer": {"sgd", "nadam", "adam", "adamw"},
    "schedule": {"step", "cosine", "constant"},
    "amp": {"bf16", "fp16", "none"},
    "aggregate": {"mean", "geomean"},
    "decode_on": {"workers", "device"},
}


@dataclass
class TrainConfig:
    # what and where
    solution: str = "dylan"
    name: str = "model"  # the recipe name: work/models/<solution>/<name>/fold<k>/
    model: str = "tf_efficientnet_lite0"  # a timm model name
    pretrained: str | None = None  # a registered weight source or a local file
    drop_rate: float = 0.0
    # data
    input_size: int = 180  # side of one image tile fed to the network
    hflip: bool = True  # random horizontal flip in training
    augment: list[str] = field(default_factory=list)  # on-device batch augmentations (common.augment.AUGMENTS), training only
    num_workers: int = 2
    decode_on: str = "workers"  # workers (OpenCV in loader processes) | device (torchvision.io.decode_jpeg, nvjpeg on CUDA)
    max_images_per_epoch: int = 0  # 0 = all; >0 samples a fixed-size epoch (mini budgets)
    # optimisation
    epochs: int = 1
    batch_size: int = 64
    accum_steps: int = 1  # gradient accumulation: effective batch = batch_size * accum_steps * world
    optimizer: str = "nadam"  # sgd | nadam | adam | adamw
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"  # step | cosine | constant
    lr_milestones: list[int] = field(default_factory=list)  # epochs where a step schedule multiplies by lr_gamma
    lr_gamma: float = 0.2
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    amp: str = "bf16"  # bf16 | fp16 | none (CUDA only; CPU runs fp32)
    channels_last: bool = True  # CUDA only
    seed: int = 0
    # inference
    tta: list[str] = field(default_factory=lambda: ["orig", "hflip"])
    aggregate: str = "mean"  # mean | geomean: a product's probability from its images'
    topk: int = 20
    eval_batch_size: int = 256
    folds: list[int] = field(default_factory=list)  # empty = every fold in folds.csv
    val_products: int = 0  # per-epoch validation on a seeded sample of the fold's products (0 = all); OOF predictions always cover the fold

    def __post_init__(self) -> None:
        """Reject a misspelt choice when the recipe is read, not hours into a run."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise DataError(f"recipe option {name}={getattr(self, name)!r}: choose from {sorted(allowed)}")
        unknown = set(self.tta) - {"orig", "hflip"}
        if unknown:
            raise DataError(f"recipe option tta: unknown views {sorted(unknown)}")
        unknown = set(self.augment) - set(AUGMENTS)
        if unknown:
            raise DataError(f"recipe option augment: unknown augmentations {sorted(unknown)}; choose from {sorted(AUGMENTS)}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, self.to_yaml())


def load_yaml(path: str | os.PathLike, cls: type = TrainConfig) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of option: value")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise DataError(f"{path}: unknown options {sorted(unknown)}")
    return data


def _argument(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: object) -> None:
    """A flag absent from the command line stays absent (SUPPRESS), so the YAML value holds."""
    flag, kw = "--" + f.name.replace("_", "-"), {"dest": f.name, "default": argparse.SUPPRESS}
    origin = typing.get_origin(hint)
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif origin is list:
        (item,) = typing.get_args(hint)
        parser.add_argument(flag, nargs="*", type=item, **kw)
    elif origin in (typing.Union, types.UnionType):
        parser.add_argument(flag, type=lambda s: None if s.lower() in ("none", "null", "") else s, **kw)
    else:
        parser.add_argument(flag, type=hint, **kw)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One flag per config field (defaults left to the YAML / the dataclass). A solution may pass
    its own TrainConfig subclass to add the options only it has."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group("recipe (overrides the YAML)")
    for f in dataclasses.fields(cls):
        _argument(group, f, hints[f.name])


def parse_stage_args(argv: list[str] | None, description: str | None, cls: type) -> tuple[str | None, typing.Any, bool]:
    """(work dir, options, progress) of a stage whose options are a dataclass: --work, --config
    YAML, --no-progress, then one flag per field overriding the YAML."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="work dir (default: $CDISCOUNT_WORK or ./work)")
    p.add_argument("--config", default=None, help=f"YAML of {cls.__name__} fields (command-line options override it)")
    p.add_argument("--no-progress", action="store_true")
    add_config_arguments(p, cls)
    args = p.parse_args(argv)
    return args.work, parse_config(args, args.config, cls), not args.no_progress


def parse_config(args: argparse.Namespace, yaml_path: str | os.PathLike | None, cls: type = TrainConfig) -> TrainConfig:
    """Config = dataclass defaults <- YAML <- command-line flags that were given."""
    values = load_yaml(yaml_path, cls) if yaml_path else {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return cls(**values)
