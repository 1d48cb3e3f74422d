"""Target-rate rules: the sliding window is exact, the rate holds through a shift in
confidence, errors name the key, reasons and the gauge show the threshold in force."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from hitl_router.errors import ConfigError
from hitl_router.metrics import RouterMetrics
from hitl_router.router.config import parse_config
from hitl_router.router.decision import REVIEW, Policy, decide_batch
from hitl_router.router.outputs import review_item
from hitl_router.router.target_rate import SlidingQuantile


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 50),
    batches=st.lists(
        st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), max_size=80), max_size=12
    ),
    q=st.floats(0, 1),
)
def test_the_window_holds_the_last_values_and_their_exact_quantile(size, batches, q):
    window, seen = SlidingQuantile(size), []
    for batch in batches:
        window.update(np.array(batch, dtype=float))
        seen += [v for v in batch if v == v]
        assert window.values().tolist() == seen[-size:]
        want = np.quantile(seen[-size:], q) if seen else np.nan
        assert window.quantile(q) == pytest.approx(want, nan_ok=True)


def _config(rule: dict, **extra) -> dict:
    return {"eval_sample": {"rate": 0.0}, "queues": [{"name": "u", "when": rule, **extra}]}


def _stream(rng: np.random.Generator, n: int, confident: float) -> list[bytes]:
    """Two-class predictions whose max_prob is 0.5 + Beta(confident, 1)/2: higher
    ``confident``, more confident."""
    top = 0.5 + rng.beta(confident, 1.0, n) / 2
    return [
        orjson.dumps({"id": f"x{confident}-{i}", "model": "m", "probs": [p, 1 - p]})
        for i, p in enumerate(top.tolist())
    ]


def test_the_rate_holds_through_a_shift_where_a_fixed_threshold_floods():
    rng = np.random.default_rng(7)
    calm, shifted = _stream(rng, 20_000, 6.0), _stream(rng, 20_000, 1.5)
    target = Policy(
        parse_config(_config({"max_prob_below": {"target_rate": 0.05, "window": 2000}}))
    )
    fixed = Policy(parse_config(_config({"max_prob_below": 0.75})))
    shares: dict[str, list[float]] = {"target": [], "fixed": []}
    for name, policy in (("target", target), ("fixed", fixed)):
        for part in (calm, shifted):
            routed = 0
            for k in range(0, len(part), 500):
                routed += len(decide_batch(part[k : k + 500], policy).rows(REVIEW))
            shares[name].append(routed / len(part))
    # within ±20% (relative) of 5%, before and after the shift (the window lags 2,000)
    assert all(0.04 <= s <= 0.06 for s in shares["target"]), shares
    # the fixed threshold, tuned on the calm stream, floods after it
    assert shares["fixed"][1] > 4 * shares["fixed"][0], shares


def test_above_routes_the_top_share_and_not_negates():
    rng = np.random.default_rng(1)
    raws = _stream(rng, 10_000, 2.0)
    for rule, want in [
        ({"entropy_above": {"target_rate": 0.1, "window": 1000}}, 0.1),
        ({"not": {"max_prob_below": {"target_rate": 0.2, "window": 1000}}}, 0.8),
    ]:
        policy = Policy(parse_config(_config(rule)))
        routed = sum(
            len(decide_batch(raws[k : k + 500], policy).rows(REVIEW)) for k in range(0, 10_000, 500)
        )
        assert routed / 10_000 == pytest.approx(want, rel=0.1), rule


def test_reasons_and_the_gauge_show_the_threshold_in_force():
    config = parse_config(_config({"max_prob_below": {"target_rate": 0.25, "window": 100}}))
    policy = Policy(config)
    rng = np.random.default_rng(2)
    raws = _stream(rng, 80, 3.0)
    batch = decide_batch(raws, policy)
    max_prob = batch.scores["max_prob"]
    threshold = float(np.quantile(max_prob, 0.25))  # the first batch is judged on itself
    assert batch.rows(REVIEW) == np.flatnonzero(max_prob < threshold).tolist()
    reason = review_item(batch, batch.rows(REVIEW)[0], 1.0)["reasons"][0]
    assert reason["op"] == "<" and reason["threshold"] == pytest.approx(threshold)
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry, 10, ())
    metrics.observe_router(batch, [0.0] * batch.n, 1.0)
    gauge = registry.get_sample_value(
        "hitl_rule_threshold", {"queue": "u", "rule": "max_prob_below"}
    )
    assert gauge == pytest.approx(threshold)
    assert policy.live_thresholds() == [("u", "max_prob_below", pytest.approx(threshold))]


@pytest.mark.parametrize(
    ("rule", "key", "problem"),
    [
        (
            {"max_prob_below": {"target_rate": 0}},
            "queues[0].when.max_prob_below.target_rate",
            "(0, 1)",
        ),
        (
            {"max_prob_below": {"target_rate": 1.5}},
            "queues[0].when.max_prob_below.target_rate",
            "(0, 1)",
        ),
        ({"margin_below": {"window": 500}}, "queues[0].when.margin_below.target_rate", "(0, 1)"),
        (
            {"margin_below": {"target_rate": 0.1, "window": 10}},
            "queues[0].when.margin_below.window",
            "from 100",
        ),
        (
            {"margin_below": {"target_rate": 0.1, "rate": 1}},
            "queues[0].when.margin_below.rate",
            "unknown key",
        ),
        ({"margin_below": "low"}, "queues[0].when.margin_below", "a number or {target_rate"),
    ],
)
def test_bad_target_rates_name_the_key(rule, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(_config(rule))
    assert err.value.key == key and problem in str(err.value)


def test_each_leaf_keeps_its_own_window():
    rule = {
        "any": [{"max_prob_below": {"target_rate": 0.1}}, {"max_prob_below": {"target_rate": 0.1}}]
    }
    policy = Policy(parse_config(_config(rule)))
    a, b = (t for _, _, t, _ in policy.targets)
    assert a is not b and a != b
