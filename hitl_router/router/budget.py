"""Review budgets: at most ``items`` per minute (or hour) per queue, keeping the
highest-priority items of each period.

A budget is the group's, not a worker's: each worker holds a share of the predictions
topic's partitions and spends that share of the budget (``share``: partitions held /
partitions; ids are hashed over partitions, so every share sees the same stream). Over
the group, the periods' admitted items sum to the budget.

Which items: a streaming threshold on priority. Within a period, with ``R`` items of
the budget left and ``E`` candidates still expected (the previous period's arrivals
times the share of the period left, at least the batch at hand), a batch admits the
items whose priority is at or above the ``1 − R/E`` quantile of recent candidates'
priorities (this batch included), and never more than ``R`` (the highest first). A
burst raises ``E`` and the threshold with it; a calm period admits everything. Periods
are cut on event time (the prediction's ``ts``), aligned on the epoch, so ``replay``
gives what a live worker gives; a batch is taken in time order (a fetch holds several
partitions one after the other), and an item later than its period counts in the
current one.

>>> import numpy as np
>>> b = BudgetState(BudgetSpec(items=2, period_s=60.0))
>>> b.admit(np.array([0.0, 1.0, 2.0]), np.array([0.2, 0.9, 0.5])).tolist()
[False, True, False]

(1.5 arrivals a second: ~87 more expected this minute, and 0.5 is not in their top 2.)

>>> b.admit(np.array([58.0]), np.array([0.6])).tolist(), b.used  # the minute ends
([True], 2)
>>> b.admit(np.array([59.0]), np.array([1.0])).tolist()  # spent
[False]
>>> b.admit(np.array([90.0]), np.array([0.95])).tolist()  # a new minute
[True]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hitl_router.errors import ConfigError
from hitl_router.router.target_rate import SlidingQuantile

PERIODS = {"minute": 60.0, "hour": 3600.0}
#: recent candidates' priorities the threshold is a quantile of
DEFAULT_WINDOW = 2000


@dataclass(frozen=True)
class BudgetSpec:
    items: int
    period_s: float
    window: int = DEFAULT_WINDOW

    def describe(self) -> dict[str, Any]:
        per = next(k for k, v in PERIODS.items() if v == self.period_s)
        return {"items": self.items, "per": per, "window": self.window}


def parse_budget(value: Any, key: str) -> BudgetSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected {{items: N, per: minute|hour}}, got {value!r}")
    unknown = set(value) - {"items", "per", "window"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key; expected items, per, window")
    items = value.get("items")
    if isinstance(items, bool) or not isinstance(items, int) or items < 1:
        raise ConfigError(f"{key}.items", f"must be a positive integer, got {items!r}")
    per = value.get("per", "minute")
    if per not in PERIODS:
        raise ConfigError(f"{key}.per", f"must be minute or hour, got {per!r}")
    window = value.get("window", DEFAULT_WINDOW)
    if isinstance(window, bool) or not isinstance(window, int) or not 10 <= window <= 1_000_000:
        raise ConfigError(f"{key}.window", f"must be an integer from 10 to 1000000, got {window!r}")
    return BudgetSpec(items, PERIODS[per], window)


class BudgetState:
    """One queue's budget on one worker (or in ``replay``)."""

    def __init__(self, spec: BudgetSpec, share: float = 1.0) -> None:
        self.spec = spec
        self.share = share
        self.period = -math.inf  # the current period's index (start / period_s)
        self.used = 0  # admitted in the current period
        self.arrivals = 0  # candidates in the current period
        self.last_arrivals: int | None = None  # candidates in the previous period
        self.priorities = SlidingQuantile(spec.window)
        self.dropped = 0  # over the state's life
        #: the times of recent candidates (one array per segment), for the arrival rate
        self.recent: deque[np.ndarray] = deque()
        self.first_seen: float | None = None

    @property
    def quota(self) -> float:
        """This worker's part of the budget, per period."""
        return self.spec.items * self.share

    def admit(self, times: np.ndarray, priority: np.ndarray) -> np.ndarray:
        """Which of these candidates (in arrival order) the queue keeps."""
        keep = np.zeros(len(times), dtype=bool)
        if not len(times):
            return keep
        # a fetch holds several partitions one after the other: in time order
        order = np.argsort(times, kind="stable")
        if (order != np.arange(len(order))).any():
            keep[order] = self.admit(times[order], priority[order])
            return keep
        periods = np.floor(times / self.spec.period_s)
        periods = np.maximum.accumulate(np.maximum(periods, self.period))
        starts = np.flatnonzero(np.r_[True, periods[1:] != periods[:-1]])
        ends = np.r_[starts[1:], len(times)]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            self._roll(float(periods[a]))
            keep[a:b] = self._admit(times[a:b], priority[a:b])
        self.dropped += int(len(keep) - keep.sum())
        return keep

    def _roll(self, period: float) -> None:
        if period == self.period:
            return
        self.last_arrivals = self.arrivals if period == self.period + 1 else None
        self.period, self.used, self.arrivals = period, 0, 0

    def _expected(self, times: np.ndarray) -> float:
        """Candidates expected in the rest of the period, these included: these, and
        after them the arrival rate over the last twelfth of a period (these included)
        times the time left (the previous period's count pro rata until that much time
        was seen)."""
        period_s = self.spec.period_s
        horizon = period_s / 12
        t1, n = float(times[-1]), len(times)
        recent = self.recent
        recent.append(times)
        while recent[0][-1] < t1 - horizon:
            recent.popleft()
        if self.first_seen is None:
            self.first_seen = float(times[0])
        left_s = max(0.0, (self.period + 1) * period_s - t1)
        seen_s = min(horizon, t1 - self.first_seen)
        if seen_s >= horizon / 4:
            arrived = sum(int(np.count_nonzero(r >= t1 - seen_s)) for r in recent)
            return n + arrived / seen_s * left_s
        if self.last_arrivals is not None:
            return n + self.last_arrivals * left_s / period_s
        return float(n)

    def _admit(self, times: np.ndarray, priority: np.ndarray) -> np.ndarray:
        n = len(priority)
        left = max(0, math.floor(self.quota - self.used + 1e-9))
        self.priorities.update(priority)
        self.arrivals += n
        expected = self._expected(times)
        if left == 0:
            return np.zeros(n, dtype=bool)
        fraction = left / expected
        if fraction >= 1.0:
            keep = np.ones(n, dtype=bool)
        else:
            keep = priority >= self.priorities.quantile(1.0 - fraction)
        if keep.sum() > left:  # the highest first; ties by arrival
            order = np.argsort(-priority, kind="stable")[:left]
            keep = np.zeros(n, dtype=bool)
            keep[order] = True
        self.used += int(keep.sum())
        return keep
