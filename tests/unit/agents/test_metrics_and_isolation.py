"""Metrics read back from a fresh registry; one poisoned message cannot stop a batch."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
from prometheus_client import CollectorRegistry

from hitl_router.agents import app as agent_app
from hitl_router.agents.batching import Batch
from hitl_router.metrics import RouterMetrics
from hitl_router.router import decision
from hitl_router.router.config import parse_config
from hitl_router.router.decision import Policy, decide_batch
from hitl_router.router.outputs import Source, router_outputs

POLICY = Policy(
    parse_config(
        {
            "eval_sample": {"rate": 0.0},
            "queues": [
                {"name": "low", "when": {"any": [{"max_prob_below": 0.7}, {"flags_any": ["pii"]}]}}
            ],
        }
    )
)


def raw(pid, p, **kw):
    return orjson.dumps({"id": pid, "model": kw.pop("model", "m"), "probs": p, **kw})


def test_router_metrics_count_fates_rules_and_codes():
    reg = CollectorRegistry()
    metrics = RouterMetrics(reg, max_models=1)
    raws = [
        raw("a", [0.6, 0.4]),
        raw("b", [0.9, 0.1]),
        raw("c", [0.5, 0.5], flags=["pii"]),
        raw("d", [0.9, 0.1], model="other-model"),
        b"{",
        b'{"id":"e"}',
    ]
    batch = decide_batch(raws, POLICY)
    metrics.observe_router(batch, [100.0] * len(raws), now=100.02)
    get = reg.get_sample_value
    assert get("hitl_predictions_total", {"model": "m"}) == 3
    assert get("hitl_predictions_total", {"model": "other"}) == 1  # label cardinality bound
    assert get("hitl_decisions_total", {"model": "m", "fate": "review", "queue": "low"}) == 2
    assert get("hitl_decisions_total", {"model": "m", "fate": "pass", "queue": ""}) == 1
    assert get("hitl_decisions_total", {"model": "", "fate": "deadletter", "queue": ""}) == 2
    assert get("hitl_rule_fired_total", {"queue": "low", "rule": "max_prob_below"}) == 2
    assert get("hitl_rule_fired_total", {"queue": "low", "rule": "flags_any"}) == 1
    assert get("hitl_deadletter_total", {"code": "not_json"}) == 1
    assert get("hitl_deadletter_total", {"code": "missing_field"}) == 1
    assert get("hitl_decision_latency_seconds_count") == 6
    assert get("hitl_decision_latency_seconds_bucket", {"le": "0.025"}) == 6
    assert get("hitl_decision_latency_seconds_bucket", {"le": "0.01"}) == 0


def test_router_decision_counts_match_a_row_by_row_count():
    """Over a mixed batch (several models, some over the label bound, eval draws,
    several queues, dead letters), the counters hold what counting each row gives."""
    import random
    from collections import Counter

    policy = Policy(
        parse_config(
            {
                "eval_sample": {"rate": 0.2, "salt": "x"},
                "queues": [
                    {"name": "flagged", "when": {"flags_any": ["pii"]}},
                    {"name": "low", "when": {"max_prob_below": 0.7}},
                    {"name": "close", "when": {"margin_below": 0.3}},
                ],
            }
        )
    )
    rng = random.Random(7)
    raws = []
    for i in range(600):
        top = rng.uniform(0.5, 1.0)
        kw = {"flags": ["pii"]} if rng.random() < 0.05 else {}
        raws.append(raw(f"r{i}", [top, 1 - top], model=rng.choice("abcde"), **kw))
        if rng.random() < 0.03:
            raws.append(b"not json")
    batch = decide_batch(raws, policy)
    reg = CollectorRegistry()
    metrics = RouterMetrics(reg, max_models=3)
    metrics.observe_router(batch, [1.0] * len(raws), now=1.0)
    expected, predictions = Counter(), Counter()
    for i, doc in enumerate(batch.docs):
        if doc is None:
            expected["", "deadletter", ""] += 1
            continue
        model = metrics.model_label(doc["model"])
        predictions[model] += 1
        if batch.fate_name(i) != "eval":
            expected[model, batch.fate_name(i), batch.queue_name(i) or ""] += 1
    assert len(predictions) == 4 and set(f for _, f, _ in expected) == {
        "deadletter",
        "review",
        "pass",
    }
    got = {
        (s.labels["model"], s.labels["fate"], s.labels["queue"]): s.value
        for family in reg.collect()
        if family.name == "hitl_decisions"
        for s in family.samples
        if s.name == "hitl_decisions_total"
    }
    assert got == expected
    for model, n in predictions.items():
        assert reg.get_sample_value("hitl_predictions_total", {"model": model}) == n


def test_sampler_metrics_count_eval_only():
    reg = CollectorRegistry()
    metrics = RouterMetrics(reg)
    pol = Policy(parse_config({"eval_sample": {"rate": 1.0}}))
    metrics.observe_sampler(decide_batch([raw("a", [0.6, 0.4]), b"x"], pol, rules=False))
    assert (
        reg.get_sample_value("hitl_decisions_total", {"model": "m", "fate": "eval", "queue": ""})
        == 1
    )


def test_a_message_that_crashes_the_router_is_dead_lettered_alone(monkeypatch):
    real = decision.decide_batch

    def buggy(raws, policy, rules=True):
        if any(b"boom" in r for r in raws):
            raise RuntimeError("boom")
        return real(raws, policy, rules=rules)

    def buggy_parse(raws, limits):
        if any(b"boom" in r for r in raws):
            raise RuntimeError("boom")
        return real_parse(raws, limits)

    real_parse = agent_app.parse_batch
    monkeypatch.setattr(agent_app, "parse_batch", buggy_parse)
    monkeypatch.setattr(agent_app, "decide_batch", buggy)
    reg = CollectorRegistry()
    metrics = RouterMetrics(reg)
    raws = [raw("a", [0.6, 0.4]), raw("boom", [0.9, 0.1]), raw("c", [0.9, 0.1])]
    shared = Batch([SimpleNamespace(value=r) for r in raws], n_agents=2)
    batch = agent_app._decide(shared, POLICY, metrics, "router", rules=True)
    # the sampler reuses the router's decision instead of deciding again
    assert agent_app._decide(shared, POLICY, metrics, "sampler", rules=False) is batch
    assert [batch.fate_name(i) for i in range(3)] == ["review", "deadletter", "pass"]
    assert batch.errors[1].code == "internal_error" and "boom" in batch.errors[1].message
    assert reg.get_sample_value("hitl_agent_errors_total", {"agent": "router"}) == 1
    sources = [Source("predictions", 0, i) for i in range(3)]
    outs = router_outputs(batch, raws, sources, now=1.0)
    letters = [orjson.loads(o.value) for o in outs if o.topic == "predictions.deadletter"]
    assert len(letters) == 1 and letters[0]["id"] == "boom"
    assert letters[0]["source"] == {"topic": "predictions", "partition": 0, "offset": 1}
    assert [o.topic for o in outs if o.topic == "review.low"] == ["review.low"]
