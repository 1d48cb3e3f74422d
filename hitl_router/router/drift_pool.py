"""Building a drift profile from a pool of predictions.

Watched per model: every input feature (``features``; numeric when all its pool values are
numbers, categorical when all are strings), the top-class probability ``max_prob`` (numeric)
and ``predicted_class`` (categorical: the name from ``classes``, else the argmax index as a
string). Both are taken from the **raw** ``probs``, before any temperature: the drift of the
model's output distribution, not of the calibrated one.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> pool = [{"id": f"p{i}", "model": "m", "probs": [0.8, 0.2], "features": {"x": float(v)}}
...         for i, v in enumerate(rng.normal(size=2000))]
>>> profile = build_profile(pool, window=100, bootstrap=200, seed=0)
>>> mp = profile.models["m"]
>>> sorted(mp.features), mp.features["x"].kind, mp.features["predicted_class"].kind
(['max_prob', 'predicted_class', 'x'], 'numeric', 'categorical')
>>> null = mp.null_scores[("x", "psi")]  # its false alarms: between α/m (m = 5 vote) and α
>>> bool(0.01 / 5 <= np.mean(null > mp.thresholds[("x", "psi")]) <= 0.01)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from hitl_router.router.drift_profile import DriftProfile, ModelProfile
from hitl_router.router.drift_reference import (
    MAX_PROB,
    MIN_PRESENT,
    PREDICTED_CLASS,
    CategoricalReference,
    NumericReference,
    Reference,
    calibrate,
)

# ------------------------------------------------------------------ building from a pool

_CHUNK = 1_000_000  # values per block of bootstrap windows


def top_class(probs: Any, classes: Any) -> tuple[float, str]:
    """``max_prob`` and ``predicted_class`` of one prediction, from its **raw** ``probs``."""
    p = probs if isinstance(probs, list) else list(probs)
    top = max(p)
    k = p.index(top)
    return float(top), (classes[k] if classes else str(k))


class _PoolRows:
    """One model's pool, kept as the columns a profile needs (not the whole messages)."""

    def __init__(self) -> None:
        self.n = 0
        self.values: dict[str, tuple[list[int], list[Any]]] = {}
        self.tops: list[float] = []
        self.classes: list[str] = []

    def add(self, doc: Mapping[str, Any]) -> None:
        for name, value in (doc.get("features") or {}).items():
            rows, values = self.values.setdefault(name, ([], []))
            rows.append(self.n)
            values.append(value)
        top, cls = top_class(doc["probs"], doc.get("classes"))
        self.tops.append(top)
        self.classes.append(cls)
        self.n += 1

    def columns(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Numeric columns (float, NaN = missing), categorical ones (codes, names), and the
        features skipped with their reason."""
        cols: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for name in sorted(self.values):
            rows, values = self.values[name]
            kinds = {type(v) for v in values}
            if name in (MAX_PROB, PREDICTED_CLASS):
                skipped[name] = "name reserved for the model's output"
            elif len(rows) < MIN_PRESENT * self.n:
                skipped[name] = f"present in {len(rows)} of {self.n} predictions"
            elif kinds <= {int, float}:
                col = np.full(self.n, np.nan)
                col[rows] = values
                cols[name] = col
            elif kinds == {str}:
                cols[name] = _codes(rows, values, self.n)
            else:
                skipped[name] = "values are neither all numbers nor all strings"
        cols[MAX_PROB] = np.array(self.tops)
        cols[PREDICTED_CLASS] = _codes(range(self.n), self.classes, self.n)
        return cols, skipped


def _codes(rows: Iterable[int], values: list[str], n: int) -> tuple[np.ndarray, list[str]]:
    names, inverse = np.unique(np.array(values, dtype=object), return_inverse=True)
    codes = np.full(n, -1, dtype=np.intp)
    codes[np.fromiter(rows, dtype=np.intp)] = inverse
    return codes, [str(x) for x in names]


def _fit(col: Any, rows: np.ndarray | None = None) -> Reference:
    if isinstance(col, tuple):
        codes, names = col
        return CategoricalReference.fit(codes if rows is None else codes[rows], names)
    return NumericReference.fit(col if rows is None else col[rows])


def build_profile(
    docs: Iterable[Mapping[str, Any]],
    *,
    window: int = 1000,
    alpha: float = 0.01,
    bootstrap: int = 1000,
    seed: int = 0,
) -> DriftProfile:
    """Profile a pool of valid predictions (dicts), per model, calibrated for ``window``.

    Null windows (``bootstrap`` per model) are cross-fitted: the pool is split in random
    halves, references are fitted on one half and windows of ``window`` predictions are
    drawn with replacement from the other (and the other way round, half of the windows
    each), so the null scores include the reference's own sampling noise. Thresholds then
    come from :func:`calibrate`; the stored references are fitted on the whole pool. A model
    needs at least ``2 * window`` predictions, else it is listed in ``skipped_models``.
    ``seed`` fixes every draw (each model's from the seed and its name).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 10:
        raise ValueError(f"window must be an integer ≥ 10, got {window!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap * alpha < 1.0:
        raise ValueError(
            f"bootstrap must be ≥ 1/alpha = {1 / alpha:g} null windows, got {bootstrap}"
        )
    pool: dict[str, _PoolRows] = {}
    for doc in docs:
        pool.setdefault(doc["model"], _PoolRows()).add(doc)
    models: dict[str, ModelProfile] = {}
    skipped_models: dict[str, str] = {}
    for name in sorted(pool):
        rows = pool[name]
        if rows.n < 2 * window:
            skipped_models[name] = (
                f"{rows.n} predictions; windows of {window} need at least {2 * window}"
            )
            continue
        cols, skipped = rows.columns()
        rng = np.random.default_rng([seed, *name.encode()])
        null = _null_scores(cols, rows.n, window, bootstrap, rng)
        cut, thresholds = calibrate(null, alpha)
        features = {f: _fit(col) for f, col in cols.items()}
        models[name] = ModelProfile(name, rows.n, features, null, thresholds, cut, skipped)
    return DriftProfile(window, float(alpha), bootstrap, seed, models, skipped_models)


def _null_scores(
    cols: Mapping[str, Any], n: int, window: int, bootstrap: int, rng: np.random.Generator
) -> dict[tuple[str, str], np.ndarray]:
    perm = rng.permutation(n)
    halves = (perm[: n // 2], perm[n // 2 :])
    parts: dict[tuple[str, str], list[np.ndarray]] = {}
    for side, count in ((0, bootstrap // 2), (1, bootstrap - bootstrap // 2)):
        ref_rows, win_rows = halves[side], halves[1 - side]
        refs = {f: _fit(col, ref_rows) for f, col in cols.items()}
        luts = {
            f: ref.lookup(cols[f][1])
            for f, ref in refs.items()
            if isinstance(ref, CategoricalReference)
        }
        draws = win_rows[rng.integers(0, len(win_rows), size=(count, window))]
        step = max(1, _CHUNK // window)
        for start in range(0, count, step):
            block = draws[start : start + step]
            for f, ref in refs.items():
                if f in luts:
                    codes = cols[f][0][block]
                    x = np.where(codes >= 0, luts[f][np.maximum(codes, 0)], -1)
                else:
                    x = cols[f][block]
                for m, s in ref.scores(x)[0].items():
                    parts.setdefault((f, m), []).append(s)
    return {k: np.concatenate(v) for k, v in parts.items()}
