"""The closed loop on real scikit-learn models: what each strategy may select, what it
is measured on, the annotators, the drift, and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from hitl_router.demo import default_config_text
from hitl_router.evaluation.loop import Settings, _Stream, run_seed
from hitl_router.evaluation.strategies import NAMES
from hitl_router.evaluation.tasks import load_task
from hitl_router.model import Committee
from hitl_router.router.config import parse_config

DEMO = parse_config(yaml.safe_load(default_config_text()))
SMALL = Settings(budget=60, rounds=20, seeds=1)


@pytest.fixture(scope="module")
def small_run() -> dict:
    return run_seed(DEMO, SMALL, 0)


def test_the_held_out_set_is_disjoint_from_every_selected_item(small_run: dict) -> None:
    task = load_task("digits", 0)
    hold = set(small_run["holdout_rows"])
    pool = set(task.pool_rows.tolist())
    assert hold == set(task.holdout_rows.tolist()) and not hold & pool
    assert len(hold) + len(pool) == len(task.y)
    assert not hold & set(small_run["seed_rows"])
    assert set(small_run["strategies"]) == set(NAMES)
    for name, run in small_run["strategies"].items():
        bought = run["bought_rows"]
        assert len(bought) == SMALL.budget, name  # each spends the whole budget
        assert len(set(bought)) == len(bought), name  # no item bought twice
        assert not hold & set(bought), name
        assert set(bought) <= pool - set(small_run["seed_rows"]), name
        assert sum(run["spent"].values()) == SMALL.budget
        assert [c["labels"] for c in run["checkpoints"]] == SMALL.grid()


def test_strategies_differ_in_what_they_buy_not_in_where_they_start(small_run: dict) -> None:
    runs = small_run["strategies"]
    starts = {r["checkpoints"][0]["accuracy"] for r in runs.values()}
    assert len(starts) == 1  # one seed model, one held-out set: a paired comparison
    bought = {name: frozenset(r["bought_rows"]) for name, r in runs.items()}
    assert len(set(bought.values())) == len(bought)
    # the config's queues and the single scores route by the router's rules
    assert set(runs["config"]["spent"]) <= {"flagged", "disagreement", "uncertain"}
    assert runs["random"]["spent"] == {"random": SMALL.budget}
    assert runs["margin"]["spent"] == {"margin": SMALL.budget}


def test_uncertainty_buys_what_the_model_gets_wrong(small_run: dict) -> None:
    """The items margin sampling buys are wrong far more often than random ones: routing
    does what it says, on the real committee."""
    task = load_task("digits", 0)
    runs = small_run["strategies"]
    seed_model = Committee.fit(
        task.X[small_run["seed_rows"]],
        task.y[small_run["seed_rows"]],
        task.k,
        np.random.default_rng(0),
        scale=task.scale,
    )

    def error_rate(rows: list[int]) -> float:
        probs, _ = seed_model.predict_batch(task.X[rows])
        return float(np.mean(probs.argmax(axis=1) != task.y[rows]))

    first = slice(0, SMALL.rounds)  # bought by the seed model itself (30 labels)
    margin = error_rate(runs["margin"]["bought_rows"][first])
    assert margin > 0.85 and margin > error_rate(runs["random"]["bought_rows"][first]) + 0.25


def test_a_seed_is_deterministic(small_run: dict) -> None:
    assert run_seed(DEMO, SMALL, 0) == small_run
    assert run_seed(DEMO, SMALL, 1)["holdout_rows"] != small_run["holdout_rows"]


def test_annotators_err_at_the_rate_asked_and_more_on_hard_items() -> None:
    task = load_task("digits", 0)
    stream = _Stream(task, Settings(label_error=0.2, seed_size=30), 0)
    n = len(stream.wrong)
    share = stream.wrong.mean()
    assert abs(share - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n)
    truth = task.y[stream.rows]
    assert np.array_equal(stream.answers == truth, ~stream.wrong)
    hard = task.difficulty[stream.rows] > np.median(task.difficulty[stream.rows])
    assert stream.wrong[hard].mean() > 2 * stream.wrong[~hard].mean()
    clean = _Stream(task, Settings(seed_size=30), 0)
    assert not clean.wrong.any() and np.array_equal(clean.answers, truth)


def test_drift_changes_the_stream_from_its_position_and_the_held_out_share() -> None:
    task = load_task("digits", 0)
    clean = _Stream(task, Settings(), 0)
    drifted = _Stream(task, Settings(drift_at=400), 0)
    assert np.array_equal(drifted.X[:400], clean.X[:400])
    assert (np.abs(drifted.X[400:] - clean.X[400:]).sum(axis=1) > 0).all()
    changed = (np.abs(drifted.hold_X - clean.hold_X).sum(axis=1) > 0).mean()
    share = (len(clean) - 400) / len(clean)
    assert abs(changed - share) < 4 * np.sqrt(share * (1 - share) / len(clean.hold_X))
    assert np.array_equal(drifted.hold_y, clean.hold_y)


def test_committee_fills_classes_a_member_never_saw() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.repeat([0, 1, 3], 20)  # class 2 of 4 never labelled
    X[y == 1] += 3
    X[y == 3] -= 3
    c = Committee.fit(X, y, 4, rng, members=3)
    probs, members = c.predict_batch(X)
    assert members.shape == (3, 60, 4) and (probs[:, 2] == 0).all()
    for m, out in zip(c.members, members, strict=True):
        np.testing.assert_allclose(out[:, m.classes_], m.predict_proba(X), atol=1e-9)
    binary = Committee([LogisticRegression().fit(X[:40], y[:40])] * 2, 2)
    np.testing.assert_allclose(
        binary.predict_batch(X)[0], binary.members[0].predict_proba(X), atol=1e-9
    )
    with pytest.raises(ValueError, match="2 classes"):
        Committee.fit(X[:20], y[:20], 4, rng)
