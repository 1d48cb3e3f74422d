"""Drift alarms on persistence: ``drifted`` of a model's last ``windows`` windows, not one.

A window's verdict has a false-alarm rate α (``drift.alpha``, the profile's, 0.01 by
default): at 1,000 predictions/s in windows of 1,000, one window a second, a one-window
alarm would fire ~860 times a day on a stream that never drifted. An alarm that needs k of
the last m windows drifted fires, on a clean stream whose windows are independent, when
the window just judged drifted, the one leaving the last m had not, and exactly k − 1 of
the m − 1 between drifted::

    P(onset) = α · (1 − α) · C(m − 1, k − 1) · α^(k−1) · (1 − α)^(m−k)

At the defaults (4 of 6, α = 0.01) that is 9.7e-8 per window: 0.0084 a day per model at
one window a second, about one false alarm in four months; a real shift, which drifts
nearly every window, raises it at its fourth window. The rate counts every window of a
model wherever it is judged: with several workers, each judging the windows of its own
partitions, their alarms together fire at that rate.

>>> spec = PersistenceSpec(drifted=2, windows=3)
>>> p = Persistence(spec)
>>> [p.update("m", d) for d in (True, False, True, True, False, False)]
[False, False, True, True, True, False]
>>> p.onsets["m"]
1
>>> round(PersistenceSpec().false_alarms_per_day(alpha=0.01, windows_per_day=86_400), 4)
0.0084
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hitl_router.errors import ConfigError


@dataclass(frozen=True)
class PersistenceSpec:
    """Alarm when ``drifted`` of the last ``windows`` windows of a model drifted."""

    drifted: int = 4
    windows: int = 6

    def onset_probability(self, alpha: float) -> float:
        """The chance that an alarm starts at a given window of a clean stream whose
        windows each drift (falsely) with probability ``alpha``, independently."""
        k, m = self.drifted, self.windows
        return (
            alpha
            * (1.0 - alpha)
            * math.comb(m - 1, k - 1)
            * alpha ** (k - 1)
            * (1.0 - alpha) ** (m - k)
        )

    def false_alarms_per_day(self, alpha: float, windows_per_day: float) -> float:
        """Expected alarms a day on a clean stream of ``windows_per_day`` windows."""
        return self.onset_probability(alpha) * windows_per_day


def parse_persistence(value: Any, key: str = "drift.persistence") -> PersistenceSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected {{drifted: k, windows: m}}, got {value!r}")
    unknown = set(value) - {"drifted", "windows"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key; expected drifted, windows")
    windows = value.get("windows", PersistenceSpec.windows)
    if isinstance(windows, bool) or not isinstance(windows, int) or not 1 <= windows <= 1000:
        raise ConfigError(f"{key}.windows", f"must be an integer from 1 to 1000, got {windows!r}")
    drifted = value.get("drifted", min(PersistenceSpec.drifted, windows))
    if isinstance(drifted, bool) or not isinstance(drifted, int) or not 1 <= drifted <= windows:
        raise ConfigError(
            f"{key}.drifted", f"must be an integer from 1 to windows ({windows}), got {drifted!r}"
        )
    return PersistenceSpec(drifted, windows)


class Persistence:
    """Each model's last verdicts, and whether its alarm is on."""

    def __init__(self, spec: PersistenceSpec | None = None) -> None:
        self.spec = spec or PersistenceSpec()
        self._last: dict[str, deque[bool]] = {}
        self._on: dict[str, bool] = {}
        #: alarms started, per model
        self.onsets: Counter[str] = Counter()

    def update(self, model: str, drifted: bool) -> bool:
        """Add a window's verdict; return whether the model's alarm is on after it."""
        last = self._last.get(model)
        if last is None:
            last = self._last[model] = deque(maxlen=self.spec.windows)
        last.append(drifted)
        on = sum(last) >= self.spec.drifted
        if on and not self._on.get(model, False):
            self.onsets[model] += 1
        self._on[model] = on
        return on

    def on(self, model: str) -> bool:
        return self._on.get(model, False)
