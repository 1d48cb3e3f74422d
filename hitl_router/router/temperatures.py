"""The temperatures in use: the newest accepted fit per model (read from the compacted
``calibration`` topic), else the config's ``calibration.temperatures``, else 1.

A more specific name wins: ``name@version`` (fitted, then configured) before the bare
name (fitted, then configured), so a version fitted on its own labels is not overridden
by its model's pooled fit.

>>> from hitl_router.router.config import CalibrationConfig
>>> book = TemperatureBook(CalibrationConfig({"m": 2.0, "m@2": 3.0}))
>>> book.temperature("m@1"), book.temperature("m@2"), book.temperature("x")
(2.0, 3.0, 1.0)
>>> book.update("m", 0.5)
True
>>> book.temperature("m@1"), book.temperature("m@2"), book.fitted
(0.5, 3.0, {'m': 0.5})
>>> book.update("m", None), book.temperature("m@1")
(True, 2.0)
"""

from __future__ import annotations

import math

from hitl_router.router.config import CalibrationConfig


class TemperatureBook:
    def __init__(self, calibration: CalibrationConfig) -> None:
        self.configured = dict(calibration.temperatures)
        #: accepted fits, per model name as fitted (bare or ``name@version``)
        self.fitted: dict[str, float] = {}
        #: bumped by every change, so per-batch caches know to look again
        self.version = 0

    def update(self, model: str, temperature: float | None) -> bool:
        """Apply a fit (None: forget the model's fit); False if it is not a usable one."""
        if temperature is None:
            if self.fitted.pop(model, None) is None:
                return True
        elif not (math.isfinite(temperature) and 0.0 < temperature < 1e6):
            return False
        elif self.fitted.get(model) == temperature:
            return True
        else:
            self.fitted[model] = float(temperature)
        self.version += 1
        return True

    @property
    def empty(self) -> bool:
        return not self.fitted and not self.configured

    def temperature(self, model: str) -> float:
        for table in (self.fitted, self.configured):
            if model in table:
                return table[model]
        name = model.split("@", 1)[0]
        for table in (self.fitted, self.configured):
            if name in table:
                return table[name]
        return 1.0
