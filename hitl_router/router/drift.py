"""Drift windows: each model's predictions, W at a time, scored against a reference profile.

:class:`DriftMonitor` is the one streaming kernel that ``replay --drift-out`` and the live
drift agent share: feed it valid predictions (dicts) in arrival order with
:meth:`DriftMonitor.update`; it returns a :class:`DriftReport` per feature and method of every
window completed by that batch. Window k of a model holds that model's predictions
k·W … (k+1)·W − 1 in arrival order; only the current window of each model is kept, as
columns (bounded memory), and a window is judged only once it holds W predictions, so the
last partial window is never reported (:meth:`DriftMonitor.pending` shows it).

Scores and calibration are those of :mod:`hitl_router.router.drift_profile`: ``max_prob``
and ``predicted_class`` come from the **raw** ``probs`` (drift of the model's output, not of
its calibrated output). A test is drifted when its score is strictly above its threshold; a
window is drifted when a voting test (W1, PSI, JS; not the KS gauge) is. Each test of a
feature uses the window's predictions that have the feature with the profiled type (``n``);
a feature no prediction of the window has is not reported for it.

>>> import numpy as np
>>> from hitl_router.router.drift_pool import build_profile
>>> rng = np.random.default_rng(0)
>>> def docs(prefix, values):
...     return [{"id": f"{prefix}{i}", "model": "m", "probs": [0.8, 0.2],
...              "features": {"x": float(v)}} for i, v in enumerate(values)]
>>> profile = build_profile(docs("p", rng.normal(size=2000)), window=100, bootstrap=200)
>>> monitor = DriftMonitor(profile)
>>> reports = monitor.update(docs("a", rng.normal(size=150)))  # one window, 50 pending
>>> sorted({(r.window, r.window_drifted) for r in reports}), monitor.pending()
([(0, False)], {'m': 50})
>>> reports = monitor.update(docs("b", rng.normal(1.0, size=200)))  # the mean moves by 1σ
>>> sorted({(r.window, r.window_drifted) for r in reports}), monitor.pending()
([(1, True), (2, True)], {'m': 50})
>>> [(r.method, r.drifted, r.votes) for r in reports if r.window == 2 and r.feature == "x"]
[('wasserstein', True, True), ('psi', True, True), ('ks', True, False)]
>>> reports[0].first_id, reports[0].last_id, reports[0].n
('a100', 'b49', 100)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from hitl_router.errors import ConfigError
from hitl_router.router.drift_alarm import Persistence, PersistenceSpec
from hitl_router.router.drift_profile import DriftProfile, ModelProfile
from hitl_router.router.drift_reference import (
    MAX_PROB,
    METHODS,
    PREDICTED_CLASS,
    VOTING,
    CategoricalReference,
    calibrate,
)

_EMPTY: Mapping[str, Any] = {}
_NUMBERS = frozenset({int, float, type(None)})


@dataclass(frozen=True)
class DriftReport:
    """One test of one window: ``drifted`` is this test's verdict (score > threshold),
    ``window_drifted`` the window's (some voting test drifted); ``votes`` says whether this
    method takes part in it; ``n`` is the number of values the score used."""

    window: int
    model: str
    feature: str
    method: str
    score: float
    threshold: float
    drifted: bool
    window_drifted: bool
    votes: bool
    n: int
    first_id: str
    last_id: str
    #: the model's alarm after this window: ``persistence.drifted`` of its last
    #: ``persistence.windows`` windows drifted (:mod:`~hitl_router.router.drift_alarm`)
    alarm: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain data, one JSON line of ``--drift-out`` / one ``drift.reports`` message."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def threshold_overrides(
    overrides: Mapping[str, Any], key: str = "drift.thresholds"
) -> dict[str, float]:
    """Validate threshold overrides: ``{"<method>": t}`` sets every feature's, and
    ``{"<feature>.<method>": t}`` one feature's (it wins); ``t`` a number ≥ 0.

    >>> threshold_overrides({"psi": 0.2, "ink.wasserstein": 0.1})
    {'psi': 0.2, 'ink.wasserstein': 0.1}
    >>> threshold_overrides({"ink.chi2": 1})
    Traceback (most recent call last):
    ...
    hitl_router.errors.ConfigError: drift.thresholds.ink.chi2: unknown method 'chi2'; expected ...
    """
    out: dict[str, float] = {}
    for name, value in overrides.items():
        where = f"{key}.{name}"
        method = str(name).rsplit(".", 1)[-1]
        if method not in METHODS:
            raise ConfigError(
                where,
                f"unknown method '{method}'; expected <method> or <feature>.<method> with "
                f"method one of {', '.join(METHODS)}",
            )
        ok = not isinstance(value, bool) and isinstance(value, int | float)
        if not ok or not 0.0 <= value < math.inf:
            raise ConfigError(where, f"threshold must be a finite number ≥ 0, got {value!r}")
        out[str(name)] = float(value)
    return out


class DriftMonitor:
    """Windows of ``window`` predictions per model, judged against ``profile``.

    Parameters
    ----------
    profile
        The reference profile (:func:`~hitl_router.router.drift_profile.load_profile`).
    window
        Predictions per window; default the profile's. Thresholds depend on it: another
        size is refused unless ``overrides`` sets every test's threshold.
    overrides
        Threshold overrides, see :func:`threshold_overrides`.
    alpha
        Window false-alarm rate; default the profile's. Another value is recalibrated from
        the profile's null scores (:func:`~hitl_router.router.drift_profile.calibrate`).
    persistence
        When a model's alarm is on (k drifted of its last m windows); default 4 of 6.

    Predictions of a model the profile lacks (neither ``name@version`` nor ``name``) are
    counted in ``unprofiled`` and otherwise ignored. A monitor's windows are those of the
    stream it is fed: to judge a model's k-th window, feed one monitor all of its predictions
    (every partition), in order.
    """

    def __init__(
        self,
        profile: DriftProfile,
        window: int | None = None,
        overrides: Mapping[str, float] | None = None,
        alpha: float | None = None,
        persistence: PersistenceSpec | None = None,
    ) -> None:
        self.profile = profile
        self.window = window
        self.overrides = overrides
        self.alpha = alpha
        size = profile.window if window is None else window
        if isinstance(size, bool) or not isinstance(size, int) or size < 10:
            raise ConfigError("drift.window", f"must be an integer ≥ 10, got {size!r}")
        if alpha is not None and not 0.0 < alpha < 1.0:
            raise ConfigError("drift.alpha", f"must be in (0, 1), got {alpha!r}")
        self._size = size
        self._overrides = threshold_overrides(overrides or {})
        self._thresholds = {name: self._calibrated(mp) for name, mp in profile.models.items()}
        self._open: dict[str, _Window | None] = {}
        self.windows: Counter[str] = Counter()
        self.drifted: Counter[str] = Counter()
        self.first_drifted: dict[str, int] = {}
        self.unprofiled: Counter[str] = Counter()
        self.alarms = Persistence(persistence)

    def _calibrated(self, mp: ModelProfile) -> dict[tuple[str, str], float]:
        thresholds = dict(mp.thresholds)
        if self.alpha is not None and self.alpha != self.profile.alpha:
            thresholds = calibrate(mp.null_scores, self.alpha)[1]
        missing = []
        for f, m in thresholds:
            value = self._overrides.get(f"{f}.{m}", self._overrides.get(m))
            if value is None:
                missing.append(f"{f}.{m}")
            else:
                thresholds[(f, m)] = value
        if self._size != self.profile.window and missing:
            raise ConfigError(
                "drift.window",
                f"is {self._size} but the profile's thresholds were calibrated for windows of "
                f"{self.profile.window} (thresholds depend on the window): build the profile "
                f"with --window {self._size}, or set drift.thresholds for every method "
                f"(model {mp.model} lacks {', '.join(missing[:3])}{', …' * (len(missing) > 3)})",
            )
        return thresholds

    def thresholds(self, model: str) -> dict[tuple[str, str], float]:
        """The thresholds in force for ``model``'s tests (empty when it is not profiled)."""
        key = self.profile.key(model)
        return dict(self._thresholds[key]) if key is not None else {}

    def update(self, docs: Iterable[Mapping[str, Any] | None]) -> list[DriftReport]:
        """Add valid predictions in arrival order (``None`` entries, e.g. dead letters, are
        skipped); return the reports of every window completed, model by model."""
        by_model: dict[str, list[Mapping[str, Any]]] = {}
        for doc in docs:
            if doc is not None:
                by_model.setdefault(doc["model"], []).append(doc)
        reports: list[DriftReport] = []
        for model, batch in by_model.items():
            if model not in self._open:
                key = self.profile.key(model)
                self._open[model] = (
                    None
                    if key is None
                    else _Window(self.profile.models[key], self._thresholds[key])
                )
            win = self._open[model]
            if win is None:
                self.unprofiled[model] += len(batch)
                continue
            start = 0
            while start < len(batch):
                chunk = batch[start : start + self._size - win.count]
                win.add(chunk)
                start += len(chunk)
                if win.count == self._size:
                    reports.extend(self._judge(model, win))
        return reports

    def _judge(self, model: str, win: _Window) -> list[DriftReport]:
        k = self.windows[model]
        rows = win.scores()
        window_drifted = any(score > thr and m in VOTING for _f, m, score, thr, _n in rows)
        self.windows[model] += 1
        if window_drifted:
            self.drifted[model] += 1
            self.first_drifted.setdefault(model, k)
        first, last = win.first_id, win.last_id
        win.reset()
        alarm = self.alarms.update(model, window_drifted)
        return [
            DriftReport(
                k,
                model,
                f,
                m,
                score,
                thr,
                score > thr,
                window_drifted,
                m in VOTING,
                n,
                first,
                last,
                alarm,
            )
            for f, m, score, thr, n in rows
        ]

    def pending(self) -> dict[str, int]:
        """Predictions waiting in each profiled model's current (partial) window."""
        return {model: win.count for model, win in self._open.items() if win is not None}

    def summary(self) -> dict[str, Any]:
        """Windows judged and drifted, and the first drifted window, per model."""
        models = {
            model: {
                "windows": self.windows[model],
                "drifted": self.drifted[model],
                "first_drifted_window": self.first_drifted.get(model),
                "alarms": self.alarms.onsets[model],
                "alarm": self.alarms.on(model),
                "pending": win.count,
            }
            for model, win in self._open.items()
            if win is not None
        }
        return {
            "window": self._size,
            "windows": sum(self.windows.values()),
            "drifted": sum(self.drifted.values()),
            "alarms": sum(self.alarms.onsets.values()),
            "persistence": {
                "drifted": self.alarms.spec.drifted,
                "windows": self.alarms.spec.windows,
            },
            "models": models,
            "unprofiled": dict(self.unprofiled),
        }


class _Window:
    """The current window of one model: each profiled feature's raw values, in order."""

    def __init__(self, mp: ModelProfile, thresholds: Mapping[tuple[str, str], float]) -> None:
        self.mp = mp
        self.thresholds = thresholds
        self.inputs = [f for f in mp.features if f not in (MAX_PROB, PREDICTED_CLASS)]
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first_id = self.last_id = ""
        self.values: dict[str, list[Any]] = {f: [] for f in self.mp.features}

    def add(self, docs: list[Mapping[str, Any]]) -> None:
        if self.count == 0:
            self.first_id = docs[0]["id"]
        self.last_id = docs[-1]["id"]
        self.count += len(docs)
        feats = [d.get("features") or _EMPTY for d in docs]
        for f in self.inputs:
            self.values[f].extend([x.get(f) for x in feats])
        probs = [d["probs"] for d in docs]  # raw probabilities (lists, as decoded from JSON)
        tops = list(map(max, probs))
        if MAX_PROB in self.values:
            self.values[MAX_PROB].extend(tops)
        if PREDICTED_CLASS in self.values:
            top = list(map(list.index, probs, tops))
            classes = [d.get("classes") for d in docs]
            self.values[PREDICTED_CLASS].extend(
                [c[k] if c else str(k) for c, k in zip(classes, top, strict=True)]
            )

    def scores(self) -> list[tuple[str, str, float, float, int]]:
        """``(feature, method, score, threshold, n)`` of every test the window can judge.

        Values of another type than the profiled one count as missing; categorical values
        are counted (``Counter``) rather than coded one by one.
        """
        rows = []
        for f, ref in self.mp.features.items():
            values = self.values[f]
            if isinstance(ref, CategoricalReference):
                counts = np.zeros((1, len(ref.freqs)))
                other = len(ref.categories)
                for v, c in Counter(values).items():
                    if type(v) is str:
                        counts[0, ref.index.get(v, other)] += c
                scores, n = ref.score_counts(counts)
            else:
                if not set(map(type, values)) <= _NUMBERS:  # None (absent) becomes NaN
                    values = [v if type(v) in _NUMBERS else None for v in values]
                scores, n = ref.scores(np.array(values, dtype=np.float64)[None, :])
            if n[0] == 0:
                continue
            for m, s in scores.items():
                rows.append((f, m, float(s[0]), self.thresholds[(f, m)], int(n[0])))
        return rows
