"""One command line for every stage: `--work DIR`, `--config FILE.yaml`, `--no-progress`, and one
flag per field of the stage's options dataclass.

Two passes, as in timm's train.py: `--config` is read first and its values become the defaults,
so a flag on the command line wins over the YAML (`--lr 3e-4`, `--no-hflip`, `--folds 0 2`). A
stage whose options class depends on the YAML (a 2nd-place recipe's `stage`) passes a function
that picks the class from the YAML's values. Each flag's help is its field's trailing `# comment` in
the dataclass source (read once per class) and the value it has when not given. pyproject.toml's
console scripts run each stage's main through `command` (at the end). numpy-free and torch-free: every CPU
stage uses it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import inspect
import io
import json
import logging
import os
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .checks import check_fields
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
    return yaml_numbers(data, cls)  # the types and ranges are checked when the options are made (common.checks)


def yaml_numbers(values: dict, cls: type) -> dict:
    """`values` with each float field's string that spells a number (YAML 1.1 reads 4e-05 as text) as that number."""
    hints = typing.get_type_hints(cls)
    return {k: float(v) if hints.get(k) is float and isinstance(v, str) and _is_float(v) else v for k, v in values.items()}


def _is_float(s: str) -> bool:
    """YAML 1.1 reads 4e-05 (no dot) as a string: accepted as the number it spells."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def _optional(s: str) -> str | None:
    return None if s.lower() in ("none", "null", "") else s


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """{field: the trailing `# comment` of its line in the class source}, for `cls` and the
    dataclasses it extends (a subclass's comment wins). Read once per class; a class whose source
    cannot be read (no .py file) gives {}: its flags' help says only their defaults."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and dataclasses.is_dataclass(klass):
            comments.update(_class_comments(klass))
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: text for name, text in comments.items() if name in names}


def _class_comments(klass: type) -> dict[str, str]:
    """The comments of `name: type [= default]  # comment` lines directly in the class body."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    depth, line = 0, []  # indentation level (1: the class body), tokens of the logical line so far
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.INDENT:
                depth += 1
            elif tok.type == tokenize.DEDENT:
                depth -= 1
            elif tok.type == tokenize.NL:  # a comment-only line (a section title) belongs to no field
                if all(t.type == tokenize.COMMENT for t in line):
                    line = []
            elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                code = [t for t in line if t.type != tokenize.COMMENT]
                text = " ".join(t.string.lstrip("#").strip() for t in line if t.type == tokenize.COMMENT)
                if depth == 1 and len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":" and text:
                    out.setdefault(code[0].string, text)
                line = []
            else:
                line.append(tok)
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def _argument(parser: argparse._ActionsContainer, f: dataclasses.Field, hint: object, help: str | None = None) -> None:
    """A flag absent from the command line stays absent (SUPPRESS), so the YAML value holds."""
    flag, kw = "--" + f.name.replace("_", "-"), {"dest": f.name, "default": argparse.SUPPRESS}
    if help:
        kw["help"] = help.replace("%", "%%")  # argparse formats help with %
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


def _default_of(f: dataclasses.Field, values: dict) -> str | None:
    """What the option is when its flag is not given: the YAML's value, else the field's default."""
    if f.name in values:
        value = values[f.name]
    elif f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def add_fields(parser: argparse.ArgumentParser, cls: type, title: str = "options (override the YAML)",
               aliases: dict[str, str] | None = None, values: dict | None = None) -> None:
    """A flag per field of `cls`, its help the field's source comment and what it is when not given
    (`values`: the YAML's, else the field's default); `aliases` (old flag -> flag) are named in the
    new flag's help."""
    hints, comments, values = typing.get_type_hints(cls), field_comments(cls), values or {}
    old = {new: f for f, new in (aliases or {}).items()}
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        parts = [comments.get(f.name, "")]
        if flag in old:
            parts.append(f"({old[flag]}: a deprecated alias)")
        default = _default_of(f, values)
        if default is not None:
            parts.append(f"[{'YAML' if f.name in values else 'default'}: {default}]")
        _argument(group, f, hints[f.name], " ".join(p for p in parts if p) or None)


def build_options(args: argparse.Namespace, yaml_values: dict, cls: type, where: str = "") -> Any:
    """Options = dataclass defaults <- YAML <- the flags that were given."""
    unknown = set(yaml_values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise DataError(f"{where or 'config'}: unknown options {sorted(unknown)}")
    values = yaml_numbers(yaml_values, cls)
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    try:
        opts = cls(**values)
        check_fields(opts, "options")  # every stage's: types and the ranges its fields' annotations give (common/checks.py)
    except DataError as e:  # a bad value: named with its file
        raise DataError(f"{where}: {e}" if where else str(e)) from None
    return opts


@dataclass
class StageArgs:
    work: WorkDir
    options: Any
    progress: bool
    config: str | None


def apply_aliases(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """`argv` with each deprecated flag (also `--old=value`) spelt as its new name; one warning
    line on stderr per deprecated flag given. Nothing after `--` is touched."""
    out, warned = [], set()
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        flag, eq, value = arg.partition("=")
        if flag in aliases:
            if flag not in warned:
                print(f"warning: {flag} is deprecated, use {aliases[flag]}", file=sys.stderr)
                warned.add(flag)
            arg = aliases[flag] + eq + value
        out.append(arg)
    return out


def parse_stage(argv: list[str] | None, description: str | None, options: OptionsClass, config_required: bool = False,
                aliases: dict[str, str] | None = None, epilog: str | None = None) -> StageArgs:
    """(work dir, options, progress, config path) of a stage. `aliases`: deprecated flag -> its
    new name (still accepted, with a warning)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if aliases:
        argv = apply_aliases(argv, aliases)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    yaml_values = read_yaml(known.config) if known.config else {}
    cls = options if isinstance(options, type) else options(yaml_values)
    p = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="work dir (default: $CDISCOUNT_WORK or ./work)")
    p.add_argument("--config", default=None, required=config_required, help=f"YAML of {cls.__name__} fields (flags override it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (a log line per step instead)")
    add_fields(p, cls, aliases=aliases, values=yaml_values)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    opts = build_options(args, yaml_values, cls, str(args.config or ""))
    return StageArgs(WorkDir(args.work), opts, not args.no_progress, args.config)


TRAINER_EPILOG = """which recipes (common.recipe.train_main):
  --config RECIPE.yaml     every fold of one recipe (its `stage` picks the options above: these are the default stage's)
  --profile mini|full      every recipe of the profile, in the order they require
  --fast-dev-run           each recipe as the wiring check: a few steps at a small input (its numbers mean nothing)
  --force                  retrain a fold made by another recipe or from other data, instead of stopping"""


def _trainer_help(main: Callable, argv: list[str] | None) -> None:
    """`--help` of a solution's trainer (a module with KINDS and DEFAULT, common.registry.Solution)
    given no recipe: the flags of its default recipe kind, then exit 0 (with --config, the
    trainer's own parse shows the recipe's kind)."""
    module = sys.modules.get(getattr(main, "__module__", ""))
    if not (hasattr(module, "KINDS") and hasattr(module, "DEFAULT")):
        return
    args = sys.argv[1:] if argv is None else list(argv)
    flags = {a.partition("=")[0] for a in args}
    if not flags & {"-h", "--help"} or flags & {"--config", "--profile"}:
        return
    from .recipe import kind_of

    parse_stage(["--help"], module.__doc__, kind_of(module.KINDS, module.DEFAULT), epilog=TRAINER_EPILOG)


def run(main: Callable[..., Any], argv: list[str] | None = None) -> None:
    """A stage's `__main__` (and its console script): bad input (DataError, a missing file) is one
    line on stderr and exit status 2; a traceback is kept for bugs. An int that main returns is the
    exit status (common.runner). `argv` None: the command line."""
    try:
        _trainer_help(main, argv)
        result = main() if argv is None else main(argv)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(result, int) and not isinstance(result, bool) and result:
        raise SystemExit(result)


@contextlib.contextmanager
def exit_on_signals(*names: str) -> Iterator[None]:
    """Inside the block, SIGTERM (a scheduler's stop, `kill`) and SIGHUP (the terminal closed) raise
    SystemExit(128 + signal): Python's default ends the process on the spot, skipping the `finally`
    blocks and exit hooks that remove a command's temporary folders; this way they run and the exit
    status is the usual one. The previous handlers come back after the block (main() called in-process)."""
    import signal

    def stop(signum: int, _frame) -> None:
        print(f"error: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        raise SystemExit(128 + signum)

    signals = [getattr(signal, name) for name in names or ("SIGTERM", "SIGHUP")]
    before = {s: signal.signal(s, stop) for s in signals}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


class Command:
    """`command.<module path>`: the console script of `python -m <module path>`. pyproject.toml's
    [project.scripts] point at `common.cli:command.solutions.dylan.train` and the like, so the
    commands are listed there once (as the pipeline's parts are) and common/ names no stage's module.
    Called (`main(argv=None)`), it imports the module and runs its `main` through run(), as the
    module's `__main__` does: bad input in one line, exit 2."""

    def __init__(self, path: tuple[str, ...] = ()):
        self._path = path

    def __getattr__(self, name: str) -> "Command":
        if name.startswith("__") and name != "__main__":  # inspect's and pickle's probes
            raise AttributeError(name)
        return Command((*self._path, name))

    @property
    def module(self) -> str:
        return ".".join(self._path)

    def __call__(self, argv: list[str] | None = None) -> None:
        run(importlib.import_module(self.module).main, argv)

    def __repr__(self) -> str:
        return f"<console script of python -m {self.module}>"


command = Command()


def parse_shard(shard: str) -> tuple[int, int]:
    """--shard i/n (OCR reading, MD5 hashing: machine i of n does its share, one run merges)."""
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise DataError(f"--shard {shard!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise DataError(f"--shard {shard!r}: need 0 <= i < n")
    return i, n
