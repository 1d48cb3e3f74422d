"""Per-item priority: config forms, errors that name the key, values per queue, the
review item's field and header."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from hitl_router.errors import ConfigError
from hitl_router.router.config import parse_config
from hitl_router.router.decision import REVIEW, Policy, decide_batch
from hitl_router.router.outputs import router_outputs
from hitl_router.router.priority import DEFAULT_PRIORITY, PrioritySpec, parse_priority, priorities


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        (3, PrioritySpec(3.0)),
        (-0.5, PrioritySpec(-0.5)),
        ("entropy", PrioritySpec(0.0, (("entropy", 1.0),))),
        ({"const": 1, "margin": -1}, PrioritySpec(1.0, (("margin", -1.0),))),
        (
            {"entropy": 1, "ensemble_kl": 2.5},
            PrioritySpec(0.0, (("entropy", 1.0), ("ensemble_kl", 2.5))),
        ),
    ],
)
def test_config_forms(value, spec):
    parsed = parse_priority(value, "p")
    assert parsed == spec
    assert parse_priority(parsed.describe(), "p") == spec  # check-config prints what parses


@pytest.mark.parametrize(
    ("value", "key", "problem"),
    [
        (True, "queues[0].priority", "a number, a score name or a mapping"),
        ("confidence", "queues[0].priority", "unknown score 'confidence'"),
        ({"entropy": "high"}, "queues[0].priority.entropy", "expected a number"),
        ({"probs": 1}, "queues[0].priority.probs", "unknown score 'probs'"),
        ({}, "queues[0].priority", "a mapping of scores to weights"),
        (float("nan"), "queues[0].priority", "finite"),
    ],
)
def test_bad_priorities_name_the_key(value, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"queues": [{"name": "q", "when": {"max_prob_below": 0.9}, "priority": value}]}
        )
    assert err.value.key == key and problem in str(err.value)


def test_weighted_sum_equals_a_loop_and_a_missing_score_counts_zero():
    rng = np.random.default_rng(3)
    scores = {"entropy": rng.random(50), "ensemble_kl": rng.random(50)}
    scores["ensemble_kl"][::7] = np.nan  # no ensemble
    spec = PrioritySpec(0.25, (("entropy", 2.0), ("ensemble_kl", -1.5)))
    want = [
        0.25 + 2.0 * e + (0.0 if np.isnan(k) else -1.5 * k)
        for e, k in zip(scores["entropy"], scores["ensemble_kl"], strict=True)
    ]
    assert priorities(spec, scores).tolist() == pytest.approx(want)
    assert priorities(PrioritySpec(4.0), {}, 3).tolist() == [4.0, 4.0, 4.0]


def _msg(i: int, p: float) -> bytes:
    return orjson.dumps(
        {"id": f"m{i}", "model": "m", "probs": [p, 1 - p], "flags": ["pii"] if i % 2 else []}
    )


def test_each_queue_gives_its_items_its_priority_in_the_item_and_its_header():
    config = parse_config(
        {
            "eval_sample": {"rate": 0.0},
            "queues": [
                {"name": "flagged", "when": {"flags_any": ["pii"]}, "priority": 10},
                {"name": "uncertain", "when": {"max_prob_below": 0.8}},  # default
            ],
        }
    )
    assert config.queues[1].priority == DEFAULT_PRIORITY
    probs = [0.55, 0.6, 0.7, 0.75, 0.9, 0.95]
    batch = decide_batch([_msg(i, p) for i, p in enumerate(probs)], Policy(config))
    review = batch.rows(REVIEW)
    assert [batch.queue_name(i) for i in review] == [
        "uncertain",
        "flagged",
        "uncertain",
        "flagged",
        "flagged",
    ]
    assert np.isnan(batch.priority[4])  # passed: no priority
    outputs = {o.key.decode(): o for o in router_outputs(batch, batch.raws, None, 1.0)}
    for i in review:
        out = outputs[f"m{i}"]
        item = orjson.loads(out.value)
        max_prob = batch.scores["max_prob"][i]
        want = 10.0 if i % 2 else 1.0 - max_prob
        assert item["priority"] == pytest.approx(want)
        assert out.headers == (("priority", repr(item["priority"]).encode()),)
        assert float(out.headers[0][1]) == item["priority"]
    shown = [q["priority"] for q in config.describe()["queues"]]  # check-config
    assert shown == [10.0, {"const": 1.0, "max_prob": -1.0}]
