"""The decision path: first-match semantics, reasons, eval exclusivity, and a
fate that depends on nothing but the message (not order, not batch)."""

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitl_router.router.config import parse_config
from hitl_router.router.decision import Policy, decide_batch
from hitl_router.router.rules import BatchContext, evaluate, parse_rule

QUEUES = [
    {"name": "flagged", "when": {"flags_any": ["pii", "user_report"]}},
    {"name": "disagreement", "when": {"ensemble_kl_above": 0.05}},
    {"name": "uncertain", "when": {"any": [{"max_prob_below": 0.7}, {"margin_below": 0.1}]}},
    {
        "name": "not_model_x",
        "when": {"not": {"any": [{"model_in": ["x"]}, {"max_prob_above": 0.95}]}},
    },
]


def policy(rate=0.0, queues=QUEUES, **extra):
    return Policy(
        parse_config({"eval_sample": {"rate": rate, "salt": "t"}, "queues": queues, **extra})
    )


def msg(pid, probs, **kw):
    return orjson.dumps({"id": pid, "model": kw.pop("model", "m@1"), "probs": probs, **kw})


def reference_scores(probs):
    p = sorted(probs, reverse=True)
    return {"max_prob": p[0], "margin": p[0] - p[1]}


def test_first_matching_queue_wins_and_all_fired_rules_are_reasons():
    pol = policy()
    d = decide_batch([msg("a", [0.52, 0.48], flags=["pii"])], pol)
    assert d.fate_name(0) == "review" and d.queue_name(0) == "flagged"
    reasons = d.reasons(0)
    by_queue = {}
    for r in reasons:
        by_queue.setdefault(r["queue"], []).append(r)
    # flagged fired on its flag, uncertain on both leaves, not_model_x on both negations
    assert [r["rule"] for r in by_queue["flagged"]] == ["flags_any"]
    assert by_queue["flagged"][0]["value"] == ["pii"]
    assert {r["rule"] for r in by_queue["uncertain"]} == {"max_prob_below", "margin_below"}
    mp = next(r for r in by_queue["uncertain"] if r["rule"] == "max_prob_below")
    assert mp == {
        "queue": "uncertain",
        "rule": "max_prob_below",
        "metric": "max_prob",
        "value": 0.52,
        "op": "<",
        "threshold": 0.7,
    }
    assert {(r["rule"], r["op"]) for r in by_queue["not_model_x"]} == {
        ("not:model_in", "not_in"),
        ("not:max_prob_above", "<="),
    }
    assert "disagreement" not in by_queue  # no ensemble: its score is absent


def test_only_contributing_branches_of_any_are_reasons():
    pol = policy(
        queues=[{"name": "u", "when": {"any": [{"max_prob_below": 0.7}, {"margin_below": 0.1}]}}]
    )
    d = decide_batch([msg("a", [0.6, 0.3, 0.1])], pol)  # margin 0.3 does not fire
    assert [r["rule"] for r in d.reasons(0)] == ["max_prob_below"]


def test_ensemble_disagreement_and_missing_ensemble():
    pol = policy(queues=[QUEUES[1], {"name": "calm", "when": {"not": {"bald_above": 0.05}}}])
    split = msg("s", [0.5, 0.5], ensemble=[[0.9, 0.1], [0.1, 0.9]])
    agree = msg("a", [0.5, 0.5], ensemble=[[0.5, 0.5], [0.5, 0.5]])
    none = msg("n", [0.5, 0.5])
    d = decide_batch([split, agree, none], pol)
    assert [d.queue_name(i) for i in range(3)] == ["disagreement", "calm", "calm"]
    assert math.isnan(d.scores["ensemble_kl"][2])
    assert "ensemble_kl" not in d.score_dict(2) and "ensemble_kl" in d.score_dict(0)
    assert d.reasons(2)[0]["value"] is None  # not(bald > t) holds where bald is absent


def test_eval_items_never_enter_review_and_rate_holds():
    pol = policy(rate=0.3)
    raws = [msg(f"id-{i}", [0.5, 0.5], flags=["pii"]) for i in range(4000)]
    d = decide_batch(raws, pol)
    fates = [d.fate_name(i) for i in range(d.n)]
    assert set(fates) == {"eval", "review"}  # everything would be reviewed, but for eval
    assert np.all(d.queue[d.fate == 1] == -1)
    n_eval = fates.count("eval")
    assert abs(n_eval - 1200) < 4 * math.sqrt(4000 * 0.3 * 0.7)
    sampled = pol.sampler.draw([f"id-{i}" for i in range(4000)])
    assert [f == "eval" for f in fates] == sampled.tolist()


def test_eval_sample_is_independent_of_confidence():
    pol = policy(rate=0.2)
    rng = np.random.default_rng(0)
    top = rng.uniform(0.5, 1.0, 20000)
    raws = [msg(f"q{i}", [float(t), float(1 - t)]) for i, t in enumerate(top)]
    d = decide_batch(raws, pol)
    is_eval = d.fate == 1
    from scipy import stats

    assert stats.ks_2samp(top[is_eval], top[~is_eval]).pvalue > 1e-3


def test_temperature_applies_before_thresholds():
    queues = [{"name": "u", "when": {"max_prob_below": 0.7}}]
    raw = [msg("a", [0.75, 0.25], model="m@2")]
    assert decide_batch(raw, policy(queues=queues)).fate_name(0) == "pass"
    hot = policy(queues=queues, calibration={"temperatures": {"m": 3.0}})
    d = decide_batch(raw, hot)
    assert d.fate_name(0) == "review" and d.temperature[0] == 3.0
    assert d.scores["max_prob"][0] < 0.7


def test_each_row_gets_its_models_temperature():
    """Versioned names fall back to the bare name; unknown models keep T = 1; rows of
    several models and shapes mixed in one batch each get their own."""
    temps = {"a": 2.0, "a@3": 0.5, "b": 4.0}
    hot = policy(calibration={"temperatures": temps})
    models = ["a@1", "a@3", "c", "b@9", "a", "a@3", "c@2", "b"]
    raw = [
        msg(f"r{i}", [0.6, 0.4] if i % 2 else [0.5, 0.3, 0.2], model=m)
        for i, m in enumerate(models)
    ]
    d = decide_batch(raw, hot)
    assert d.temperature.tolist() == [2.0, 0.5, 1.0, 4.0, 2.0, 0.5, 1.0, 4.0]
    # a row's temperature and scores are what it gets alone
    for i, r in enumerate(raw):
        alone = decide_batch([r], hot)
        assert alone.temperature[0] == d.temperature[i]
        assert alone.scores["max_prob"][0] == d.scores["max_prob"][i]


def test_invalid_messages_do_not_disturb_the_batch():
    pol = policy(queues=QUEUES[:3])
    good = msg("g", [0.9, 0.1])
    raws = [b"\xff", good, b"[]", msg("bad", [0.9, 0.2]), good]
    d = decide_batch(raws, pol)
    assert [d.fate_name(i) for i in range(5)] == [
        "deadletter",
        "pass",
        "deadletter",
        "deadletter",
        "pass",
    ]
    assert {i: e.code for i, e in d.errors.items()} == {
        0: "not_utf8",
        2: "not_object",
        3: "prob_sum",
    }


# ---- properties -------------------------------------------------------------------


def _message():
    probs = (
        st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5)
        .filter(lambda p: sum(p) > 1e-3)
        .map(lambda p: [round(x / sum(p), 6) for x in p])
    )
    return st.builds(
        lambda pid, p, flags, model, ens: (pid, p, flags, model, ens),
        st.text(min_size=1, max_size=8),
        probs,
        st.lists(st.sampled_from(["pii", "user_report", "blur"]), max_size=2),
        st.sampled_from(["x", "x@2", "y"]),
        st.booleans(),
    )


def _raw(m):
    pid, p, flags, model, ens = m
    doc = {"id": pid, "model": model, "probs": p, "flags": flags}
    if ens:
        doc["ensemble"] = [p, p[::-1]]
    return orjson.dumps(doc)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(_message(), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_fate_is_independent_of_order_and_batch(messages, rnd):
    pol = policy(rate=0.25)
    raws = [_raw(m) for m in messages]
    whole = decide_batch(raws, pol)
    expected = [(whole.fate_name(i), whole.queue_name(i)) for i in range(whole.n)]
    order = list(range(len(raws)))
    rnd.shuffle(order)
    shuffled = decide_batch([raws[i] for i in order], pol)
    got = {order[j]: (shuffled.fate_name(j), shuffled.queue_name(j)) for j in range(len(order))}
    assert [got[i] for i in range(len(raws))] == expected
    singles = [decide_batch([r], pol) for r in raws]
    assert [(s.fate_name(0), s.queue_name(0)) for s in singles] == expected
    for i in range(whole.n):
        assert whole.reasons(i) == singles[i].reasons(0)


def _holds(rule, doc):
    """A per-message reference evaluator of the grammar, written independently."""
    if len(rule) > 1:
        return all(_holds({k: v}, doc) for k, v in rule.items())
    ((key, value),) = rule.items()
    if key == "any":
        return any(_holds(r, doc) for r in value)
    if key == "all":
        return all(_holds(r, doc) for r in value)
    if key == "not":
        return not _holds(value, doc)
    if key == "flags_any":
        return bool(set(value) & set(doc.get("flags", [])))
    if key == "flags_all":
        return set(value) <= set(doc.get("flags", []))
    if key == "model_in":
        return doc["model"] in value or doc["model"].split("@")[0] in value
    s = reference_scores(doc["probs"])
    name, _, op = key.rpartition("_")
    return s[name] < value if op == "below" else s[name] > value


_leaf = st.one_of(
    st.builds(lambda t: {"max_prob_below": t}, st.floats(0.3, 1.0)),
    st.builds(lambda t: {"margin_above": t}, st.floats(0.0, 0.9)),
    st.builds(
        lambda f: {"flags_any": f},
        st.lists(st.sampled_from(["pii", "blur"]), min_size=1, max_size=2),
    ),
    st.builds(
        lambda f: {"flags_all": f},
        st.lists(st.sampled_from(["pii", "blur"]), min_size=1, max_size=2),
    ),
    st.builds(
        lambda m: {"model_in": m},
        st.lists(st.sampled_from(["x", "y@1", "x@2"]), min_size=1, max_size=2),
    ),
)
_rule = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(lambda rs: {"any": rs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda rs: {"all": rs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda r: {"not": r}, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=120, derandomize=True, deadline=None)
@given(st.lists(_rule, min_size=1, max_size=3), st.lists(_message(), min_size=1, max_size=25))
def test_first_match_semantics_against_a_reference(rules, messages):
    queues = [{"name": f"q{i}", "when": r} for i, r in enumerate(rules)]
    pol = policy(queues=queues)
    raws = [_raw(m) for m in messages]
    d = decide_batch(raws, pol)
    for i, raw in enumerate(raws):
        doc = orjson.loads(raw)
        first = next((f"q{j}" for j, r in enumerate(rules) if _holds(r, doc)), None)
        assert d.queue_name(i) == first
        assert d.fate_name(i) == ("review" if first else "pass")
        fired_queues = {r["queue"] for r in d.reasons(i)}
        assert fired_queues == {f"q{j}" for j, r in enumerate(rules) if _holds(r, doc)}


def test_rule_node_values_are_memoised():
    node = parse_rule({"all": [{"max_prob_below": 0.9}, {"not": {"flags_any": ["a"]}}]}, "w")
    ctx = BatchContext(
        scores={"max_prob": np.array([0.5, 0.5])}, flags=[["a"], []], models=["m", "m"]
    )
    memo: dict = {}
    assert evaluate(node, ctx, memo).tolist() == [False, True]
    assert len(memo) == 3


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_batch_shapes(n):
    d = decide_batch([msg(str(i), [0.2, 0.8]) for i in range(n)], policy())
    assert d.n == n and d.fate.shape == (n,) and d.matched.shape == (len(QUEUES), n)
