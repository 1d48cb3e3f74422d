"""Calibration measures against independent computations (sklearn, scipy, plain loops)
and temperature scaling on a real over-confident and a well-calibrated model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss

from hitl_router.router import calibration as cal
from hitl_router.router.label_metrics import assess, stack
from hitl_router.simulate import Simulator


def _ece_loop(probs, labels, bins=15):
    """ECE as Guo et al.'s reference code computes it: lo < conf <= hi per bin."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(
                (pred[inside] == labels[inside]).mean() - conf[inside].mean()
            )
    return total


def _ece_equal_mass_loop(probs, labels, bins=15):
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    order = np.argsort(conf, kind="stable")
    n = len(conf)
    total, start = 0.0, 0
    for b in range(bins):
        size = n // bins + (1 if b < n % bins else 0)
        part = order[start : start + size]
        start += size
        if size:
            total += size / n * abs((pred[part] == labels[part]).mean() - conf[part].mean())
    return total


def _random_set(seed, n=500, k=4):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k) * 0.7, n)
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


@pytest.mark.parametrize("seed", range(5))
def test_measures_equal_independent_computations(seed):
    p, y = _random_set(seed)
    assert cal.ece(p, y) == pytest.approx(_ece_loop(p, y), abs=1e-12)
    assert cal.ece_equal_mass(p, y) == pytest.approx(_ece_equal_mass_loop(p, y), abs=1e-12)
    assert cal.nll(p, y) == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    assert cal.brier(p, y) == pytest.approx(
        brier_score_loss(y, p, labels=range(4), scale_by_half=False), rel=1e-12
    )
    assert cal.accuracy(p, y) == pytest.approx(np.mean(p.argmax(1) == y))


def test_ece_interval_is_a_percentile_bootstrap_of_the_loop_ece():
    """The batched statistic equals the reference loop on every resample, and the
    interval equals a plain percentile bootstrap with the same number of resamples
    (different draws: within Monte Carlo error)."""
    p, y = _random_set(11, n=300)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(y), size=(50, len(y)))
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    batched = cal._batched_ece(conf[draws], correct[draws], bins=15)
    loop = [_ece_loop(p[d], y[d]) for d in draws]
    assert batched == pytest.approx(loop)
    lo, hi = cal.ece_interval(p, y, n_resamples=2000)
    manual = [
        _ece_loop(p[d], y[d])
        for d in np.random.default_rng(1).integers(0, len(y), size=(2000, len(y)))
    ]
    want_lo, want_hi = np.percentile(manual, [2.5, 97.5])
    assert lo == pytest.approx(want_lo, abs=0.01) and hi == pytest.approx(want_hi, abs=0.01)
    assert lo < cal.ece(p, y) < hi
    assert cal.ece_interval(p, y) == cal.ece_interval(p, y)  # seeded
    # four times the labels: about half as wide
    p4, y4 = np.tile(p, (4, 1)), np.tile(y, 4)
    lo4, hi4 = cal.ece_interval(p4, y4)
    assert 0.35 < (hi4 - lo4) / (hi - lo) < 0.7
    assert cal.ece_interval(p[:1], y[:1]) == (None, None)


def test_ece_bins_are_left_open_right_closed():
    # confidence exactly 0.8 belongs to (0.7333, 0.8]; with 0.81 (next bin) the two
    # items would be scored apart
    p = np.array([[0.8, 0.2], [0.8 - 1e-9, 0.2 + 1e-9], [0.81, 0.19]])
    y = np.array([0, 1, 0])
    assert cal.ece(p, y) == pytest.approx(_ece_loop(p, y))
    conf_bin = cal.binned_gap(np.array([0.8, 0.75]), np.array([True, False]))
    assert conf_bin == pytest.approx(abs(0.5 - 0.775))  # both in one bin: pooled


def test_binary_brier_is_twice_sklearns_default_half_scale():
    p, y = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), np.array([0, 1, 1])
    assert cal.brier(p, y) == pytest.approx(2 * brier_score_loss(y, p[:, 1]))


@given(st.integers(0, 400), st.integers(1, 400))
def test_wilson_matches_the_textbook_formula(k, n):
    k = min(k, n)
    z, p = 1.959963984540054, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = cal.wilson(k, n)
    assert lo == pytest.approx(max(0.0, centre - half), abs=6e-5)
    assert hi == pytest.approx(min(1.0, centre + half), abs=6e-5)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, (40, 3), elements=st.floats(0.01, 1.0)),
    st.lists(st.integers(0, 2), min_size=40, max_size=40),
)
def test_fitted_temperature_minimises_nll_within_bounds(raw, labels):
    p = raw / raw.sum(axis=1, keepdims=True)
    y = np.array(labels)
    t = cal.fit_temperature(p, y)
    lo, hi = cal.T_BOUNDS
    assert lo * 0.999 <= t <= hi * 1.001
    best = cal.scaled_nll(cal.logits(p), y, t)
    for other in np.geomspace(lo, hi, 60):  # no grid point does better
        assert best <= cal.scaled_nll(cal.logits(p), y, other) + 1e-7
    # the same fit by an independent route: sklearn's log_loss over T, bounded search
    ref = minimize_scalar(
        lambda lt: log_loss(y, cal.scaled(p, math.exp(lt)), labels=range(3)),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    assert best <= log_loss(y, cal.scaled(p, math.exp(ref.x)), labels=range(3)) + 1e-6


def test_a_minimum_at_a_bound_is_the_bound():
    """Hypothesis found it: every label of class 0, predicted at 1% or at a third, so
    the NLL keeps falling as T grows; Brent's search alone stopped a step inside."""
    row = np.array([0.01, 1.0, 0.01])
    p = np.vstack([np.tile(row / row.sum(), (3, 1)), np.full((37, 3), 1 / 3)])
    y = np.zeros(40, dtype=int)
    t = cal.fit_temperature(p, y)
    assert t == pytest.approx(cal.T_BOUNDS[1])
    at_bound = cal.scaled_nll(cal.logits(p), y, cal.T_BOUNDS[1])
    assert cal.scaled_nll(cal.logits(p), y, t) <= at_bound


def test_fit_is_deterministic_and_stable_with_zero_probabilities():
    p, y = _random_set(3)
    p[:, 3] = 0.0  # a class nobody predicts: log 0 = −inf must not break the search
    p /= p.sum(axis=1, keepdims=True)
    y = np.minimum(y, 2)
    t1, t2 = cal.fit_temperature(p, y), cal.fit_temperature(p.copy(), y.copy())
    assert t1 == t2 and math.isfinite(t1)
    assert np.allclose(cal.scaled(p, t1)[:, 3], 0.0)


def test_padding_with_zero_classes_changes_nothing():
    p, y = _random_set(4, k=3)
    wide = stack([list(r) + [0.0, 0.0] for r in p])
    assert cal.fit_temperature(wide, y) == pytest.approx(cal.fit_temperature(p, y), rel=1e-6)
    assert cal.nll(cal.scaled(wide, 1.7), y) == pytest.approx(cal.nll(cal.scaled(p, 1.7), y))


def _simulated(sharpen, n=6000):
    sim = Simulator(seed=7, flag_rate=0.0, sharpen=sharpen)
    docs = [d for _, batch, _ in sim._batches(n) for d in batch]
    probs = np.array([d["probs"] for d in docs], dtype=np.float64)
    labels = np.array([int(d["label"]) for d in docs])
    return probs, labels, [d["id"] for d in docs]


def test_over_confident_model_gets_t_above_one_that_helps_on_held_out_labels():
    probs, labels, ids = _simulated(sharpen=0.2)  # the committee, sharpened
    r = assess(probs, labels, ids, min_labels=200)
    assert r["temperature"] > 1.5
    assert r["accepted"]
    assert r["nll_after"] < r["nll_before"] and r["ece_after"] < r["ece"]
    assert all(t > 1.5 for t in r["temperatures_folds"]) and len(r["temperatures_folds"]) == 5


def test_well_calibrated_model_keeps_t_near_one():
    # the digits committee averages regularised members: it is under-confident as
    # trained; published at softmax(log p / 0.5) it is calibrated (measured: T ≈ 0.98)
    probs, labels, ids = _simulated(sharpen=0.5)
    r = assess(probs, labels, ids, min_labels=200)
    assert 0.85 < r["temperature"] < 1.15
    assert r["ece"] < 0.03
    # a fitted T near 1 barely moves held-out NLL either way
    assert abs(r["nll_after"] - r["nll_before"]) < 0.01


def test_held_out_numbers_never_use_the_items_fitted_on():
    probs, labels, ids = _simulated(sharpen=0.2, n=2000)
    folds = np.arange(len(ids)) % 5
    fit = cal.cross_fit(probs, labels, folds)
    expect = np.concatenate(
        [
            cal.item_nll(
                cal.scaled(
                    probs[folds == k], cal.fit_temperature(probs[folds != k], labels[folds != k])
                ),
                labels[folds == k],
            )
            for k in range(5)
        ]
    ).mean()
    assert fit.nll_after == pytest.approx(expect)


def test_too_few_labels_or_a_worse_fit_is_not_accepted():
    probs, labels, ids = _simulated(sharpen=0.2, n=150)
    r = assess(probs, labels, ids, min_labels=200)
    assert r["temperature"] > 1 and not r["accepted"] and not r["ece_warning"]
    # the temperature in use is already the fitted one: refitting cannot beat it held out
    big = _simulated(sharpen=0.2, n=4000)
    t = assess(*big, min_labels=200)["temperature"]
    again = assess(*big, current_temperature=t, min_labels=200)
    assert not again["accepted"]
    assert again["current"]["nll"] <= again["nll_after"]


def test_ece_warning_needs_enough_labels_and_an_ece_over_threshold():
    probs, labels, ids = _simulated(sharpen=1.0, n=600)  # under-confident: ECE ≈ 0.08
    r = assess(probs, labels, ids, min_labels=200, ece_warning=0.05)
    assert r["current"]["ece"] > 0.05 and r["ece_warning"]
    fixed = assess(probs, labels, ids, current_temperature=r["temperature"], ece_warning=0.05)
    assert fixed["current"]["ece"] < 0.05 and not fixed["ece_warning"]
