"""Rolling windows of joined labels, per model, and of agreement pairs.

:class:`EvalWindows` holds the last ``size`` eval labels of each model (bare name); a
``name@version`` is reported on that version's labels among them. A label for an id
already in the window (its annotator changed their mind) replaces it in place.
:class:`AgreementWindow` holds the last ``size`` double-labelled pairs and reports
agreement and Cohen's kappa per queue, per annotator and per source.

>>> w = EvalWindows(size=2)
>>> w.add("m@1", "a", [0.9, 0.1], 0), w.add("m@2", "b", [0.2, 0.8], 0)
([], [])
>>> w.add("m@2", "c", [0.4, 0.6], 1)
['a']
>>> sorted(w.keys("m")), w.arrays("m@2")[1].tolist()
(['m', 'm@2'], [0, 1])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

from hitl_router.router.calibration import wilson
from hitl_router.router.label_metrics import stack


class EvalWindows:
    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: dict[str, OrderedDict[str, tuple[str, Sequence[float], int]]] = {}

    def add(self, model: str, id_: str, probs: Sequence[float], y: int) -> list[str]:
        """Add (or replace) ``id_``'s label; return the ids evicted to keep ``size``."""
        rows = self._rows.setdefault(bare(model), OrderedDict())
        rows[id_] = (model, probs, y)
        evicted = []
        while len(rows) > self.size:
            evicted.append(rows.popitem(last=False)[0])
        return evicted

    def models(self) -> list[str]:
        return list(self._rows)

    def drop(self, model: str) -> None:
        self._rows.pop(bare(model), None)

    def keys(self, model: str) -> list[str]:
        """The window keys of a model: its bare name and each version in its window."""
        name = bare(model)
        versions = {m for m, _, _ in self._rows.get(name, {}).values() if m != name}
        return [name, *sorted(versions)]

    def arrays(self, key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Probabilities (n, K), labels and ids of a window key, oldest first."""
        rows = self._rows.get(bare(key), OrderedDict())
        picked = [(i, p, y) for i, (m, p, y) in rows.items() if key == bare(key) or m == key]
        return (
            stack([p for _, p, _ in picked]),
            np.array([y for _, _, y in picked], dtype=np.int64),
            [i for i, _, _ in picked],
        )


def bare(model: str) -> str:
    return model.split("@", 1)[0]


class AgreementWindow:
    """The last ``size`` pairs (first annotator's label, another annotator's label)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pairs: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def add(self, pair: dict[str, Any]) -> list[tuple[str, str]]:
        """Add (or replace: same id and annotator) a pair; return the keys evicted."""
        key = (pair["id"], pair["annotator"])
        self._pairs[key] = pair
        evicted = []
        while len(self._pairs) > self.size:
            evicted.append(self._pairs.popitem(last=False)[0])
        return evicted

    def report(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{"queue"|"annotator"|"source": {name: {n, agreement, lower, upper, kappa}}}``;
        a pair counts for both of its annotators."""
        groups: dict[str, dict[str, list[tuple[int, int]]]] = {
            "queue": {},
            "annotator": {},
            "source": {},
        }
        for p in self._pairs.values():
            ab = (p["first"], p["second"])
            groups["source"].setdefault(p["source"], []).append(ab)
            if p.get("queue"):
                groups["queue"].setdefault(p["queue"], []).append(ab)
            for who in {p["first_annotator"], p["annotator"]}:
                groups["annotator"].setdefault(who, []).append(ab)
        return {
            scope: {name: agreement(pairs) for name, pairs in by_name.items()}
            for scope, by_name in groups.items()
        }


def agreement(pairs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Observed agreement (with its Wilson interval) and Cohen's kappa of label pairs.
    Kappa is None when undefined (every label the same class: no chance to beat).

    >>> agreement([(0, 0), (1, 1), (0, 1), (1, 1)])
    {'n': 4, 'agreement': 0.75, 'lower': 0.3006, 'upper': 0.9544, 'kappa': 0.5}
    """
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    agree = sum(x == y for x, y in pairs)
    lower, upper = wilson(agree, len(pairs))
    kappa = None
    if len(set(a) | set(b)) > 1:
        k = float(cohen_kappa_score(a, b))
        kappa = None if np.isnan(k) else round(k, 6)
    return {
        "n": len(pairs),
        "agreement": agree / len(pairs) if pairs else None,
        "lower": lower,
        "upper": upper,
        "kappa": kappa,
    }
