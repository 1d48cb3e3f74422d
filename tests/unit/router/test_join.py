"""The label join and the windows fed by it, without a broker."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hitl_router.router.config import parse_config
from hitl_router.router.decision import Policy, decide_batch
from hitl_router.router.join import AGREEMENT_KEY, decision_record, join_label, joined_key
from hitl_router.router.label_window import AgreementWindow, EvalWindows, agreement
from hitl_router.router.labels import Label

POLICY = Policy(
    parse_config(
        {
            "eval_sample": {"rate": 0.5, "salt": "s"},
            "queues": [{"name": "low", "when": {"max_prob_below": 0.99}}],
            "calibration": {"temperatures": {"m": 2.0}},
        }
    )
)


def _record(i=0):
    raws = [
        b'{"id":"p%d","model":"m@3","probs":[0.2,0.7,0.1],"classes":["a","b","c"],"ts":5}' % k
        for k in range(40)
    ]
    batch = decide_batch(raws, POLICY)
    return batch, decision_record(batch, i, now=100.0)


def test_the_record_holds_what_the_join_needs():
    batch, rec = _record()
    assert rec["model"] == "m@3" and rec["probs"] == [0.2, 0.7, 0.1]
    assert rec["temperature"] == 2.0 and rec["pred"] == 1
    assert rec["fate"] == batch.fate_name(0) and rec["ts"] == 5
    assert rec["scores"]["max_prob"] == pytest.approx(batch.scores["max_prob"][0])
    if rec["fate"] == "review":
        assert rec["queue"] == "low"


def _entry(fate="review"):
    _, rec = _record()
    return {"d": {**rec, "fate": fate, "queue": "low" if fate == "review" else None}}


def test_first_label_joins_relabel_replaces_second_annotator_pairs():
    first = join_label(_entry(), Label("p0", "c", "ann", "review"), now=101, retention_s=60)
    assert first.joined["y"] == 2 and first.joined["model_wrong"] and first.entry["first"] == "ann"
    again = join_label(first.entry, Label("p0", "b", "ann", "review"), now=102, retention_s=60)
    assert again.joined["y"] == 1 and not again.joined["model_wrong"] and again.pair is None
    other = join_label(again.entry, Label("p0", 0, "qa", "review"), now=103, retention_s=60)
    assert other.joined is None
    assert (other.pair["first"], other.pair["second"]) == (1, 0)
    assert other.pair["first_annotator"] == "ann" and other.pair["queue"] == "low"
    assert joined_key(other.pair) == AGREEMENT_KEY and joined_key(first.joined) == "m"


def test_a_label_read_again_changes_nothing_a_later_one_replaces():
    """At-least-once: a label read again after a failover (same partition, offset at or
    before the annotator's last joined one) is recognised; a newer one replaces."""
    ann = Label("p0", "c", "ann", "review")
    first = join_label(_entry(), ann, now=101, retention_s=60, at=(2, 40))
    assert first.entry["at"] == {"ann": [2, 40]}
    again = join_label(first.entry, ann, now=102, retention_s=60, at=(2, 40))
    assert again.redelivered and again.entry is None and again.joined is None
    older = join_label(
        first.entry, Label("p0", "a", "ann", "review"), now=102, retention_s=60, at=(2, 39)
    )
    assert older.redelivered
    newer = join_label(
        first.entry, Label("p0", "b", "ann", "review"), now=102, retention_s=60, at=(2, 41)
    )
    assert not newer.redelivered and newer.joined["y"] == 1 and newer.entry["at"]["ann"] == [2, 41]
    # another annotator at an earlier offset is not a re-read; nor is a label on another
    # partition (a mis-keyed label's re-sent copy)
    qa = join_label(newer.entry, Label("p0", 0, "qa", "review"), now=103, retention_s=60, at=(2, 5))
    assert not qa.redelivered and qa.pair["second"] == 0
    moved = join_label(first.entry, ann, now=103, retention_s=60, at=(0, 1))
    assert not moved.redelivered and moved.entry["at"]["ann"] == [0, 1]


@pytest.mark.parametrize(
    ("entry", "label", "now", "code"),
    [
        (None, Label("p0", "a", "x", "review"), 101, "unknown_id"),
        ("review", Label("p0", "a", "x", "review"), 100 + 61, "unknown_id"),
        ("review", Label("p0", "d", "x", "review"), 101, "unknown_class"),
        ("review", Label("p0", 3, "x", "review"), 101, "unknown_class"),
        ("review", Label("p0", "a", "x", "eval"), 101, "source_mismatch"),
        ("eval", Label("p0", "a", "x", "review"), 101, "source_mismatch"),
    ],
)
def test_labels_that_cannot_join_get_a_code(entry, label, now, code):
    out = join_label(entry and _entry(entry), label, now=now, retention_s=60)
    assert out.error.code == code and out.entry is None and out.joined is None
    assert out.expired == (now > 160)


def test_eval_windows_keep_the_last_labels_per_model_and_replace_in_place():
    w = EvalWindows(size=3)
    assert w.add("m@1", "a", [0.9, 0.1], 0) == []
    w.add("m@2", "b", [0.6, 0.4], 1)
    w.add("m@1", "a", [0.9, 0.1], 1)  # relabel: same place, new class
    assert w.add("m@2", "c", [0.3, 0.7], 1) == []
    assert w.add("other", "z", [0.5, 0.5], 0) == []  # windows are per model
    assert w.add("m@2", "d", [0.2, 0.8], 1) == ["a"]
    probs, y, ids = w.arrays("m")
    assert ids == ["b", "c", "d"] and y.tolist() == [1, 1, 1] and probs.shape == (3, 2)
    assert w.keys("m@9") == ["m", "m@2"] and w.arrays("m@1")[2] == []


def _kappa_by_hand(a, b):
    a, b = np.array(a), np.array(b)
    classes = np.union1d(a, b)
    po = np.mean(a == b)
    pe = sum(np.mean(a == c) * np.mean(b == c) for c in classes)
    return (po - pe) / (1 - pe)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_agreement_and_kappa_equal_the_textbook_formulas(pairs):
    r = agreement(pairs)
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    assert r["n"] == len(pairs)
    assert r["agreement"] == pytest.approx(np.mean(np.array(a) == np.array(b)))
    assert r["lower"] <= r["agreement"] + 1e-4 and r["agreement"] <= r["upper"] + 1e-4
    if len(set(a) | set(b)) == 1:
        assert r["kappa"] is None
    elif r["kappa"] is not None:
        assert r["kappa"] == pytest.approx(_kappa_by_hand(a, b), abs=1e-6)


def test_agreement_window_groups_by_queue_annotator_and_source():
    w = AgreementWindow(size=3)
    base = {"kind": "pair", "model": "m", "first_annotator": "ann"}
    w.add(
        {
            **base,
            "id": "1",
            "annotator": "qa",
            "source": "review",
            "queue": "low",
            "first": 0,
            "second": 0,
        }
    )
    w.add(
        {
            **base,
            "id": "2",
            "annotator": "qa",
            "source": "review",
            "queue": "low",
            "first": 0,
            "second": 1,
        }
    )
    w.add(
        {
            **base,
            "id": "2",
            "annotator": "qa",
            "source": "review",
            "queue": "low",
            "first": 0,
            "second": 0,
        }
    )  # the QA annotator changed their mind: replaced
    w.add(
        {
            **base,
            "id": "3",
            "annotator": "bob",
            "source": "eval",
            "queue": None,
            "first": 2,
            "second": 1,
        }
    )
    r = w.report()
    assert r["queue"]["low"]["n"] == 2 and r["queue"]["low"]["agreement"] == 1.0
    assert r["source"]["eval"]["agreement"] == 0.0 and r["source"]["review"]["n"] == 2
    assert r["annotator"]["ann"]["n"] == 3 and r["annotator"]["bob"]["n"] == 1
    assert w.add(
        {
            **base,
            "id": "4",
            "annotator": "x",
            "source": "eval",
            "queue": None,
            "first": 1,
            "second": 1,
        }
    ) == [("1", "qa")]
