"""Dedup: an id already routed to review is not routed again within a retention window
(a prediction redelivered, re-sent by a producer's retry, or re-read after a restart).

WIP (issue #11): the pure part. The live router will keep these ids in a Faust table
with a changelog (written with explicit changelog sends, acked with the batch, as the
label tables are), partitioned as the predictions topic; ``replay`` keeps them in memory.

Per partition, ids in the order routed with their event time; at most
``max_ids / partitions`` per partition (the oldest go first) and none older than
``retention_s`` before the newest time seen there. Predictions keyed by id put every
copy of an id on one partition, so one worker sees them all.

>>> r = RoutedIds(DedupSpec(retention_s=60, max_ids=2))
>>> r.seen(["a"], [0.0], [0]).tolist(), r.record("a", 0.0, 0)
([False], [])
>>> r.seen(["a", "b"], [10.0, 10.0], [0, 0]).tolist()
[True, False]
>>> r.record("b", 10.0, 0), r.record("c", 11.0, 0)   # over the count: "a" goes
([], ['a'])
>>> r.seen(["b"], [100.0], [0]).tolist()   # past the retention
[False]
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hitl_router.errors import ConfigError


@dataclass(frozen=True)
class DedupSpec:
    retention_s: float = 3600.0
    max_ids: int = 100_000


def parse_dedup(value: Any, key: str = "dedup") -> DedupSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected {{retention_s: s, max_ids: n}}, got {value!r}")
    unknown = set(value) - {"retention_s", "max_ids"}
    if unknown:
        raise ConfigError(
            f"{key}.{sorted(unknown)[0]}", "unknown key; expected retention_s, max_ids"
        )
    retention = value.get("retention_s", DedupSpec.retention_s)
    if isinstance(retention, bool) or not isinstance(retention, int | float) or not retention > 0:
        raise ConfigError(f"{key}.retention_s", f"must be a positive number, got {retention!r}")
    max_ids = value.get("max_ids", DedupSpec.max_ids)
    if isinstance(max_ids, bool) or not isinstance(max_ids, int) or not max_ids >= 1:
        raise ConfigError(f"{key}.max_ids", f"must be a positive integer, got {max_ids!r}")
    return DedupSpec(float(retention), max_ids)


class RoutedIds:
    def __init__(self, spec: DedupSpec, partitions: int = 1) -> None:
        self.spec = spec
        self.per_partition = math.ceil(spec.max_ids / partitions)
        self.ids: dict[int, OrderedDict[str, float]] = {}
        self.newest: dict[int, float] = {}

    def seen(
        self,
        ids: Sequence[str],
        times: Sequence[float] | np.ndarray,
        parts: Sequence[int] | np.ndarray,
    ) -> np.ndarray:
        """Which ids were routed within the retention before their time."""
        out = np.zeros(len(ids), dtype=bool)
        horizon = self.spec.retention_s
        none: OrderedDict[str, float] = OrderedDict()
        for i, (pid, t, p) in enumerate(zip(ids, times, parts, strict=True)):
            at = self.ids.get(int(p), none).get(pid)
            out[i] = at is not None and float(t) - at <= horizon
        return out

    def record(self, pid: str, t: float, part: int) -> list[str]:
        """Remember ``pid`` routed at ``t``; returns the ids this pushes out."""
        ids = self.ids.setdefault(int(part), OrderedDict())
        ids.pop(pid, None)
        ids[pid] = t
        newest = self.newest[int(part)] = max(t, self.newest.get(int(part), t))
        gone = []
        while ids and (
            len(ids) > self.per_partition
            or next(iter(ids.values())) < newest - self.spec.retention_s
        ):
            gone.append(ids.popitem(last=False)[0])
        return gone

    def load(self, entries: Iterable[tuple[int, str, float]]) -> None:
        """Rebuild from stored entries (partition, id, time), e.g. after a recovery."""
        self.ids, self.newest = {}, {}
        for part, pid, t in sorted(entries, key=lambda e: e[2]):
            self.record(pid, t, part)
