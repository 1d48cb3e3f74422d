"""Reference profile of an unlabelled pool, and the drift scores measured against it.

A profile summarises the pool once, per model; the live path never needs the raw pool.
Watched per model: every input feature (``features``; numeric when all its pool values are
numbers, categorical when all are strings), the top-class probability ``max_prob`` (numeric)
and ``predicted_class`` (categorical: the name from ``classes``, else the argmax index as a
string). Both are taken from the **raw** ``probs``, before any temperature: the drift of the
model's output distribution, not of the calibrated one.

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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson

from hitl_router.errors import InputError

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
_CHUNK = 1_000_000  # values per block of bootstrap windows


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


# ------------------------------------------------------------------ the profile


@dataclass(frozen=True, eq=False)
class ModelProfile:
    """One model's references, the null scores of its tests, and their thresholds.

    Tests are ``(feature, method)`` pairs; ``null_scores`` holds each test's scores on the
    calibration's null windows (so another α can be calibrated later), ``cut`` the
    standardised cut that :func:`calibrate` chose. ``skipped``: features not profiled,
    with the reason.
    """

    model: str
    n: int
    features: Mapping[str, Reference]
    null_scores: Mapping[tuple[str, str], np.ndarray]
    thresholds: Mapping[tuple[str, str], float]
    cut: float
    skipped: Mapping[str, str] = field(default_factory=dict)

    def tests(self) -> list[tuple[str, str]]:
        return [(f, m) for f, ref in self.features.items() for m in ref.methods]


@dataclass(frozen=True, eq=False)
class DriftProfile:
    """The reference profile of a pool: per model, calibrated for windows of ``window``
    predictions and a window false-alarm rate ``alpha`` from ``bootstrap`` null windows."""

    window: int
    alpha: float
    bootstrap: int
    seed: int
    models: Mapping[str, ModelProfile]
    skipped_models: Mapping[str, str] = field(default_factory=dict)
    version: int = VERSION

    def key(self, name: str) -> str | None:
        """The key of ``name``'s profile in ``models``: ``name``, else its bare name
        (``name@version`` → ``name``), else None."""
        if name in self.models:
            return name
        bare = name.split("@", 1)[0]
        return bare if bare in self.models else None

    def model(self, name: str) -> ModelProfile | None:
        """The profile of ``name`` (see :meth:`key`)."""
        key = self.key(name)
        return None if key is None else self.models[key]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (null scores rounded to 6 significant digits, NaN → None)."""
        return {
            "version": self.version,
            "kind": "hitl-router drift profile",
            "window": self.window,
            "alpha": self.alpha,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "methods": {"voting": sorted(VOTING), "gauges": sorted(set(METHODS) - VOTING)},
            "models": {name: _model_dict(mp) for name, mp in self.models.items()},
            "skipped_models": dict(self.skipped_models),
        }


def _nested(tests: Mapping[tuple[str, str], Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (f, m), value in tests.items():
        if isinstance(value, np.ndarray):  # null scores: 6 significant digits are plenty
            value = [float(f"{v:.6g}") if v == v else None for v in value.tolist()]
        out.setdefault(f, {})[m] = value
    return out


def _model_dict(mp: ModelProfile) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for name, ref in mp.features.items():
        if isinstance(ref, NumericReference):
            features[name] = {
                "kind": ref.kind,
                "n": ref.n,
                "std": ref.std,
                **{k: getattr(ref, k).tolist() for k in _NUMERIC_ARRAYS},
                "w1_error": ref.w1_error,
                "ks_error": ref.ks_error,
            }
        else:
            features[name] = {
                "kind": ref.kind,
                "n": ref.n,
                "categories": list(ref.categories),
                "freqs": ref.freqs.tolist(),
            }
    return {
        "n": mp.n,
        "cut": mp.cut,
        "features": features,
        "thresholds": _nested(mp.thresholds),
        "skipped": dict(mp.skipped),
        "null_scores": _nested(mp.null_scores),
    }


_NUMERIC_ARRAYS = ("edges", "freqs", "quantiles", "knots", "cdf_left", "cdf_right")


def save_profile(profile: DriftProfile, path: str | Path) -> None:
    """Write ``profile`` as compact JSON (null scores rounded to 6 significant digits)."""
    try:
        Path(path).write_bytes(orjson.dumps(profile.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
    except OSError as exc:
        raise InputError(f"cannot write profile {path}: {exc.strerror}") from exc


def load_profile(path: str | Path) -> DriftProfile:
    """Read and validate a profile file; :class:`InputError` names the key and the problem."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read profile {path}: {exc.strerror}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"profile {path} is not JSON: {exc}") from exc
    return profile_from_dict(data, source=f"profile {path}")


def profile_from_dict(data: Any, source: str = "profile") -> DriftProfile:
    """Validate plain data (as :meth:`DriftProfile.to_dict` writes it) into a profile."""
    return _Check(source).profile(data)


class _Check:
    """Validation of a profile's plain data; every failure names the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> InputError:
        return InputError(f"{self.source}: {key}: {problem}")

    def mapping(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected an object, got {type(value).__name__}")
        return value

    def get(self, data: Mapping[str, Any], name: str, key: str) -> Any:
        if name not in data:
            raise self.fail(f"{key}.{name}" if key else name, "missing")
        return data[name]

    def number(self, value: Any, key: str, lo: float = 0.0, hi: float = np.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo:g} and {hi:g}, got {value!r}")
        return float(value)

    def integer(self, value: Any, key: str, lo: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(key, f"expected an integer ≥ {lo}, got {value!r}")
        return value

    def array(self, value: Any, key: str, *, order: str = "", nan: bool = False) -> np.ndarray:
        ok = isinstance(value, list) and all(
            (v is None and nan) or (not isinstance(v, bool) and isinstance(v, int | float))
            for v in value
        )
        if not ok:
            raise self.fail(key, "expected an array of numbers")
        arr = np.array(value, dtype=np.float64)
        if not nan and not np.all(np.isfinite(arr)):
            raise self.fail(key, "expected finite numbers")
        steps = np.diff(arr)
        if (order == "<" and np.any(steps <= 0)) or (order == "<=" and np.any(steps < 0)):
            raise self.fail(key, "must be sorted ascending" + (" without ties" * (order == "<")))
        return arr

    def freqs(self, value: Any, key: str, length: int) -> np.ndarray:
        arr = self.array(value, key)
        if len(arr) != length:
            raise self.fail(key, f"expected {length} frequencies, got {len(arr)}")
        if np.any(arr < 0) or abs(arr.sum() - 1.0) > 1e-6:
            raise self.fail(key, "frequencies must be ≥ 0 and sum to 1")
        return arr

    def profile(self, data: Any) -> DriftProfile:
        root = self.mapping(data, "<root>")
        version = self.get(root, "version", "")
        if version != VERSION:
            raise self.fail("version", f"unsupported profile version {version!r}; expected 1")
        models_data = self.mapping(self.get(root, "models", ""), "models")
        models = {
            name: self.model(name, self.mapping(md, f"models.{name}"), f"models.{name}")
            for name, md in models_data.items()
        }
        if not models:
            raise self.fail("models", "no model in the profile")
        skipped = self.mapping(root.get("skipped_models", {}), "skipped_models")
        return DriftProfile(
            window=self.integer(self.get(root, "window", ""), "window", 10),
            alpha=self.number(self.get(root, "alpha", ""), "alpha", 1e-12, 1.0 - 1e-12),
            bootstrap=self.integer(self.get(root, "bootstrap", ""), "bootstrap", 1),
            seed=self.integer(self.get(root, "seed", ""), "seed"),
            models=models,
            skipped_models={str(k): str(v) for k, v in skipped.items()},
        )

    def model(self, name: str, data: Mapping[str, Any], key: str) -> ModelProfile:
        feats = self.mapping(self.get(data, "features", key), f"{key}.features")
        features = {f: self.feature(fd, f"{key}.features.{f}") for f, fd in feats.items()}
        tests = [(f, m) for f, ref in features.items() for m in ref.methods]
        thresholds = self.tests(data, "thresholds", key, tests, scalar=True)
        nulls = self.tests(data, "null_scores", key, tests, scalar=False)
        if len({len(v) for v in nulls.values()}) > 1:
            raise self.fail(f"{key}.null_scores", "every test needs as many null scores")
        skipped = self.mapping(data.get("skipped", {}), f"{key}.skipped")
        return ModelProfile(
            model=name,
            n=self.integer(self.get(data, "n", key), f"{key}.n", 1),
            features=features,
            null_scores=nulls,
            thresholds=thresholds,
            cut=self.number(self.get(data, "cut", key), f"{key}.cut", -np.inf),
            skipped={str(k): str(v) for k, v in skipped.items()},
        )

    def tests(
        self,
        data: Mapping[str, Any],
        name: str,
        key: str,
        tests: list[tuple[str, str]],
        *,
        scalar: bool,
    ) -> dict[tuple[str, str], Any]:
        section = self.mapping(self.get(data, name, key), f"{key}.{name}")
        out: dict[tuple[str, str], Any] = {}
        for f, m in tests:
            where = f"{key}.{name}.{f}.{m}"
            value = self.mapping(section.get(f, {}), f"{key}.{name}.{f}").get(m)
            if value is None:
                raise self.fail(where, "missing")
            out[(f, m)] = (
                self.number(value, where) if scalar else self.array(value, where, nan=True)
            )
        extra = {(f, m) for f, ms in section.items() for m in (ms if isinstance(ms, dict) else ())}
        for f, m in sorted(extra - set(out)):
            raise self.fail(f"{key}.{name}.{f}.{m}", "no such feature test in this profile")
        return out

    def feature(self, data: Any, key: str) -> Reference:
        d = self.mapping(data, key)
        kind = self.get(d, "kind", key)
        n = self.integer(self.get(d, "n", key), f"{key}.n", 1)
        if kind == "categorical":
            cats = self.get(d, "categories", key)
            if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
                raise self.fail(f"{key}.categories", "expected an array of strings")
            if len(set(cats)) != len(cats):
                raise self.fail(f"{key}.categories", "categories must be unique")
            freqs = self.freqs(self.get(d, "freqs", key), f"{key}.freqs", len(cats) + 1)
            return CategoricalReference(n, tuple(cats), freqs)
        if kind != "numeric":
            raise self.fail(f"{key}.kind", f"expected 'numeric' or 'categorical', got {kind!r}")
        order = {"edges": "<", "quantiles": "<=", "knots": "<", "cdf_left": "<=", "cdf_right": "<="}
        arrays = {
            a: self.array(self.get(d, a, key), f"{key}.{a}", order=order.get(a, ""))
            for a in _NUMERIC_ARRAYS
            if a != "freqs"
        }
        arrays["freqs"] = self.freqs(
            self.get(d, "freqs", key), f"{key}.freqs", len(arrays["edges"]) + 1
        )
        if not len(arrays["quantiles"]) or not len(arrays["knots"]):
            raise self.fail(key, "quantiles and knots must not be empty")
        for a in ("cdf_left", "cdf_right"):
            if len(arrays[a]) != len(arrays["knots"]) or np.any((arrays[a] < 0) | (arrays[a] > 1)):
                raise self.fail(f"{key}.{a}", "expected one value in [0, 1] per knot")
        return NumericReference(
            n=n,
            std=self.number(self.get(d, "std", key), f"{key}.std"),
            w1_error=self.number(self.get(d, "w1_error", key), f"{key}.w1_error"),
            ks_error=self.number(self.get(d, "ks_error", key), f"{key}.ks_error", 0.0, 1.0),
            **arrays,
        )


# ------------------------------------------------------------------ building from a pool


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
