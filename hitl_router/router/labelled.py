"""Labelled predictions gathered per model, and the report :mod:`.label_metrics` makes of
them: what ``hitl-router calibrate`` prints and ``replay`` adds for labelled input.

>>> from hitl_router.router.config import parse_config
>>> s = LabelledSet(parse_config({}))
>>> doc = {"id": "a", "model": "m@2", "probs": [0.8, 0.2], "classes": ["cat", "dog"]}
>>> s.add(doc, "dog"), s.add({**doc, "id": "b"}, "cow"), dict(s.skipped)
(True, False, {'unknown_class': 1})
>>> r = s.report()
>>> r["n"], r["accuracy"], sorted(r["models"])
(1, 0.0, ['m', 'm@2'])
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from hitl_router.router.config import Config
from hitl_router.router.label_metrics import assess, stack
from hitl_router.router.labels import class_index


class LabelledSet:
    """Predictions with their true class, per model: the bare name and ``name@version``
    each get a report (a version's report holds only that version's labels)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rows: dict[str, list[tuple[str, list[float], int]]] = defaultdict(list)
        self.classes: dict[str, list[str]] = {}
        self.skipped: Counter[str] = Counter()
        #: each pooled row's model, and each model's temperature in use
        self._row_models: list[str] = []
        self.temperature_of: dict[str, float] = {}

    def add(self, doc: dict[str, Any], label: Any) -> bool:
        """Add a valid prediction with its label (a class name or index); False, and
        counted in ``skipped``, when the label names none of its classes."""
        probs, classes = doc["probs"], doc.get("classes")
        if isinstance(label, bool) or not isinstance(label, str | int):
            y = None
        else:
            y = class_index(label, classes, len(probs))
        if y is None:
            self.skipped["unknown_class"] += 1
            return False
        model = doc["model"]
        keys = [model] if "@" not in model else [model.split("@", 1)[0], model]
        for key in keys:
            self.rows[key].append((doc["id"], probs, y))
            if classes and len(classes) >= len(self.classes.get(key, ())):
                self.classes[key] = classes
        self.rows[""].append((doc["id"], probs, y))
        self.temperature_of.setdefault(model, self.config.calibration.temperature(model))
        self._row_models.append(model)
        return True

    @property
    def n(self) -> int:
        return len(self.rows.get("", ()))

    def report(self) -> dict[str, Any]:
        """Everything pooled at the top level (each row at its model's temperature in
        use; the fitted ``temperature`` is one for the pool), and per model under
        ``models``."""
        temps = [self.temperature_of[m] for m in self._row_models]
        out = self._assess("", temps[0] if len(set(temps)) == 1 else np.array(temps))
        out["models"] = {
            key: self._assess(key, self.config.calibration.temperature(key))
            for key in sorted(k for k in self.rows if k)
        }
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        return out

    def _assess(self, key: str, temperature: Any) -> dict[str, Any]:
        rows = self.rows.get(key, [])
        labels = self.config.labels
        return assess(
            stack([r[1] for r in rows]),
            np.array([r[2] for r in rows], dtype=np.int64),
            [r[0] for r in rows],
            current_temperature=temperature,
            min_labels=labels.min_labels,
            ece_warning=labels.ece_warning,
            class_names=self.classes.get(key),
        )
