"""Which annotations a poll of a project has not sent yet (pure).

Each poll asks Label Studio for the project's tasks updated after ``since`` (the newest
task time seen so far, minus an overlap): saving or editing an annotation updates its
task in the same request, so every annotation revision newer than ``since`` is among
them. An annotation revision is sent once: ``sent`` remembers the revisions newer than
the next ``since`` (older ones cannot come back), so it stays as small as the overlap.
All times are Label Studio's own (``updated_at``, unix seconds): the bridge's clock never
enters.

>>> c = PollCursor()
>>> c.since(2.0) is None, c.fresh(1, 100.0, c.since(2.0))
(True, True)
>>> c.advance([101.0], {1: 100.0}, overlap=2.0)
>>> c.since(2.0), c.fresh(1, 100.0, c.since(2.0)), c.fresh(1, 100.5, c.since(2.0))
(99.0, False, True)
>>> PollCursor.from_json(c.to_json()) == c
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class PollCursor:
    #: the newest ``updated_at`` of a task seen in this project
    watermark: float | None = None
    #: annotation id → the revision (its ``updated_at``) sent, for revisions newer than
    #: the next poll's ``since``
    sent: dict[int, float] = field(default_factory=dict)

    def since(self, overlap: float) -> float | None:
        """Ask for tasks updated after this (None: every task, a first poll)."""
        return None if self.watermark is None else self.watermark - overlap

    def fresh(self, annotation: int, revision: float, since: float | None) -> bool:
        """Whether this revision of ``annotation`` is still to send."""
        if since is not None and revision <= since:
            return False  # an earlier poll saw it (and sent it, or it had nothing to send)
        return self.sent.get(annotation) != revision

    def advance(
        self, task_times: Iterable[float], sent: Mapping[int, float], overlap: float
    ) -> None:
        """After the labels of a poll were delivered: move past its tasks, remember what
        it sent, forget what the next ``since`` excludes anyway."""
        times = list(task_times)
        if times:
            newest = max(times)
            self.watermark = newest if self.watermark is None else max(self.watermark, newest)
        self.sent.update(sent)
        floor = self.since(overlap)
        if floor is not None:
            self.sent = {a: r for a, r in self.sent.items() if r > floor}

    def to_json(self) -> bytes:
        return orjson.dumps({"watermark": self.watermark, "sent": list(self.sent.items())})

    @classmethod
    def from_json(cls, raw: bytes) -> PollCursor:
        doc: Any = orjson.loads(raw)
        sent = {int(a): float(r) for a, r in doc.get("sent") or []}
        watermark = doc.get("watermark")
        return cls(None if watermark is None else float(watermark), sent)
