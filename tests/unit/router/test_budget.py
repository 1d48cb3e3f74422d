"""Budgets: within ±10% of the budget through a 10× burst, holding the items an offline
oracle (the top-N priorities of each period) holds; shared over workers; the items
dropped pass with their reason, counted."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from hitl_router.errors import ConfigError
from hitl_router.metrics import RouterMetrics
from hitl_router.router.budget import BudgetSpec, BudgetState
from hitl_router.router.config import parse_config
from hitl_router.router.decision import PASS, REVIEW, Policy, decide_batch
from hitl_router.router.outputs import replay_record, router_outputs
from hitl_router.router.partitioning import partitions_of

RATES = [100] * 4 + [1000] * 3 + [100] * 3  # candidates per minute: a 10× burst
BUDGET = 150


def _stream(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    times = np.concatenate(
        [np.sort(rng.uniform(m * 60, (m + 1) * 60, r)) for m, r in enumerate(RATES)]
    )
    return times + 1.8e9, rng.random(len(times))


def _per_minute(times: np.ndarray, keep: np.ndarray, priority: np.ndarray):
    minute = np.floor(times / 60).astype(int)
    for m in np.unique(minute).tolist():
        rows = minute == m
        oracle = np.zeros(rows.sum(), dtype=bool)
        oracle[np.argsort(-priority[rows], kind="stable")[:BUDGET]] = True
        kept = keep[rows]
        yield int(rows.sum()), int(kept.sum()), (kept & oracle).sum() / oracle.sum()


@pytest.mark.parametrize("batch", [1, 20, 500])
def test_a_burst_stays_within_budget_and_keeps_what_the_oracle_keeps(batch):
    times, priority = _stream(1)
    state = BudgetState(BudgetSpec(BUDGET, 60.0))
    keep = np.concatenate(
        [
            state.admit(times[k : k + batch], priority[k : k + batch])
            for k in range(0, len(times), batch)
        ]
    )
    for arrived, kept, overlap in _per_minute(times, keep, priority):
        assert kept <= BUDGET
        if arrived <= BUDGET:
            assert kept >= 0.9 * arrived, (arrived, kept)  # calm: (nearly) everything
        else:
            assert kept >= 0.9 * BUDGET, (arrived, kept)  # the burst: the whole budget
            assert overlap >= 0.75, (arrived, kept, overlap)  # and mostly the oracle's top
    assert state.dropped == len(times) - keep.sum()


def test_two_workers_each_with_half_the_partitions_spend_the_budget_together():
    times, priority = _stream(2)
    ids = [f"p{i}".encode() for i in range(len(times))]
    partition = partitions_of(ids, 6)
    keep = np.zeros(len(times), dtype=bool)
    for held in ({0, 1, 2}, {3, 4, 5}):
        mine = np.isin(partition, list(held))
        state = BudgetState(BudgetSpec(BUDGET, 60.0), share=len(held) / 6)
        rows = np.flatnonzero(mine)
        for k in range(0, len(rows), 50):
            part = rows[k : k + 50]
            keep[part] = state.admit(times[part], priority[part])
    for arrived, kept, _ in _per_minute(times, keep, priority):
        if arrived > BUDGET:
            assert 0.9 * BUDGET <= kept <= BUDGET, (arrived, kept)


def test_a_fetch_of_several_partitions_is_taken_in_time_order():
    times, priority = _stream(3)
    spec = BudgetSpec(BUDGET, 60.0)
    mixed_state, sorted_state = BudgetState(spec), BudgetState(spec)
    for k in range(0, len(times), 200):
        rows = np.arange(k, min(k + 200, len(times)))
        mixed = np.r_[rows[::2], rows[1::2]]  # two partitions, one after the other
        kept_mixed = mixed[mixed_state.admit(times[mixed], priority[mixed])]
        kept_sorted = rows[sorted_state.admit(times[rows], priority[rows])]
        assert sorted(kept_mixed.tolist()) == kept_sorted.tolist()


def test_a_late_item_counts_in_the_current_period():
    state = BudgetState(BudgetSpec(1, 60.0))
    assert state.admit(np.array([130.0]), np.array([0.5])).tolist() == [True]
    assert state.admit(np.array([10.0]), np.array([0.9])).tolist() == [False]  # minute 2's


def _msg(i: int, ts: float, p: float) -> bytes:
    return orjson.dumps({"id": f"b{i}", "model": "m", "probs": [p, 1 - p], "ts": ts})


def test_the_queue_keeps_the_most_uncertain_and_the_rest_pass_with_their_reason():
    config = parse_config(
        {
            "eval_sample": {"rate": 0.0},
            "topics": {"accepted": "accepted"},
            "queues": [
                {
                    "name": "u",
                    "when": {"max_prob_below": 0.9},
                    "budget": {"items": 3, "per": "hour"},
                }
            ],
        }
    )
    assert config.describe()["queues"][0]["budget"] == {"items": 3, "per": "hour", "window": 2000}
    policy = Policy(config)
    probs = [0.6, 0.85, 0.55, 0.7, 0.95, 0.8, 0.52]
    batch = decide_batch([_msg(i, 3600.0 * 500 + i, p) for i, p in enumerate(probs)], policy)
    assert batch.rows(REVIEW) == [0, 2, 6]  # the three most uncertain (priority 1 - max_prob)
    dropped = [i for i in range(len(probs)) if batch.dropped[i] >= 0]
    assert dropped == [1, 3, 5] and all(batch.fate[i] == PASS for i in dropped)
    outputs = {
        o.key.decode(): orjson.loads(o.value) for o in router_outputs(batch, batch.raws, None, 1.0)
    }
    assert outputs["b3"]["dropped"] == {"queue": "u", "reason": "budget"}
    why = replay_record(batch, 3)["dropped"]  # replay's line: with the rules that fired
    assert why["queue"] == "u" and why["reason"] == "budget"
    assert why["reasons"][0]["rule"] == "max_prob_below" and why["reasons"][0]["value"] == 0.7
    assert "dropped" not in outputs["b4"]  # matched nothing
    registry = CollectorRegistry()
    RouterMetrics(registry, 10, ()).observe_router(batch, [0.0] * batch.n, 1.0)
    value = registry.get_sample_value
    assert value("hitl_budget_dropped_total", {"queue": "u"}) == 3
    assert value("hitl_budget_used", {"queue": "u"}) == 3
    assert value("hitl_budget_quota", {"queue": "u"}) == 3
    policy.set_budget_share(0.5)
    assert policy.budgets[0].quota == 1.5


@pytest.mark.parametrize(
    ("budget", "key", "problem"),
    [
        ({"items": 0}, "queues[0].budget.items", "positive integer"),
        ({"items": 5, "per": "day"}, "queues[0].budget.per", "minute or hour"),
        ({"items": 5, "every": 1}, "queues[0].budget.every", "unknown key"),
        ({"items": 5, "window": 5}, "queues[0].budget.window", "from 10"),
        (100, "queues[0].budget", "expected {items"),
    ],
)
def test_bad_budgets_name_the_key(budget, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config({"queues": [{"name": "q", "when": {"max_prob_below": 0.9}, "budget": budget}]})
    assert err.value.key == key and problem in str(err.value)
