"""Per-item priority of review items: how urgently a human should see each one.

A queue's ``priority`` in config is one of:

- a number: every item of the queue gets it (a constant, as a queue-level order);
- a score name (``entropy``): the item's score;
- a mapping of score names to weights, with an optional ``const``: the weighted sum,
  e.g. ``{const: 1, max_prob: -1}`` (least confidence, ``1 − max_prob``).

Higher is more urgent; review tools order their queue by it (it is in the review item
and in its ``priority`` Kafka header), and a budgeted queue keeps its highest-priority
items. A score an item does not have (``ensemble_kl`` without an ensemble) counts 0.
Default: least confidence, ``1 − max_prob`` (calibrated), in [0, 1).

>>> import numpy as np
>>> spec = parse_priority({"const": 1, "max_prob": -1}, "queues[0].priority")
>>> priorities(spec, {"max_prob": np.array([0.9, 0.4])}).round(3).tolist()
[0.1, 0.6]
>>> parse_priority("entropy", "p").describe(), parse_priority(2, "p").describe()
('entropy', 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hitl_router.errors import ConfigError
from hitl_router.router.uncertainty import SCORE_NAMES


@dataclass(frozen=True)
class PrioritySpec:
    """``const + Σ weight × score``."""

    const: float = 0.0
    weights: tuple[tuple[str, float], ...] = ()

    def describe(self) -> Any:
        """The config form: a number, a score name, or the mapping."""
        if not self.weights:
            return self.const
        if self.const == 0.0 and len(self.weights) == 1 and self.weights[0][1] == 1.0:
            return self.weights[0][0]
        out: dict[str, float] = {"const": self.const} if self.const else {}
        out.update(self.weights)
        return out


#: least confidence of the calibrated prediction
DEFAULT_PRIORITY = PrioritySpec(1.0, (("max_prob", -1.0),))


def parse_priority(value: Any, key: str) -> PrioritySpec:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a number, a score name or a mapping, got {value!r}")
    if isinstance(value, int | float):
        if not np.isfinite(value):
            raise ConfigError(key, "must be finite")
        return PrioritySpec(float(value))
    if isinstance(value, str):
        _check_score(value, key)
        return PrioritySpec(0.0, ((value, 1.0),))
    if isinstance(value, Mapping) and value:
        const, weights = 0.0, []
        for name, weight in value.items():
            k = f"{key}.{name}"
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ConfigError(k, f"expected a number, got {weight!r}")
            if not np.isfinite(weight):
                raise ConfigError(k, "must be finite")
            if name == "const":
                const = float(weight)
            else:
                _check_score(str(name), k)
                weights.append((str(name), float(weight)))
        return PrioritySpec(const, tuple(weights))
    raise ConfigError(
        key,
        f"expected a number, a score name or a mapping of scores to weights, got {value!r}",
    )


def _check_score(name: str, key: str) -> None:
    if name not in SCORE_NAMES:
        raise ConfigError(key, f"unknown score '{name}'; scores are {', '.join(SCORE_NAMES)}")


def priorities(
    spec: PrioritySpec, scores: Mapping[str, np.ndarray], n: int | None = None
) -> np.ndarray:
    """Each row's priority (float64); ``n`` rows when ``scores`` is empty."""
    if n is None:
        n = len(next(iter(scores.values()))) if scores else 0
    out = np.full(n, spec.const)
    for name, weight in spec.weights:
        values = scores.get(name)
        if values is not None:
            out += weight * np.nan_to_num(values, nan=0.0)
    return out
