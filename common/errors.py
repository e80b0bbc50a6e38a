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
    """Counts each kind of anomaly a stage went on past, keeps the first `_id`s and messages, and
    reports them: the first few of a kind as they happen, then one summary line.

    Why: a multi-hour job over 58 GB must go on past a corrupt image or a truncated tail, but a
    user must see exactly how much was skipped and where (and not a million warning lines).
    """

    source: str
    max_messages: int = 20
    max_ids: int = 10  # first _ids kept per kind
    max_logged: int = 5  # warnings per kind as they happen (0: the summary only); the rest are counted, then summarised
    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    first_ids: dict[str, list[int]] = field(default_factory=dict)
    hushed: set[str] = field(default_factory=set, repr=False)

    def add(self, kind: str, message: str, product_id: int | None = None) -> None:
        self.add_ids(kind, message, [] if product_id is None else [product_id], count=1)

    def add_ids(self, kind: str, message: str, product_ids, count: int | None = None) -> None:
        """`count` anomalies of one kind (default: one per id) met at once, e.g. in one batch."""
        ids = [int(i) for i in product_ids]
        count = len(ids) if count is None else count
        if count <= 0:
            return
        before = self.counts[kind]
        self.counts[kind] += count
        kept = self.first_ids.setdefault(kind, []) if ids else self.first_ids.get(kind, [])
        kept.extend(ids[: max(self.max_ids - len(kept), 0)])
        if len(self.messages) < self.max_messages:
            self.messages.append(message)
        if before < self.max_logged:
            log.warning("%s: %s", self.source, message)
        elif self.max_logged and kind not in self.hushed:
            self.hushed.add(kind)
            log.warning("%s: further %s are counted, not logged (the summary names the first _ids)", self.source, kind)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "first_ids": {k: list(v) for k, v in self.first_ids.items() if v},
                "messages": list(self.messages)}

    def summary(self) -> str:
        if not self.counts:
            return f"{self.source}: nothing skipped"
        parts = ", ".join(f"{k}={v}" + (f" (first _ids {', '.join(map(str, self.first_ids[k]))})" if self.first_ids.get(k) else "")
                          for k, v in sorted(self.counts.items()))
        return f"{self.source}: skipped {parts}"

    def report(self) -> None:
        """The one summary line, when anything was met."""
        if self.counts:
            log.warning(self.summary())
