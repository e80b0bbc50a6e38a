"""Error types and a skip counter, so bad input is named precisely and never lost silently."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("cdiscount")


class DataError(ValueError):
    """Bad input that stops the stage: the message names the file and the problem."""


class NotBsonError(DataError):
    """The file does not start with a valid BSON document."""


class BsonDocumentError(DataError):
    """One document is malformed; the scanner can skip it because its length prefix is sane."""


class CorruptImageError(DataError):
    """JPEG bytes that OpenCV cannot decode."""


class UnknownCategoryError(DataError):
    """A category_id that is not in category_names.csv."""


@dataclass
class SkipLog:
    """Counts what a stage skipped, keeps the first messages, and reports them.

    Why: a multi-hour job over 58 GB must go on past a corrupt image or a truncated tail, but a
    user must see exactly how much was skipped and where.
    """

    source: str
    max_messages: int = 20
    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.messages) < self.max_messages:
            self.messages.append(message)
        log.warning("%s: %s", self.source, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "messages": list(self.messages)}

    def summary(self) -> str:
        if not self.counts:
            return f"{self.source}: nothing skipped"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"{self.source}: skipped {parts}"
