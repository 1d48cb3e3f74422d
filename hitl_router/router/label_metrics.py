"""What a set of labelled predictions says about a model: accuracy with its Wilson
interval, per-class recall, ECE (equal-width and equal-mass), Brier and NLL — raw,
at the temperature in use, and at a freshly fitted one judged on held-out labels.

The same function serves ``hitl-router calibrate``, ``replay`` on labelled input and
the live labels agent's windows.

Held out means cross-fitted: the labels are split in five folds by a keyed hash of their
ids (stable, independent of order), a temperature is fitted without each fold and applied
to it; the ``*_after`` numbers pool the held-out folds, so no label judges a temperature
it helped fit. The temperature reported (and, when accepted,
applied) is fitted on all labels.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> true = rng.dirichlet([1, 1], 2000)
>>> y = (rng.random(2000) < true[:, 1]).astype(int)
>>> from hitl_router.router.calibration import scaled
>>> r = assess(scaled(true, 0.4), y, [f"id{i}" for i in range(2000)], min_labels=200)
>>> r["temperature"] > 2, r["accepted"], r["nll_after"] < r["nll_before"]
(True, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hitl_router.router import calibration as cal
from hitl_router.router.eval_sampler import EvalSampler

#: per-class recall is reported for at most this many classes (metric cardinality)
MAX_RECALL_CLASSES = 100
_FOLDS = EvalSampler(0.5, "hitl-router cross-fit folds")


def stack(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Probability rows as one (n, K) array, shorter rows padded with zeros (a class of
    probability 0 stays 0 under any temperature, so padding changes no measure)."""
    k = max((len(r) for r in rows), default=2)
    out = np.zeros((len(rows), k))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def fold_of(ids: Sequence[str], folds: int = cal.FOLDS) -> np.ndarray:
    """Which cross-fit fold (0 … folds-1) each id falls in (a keyed hash: stable)."""
    return np.minimum((_FOLDS.uniform(ids) * folds).astype(np.int64), folds - 1)


def assess(
    probs: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[str],
    *,
    current_temperature: float | np.ndarray = 1.0,
    min_labels: int = 200,
    ece_warning: float = 0.10,
    class_names: Sequence[str] | None = None,
    bounds: tuple[float, float] = cal.T_BOUNDS,
) -> dict[str, Any]:
    """Every measure of ``probs`` (n, K, raw model probabilities) against ``labels``.

    ``current_temperature``: the temperature in use, one for all rows or one per row.
    ``accepted``: a temperature may replace it: at least ``min_labels`` labels and a
    lower held-out NLL than the temperature in use. ``ece_warning``: with at least
    ``min_labels`` labels, the ECE at the temperature in use exceeds the threshold.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    k = p.shape[1] if p.ndim == 2 else 0
    correct = int((cal.top_label(p)[1] == y).sum()) if n else 0
    lower, upper = cal.wilson(correct, n)
    out: dict[str, Any] = {
        "n": n,
        "accuracy": correct / n if n else None,
        "accuracy_lower": lower,
        "accuracy_upper": upper,
        "recall": _recall(p, y, k, class_names) if n else {},
        **_measures(p, y, ""),
        "nll_before": _num(cal.nll(p, y)) if n else None,
    }
    t_now = np.asarray(current_temperature, dtype=np.float64)
    current = cal.scaled(p, t_now if t_now.ndim == 0 else t_now[:, None]) if n else p
    current_nll = cal.nll(current, y) if n else math.nan
    ece_lower, ece_upper = cal.ece_interval(current, y) if n else (None, None)
    out["current"] = {
        "temperature": float(t_now) if t_now.ndim == 0 else None,
        **_measures(current, y, ""),
        "ece_lower": ece_lower,
        "ece_upper": ece_upper,
        "nll": _num(current_nll),
    }
    folds = fold_of(ids)
    fit = None
    if n >= 2 and len(np.unique(folds)) >= 2:
        fit = cal.cross_fit(p, y, folds, bounds=bounds)
        out.update(
            temperature=round(fit.temperature, 6),
            temperatures_folds=[round(t, 6) for t in fit.temperatures],
            **_measures(fit.after, y, "_after"),
            nll_after=_num(fit.nll_after),
        )
    else:
        out.update(temperature=None, ece_after=None, nll_after=None)
    out["accepted"] = bool(fit is not None and n >= min_labels and fit.nll_after < current_nll)
    in_use = out["current"]["ece"]
    out["ece_warning"] = bool(n >= min_labels and in_use is not None and in_use > ece_warning)
    return out


def _measures(p: np.ndarray, y: np.ndarray, suffix: str) -> dict[str, float | None]:
    if not len(y):
        return {f"ece{suffix}": None, f"ece_equal_mass{suffix}": None, f"brier{suffix}": None}
    return {
        f"ece{suffix}": _num(cal.ece(p, y)),
        f"ece_equal_mass{suffix}": _num(cal.ece_equal_mass(p, y)),
        f"brier{suffix}": _num(cal.brier(p, y)),
    }


def _recall(
    p: np.ndarray, y: np.ndarray, k: int, names: Sequence[str] | None
) -> dict[str, float | None]:
    values = cal.recall_per_class(p, y, k)
    out = {}
    for c, v in enumerate(values[:MAX_RECALL_CLASSES]):
        name = names[c] if names is not None and c < len(names) else str(c)
        out[name] = None if v is None else round(v, 6)
    return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def temperature_message(
    key: str, previous: float, report: dict[str, Any], now: float, router: dict[str, str]
) -> dict[str, Any]:
    """The ``calibration`` topic's message for an accepted fit of window ``key``: the
    temperature and the evidence for it (held-out NLL and ECE against the T in use)."""
    return {
        "model": key,
        "temperature": float(report["temperature"]),
        "previous": previous,
        "n": report["n"],
        "nll_before": report["current"]["nll"],
        "nll_after": report["nll_after"],
        "ece_before": report["current"]["ece"],
        "ece_after": report["ece_after"],
        "temperatures_folds": report["temperatures_folds"],
        "fitted_at": now,
        "router": router,
    }
