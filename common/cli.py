"""One command line for every stage: `--work DIR`, `--config FILE.yaml`, `--no-progress`, and one
flag per field of the stage's options dataclass.

Two passes, as in timm's train.py: `--config` is read first and its values become the defaults,
so a flag on the command line wins over the YAML (`--lr 3e-4`, `--no-hflip`, `--folds 0 2`). A
stage whose options class depends on the YAML (a 2nd-place recipe's `stage`) passes a function
that picks the class from the YAML's values. numpy-free and torch-free: every CPU stage uses it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import DataError
from .paths import WorkDir

OptionsClass = type | Callable[[dict], type]


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping (safe_load), or a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of option: value")
    return data


def load_yaml(path: str | os.PathLike, cls: type) -> dict:
    """The YAML's values, every key a field of `cls`."""
    data = read_yaml(path)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise DataError(f"{path}: unknown options {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    wrong = [f"{k}: {v!r}" for k, v in data.items() if hints.get(k) in (int, float) and (isinstance(v, (str, bool)) or v is None)
             and not (hints[k] is float and isinstance(v, str) and _is_float(v))]
    if wrong:
        raise DataError(f"{path}: not a number: {', '.join(wrong)}")
    return {k: float(v) if hints.get(k) is float and isinstance(v, str) else v for k, v in data.items()}


def _is_float(s: str) -> bool:
    """YAML 1.1 reads 4e-05 (no dot) as a string: accepted as the number it spells."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def _optional(s: str) -> str | None:
    return None if s.lower() in ("none", "null", "") else s


def _argument(parser: argparse._ActionsContainer, f: dataclasses.Field, hint: object) -> None:
    """A flag absent from the command line stays absent (SUPPRESS), so the YAML value holds."""
    flag, kw = "--" + f.name.replace("_", "-"), {"dest": f.name, "default": argparse.SUPPRESS}
    origin = typing.get_origin(hint)
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif origin is list:
        (item,) = typing.get_args(hint)
        parser.add_argument(flag, nargs="*", type=item, **kw)
    elif hint is dict or origin is dict:
        parser.add_argument(flag, type=yaml.safe_load, metavar="YAML", **kw)
    elif origin in (typing.Union, types.UnionType):
        parser.add_argument(flag, type=_optional, **kw)
    else:
        parser.add_argument(flag, type=hint, **kw)


def add_fields(parser: argparse.ArgumentParser, cls: type, title: str = "options (override the YAML)") -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        _argument(group, f, hints[f.name])


def build_options(args: argparse.Namespace, yaml_values: dict, cls: type, where: str = "") -> Any:
    """Options = dataclass defaults <- YAML <- the flags that were given."""
    unknown = set(yaml_values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise DataError(f"{where or 'config'}: unknown options {sorted(unknown)}")
    values = dict(yaml_values)
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return cls(**values)


@dataclass
class StageArgs:
    work: WorkDir
    options: Any
    progress: bool
    config: str | None


def parse_stage(argv: list[str] | None, description: str | None, options: OptionsClass, config_required: bool = False) -> StageArgs:
    """(work dir, options, progress, config path) of a stage."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    yaml_values = read_yaml(known.config) if known.config else {}
    cls = options if isinstance(options, type) else options(yaml_values)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="work dir (default: $CDISCOUNT_WORK or ./work)")
    p.add_argument("--config", default=None, required=config_required, help=f"YAML of {cls.__name__} fields (flags override it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (a log line per step instead)")
    add_fields(p, cls)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    opts = build_options(args, yaml_values, cls, str(args.config or ""))
    return StageArgs(WorkDir(args.work), opts, not args.no_progress, args.config)


def run(main: Callable[[], Any]) -> None:
    """A stage's `__main__`: bad input (DataError, a missing file) is one line on stderr and exit
    status 2; a traceback is kept for bugs."""
    import sys

    try:
        main()
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_shard(shard: str) -> tuple[int, int]:
    """--shard i/n (OCR reading, MD5 hashing: machine i of n does its share, one run merges)."""
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise DataError(f"--shard {shard!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise DataError(f"--shard {shard!r}: need 0 <= i < n")
    return i, n
