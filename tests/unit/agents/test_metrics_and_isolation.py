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
