"""The drift reference profile: per model, the references of every watched feature and the
calibrated thresholds; saved and loaded as versioned JSON, validated on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hitl_router.errors import InputError
from hitl_router.router.drift_reference import (
    METHODS,
    VERSION,
    VOTING,
    CategoricalReference,
    NumericReference,
    Reference,
)

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
