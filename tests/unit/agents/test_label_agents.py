"""The label loop's adapters without a broker: the calibration feed, the metrics'
ownership, the access the agents need, and the decision records the router sends."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry

from hitl_router.agents.access import read_topics, written_topics
from hitl_router.agents.calibration_feed import apply
from hitl_router.feedback_metrics import FeedbackMetrics
from hitl_router.router.config import parse_config
from hitl_router.router.decision import EVAL, REVIEW, Policy, decide_batch
from hitl_router.router.join import decision_outputs
from hitl_router.router.temperatures import TemperatureBook

CFG = parse_config(
    {
        "eval_sample": {"rate": 0.5, "salt": "s"},
        "queues": [{"name": "low", "when": {"max_prob_below": 0.99}}],
        "calibration": {"temperatures": {"m": 2.0}},
    }
)


def _feedback():
    reg = CollectorRegistry()
    return reg, FeedbackMetrics(reg, model_label=str)


def test_the_feed_applies_the_newest_temperature_and_a_tombstone_forgets_it():
    reg, fb = _feedback()
    book = TemperatureBook(CFG.calibration)
    apply(b"m@1", orjson.dumps({"model": "m@1", "temperature": 1.7}), book, fb)
    assert book.temperature("m@1") == 1.7 and book.temperature("m@2") == 2.0
    assert reg.get_sample_value("hitl_calibration_temperature", {"model": "m@1"}) == 1.7
    apply(b"m@1", orjson.dumps({"temperature": 0.9}), book, fb)
    assert book.temperature("m@1") == 0.9
    apply(b"m@1", None, book, fb)  # compaction's tombstone
    assert book.temperature("m@1") == 2.0
    assert reg.get_sample_value("hitl_calibration_temperature", {"model": "m@1"}) == 2.0


def test_the_feed_ignores_unusable_messages():
    _, fb = _feedback()
    book = TemperatureBook(CFG.calibration)
    version = book.version
    for value in (
        b"not json",
        b"[1]",
        b'{"temperature": -1}',
        b'{"temperature": "hot"}',
        b'{"temperature": true}',
        b'{"x": 1}',
    ):
        apply(b"m", value, book, fb)
    apply(None, b'{"temperature": 3}', book, fb)
    assert book.version == version and book.temperature("m") == 2.0


def test_a_routed_batch_uses_the_books_temperature_at_once():
    policy = Policy(CFG)
    raw = [b'{"id":"a","model":"m@1","probs":[0.995,0.005]}']
    assert decide_batch(raw, policy).temperature_of(0) == 2.0
    policy.temperatures.update("m@1", 0.5)
    assert decide_batch(raw, policy).temperature_of(0) == 0.5


def test_window_gauges_are_removed_when_another_worker_owns_the_model():
    reg, fb = _feedback()
    report = {
        "n": 3,
        "accuracy": 1.0,
        "accuracy_lower": 0.4,
        "accuracy_upper": 1.0,
        "recall": {"a": 1.0},
        "ece": 0.1,
        "ece_equal_mass": 0.1,
        "brier": 0.2,
        "nll_before": 0.3,
        "ece_warning": True,
        "current": {"ece": 0.05, "ece_equal_mass": 0.05, "brier": 0.1, "nll": 0.2},
    }
    fb.observe_window("m", report)
    assert reg.get_sample_value("hitl_eval_labels", {"model": "m"}) == 3
    assert reg.get_sample_value("hitl_ece_warning", {"model": "m"}) == 1
    fb.forget_window("m")
    assert reg.get_sample_value("hitl_eval_labels", {"model": "m"}) is None
    assert reg.get_sample_value("hitl_eval_recall", {"model": "m", "cls": "a"}) is None


def test_agents_ask_for_the_access_they_use():
    t = CFG.topics
    assert t.decisions in written_topics(CFG, ["router"])
    assert t.decisions in written_topics(CFG, ["sampler"])
    labels = written_topics(CFG, ["labels"])
    assert {t.labels_deadletter, t.qa, t.joined, t.calibration, t.labels} <= set(labels)
    assert t.calibration in read_topics(CFG, ["router"])
    assert set(read_topics(CFG, ["labels"])) == {t.decisions, t.labels, t.joined, t.calibration}


def test_decision_records_cover_the_eval_and_review_rows_and_respect_the_size_limit():
    raws = [b'{"id":"p%d","model":"m","probs":[0.6,0.4]}' % i for i in range(50)]
    batch = decide_batch(raws, Policy(CFG))
    ev = decision_outputs(batch, EVAL, "d", 1.0, 10_000)
    rv = decision_outputs(batch, REVIEW, "d", 1.0, 10_000)
    assert {o.key.decode() for o in ev} == {batch.docs[i]["id"] for i in batch.rows(EVAL)}
    assert {o.key.decode() for o in rv} == {batch.docs[i]["id"] for i in batch.rows(REVIEW)}
    assert all(orjson.loads(o.value)["fate"] == "eval" for o in ev)
    assert decision_outputs(batch, REVIEW, "d", 1.0, 50) == []
