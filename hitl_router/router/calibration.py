"""Calibration measures and temperature scaling, over arrays of labelled predictions.

Conventions (stated because libraries differ):

- **ECE** is top-label (Guo et al. 2017): confidence = the largest probability,
  correct = the top class is the label. ``ece`` uses 15 equal-width bins, each
  ``(lo, hi]`` (a confidence of exactly 0.2 falls in the bin ending at 0.2);
  ``ece_equal_mass`` sorts by confidence and cuts 15 bins of (near-)equal count.
  Both weight each bin's ``|accuracy − mean confidence|`` by its share of items.
- **Brier** is the multiclass form: mean over items of Σₖ (pₖ − 1[y = k])², in
  [0, 2] (sklearn's ``brier_score_loss(..., scale_by_half=False)``).
- **NLL** is the mean of −log p_y, probabilities clipped at float64's epsilon
  (sklearn's ``log_loss``).
- **Temperature**: one T > 0 minimising the NLL of softmax(log p / T), searched
  over log T in ``bounds`` (bounded Brent, deterministic).

>>> import numpy as np
>>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
>>> y = np.array([0, 1, 0, 1])
>>> round(ece(p, y), 4), round(accuracy(p, y), 2)
(0.4, 0.75)
>>> wilson(75, 100)
(0.657, 0.8245)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.stats import binomtest, bootstrap

from hitl_router.router.uncertainty import apply_temperature

#: Bins of both ECEs.
ECE_BINS = 15
#: Temperatures searched: wide enough for any model worth routing, bounded so a
#: degenerate window (all correct, all wrong) cannot send T to 0 or infinity.
T_BOUNDS = (0.05, 20.0)
_EPS = np.finfo(np.float64).eps
_LOG_EPS = math.log(_EPS)


def top_label(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's confidence (largest probability) and predicted class."""
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(axis=-1)
    return np.take_along_axis(p, pred[:, None], axis=-1)[:, 0], pred


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(top_label(probs)[1] == labels))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error over ``bins`` equal-width bins ``(lo, hi]``."""
    conf, pred = top_label(probs)
    return binned_gap(conf, pred == labels, bins)


def binned_gap(conf: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / n) · |accuracy_b − confidence_b| over equal-width bins ``(lo, hi]``."""
    n = len(conf)
    if n == 0:
        return math.nan
    # bin b holds (edges[b], edges[b+1]] (edges as np.linspace makes them, so an edge value
    # lands where the usual ``lo < conf <= hi`` test puts it); 0 joins bin 0
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    hit_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=bins)
    return float(np.abs(hit_sum - conf_sum).sum() / n)


def ece_equal_mass(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE over ``bins`` bins of equal count (sorted by confidence; the first
    ``n mod bins`` bins hold one item more, as ``numpy.array_split`` cuts them)."""
    conf, pred = top_label(probs)
    n = len(conf)
    if n == 0:
        return math.nan
    order = np.argsort(conf, kind="stable")
    conf, correct = conf[order], (pred == labels)[order].astype(np.float64)
    gap = 0.0
    for part_conf, part_hit in zip(
        np.array_split(conf, min(bins, n)), np.array_split(correct, min(bins, n)), strict=True
    ):
        gap += abs(part_hit.sum() - part_conf.sum())
    return float(gap / n)


def item_nll(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """−log p_y per item, clipped like sklearn's ``log_loss``."""
    p = np.asarray(probs, dtype=np.float64)
    p_y = np.take_along_axis(p, np.asarray(labels)[:, None], axis=-1)[:, 0]
    return -np.log(np.clip(p_y, _EPS, 1.0))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(item_nll(probs, labels).mean()) if len(labels) else math.nan


def item_brier(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Σₖ (pₖ − 1[y = k])² per item."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), labels] = 1.0
    return np.sum((p - onehot) ** 2, axis=-1)  # type: ignore[no-any-return]


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(item_brier(probs, labels).mean()) if len(labels) else math.nan


def recall_per_class(probs: np.ndarray, labels: np.ndarray, k: int) -> list[float | None]:
    """Per class: the share of items of that true class predicted as it (None: no item)."""
    pred = top_label(probs)[1]
    support = np.bincount(labels, minlength=k)
    hits = np.bincount(labels[pred == labels], minlength=k)
    return [float(h / s) if s else None for h, s in zip(hits, support, strict=True)]


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (scipy's), rounded to 4 places.

    >>> wilson(0, 0)
    (0.0, 1.0)
    """
    if n == 0:
        return 0.0, 1.0
    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return round(float(ci.low), 4), round(float(ci.high), 4)


def ece_interval(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    bins: int = ECE_BINS,
    n_resamples: int = 400,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """A 95% percentile-bootstrap interval of the top-label ECE (scipy's ``bootstrap``,
    the labels resampled with their predictions; deterministic: seeded). It is the
    sampling spread of the estimate, which itself runs high at small n (≈ 0.09 for a
    calibrated model at n = 100), rounded to 4 places."""
    conf, pred = top_label(probs)
    correct = (pred == labels).astype(np.float64)
    if len(conf) < 2:
        return None, None
    res = bootstrap(
        (conf, correct),
        functools.partial(_batched_ece, bins=bins),
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return round(float(ci.low), 4), round(float(ci.high), 4)


def _batched_ece(conf: np.ndarray, correct: np.ndarray, bins: int, axis: int = -1) -> np.ndarray:
    """:func:`binned_gap` of every row of ``conf`` and ``correct`` (…, n) at once: one
    ``bincount`` over bins offset per row."""
    conf, correct = np.moveaxis(conf, axis, -1), np.moveaxis(correct, axis, -1)
    shape, n = conf.shape[:-1], conf.shape[-1]
    c, h = conf.reshape(-1, n), correct.reshape(-1, n)
    rows = c.shape[0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, c, side="left") - 1, 0, bins - 1)
    idx = (idx + (np.arange(rows) * bins)[:, None]).ravel()
    conf_sum = np.bincount(idx, weights=c.ravel(), minlength=rows * bins)
    hit_sum = np.bincount(idx, weights=h.ravel(), minlength=rows * bins)
    gap = np.abs(hit_sum - conf_sum).reshape(rows, bins).sum(axis=1) / n
    return gap.reshape(shape)


def logits(probs: np.ndarray) -> np.ndarray:
    """log p; a class of probability 0 gets −inf, so it stays at 0 under any T (and
    rows padded with zeros to a common width are scaled exactly as unpadded)."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(probs, dtype=np.float64))


def scaled(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """softmax(log p / T): the router's own :func:`~.uncertainty.apply_temperature`."""
    if np.all(np.asarray(temperature) == 1.0):
        return np.asarray(probs, dtype=np.float64)
    return apply_temperature(probs, temperature)


def scaled_nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of softmax(log_p / T) (log_p: the logits), in log space, each item's
    log-probability clipped at log(eps) like :func:`item_nll`."""
    lsm = log_softmax(log_p / temperature, axis=-1)
    picked = np.take_along_axis(lsm, labels[:, None], axis=-1)[:, 0]
    return float(-np.maximum(picked, _LOG_EPS).mean())


def fit_temperature(
    probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS
) -> float:
    """The T in ``bounds`` minimising the NLL of softmax(log p / T) on these labels.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> true = rng.dirichlet([1, 1, 1], 4000)
    >>> y = np.array([rng.choice(3, p=row) for row in true])
    >>> sharp = scaled(true, 0.5)  # over-confident: true probabilities sharpened
    >>> round(fit_temperature(sharp, y), 1), round(fit_temperature(true, y), 1)
    (2.0, 1.0)
    """
    log_p = logits(probs)
    y = np.asarray(labels)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def nll_at(log_t: float) -> float:
        return scaled_nll(log_p, y, math.exp(log_t))

    result = minimize_scalar(nll_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    # Brent's bounded search never evaluates the bounds themselves: when the NLL keeps
    # falling towards one (every label already the top class: T → its lower bound), the
    # bound is the minimum, and a point a step inside it is measurably worse
    best = min((float(result.x), lo, hi), key=nll_at)
    return float(math.exp(best))


#: Folds of the cross-fitted check: each temperature judged is fitted on 4/5 of the labels.
FOLDS = 5


@dataclass(frozen=True)
class HeldOut:
    """Cross-fitted evidence for a temperature: each fold of the labels is scored with the
    T fitted on the other folds, so no label judges a T it helped fit."""

    temperature: float  #: fitted on all labels (what would be applied)
    temperatures: tuple[float, ...]  #: fitted without each fold
    after: np.ndarray  #: every item's probabilities at the T fitted without its fold
    nll_after: float  #: the items, each at the T fitted without its fold


def cross_fit(
    probs: np.ndarray,
    labels: np.ndarray,
    fold: np.ndarray,
    bounds: tuple[float, float] = T_BOUNDS,
) -> HeldOut:
    """Fit T without each fold (``fold``: each item's fold number) and score it on that
    fold. Folds with no item are skipped; at least two must have items.

    With halves of a small window, one half can hold no error at all: its T runs to the
    lower bound and wrecks the other half. Five folds fit each T on 4/5 of the labels.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    f = np.asarray(fold)
    after = np.empty_like(p)
    temperatures = []
    for k in np.unique(f).tolist():
        held = f == k
        t = fit_temperature(p[~held], y[~held], bounds)
        temperatures.append(t)
        after[held] = scaled(p[held], t)
    return HeldOut(
        temperature=fit_temperature(p, y, bounds),
        temperatures=tuple(temperatures),
        after=after,
        nll_after=nll(after, y),
    )
