"""Drift references of a pool and the scores measured against them.

Methods, each a kernel vectorised over a batch of windows (one row per window):

- ``wasserstein``: W1 distance between window and pool divided by the pool's standard
  deviation (as Evidently normalises it; by 1 for a constant pool). The pool is stored as its
  quantile function at ``QUANTILES`` midpoint levels, so the score is within the stored
  ``w1_error`` = W1(pool, stored quantiles) / std of the exact distance.
- ``psi``: population stability index over the pool's deciles (``PSI_BINS`` bins, tied edges
  merged), proportions floored at ``PSI_EPS``: Σ (a − e)·ln(a / e).
- ``ks``: the two-sample Kolmogorov–Smirnov statistic against the pool's CDF kept at up to
  ``KNOTS`` knots (exact when the pool has no more distinct values, else within the stored
  ``ks_error``, linear in between). KS is a **gauge**: it is reported with a threshold but
  does not vote in the window verdict.
- ``js``: Jensen–Shannon distance (base 2) between category frequencies; unseen categories
  and those beyond the ``MAX_CATEGORIES`` most frequent share one "other" bucket.

Calibration (:func:`calibrate`) calibrates the max-statistic directly: each test's null
scores are standardised (on a log scale: these scores are positive and right-skewed), a
window's statistic is its largest standardised score over the voting tests, and the cut is
the (1 − α) quantile of that statistic over B bootstrap null windows. Each test's threshold
is the score at the cut. So the *window* verdict has false-alarm rate α whatever the number m
of tests, and, unlike Bonferroni's per-test 1 − α/m quantile, the cut needs no more than
α·B null windows beyond it to be resolved (10 at the defaults) and costs nothing for
correlated tests (W1 and PSI of one feature, ``ink`` and ``ink_pixels``). The null windows
are cross-fitted (:func:`build_profile`) so they include the reference's own sampling noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

import numpy as np

VERSION = 1
NUMERIC_METHODS = ("wasserstein", "psi", "ks")
CATEGORICAL_METHODS = ("js",)
METHODS = NUMERIC_METHODS + CATEGORICAL_METHODS
#: Methods that take part in the window verdict; the others are gauges.
VOTING = frozenset({"wasserstein", "psi", "js"})
MAX_PROB, PREDICTED_CLASS = "max_prob", "predicted_class"
PSI_BINS, PSI_EPS, QUANTILES, KNOTS, MAX_CATEGORIES = 10, 1e-4, 200, 256, 50
#: A feature is profiled only when present in at least this fraction of the model's pool.
MIN_PRESENT = 0.5


# ------------------------------------------------------------------ references and kernels


@lru_cache(maxsize=64)
def _w1_grid(n: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments of [0, 1] on which both step quantile functions (n and q steps) are constant:
    the window's step index, the reference's, and the segment lengths (integer arithmetic)."""
    ends = np.union1d(np.arange(1, n + 1) * q, np.arange(1, q + 1) * n)
    starts = np.concatenate(([0], ends[:-1]))
    mid2 = starts + ends  # twice the midpoint, in units of 1 / (n q)
    return mid2 // (2 * q), mid2 // (2 * n), (ends - starts) / (n * q)


def _w1(sorted_rows: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    iw, iq, length = _w1_grid(sorted_rows.shape[1], len(quantiles))
    return np.abs(sorted_rows[:, iw] - quantiles[iq]) @ length


def _row_bincount(codes: np.ndarray, k: int) -> np.ndarray:
    """Counts of codes 0..k-1 per row of ``codes`` (B, n); other codes are ignored."""
    b = codes.shape[0]
    ok = (codes >= 0) & (codes < k)
    flat = (codes + np.arange(b)[:, None] * k)[ok]
    return np.bincount(flat, minlength=b * k).reshape(b, k).astype(np.float64)


@dataclass(frozen=True, eq=False)
class NumericReference:
    """The pool's summary of one numeric feature; see the module docstring for the methods.

    Build with :meth:`fit`; arrays are float64. ``edges``: interior PSI bin edges (bin i holds
    ``edges[i-1] <= x < edges[i]``); ``freqs``: the pool's proportion per bin; ``quantiles``:
    the pool quantiles at levels (j + ½) / ``QUANTILES``; ``knots`` with ``cdf_left`` (F(x⁻))
    and ``cdf_right`` (F(x)): the pool's CDF at up to ``KNOTS`` of its values.
    """

    n: int
    std: float
    edges: np.ndarray
    freqs: np.ndarray
    quantiles: np.ndarray
    knots: np.ndarray
    cdf_left: np.ndarray
    cdf_right: np.ndarray
    w1_error: float
    ks_error: float
    kind: ClassVar[str] = "numeric"
    methods: ClassVar[tuple[str, ...]] = NUMERIC_METHODS

    @classmethod
    def fit(cls, values: np.ndarray) -> NumericReference:
        """Summarise the finite numbers ``values`` (NaN = missing, ignored)."""
        v = np.sort(np.asarray(values, dtype=np.float64))
        v = v[np.isfinite(v)]
        if len(v) == 0:
            raise ValueError("a numeric reference needs at least one finite value")
        cuts = np.quantile(v, np.arange(1, PSI_BINS) / PSI_BINS, method="inverted_cdf")
        edges = np.unique(cuts)
        edges = edges[edges > v[0]]  # so that no bin is empty in the pool
        freqs = np.bincount(np.searchsorted(edges, v, "right"), minlength=len(edges) + 1)
        distinct = np.unique(v)
        if len(distinct) <= KNOTS:
            knots = distinct
        else:
            levels = np.linspace(0.0, 1.0, KNOTS)
            knots = np.unique(np.quantile(v, levels, method="inverted_cdf"))
        cdf_left = np.searchsorted(v, knots, "left") / len(v)
        cdf_right = np.searchsorted(v, knots, "right") / len(v)
        quantiles = np.quantile(v, (np.arange(QUANTILES) + 0.5) / QUANTILES)
        std = float(v.std())
        return cls(
            n=len(v),
            std=std,
            edges=edges,
            freqs=freqs / len(v),
            quantiles=quantiles,
            knots=knots,
            cdf_left=cdf_left,
            cdf_right=cdf_right,
            w1_error=float(_w1(v[None, :], quantiles)[0]) / (std if std > 0 else 1.0),
            ks_error=float(np.max(cdf_left[1:] - cdf_right[:-1], initial=0.0)),
        )

    def scores(self, windows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Scores of each row of ``windows`` (B, W), NaN = missing; and values used per row.

        A row with no value scores NaN.
        """
        x = np.asarray(windows, dtype=np.float64)
        x = np.sort(np.where(np.isfinite(x), x, np.nan), axis=1)  # NaN sorts last
        counts = x.shape[1] - np.isnan(x).sum(axis=1)
        out = {m: np.full(x.shape[0], np.nan) for m in self.methods}
        for n in np.unique(counts[counts > 0]):
            rows = counts == n
            xs = x[rows, :n]
            scale = self.std if self.std > 0 else 1.0
            out["wasserstein"][rows] = _w1(xs, self.quantiles) / scale
            out["psi"][rows] = self._psi(xs)
            out["ks"][rows] = self._ks(xs)
        return out, counts

    def _psi(self, xs: np.ndarray) -> np.ndarray:
        k = len(self.freqs)
        counts = _row_bincount(np.searchsorted(self.edges, xs, "right"), k)
        a = np.maximum(counts / xs.shape[1], PSI_EPS)
        e = np.maximum(self.freqs, PSI_EPS)
        return np.sum((a - e) * np.log(a / e), axis=1)

    def _ks(self, xs: np.ndarray) -> np.ndarray:
        b, n = xs.shape
        pos = np.broadcast_to(np.arange(n), (b, n))
        starts = np.ones((b, n), dtype=bool)  # a new value starts at j (ties: F_w jumps once)
        np.not_equal(xs[:, 1:], xs[:, :-1], out=starts[:, 1:])
        first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
        ends = np.ones((b, n), dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        last = n - 1 - np.maximum.accumulate(np.where(ends[:, ::-1], pos, 0), axis=1)[:, ::-1]
        ref_left, ref_right = self._cdf(xs)
        d_right = np.abs((last + 1) / n - ref_right)
        d_left = np.abs(first / n - ref_left)
        return np.maximum(d_right, d_left).max(axis=1)

    def _cdf(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pool's F(x⁻) and F(x): exact at knots, linear between them."""
        kn, top = self.knots, len(self.knots) - 1
        k = np.searchsorted(kn, x, "right") - 1
        kc, nxt = np.clip(k, 0, top), np.clip(k + 1, 0, top)
        span = kn[nxt] - kn[kc]
        frac = np.where(span > 0, (x - kn[kc]) / np.where(span > 0, span, 1.0), 0.0)
        between = self.cdf_right[kc] + (self.cdf_left[nxt] - self.cdf_right[kc]) * frac
        between = np.where(k >= top, 1.0, np.where(k < 0, 0.0, between))
        at = (k >= 0) & (kn[kc] == x)
        return np.where(at, self.cdf_left[kc], between), np.where(at, self.cdf_right[kc], between)


@dataclass(frozen=True, eq=False)
class CategoricalReference:
    """The pool's frequencies of one categorical feature.

    ``freqs`` has one entry per category and a last one for "other" (categories beyond the
    ``MAX_CATEGORIES`` most frequent; unseen live categories count there too).
    """

    n: int
    categories: tuple[str, ...]
    freqs: np.ndarray
    kind: ClassVar[str] = "categorical"
    methods: ClassVar[tuple[str, ...]] = CATEGORICAL_METHODS
    index: Mapping[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {c: i for i, c in enumerate(self.categories)})

    @classmethod
    def fit(cls, codes: np.ndarray, names: Iterable[str]) -> CategoricalReference:
        """Summarise ``codes`` (indices into ``names``; negative = missing)."""
        names = list(names)
        present = codes[codes >= 0]
        if len(present) == 0:
            raise ValueError("a categorical reference needs at least one value")
        counts = np.bincount(present, minlength=len(names))
        order = sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], names[i]))
        kept = order[:MAX_CATEGORIES]
        freqs = np.append(counts[kept], len(present) - counts[kept].sum()) / len(present)
        return cls(len(present), tuple(names[i] for i in kept), freqs)

    def lookup(self, names: Iterable[str]) -> np.ndarray:
        """The code of each name in ``names`` (``len(categories)`` = other)."""
        other = len(self.categories)
        return np.array([self.index.get(c, other) for c in names], dtype=np.intp)

    def scores(self, windows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """JS distance of each row of ``windows`` (B, W) of codes, negative = missing; and the
        values used per row. A row with no value scores NaN."""
        return self.score_counts(_row_bincount(np.asarray(windows), len(self.freqs)))

    def score_counts(self, counts: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """:meth:`scores` from each window's counts (B, K + 1) per category and other."""
        n = counts.sum(axis=1)
        p = counts / np.where(n > 0, n, 1.0)[:, None]
        q = np.broadcast_to(self.freqs, p.shape)
        m = (p + q) / 2.0
        safe_m = np.where(m > 0, m, 1.0)
        kl_p = np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / safe_m), 0.0), axis=1)
        kl_q = np.sum(np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0) / safe_m), 0.0), axis=1)
        js = np.sqrt(np.maximum((kl_p + kl_q) / 2.0, 0.0))
        return {"js": np.where(n > 0, js, np.nan)}, n.astype(np.int64)


Reference = NumericReference | CategoricalReference


def calibrate(
    null_scores: Mapping[tuple[str, str], np.ndarray], alpha: float
) -> tuple[float, dict[tuple[str, str], float]]:
    """The common cut and each test's threshold for a window false-alarm rate ``alpha``.

    ``null_scores`` maps each test ``(feature, method)`` to its scores on B null windows (NaN:
    not judged). Each test's scores are standardised on a log scale, z = (ln(s + δ) − μ) / σ
    (δ a millionth of its largest null score, so that 0 stays finite); a null window's
    statistic is its largest z over the voting tests (``VOTING``), and the cut is the
    smallest value that at most ⌊α·B⌋ null windows exceed. Every test, gauges too, gets the
    score whose z is the cut as threshold; a test with constant null scores gets that value.
    A window is drifted when a voting test scores strictly above its threshold.

    >>> rng = np.random.default_rng(1)
    >>> same = rng.gamma(4.0, size=1000)
    >>> cut, thr = calibrate({("a", "psi"): same, ("b", "psi"): same}, 0.05)
    >>> float(np.mean(same > thr[("a", "psi")]))  # identical tests: no multiplicity penalty
    0.05
    >>> cut, thr = calibrate({("a", "psi"): same, ("b", "psi"): rng.gamma(4.0, size=1000)}, 0.05)
    >>> float(np.mean(same > thr[("a", "psi")]))  # independent tests: about α/2 each
    0.03
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    keys = list(null_scores)
    z: dict[tuple[str, str], np.ndarray] = {}
    scale: dict[tuple[str, str], tuple[float, float, float]] = {}
    for key in keys:
        s = np.asarray(null_scores[key], dtype=np.float64)
        finite = s[np.isfinite(s)]
        top = float(finite.max()) if len(finite) else 0.0
        delta = 1e-6 * top + 1e-12
        logs = np.log(np.maximum(finite, 0.0) + delta)
        mu, sigma = (float(logs.mean()), float(logs.std())) if len(logs) else (0.0, 0.0)
        scale[key] = (delta, mu, sigma)
        with np.errstate(invalid="ignore"):
            zk = (np.log(np.maximum(s, 0.0) + delta) - mu) / sigma if sigma > 0 else s * 0 - np.inf
        z[key] = np.where(np.isfinite(s), zk, -np.inf)
    voting = [z[k] for k in keys if k[1] in VOTING]
    if voting:
        stat = np.sort(np.max(voting, axis=0))
        cut = float(stat[len(stat) - 1 - int(np.floor(alpha * len(stat) + 1e-9))])
    else:
        cut = 0.0
    cut = cut if np.isfinite(cut) else 0.0
    thresholds: dict[tuple[str, str], float] = {}
    for key, (delta, mu, sigma) in scale.items():
        below = np.asarray(null_scores[key], dtype=np.float64)[z[key] <= cut]
        floor = float(below.max()) if len(below) else 0.0  # no rounding lets a null score by
        if sigma > 0:
            thresholds[key] = max(float(np.exp(mu + cut * sigma) - delta), floor, 0.0)
        else:
            thresholds[key] = max(floor, 0.0)
    return cut, thresholds
