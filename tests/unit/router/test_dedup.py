"""Dedup (WIP, issue #11): a prediction published three times is routed once; again
after the retention; the bounds hold; replay and the live path share the code."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from hitl_router.agents.preflight import TopicFacts, copartition_problem
from hitl_router.errors import ConfigError
from hitl_router.metrics import RouterMetrics
from hitl_router.router.config import parse_config
from hitl_router.router.decision import DUPLICATE, PASS, REVIEW, Policy, decide_batch, merge_batches
from hitl_router.router.dedup import DedupSpec, RoutedIds
from hitl_router.router.outputs import replay_record


def _msg(pid: str, ts: float, p: float = 0.6) -> bytes:
    return orjson.dumps({"id": pid, "model": "m", "probs": [p, 1 - p], "ts": ts})


def _policy(**dedup) -> Policy:
    config = parse_config(
        {
            "eval_sample": {"rate": 0.0},
            "queues": [{"name": "u", "when": {"max_prob_below": 0.9}}],
            "dedup": {"retention_s": 60, **dedup},
        }
    )
    return Policy(config)


def test_published_three_times_routed_once_across_batches():
    policy = _policy()
    first = decide_batch([_msg("a", 0.0), _msg("a", 1.0), _msg("b", 1.0)], policy)
    assert first.rows(REVIEW) == [0, 2] and first.fate[1] == PASS
    assert replay_record(first, 1)["dropped"]["reason"] == "duplicate"
    again = decide_batch([_msg("a", 5.0), _msg("c", 5.0)], policy)
    assert again.rows(REVIEW) == [1]
    later = decide_batch([_msg("a", 100.0)], policy)  # past the retention: routed again
    assert later.rows(REVIEW) == [0]
    assert [c[1:] for c in first.routed_changes] == [("a", 0.0), ("b", 1.0)]
    registry = CollectorRegistry()
    RouterMetrics(registry, 10, ()).observe_router(first, [0.0] * first.n, 1.0)
    assert registry.get_sample_value("hitl_duplicates_total", {"queue": "u"}) == 1


def test_predictions_on_a_topic_of_another_partition_count_stop_the_start():
    config = parse_config({"kafka": {"partitions": 6}, "dedup": {}})
    problem = copartition_problem(config, {"predictions": TopicFacts(3, 2**20)})
    assert problem.key == "kafka.partitions" and "dedup" in str(problem)
    assert (
        copartition_problem(
            parse_config({"kafka": {"partitions": 6}}), {"predictions": TopicFacts(3, 2**20)}
        )
        is None
    )


def test_the_count_bound_pushes_the_oldest_out():
    routed = RoutedIds(DedupSpec(retention_s=1e9, max_ids=4), partitions=2)
    gone = [routed.record(f"i{k}", float(k), 0) for k in range(4)]
    assert gone == [[], [], ["i0"], ["i1"]]
    assert routed.seen(["i1", "i2", "i3"], [9.0] * 3, [0, 0, 0]).tolist() == [False, True, True]
    assert routed.seen(["i3"], [9.0], [1]).tolist() == [False]  # another partition's


@pytest.mark.parametrize(
    ("dedup", "key"),
    [
        ({"retention_s": 0}, "dedup.retention_s"),
        ({"max_ids": 0}, "dedup.max_ids"),
        ({"ttl": 1}, "dedup.ttl"),
    ],
)
def test_bad_dedup_names_the_key(dedup, key):
    with pytest.raises(ConfigError) as err:
        parse_config({"dedup": dedup})
    assert err.value.key == key


def test_batches_decided_one_by_one_keep_their_dedup_changes():
    """The router's fallback (a batch that raised is decided message by message, then
    merged) must hand the live table every id it routed."""
    policy = _policy()
    parts = [decide_batch([_msg(pid, 0.0)], policy) for pid in ("a", "b", "a")]
    merged = merge_batches(policy, parts)
    assert [c[1] for c in merged.routed_changes] == ["a", "b"]
    assert merged.rows(REVIEW) == [0, 1] and merged.drop_reason.tolist() == [0, 0, DUPLICATE]
