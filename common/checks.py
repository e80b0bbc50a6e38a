"""Every option typed and range-checked when it is made, from its field's annotation: one place.

A field says its range beside its type, `epochs: Annotated[int, at_least(1)] = 1`; every stage's
options are checked where the command line convention makes them (`common.cli.build_options`), and
the options made elsewhere too (recipes, the stacker's, a run's) call `check_fields(self)` in their
`__post_init__`: a recipe, a stage's options or a run's
options with `epochs: three`, `epochs: 1.5`, `batch_size: 0` or `lr: -5` stops when it is read, in
one line naming every bad value, before anything is written (the callers prefix the file). The
type comes from the annotation too (an int field takes no 1.5, a bool no "yes", a float any number).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass

from .errors import DataError


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused (> low, not >= low)
    high_open: bool = False

    def problem(self, v: float) -> str | None:
        below = self.low is not None and (v <= self.low if self.low_open else v < self.low)
        above = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        return f"must be {self.text()}" if below or above else None

    def text(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(p for p in (lo, hi) if p)


def at_least(low: float) -> Range:
    return Range(low=low)


def positive() -> Range:
    return Range(low=0, low_open=True)


def between(low: float, high: float, high_open: bool = False) -> Range:
    return Range(low=low, high=high, high_open=high_open)


def fraction() -> Range:
    """A share in [0, 1)."""
    return Range(low=0, high=1, high_open=True)


def _type_problem(hint: object, v: object) -> str | None:
    """Why `v` is not of the annotated type (None when it is, or the type is not one checked here)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if v is None and type(None) in args:
            return None
        problems = [_type_problem(a, v) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if hint is bool:
        return None if isinstance(v, bool) else "not true or false"
    if hint is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "not a whole number"
    if hint is float:
        return None if isinstance(v, (int, float)) and not isinstance(v, bool) else "not a number"
    if hint is str:
        return None if isinstance(v, str) else "not text"
    if origin is list or hint is list:
        if not isinstance(v, list):
            return "not a list"
        (item,) = typing.get_args(hint) or (object,)
        bad = next((p for p in (_type_problem(item, x) for x in v) if p), None)
        return f"an item is {bad}" if bad else None
    if origin is dict or hint is dict:
        return None if isinstance(v, dict) else "not a mapping"
    return None


@functools.lru_cache(maxsize=None)
def field_rules(cls: type) -> dict[str, tuple[object, tuple[Range, ...]]]:
    """Per field of `cls`: (its type, the ranges its Annotated carries)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    rules = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Annotated:
            base, *extra = typing.get_args(hint)
            rules[f.name] = (base, tuple(r for r in extra if isinstance(r, Range)))
        else:
            rules[f.name] = (hint, ())
    return rules


def check_fields(obj: object, what: str = "") -> None:
    """A DataError naming every field of `obj` whose value has the wrong type or is out of its range."""
    problems = []
    for name, (hint, ranges) in field_rules(type(obj)).items():
        v = getattr(obj, name)
        why = _type_problem(hint, v)
        if why is None and isinstance(v, (int, float)) and not isinstance(v, bool):
            why = next((p for p in (r.problem(v) for r in ranges) if p), None)
        if why:
            problems.append(f"{name}: {v!r} ({why})")
    if problems:
        raise DataError(f"{what or type(obj).__name__}: " + "; ".join(problems))


NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # a recipe, solution or source name: one path component inside the work dir


def plain_name_problem(value: str) -> str | None:
    """Why `value` cannot name a folder under the work dir (a separator, an absolute path, `..`), or None."""
    if NAME.fullmatch(value) and ".." not in value:
        return None
    return "a name is letters, digits and _ . + - (no path: outputs stay under --work)"


def check_names(what: str, **names: str | list[str] | None) -> None:
    """A DataError naming each given name (or list of names) that is no plain name."""
    bad = [f"{k}: {v!r}" for k, vs in names.items() for v in ([vs] if isinstance(vs, str) else vs or []) if v and plain_name_problem(v)]
    if bad:
        raise DataError(f"{what}: {'; '.join(bad)} ({plain_name_problem('/')})")
