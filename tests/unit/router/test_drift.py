"""Drift: each method against an independent computation, the false-alarm rate on held-out
pool samples, the detection delay on a real model's degrading inputs, the streaming contract,
the profile file and the configuration.

The pool is the digits committee's predictions (``hitl_router.simulate``); it is split once:
the profile is built on the first 16,000 predictions and the no-drift checks run on the
10,000 after them (held out), so false alarms are measured on data the profile never saw.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from hitl_router.errors import ConfigError, InputError
from hitl_router.router.config import parse_config
from hitl_router.router.drift import DriftMonitor, DriftReport, threshold_overrides
from hitl_router.router.drift_pool import build_profile
from hitl_router.router.drift_profile import load_profile, profile_from_dict, save_profile
from hitl_router.router.drift_reference import (
    KNOTS,
    MAX_PROB,
    PREDICTED_CLASS,
    PSI_BINS,
    PSI_EPS,
    VOTING,
    CategoricalReference,
    NumericReference,
    calibrate,
)
from hitl_router.simulate import Simulator

W = 250
POOL, HELD_OUT = 16_000, 10_000  # 40 held-out windows of W
MODEL = "digits-committee@1"
NUMERIC = ("ink", "ink_pixels", "row_center", "col_center", MAX_PROB)
CATEGORICAL = ("device", PREDICTED_CLASS)


@pytest.fixture(scope="module")
def split() -> tuple[list[dict], list[dict]]:
    records = list(Simulator(seed=21).records(POOL + HELD_OUT))
    return records[:POOL], records[POOL:]


@pytest.fixture(scope="module")
def profile(split):
    return build_profile(split[0], window=W, alpha=0.01, bootstrap=1000, seed=0)


@pytest.fixture(scope="module")
def drift_stream() -> list[dict]:
    return list(Simulator(seed=22, drift_at=1625).records(4000))


def column(records: list[dict], feature: str) -> list:
    """A feature's values, computed here without the code under test."""
    if feature == MAX_PROB:
        return [max(r["probs"]) for r in records]
    if feature == PREDICTED_CLASS:
        return [r["classes"][int(np.argmax(r["probs"]))] for r in records]
    return [r["features"][feature] for r in records]


def score(ref, values) -> tuple[dict[str, float], int]:
    if isinstance(ref, CategoricalReference):
        x = ref.lookup(values)[None, :]
    else:
        x = np.array(values, dtype=float)[None, :]
    scores, n = ref.scores(x)
    return {m: float(v[0]) for m, v in scores.items()}, int(n[0])


def windows_of(records: list[dict]) -> list[list[dict]]:
    return [records[i : i + W] for i in range(0, len(records) - W + 1, W)]


# ---------------------------------------------------------------- methods vs independent


def test_numeric_methods_match_scipy_and_a_plain_psi(split, profile, drift_stream):
    pool, held = split
    mp = profile.models[MODEL]
    samples = windows_of(held)[:4] + windows_of(drift_stream)[-3:]  # no drift and drift
    for feature in NUMERIC:
        ref = mp.features[feature]
        ref_values = column(pool, feature)
        ref_array = np.array(ref_values, dtype=float)
        # the stored approximations are tight next to the thresholds (~0.1-0.3)
        assert ref.w1_error < 0.015 and ref.ks_error <= 2.0 / KNOTS
        for window in samples:
            values = column(window, feature)
            ours, n = score(ref, values)
            assert n == W
            w1 = stats.wasserstein_distance(values, ref_values) / ref_array.std()
            assert abs(ours["wasserstein"] - w1) <= ref.w1_error + 1e-9, feature
            ks = stats.ks_2samp(values, ref_values).statistic
            assert abs(ours["ks"] - ks) <= ref.ks_error + 1e-9, feature
            assert ours["psi"] == pytest.approx(plain_psi(values, ref_values), abs=1e-9)
    # a feature with few distinct values is stored exactly: KS is exact
    assert mp.features["ink_pixels"].ks_error == 0.0


def plain_psi(values: list[float], pool: list[float]) -> float:
    """PSI over the pool's deciles (inverted-CDF quantiles, tied edges merged), in Python."""
    ordered = sorted(pool)
    n = len(ordered)
    cuts = sorted({ordered[math.ceil(q * n / PSI_BINS) - 1] for q in range(1, PSI_BINS)})
    edges = [e for e in cuts if e > ordered[0]]

    def proportions(xs: list[float]) -> list[float]:
        counts = Counter(bisect.bisect_right(edges, x) for x in xs)
        return [max(counts[i] / len(xs), PSI_EPS) for i in range(len(edges) + 1)]

    actual, expected = proportions(values), proportions(pool)
    return sum((a - e) * math.log(a / e) for a, e in zip(actual, expected, strict=True))


def test_psi_bins_are_the_pool_deciles(split, profile):
    pool = split[0]
    for feature in ("ink", "row_center", "col_center", MAX_PROB):  # near-continuous features
        ref = profile.models[MODEL].features[feature]
        assert len(ref.edges) == PSI_BINS - 1
        assert np.allclose(ref.freqs, 1 / PSI_BINS, atol=0.01)
        assert plain_psi(column(pool, feature), column(pool, feature)) == pytest.approx(0.0)


def test_categorical_js_matches_scipy(split, profile, drift_stream):
    pool, held = split
    mp = profile.models[MODEL]
    samples = windows_of(held)[:3] + windows_of(drift_stream)[-2:]
    unseen = [dict(r, features=dict(r["features"])) for r in samples[0]]
    for i, r in enumerate(unseen[:60]):
        r["features"]["device"] = ("tablet", "watch")[i % 2]  # two categories the pool lacks
    for feature in CATEGORICAL:
        ref = mp.features[feature]
        ref_counts = Counter(column(pool, feature))
        for window in [*samples, unseen]:
            values = column(window, feature)
            counts = Counter(values)
            names = sorted(set(ref_counts) | set(counts))
            p = np.array([counts[c] for c in names], dtype=float)
            q = np.array([ref_counts[c] for c in names], dtype=float)
            expected = jensenshannon(p / p.sum(), q / q.sum(), base=2)
            ours, n = score(ref, values)
            assert n == W
            assert ours["js"] == pytest.approx(expected, abs=1e-9), feature


def test_batched_scores_equal_one_window_at_a_time(split, profile):
    """Calibration scores windows in batches, the monitor one at a time: same numbers."""
    held = split[1]
    mp = profile.models[MODEL]
    rng = np.random.default_rng(3)
    for feature, ref in mp.features.items():
        values = column(held[: 6 * W], feature)
        if isinstance(ref, CategoricalReference):
            x = ref.lookup(values).reshape(6, W)
            x[rng.random(x.shape) < 0.1] = -1  # missing
        else:
            x = np.array(values, dtype=float).reshape(6, W)
            x[rng.random(x.shape) < 0.1] = np.nan
        batch, counts = ref.scores(x)
        for row in range(6):
            single, n = ref.scores(x[row : row + 1])
            assert n[0] == counts[row] < W
            for m in ref.methods:
                assert single[m][0] == pytest.approx(batch[m][row], rel=1e-12, abs=1e-15)


def test_the_monitor_scores_what_the_references_score(split, profile):
    """The monitor counts categories and converts numbers its own way: same scores."""
    window = split[1][:W]
    reports = DriftMonitor(profile).update(window)
    for feature, ref in profile.models[MODEL].features.items():
        expected, n = score(ref, column(window, feature))
        for r in (r for r in reports if r.feature == feature):
            assert (r.score, r.n) == (pytest.approx(expected[r.method], abs=1e-12), n)


def test_numeric_reference_against_scipy_on_continuous_data():
    rng = np.random.default_rng(4)
    pool = rng.normal(size=5000)
    ref = NumericReference.fit(pool)
    assert len(ref.knots) == KNOTS and 0 < ref.ks_error < 2 / KNOTS and ref.w1_error < 0.01
    for shift in (0.0, 0.2, 1.0):
        window = rng.normal(shift, size=500)
        ours, _ = score(ref, window)
        w1 = stats.wasserstein_distance(window, pool) / pool.std()
        assert abs(ours["wasserstein"] - w1) <= ref.w1_error + 1e-9
        ks = stats.ks_2samp(window, pool).statistic
        assert abs(ours["ks"] - ks) <= ref.ks_error + 1e-9


# ---------------------------------------------------------------- false alarms, detection


def test_at_most_one_false_alarm_in_40_held_out_windows(split, profile):
    monitor = DriftMonitor(profile)
    reports = monitor.update(split[1])
    verdicts = {r.window: r.window_drifted for r in reports}
    assert sorted(verdicts) == list(range(HELD_OUT // W)) == list(range(40))
    assert sum(verdicts.values()) <= 1
    assert monitor.pending() == {MODEL: 0}


def test_window_false_alarm_rate_on_resampled_held_out_windows(split, profile):
    """400 windows resampled from the held-out predictions, scored in one batch per feature:
    the window false-alarm rate stays near alpha (0.01); 12 or more would be 3 alpha."""
    held = split[1]
    mp = profile.models[MODEL]
    rows = np.random.default_rng(5).integers(0, len(held), size=(400, W))
    alarm = np.zeros(400, dtype=bool)
    for feature, ref in mp.features.items():
        values = column(held, feature)
        if isinstance(ref, CategoricalReference):
            x = ref.lookup(values)[rows]
        else:
            x = np.array(values, dtype=float)[rows]
        for method, s in ref.scores(x)[0].items():
            if method in VOTING:
                alarm |= s > mp.thresholds[(feature, method)]
    assert alarm.sum() < 12


@pytest.mark.parametrize("drift_at", [1500, 1625])
def test_drift_reported_within_two_windows_of_its_start(profile, drift_at):
    stream = list(Simulator(seed=22, drift_at=drift_at).records(4000))
    start = drift_at // W  # the window holding the first degraded prediction
    reports = DriftMonitor(profile).update(stream)
    drifted = sorted({r.window for r in reports if r.window_drifted})
    assert drifted, "drift never reported"
    assert drifted[0] in (start, start + 1)
    assert drifted == list(range(drifted[0], len(stream) // W))  # and stays reported
    last = [r for r in reports if r.window == len(stream) // W - 1]
    by_test = {(r.feature, r.method): r.drifted for r in last}
    assert by_test[("device", "js")] and by_test[(MAX_PROB, "wasserstein")]
    assert by_test[("ink_pixels", "psi")] and by_test[("ink", "wasserstein")]


# ---------------------------------------------------------------- the streaming contract


def test_reports_carry_every_test_and_the_window_verdict(profile, drift_stream):
    reports = DriftMonitor(profile).update(drift_stream)
    mp = profile.models[MODEL]
    assert len(reports) == (len(drift_stream) // W) * len(mp.tests())
    for k in range(len(drift_stream) // W):
        mine = [r for r in reports if r.window == k]
        assert [(r.feature, r.method) for r in mine] == mp.tests()
        verdict = any(r.drifted and r.votes for r in mine)
        assert all(r.window_drifted == verdict for r in mine)
        assert {(r.first_id, r.last_id, r.n, r.model) for r in mine} == {
            (drift_stream[k * W]["id"], drift_stream[(k + 1) * W - 1]["id"], W, MODEL)
        }
    for r in reports:
        assert r.drifted == (r.score > r.threshold)
        assert r.votes == (r.method != "ks")
        line = orjson.loads(orjson.dumps(r.as_dict()))
        assert set(line) >= {"window", "model", "feature", "method", "score", "threshold"}
        assert set(line) >= {"drifted", "n", "first_id", "last_id", "window_drifted"}
        assert DriftReport(**line) == r


def test_batches_models_and_dead_letters_do_not_change_the_windows(profile, drift_stream):
    whole = DriftMonitor(profile).update(drift_stream)
    monitor = DriftMonitor(profile)
    other = [dict(r, model="unknown-model") for r in drift_stream[:300]]
    rng = np.random.default_rng(6)
    pieces, start, inserted = [], 0, 0
    while start < len(drift_stream):
        size = int(rng.integers(1, 700))
        batch: list = list(drift_stream[start : start + size])
        batch[1:1] = [None, *other[: size // 3]]  # dead letters and a model not profiled
        inserted += len(other[: size // 3])
        pieces.append(batch)
        start += size
    streamed = [r for batch in pieces for r in monitor.update(batch)]
    assert streamed == whole
    assert monitor.unprofiled == {"unknown-model": inserted} and inserted > 0
    assert monitor.pending() == {MODEL: len(drift_stream) % W}  # the partial window waits
    summary = monitor.summary()
    assert summary["models"][MODEL]["windows"] == len(drift_stream) // W
    assert summary["models"][MODEL]["first_drifted_window"] in (6, 7)


def test_a_versioned_model_name_falls_back_to_its_bare_profile(profile, drift_stream):
    bare = dataclasses.replace(profile, models={"digits-committee": profile.models[MODEL]})
    stream = [dict(r, model="digits-committee@7") for r in drift_stream[: 2 * W]]
    reports = DriftMonitor(bare).update(stream)
    assert {r.model for r in reports} == {"digits-committee@7"} and len(reports) > 0


def test_missing_and_ill_typed_features_are_left_out_of_n(profile, split):
    window = [dict(r, features=dict(r["features"])) for r in split[1][:W]]
    for i, r in enumerate(window):
        if i % 2:
            del r["features"]["ink"]
        if i % 5 == 0:
            r["features"]["device"] = 3  # a number where the pool had strings
        del r["features"]["row_center"]  # absent from the whole window
    reports = DriftMonitor(profile).update(window)
    n = {r.feature: r.n for r in reports}
    assert n["ink"] == W // 2 and n["device"] == W - W // 5 and n["ink_pixels"] == W
    assert "row_center" not in n


# ---------------------------------------------------------------- thresholds and alpha


def test_another_window_is_refused_unless_every_threshold_is_overridden(profile):
    with pytest.raises(ConfigError, match="drift.window: is 300 .* windows of 250"):
        DriftMonitor(profile, window=300)
    with pytest.raises(ConfigError, match="drift.window"):
        DriftMonitor(profile, window=300, overrides={"psi": 0.1, "wasserstein": 0.1, "js": 0.1})
    every = {"psi": 0.1, "wasserstein": 0.1, "js": 0.1, "ks": 0.1}
    monitor = DriftMonitor(profile, window=300, overrides=every)
    assert set(monitor.thresholds(MODEL).values()) == {0.1}


def test_overrides_replace_thresholds_feature_first(profile, split):
    monitor = DriftMonitor(profile, overrides={"psi": 0.5, "ink.psi": 0.0})
    thresholds = monitor.thresholds(MODEL)
    assert thresholds[("ink", "psi")] == 0.0 and thresholds[("device", "js")] > 0
    assert thresholds[("row_center", "psi")] == 0.5
    reports = monitor.update(split[1][:W])
    ink = next(r for r in reports if (r.feature, r.method) == ("ink", "psi"))
    assert ink.threshold == 0.0 and ink.drifted and ink.window_drifted


def test_another_alpha_is_recalibrated_from_the_null_scores(profile):
    stored = profile.models[MODEL].thresholds
    assert DriftMonitor(profile, alpha=0.01).thresholds(MODEL) == stored
    looser = DriftMonitor(profile, alpha=0.2).thresholds(MODEL)
    assert all(looser[k] < stored[k] for k in stored)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    tests=st.integers(1, 6),
    alpha=st.sampled_from([0.01, 0.05, 0.2]),
    correlation=st.floats(0.0, 1.0),
)
def test_calibrate_bounds_the_null_window_false_alarm_rate(seed, tests, alpha, correlation):
    rng = np.random.default_rng(seed)
    shared = rng.gamma(3.0, size=400)
    null = {
        (f"f{t}", "psi"): correlation * shared + (1 - correlation) * rng.gamma(3.0, size=400)
        for t in range(tests)
    }
    null[("f0", "ks")] = rng.gamma(3.0, size=400) * 100  # a gauge never votes
    _cut, thr = calibrate(null, alpha)
    alarms = np.zeros(400, dtype=bool)
    for key, s in null.items():
        if key[1] in VOTING:
            alarms |= s > thr[key]
            assert np.mean(s > thr[key]) <= alpha  # each voting test at most alpha
    assert alpha - 2 / 400 - 1e-9 <= np.mean(alarms) <= alpha  # the window: alpha
    _cut, looser = calibrate(null, min(0.5, 2 * alpha))
    assert all(looser[k] <= thr[k] for k in thr)


# ---------------------------------------------------------------- the profile


def test_profile_contents(profile, split):
    mp = profile.models[MODEL]
    assert (profile.version, profile.window, profile.alpha, profile.bootstrap) == (1, W, 0.01, 1000)
    kinds = {f: ref.kind for f, ref in mp.features.items()}
    assert kinds == {f: "numeric" for f in NUMERIC} | {f: "categorical" for f in CATEGORICAL}
    assert mp.n == POOL and mp.skipped == {}
    assert all(len(v) == 1000 for v in mp.null_scores.values())
    assert set(mp.thresholds) == set(mp.tests()) and all(t > 0 for t in mp.thresholds.values())
    device = mp.features["device"]
    assert device.categories[0] == "scanner-a" or device.categories[0] == "scanner-b"
    assert device.freqs[-1] == 0.0  # "other": nothing in the pool
    ink = mp.features["ink"]
    assert ink.std == pytest.approx(np.std(column(split[0], "ink")))


def test_profile_file_round_trip(tmp_path, profile, split):
    path = tmp_path / "profile.json"
    save_profile(profile, path)
    loaded = load_profile(path)
    assert loaded.models[MODEL].thresholds == profile.models[MODEL].thresholds
    a = DriftMonitor(profile).update(split[1][: 2 * W])
    b = DriftMonitor(loaded).update(split[1][: 2 * W])
    assert a == b
    null = loaded.models[MODEL].null_scores[("ink", "psi")]
    assert np.allclose(null, profile.models[MODEL].null_scores[("ink", "psi")], rtol=1e-5)


def _edit(data: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    for p in parents:
        data = data[p]
    if value is KeyError:
        del data[last]
    else:
        data[last] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("version", 2, "version: unsupported profile version 2"),
        ("window", 3, "window: expected an integer ≥ 10"),
        ("models", {}, "models: no model"),
        (
            f"models/{MODEL}/thresholds/ink/psi",
            KeyError,
            f"models.{MODEL}.thresholds.ink.psi: missing",
        ),
        (f"models/{MODEL}/thresholds/ink/chi2", 1.0, "thresholds.ink.chi2: no such feature test"),
        (f"models/{MODEL}/features/ink/edges", [3.0, 1.0], "features.ink.edges: must be sorted"),
        (f"models/{MODEL}/features/ink/freqs", [0.5] * 10, "features.ink.freqs: expected 9"),
        (f"models/{MODEL}/features/device/freqs", [0.5, 0.5, 0.5, 0.0], "sum to 1"),
        (f"models/{MODEL}/features/ink/kind", "ordinal", "features.ink.kind: expected 'numeric'"),
        (f"models/{MODEL}/features/ink/std", "wide", "features.ink.std: expected a number"),
        (f"models/{MODEL}/null_scores/ink/psi", [1.0], "every test needs as many null scores"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_key(profile, path, value, message):
    data = orjson.loads(orjson.dumps(profile.to_dict()))
    if path.endswith("features/ink/freqs"):
        value = [0.1] * (len(data["models"][MODEL]["features"]["ink"]["freqs"]) + 1)
        message = "features.ink.freqs: expected 10 frequencies, got 11"
    _edit(data, path, value)
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")):
        profile_from_dict(data, source="profile p.json")


def test_unreadable_profile_files(tmp_path):
    with pytest.raises(InputError, match="cannot read profile"):
        load_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="is not JSON"):
        load_profile(bad)


def test_build_profile_refuses_bad_arguments_and_skips_what_it_cannot_profile():
    def doc(i: int, **features) -> dict:
        return {"id": str(i), "model": "m", "probs": [0.7, 0.3], "features": features}

    with pytest.raises(ValueError, match="window"):
        build_profile([], window=5)
    with pytest.raises(ValueError, match="alpha"):
        build_profile([], alpha=1.0)
    with pytest.raises(ValueError, match="bootstrap must be ≥ 1/alpha"):
        build_profile([], alpha=0.01, bootstrap=50)
    with pytest.raises(ValueError, match="seed"):
        build_profile([], seed=-1)
    docs = [
        doc(i, x=float(i), mixed=i if i % 2 else "a", rare=1.0, max_prob=0.5)
        if i < 40
        else doc(i, x=float(i), mixed=i if i % 2 else "a")
        for i in range(100)
    ]
    docs += [{"id": "s", "model": "small", "probs": [0.5, 0.5]}] * 30
    built = build_profile(docs, window=20, alpha=0.05, bootstrap=100)
    assert built.skipped_models == {"small": "30 predictions; windows of 20 need at least 40"}
    mp = built.models["m"]
    assert set(mp.features) == {"x", MAX_PROB, PREDICTED_CLASS}
    assert mp.skipped == {
        "max_prob": "name reserved for the model's output",
        "mixed": "values are neither all numbers nor all strings",
        "rare": "present in 40 of 100 predictions",
    }


# ---------------------------------------------------------------- configuration


def test_drift_config_section():
    cfg = parse_config(
        {"drift": {"profile": "p.json", "window": 500, "alpha": 0.05, "thresholds": {"psi": 0.2}}}
    )
    assert (cfg.drift.profile, cfg.drift.window, cfg.drift.alpha) == ("p.json", 500, 0.05)
    assert cfg.drift.thresholds == {"psi": 0.2}
    assert parse_config({}).drift.alpha is None and parse_config({}).drift.thresholds == {}


@pytest.mark.parametrize(
    ("drift", "message"),
    [
        ({"windw": 10}, "drift.windw: unknown key"),
        ({"window": 5}, "drift.window: must be ≥ 10"),
        ({"alpha": 1.5}, "drift.alpha: must be between 0 and 1"),
        ({"thresholds": {"ink.chi2": 0.1}}, "drift.thresholds.ink.chi2: unknown method 'chi2'"),
        ({"thresholds": {"psi": -1}}, "drift.thresholds.psi: threshold must be a finite number"),
        ({"thresholds": [0.1]}, "drift.thresholds: expected a mapping"),
    ],
)
def test_bad_drift_config_names_the_key(drift, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config({"drift": drift})


def test_monitor_refuses_bad_arguments(profile):
    with pytest.raises(ValueError, match="drift.window: must be an integer ≥ 10"):
        DriftMonitor(profile, window=5)
    with pytest.raises(ValueError, match="drift.alpha"):
        DriftMonitor(profile, alpha=0.0)
    with pytest.raises(ValueError, match="unknown method"):
        DriftMonitor(profile, overrides={"chi2": 1.0})
    assert threshold_overrides({}) == {}
