"""Target rates: a rule threshold that follows the stream.

``max_prob_below: {target_rate: 0.05}`` routes about 5% of the stream: its threshold is
the 5% quantile of ``max_prob`` over the last ``window`` predictions the rule looked at
(``_above``: the 95% quantile), so when confidence shifts the threshold follows and the
share stays put, where a fixed ``0.7`` would flood or starve the queue.

Per batch, the batch's values join the window first, then the threshold is the window's
quantile (``numpy.quantile``, linear): exact over the window (a ring buffer), the same
in ``replay`` and live for the same batches, and the first batch is judged on itself.
A score an item does not have (NaN) does not enter the window. Each worker keeps the
window of its own partitions: with ids hashed over partitions, each sees the same
distribution, so each routes the target share of its part, and the group of the whole.

>>> import numpy as np
>>> q = SlidingQuantile(4)
>>> q.update(np.array([0.1, 0.2, 0.3])); q.quantile(0.5)
0.2
>>> q.update(np.array([0.4, 0.5, np.nan])); q.values().tolist()  # the last 4
[0.2, 0.3, 0.4, 0.5]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hitl_router.errors import ConfigError
from hitl_router.router.ring import Ring

DEFAULT_WINDOW = 10_000


class TargetRate:
    """A leaf's live threshold: route ``rate`` of the stream. Compared by identity: two
    leaves with the same numbers keep windows of their own."""

    __slots__ = ("rate", "window", "above")

    def __init__(self, rate: float, window: int, above: bool) -> None:
        self.rate = rate
        self.window = window
        self.above = above

    @property
    def q(self) -> float:
        """The quantile that is the threshold: ``rate`` below it, or above it."""
        return 1.0 - self.rate if self.above else self.rate

    def describe(self) -> dict[str, Any]:
        return {"target_rate": self.rate, "window": self.window}

    def __repr__(self) -> str:
        return f"TargetRate(rate={self.rate}, window={self.window})"


def parse_target_rate(value: Mapping[str, Any], key: str, above: bool) -> TargetRate:
    unknown = set(value) - {"target_rate", "window"}
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{key}.{name}", "unknown key; expected target_rate, window")
    rate = value.get("target_rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1:
        raise ConfigError(f"{key}.target_rate", f"must be a number in (0, 1), got {rate!r}")
    window = value.get("window", DEFAULT_WINDOW)
    if isinstance(window, bool) or not isinstance(window, int) or not 100 <= window <= 1_000_000:
        raise ConfigError(
            f"{key}.window", f"must be an integer from 100 to 1000000, got {window!r}"
        )
    return TargetRate(float(rate), window, above)


class SlidingQuantile:
    """The last ``size`` finite values and their exact quantiles."""

    __slots__ = ("ring",)

    def __init__(self, size: int) -> None:
        self.ring = Ring(size)

    @property
    def count(self) -> int:
        return self.ring.count

    def update(self, values: np.ndarray) -> None:
        self.ring.extend(values[~np.isnan(values)])

    def values(self) -> np.ndarray:
        """The values held, oldest first."""
        return self.ring.ordered()

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the values held (NaN when there are none)."""
        if not self.ring.count:
            return float("nan")
        return float(np.quantile(self.ring.held(), q))
