"""The loop's arithmetic: labels to reach, the paired comparison, verdicts, costs and the
warning signs, on hand-made checkpoints (no model)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hitl_router.evaluation.curves import (
    labels_help,
    labels_to_reach,
    paired_difference,
    seed_warnings,
    summarize,
    t_interval,
)

GRID = [0, 10, 20, 30]


def cp(labels: int, acc: float, **kw: Any) -> dict[str, Any]:
    base = {
        "labels": labels,
        "stream_pos": labels * 4,
        "accuracy": acc,
        "ece": 0.05,
        "recall": [acc, acc],
        "wrong_labels": 0,
        "gained": 0,
        "lost": 0,
        "selected_entropy": 0.69,
        "stream_entropy": 0.69,
    }
    return {**base, **kw}


def seed_result(curves: dict[str, list[float]], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": 0, "strategies": {}}
    for name, accs in curves.items():
        cps = [cp(g, a) for g, a in zip(GRID, accs, strict=False)]
        out["strategies"][name] = {
            "checkpoints": cps,
            "spent": {name: cps[-1]["labels"]},
            "refits": len(cps) - 1,
            "bought_rows": [],
        }
    return out


def with_gain(result: dict[str, Any], gained: int, lost: int) -> dict[str, Any]:
    last = result["strategies"]["random"]["checkpoints"][-1]
    last["gained"], last["lost"] = gained, lost
    return result


def test_labels_to_reach_interpolates_and_stops_at_a_gap() -> None:
    assert labels_to_reach(GRID, np.array([0.5, 0.6, 0.8, 0.9]), 0.7) == 15.0
    assert labels_to_reach(GRID, np.array([0.75, 0.6, 0.8, 0.9]), 0.7) == 0.0
    assert labels_to_reach(GRID, np.array([0.5, 0.6, 0.65, 0.69]), 0.7) is None
    assert labels_to_reach(GRID, np.array([0.5, 0.6, np.nan, 0.9]), 0.7) is None


def test_t_interval_matches_scipy_and_needs_two_values() -> None:
    from scipy import stats

    v = np.array([1.0, 2.0, 4.0, 7.0])
    mean, lo, hi = t_interval(v)
    ref = stats.t.interval(0.95, 3, loc=v.mean(), scale=stats.sem(v))
    assert mean == 3.5 and lo == pytest.approx(ref[0]) and hi == pytest.approx(ref[1])
    assert math.isnan(t_interval(np.array([1.0]))[1])


def test_paired_difference_skips_the_seed_model_and_missing_points() -> None:
    acc = np.array([[0.5, 0.7, 0.8, np.nan], [0.5, 0.6, 0.6, 0.7]])
    base = np.array([[0.9, 0.6, 0.7, 0.8], [0.1, 0.6, 0.7, 0.8]])
    np.testing.assert_allclose(paired_difference(acc, base), [10.0, -20.0 / 3])


def test_labels_help_is_mcnemar_pooled_over_seeds() -> None:
    few = [with_gain(seed_result({"random": [0.5]}), 6, 4)]
    assert labels_help(few)[0] is False
    many = [with_gain(seed_result({"random": [0.5]}), 30, 10) for _ in range(2)]
    ok, p = labels_help(many)
    assert ok and p < 0.001
    assert labels_help([with_gain(seed_result({"random": [0.5]}), 0, 0)]) == (False, 1.0)


def summary_of(results: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return summarize(results, GRID, 10, kw.get("costs", {}), kw.get("label", 1.0), 0.0)


def test_a_strategy_ahead_on_every_seed_pays_and_its_saving_counts_the_seed_set() -> None:
    results = [
        with_gain(
            seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.7 + d, 0.8, 0.85]}),
            40,
            5,
        )
        for d in (0.0, 0.01, 0.02)
    ]
    s = summary_of(results)
    mine = s["strategies"]["config"]
    assert mine["verdict"] == "pays"
    # random's final 0.8 is reached at 20 bought + 10 seed = 30 of 40 labels
    assert mine["labels_to_reach_random_final"] == 30.0 and mine["saving"] == 0.25
    assert mine["vs_random_points"]["low"] > 0
    assert s["labels_help"]["verdict"] is True


def test_noise_between_seeds_does_not_pay() -> None:
    results = [
        with_gain(
            seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.6 + d, 0.7 + d, 0.8]}),
            40,
            5,
        )
        for d in (0.05, -0.05, 0.02, -0.03)
    ]
    mine = summary_of(results)["strategies"]["config"]
    assert mine["verdict"] == "does not pay" and "within the seeds' noise" in mine["why"]


def test_behind_random_does_not_pay() -> None:
    results = [
        with_gain(
            seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.55, 0.6 + d, 0.7]}),
            40,
            5,
        )
        for d in (0.0, 0.01, 0.02)
    ]
    mine = summary_of(results)["strategies"]["config"]
    assert mine["verdict"] == "does not pay" and "random sampling is ahead" in mine["why"]
    assert mine["labels_to_reach_random_final"] is None and mine["saving"] is None


def test_when_labels_do_not_help_nothing_pays_and_no_saving_is_claimed() -> None:
    results = [
        with_gain(
            seed_result({"random": [0.5, 0.5, 0.49, 0.5], "config": [0.5, 0.6, 0.6, 0.6]}), 5, 5
        )
        for _ in range(3)
    ]
    s = summary_of(results)
    mine = s["strategies"]["config"]
    assert s["labels_help"]["verdict"] is False
    assert mine["verdict"] == "does not pay" and "labels do not improve" in mine["why"]
    assert mine["saving"] is None


def test_one_seed_gives_no_verdict() -> None:
    results = [
        with_gain(
            seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.9, 0.9, 0.9]}), 9, 0
        )
    ]
    assert summary_of(results)["strategies"]["config"]["verdict"] == "unknown"


def test_cost_per_point_uses_queue_costs_and_refits() -> None:
    result = with_gain(
        seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.6, 0.7, 0.9]}), 9, 0
    )
    result["strategies"]["config"]["spent"] = {"uncertain": 20, "flagged": 10}
    s = summarize([result], GRID, 10, {"flagged": 5.0}, 2.0, 1.5)
    cost = s["strategies"]["config"]["cost"]
    # 20 × 2.0 + 10 × 5.0 = 90 for labels, 3 refits × 1.5; gain 40 points
    assert cost["label_cost"] == 90.0 and cost["retrain_cost"] == 4.5
    assert cost["gain_points"] == pytest.approx(40.0) and cost["per_point"] == pytest.approx(
        94.5 / 40
    )
    flat = seed_result({"random": [0.5, 0.5, 0.5, 0.5]})
    assert (
        summarize([flat], GRID, 10, {}, 1.0, 0.0)["strategies"]["random"]["cost"]["per_point"]
        is None
    )


def signs(result: dict[str, Any], name: str = "config") -> dict[str, dict[str, Any]]:
    return {s["sign"]: s for s in seed_warnings(result)[name]}


def test_no_warning_sign_on_a_healthy_loop() -> None:
    result = seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.7, 0.8, 0.85]})
    assert signs(result) == {} and signs(result, "random") == {}


def test_random_ahead_fires_after_three_checkpoints_in_a_row() -> None:
    result = seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.59, 0.69, 0.79]})
    assert signs(result)["random_ahead"]["labels"] == 30
    result = seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.59, 0.71, 0.79]})
    assert "random_ahead" not in signs(result)


def test_recall_diverging_needs_a_wide_and_widening_spread() -> None:
    result = seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.7, 0.8, 0.85]})
    cps = result["strategies"]["config"]["checkpoints"]
    cps[1]["recall"] = [0.9, 0.7]  # spread 0.2
    cps[2]["recall"] = [0.95, 0.6]  # 0.35: over 0.3, and 0.35 wider than the start
    assert signs(result)["recall_diverging"] == {
        "sign": "recall_diverging",
        "labels": 20,
        "value": 0.35,
    }
    for c in cps:
        c["recall"] = [1.0, 0.6]  # wide from the start, never widening
    assert "recall_diverging" not in signs(result)


def test_ece_concentration_and_noisier_labels() -> None:
    result = seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.7, 0.8, 0.85]})
    mine = result["strategies"]["config"]["checkpoints"]
    mine[0]["ece"] = 0.3  # the seed model's ECE is not the strategy's
    assert "ece_high" not in signs(result)
    mine[2]["ece"] = 0.11
    mine[1]["selected_entropy"] = 0.2  # 10 labels: too few to judge
    mine[3]["selected_entropy"] = 0.3  # under half the stream's 0.69, at 30 labels
    for c in result["strategies"]["random"]["checkpoints"]:
        c["wrong_labels"] = c["labels"] // 10
    mine[3]["wrong_labels"] = 15  # 15 of 30 against 3 of 30: the intervals part
    fired = signs(result)
    assert fired["ece_high"]["labels"] == 20 and fired["ece_high"]["value"] == 0.11
    assert "concentrated" not in fired  # 30 labels < MIN_CONCENTRATION_LABELS
    assert fired["labels_noisier"]["labels"] == 30
    for c in result["strategies"]["config"]["checkpoints"]:
        c["labels"] *= 2
    for c in result["strategies"]["random"]["checkpoints"]:
        c["labels"] *= 2
    assert signs(result)["concentrated"]["labels"] == 60


def test_a_strategy_that_hardly_buys_does_not_pay_and_one_that_runs_out_says_so() -> None:
    results = [
        with_gain(seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5]}), 40, 5)
        for _ in range(3)
    ]
    mine = summary_of(results)["strategies"]["config"]
    assert mine["verdict"] == "does not pay" and "fewer than 10 labels" in mine["why"]
    results = [
        with_gain(seed_result({"random": [0.5, 0.6, 0.7, 0.8], "config": [0.5, 0.7, 0.75]}), 40, 5)
        for _ in range(3)
    ]
    mine = summary_of(results)["strategies"]["config"]
    assert mine["final"] is None and "ran out of stream" in mine["why"]
