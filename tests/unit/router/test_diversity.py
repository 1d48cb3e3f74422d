"""The diversity cap holds over any stream of keys; a queue capped on the predicted class
takes no class over its share, passes the rest with the reason; the class-mix entropies
equal scipy's."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from scipy.stats import entropy

from hitl_router.errors import ConfigError
from hitl_router.metrics import RouterMetrics
from hitl_router.router.config import parse_config
from hitl_router.router.decision import REVIEW, Policy, decide_batch
from hitl_router.router.diversity import ClassMix, DiversityCap, DiversitySpec
from hitl_router.router.outputs import replay_record


@settings(max_examples=80, deadline=None)
@given(
    keys=st.lists(st.integers(0, 4), max_size=300),
    share=st.floats(0.1, 1.0),
    window=st.integers(2, 40),
)
def test_no_key_ever_holds_more_than_its_share_of_the_window(keys, share, window):
    cap = DiversityCap(DiversitySpec(share, window))
    taken: list[int] = []
    for k in keys:
        if cap.admit(k):
            taken.append(k)
            last = taken[-window:]
            # a key's first item is always taken, even when the cap is below one item
            assert last.count(k) <= max(1, share * window)
    assert cap.dropped == len(keys) - len(taken)
    assert list(cap.window) == taken[-window:]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=50), max_size=10), st.integers(1, 60))
def test_the_class_mix_entropy_is_scipys_over_the_last_items(batches, size):
    mix, seen = ClassMix(size), []
    for b in batches:
        mix.add(np.array(b))
        seen += b
    last = seen[-size:]
    if not last:
        assert np.isnan(mix.entropy())
    else:
        assert mix.entropy() == pytest.approx(entropy(np.bincount(last)))


def _msg(i: int, cls: int, p: float = 0.6, **extra) -> bytes:
    probs = [(1 - p) / 2] * 3
    probs[cls] = p
    doc = {"id": f"d{i}", "model": "m", "probs": probs, "classes": ["a", "b", "c"], **extra}
    return orjson.dumps(doc)


def test_a_queue_capped_on_the_class_takes_none_over_its_share():
    config = parse_config(
        {
            "eval_sample": {"rate": 0.0},
            "queues": [
                {
                    "name": "u",
                    "when": {"max_prob_below": 0.9},
                    "diversity": {"max_share": 0.5, "window": 10},
                }
            ],
        }
    )
    policy = Policy(config)
    # the stream is 80% class a: uncapped, the queue would be too
    classes = [0, 0, 0, 0, 1, 0, 0, 0, 0, 2] * 6
    batch = decide_batch([_msg(i, c) for i, c in enumerate(classes)], policy)
    taken = [classes[i] for i in batch.rows(REVIEW)]
    for end in range(1, len(taken) + 1):
        window = taken[max(0, end - 10) : end]
        assert window.count(0) <= 5
    capped = [i for i in range(len(classes)) if batch.dropped[i] >= 0]
    assert capped and all(classes[i] == 0 for i in capped)
    rec = replay_record(batch, capped[0])
    assert rec["fate"] == "pass" and rec["dropped"]["reason"] == "diversity"
    registry = CollectorRegistry()
    RouterMetrics(registry, 10, ()).observe_router(batch, [0.0] * batch.n, 1.0)
    value = registry.get_sample_value
    assert value("hitl_diversity_dropped_total", {"queue": "u"}) == len(capped)
    stream = value("hitl_class_entropy", {"queue": ""})
    queue = value("hitl_class_entropy", {"queue": "u"})
    assert stream == pytest.approx(entropy(np.bincount(classes)))
    assert queue == pytest.approx(entropy(np.bincount(taken)))
    assert queue > stream  # the cap spread the queue over the classes


def test_a_feature_key_in_buckets():
    spec = (
        parse_config(
            {
                "queues": [
                    {
                        "name": "u",
                        "when": {"max_prob_below": 0.9},
                        "diversity": {
                            "key": {"feature": "brightness", "bucket": 0.25},
                            "max_share": 0.4,
                        },
                    }
                ]
            }
        )
        .queues[0]
        .diversity
    )
    docs = [{"features": {"brightness": v}} for v in (0.1, 0.2, 0.3, 0.9)] + [
        {},
        {"features": {"brightness": "x"}},
    ]
    assert spec.keys(docs, [0] * 6) == [0, 0, 1, 3, None, "x"]
    assert spec.describe() == {
        "key": {"feature": "brightness", "bucket": 0.25},
        "max_share": 0.4,
        "window": 500,
    }


@pytest.mark.parametrize(
    ("diversity", "key", "problem"),
    [
        ({"max_share": 0}, "queues[0].diversity.max_share", "(0, 1]"),
        ({"max_share": 0.3, "window": 1}, "queues[0].diversity.window", "from 2"),
        ({"max_share": 0.3, "key": "embedding"}, "queues[0].diversity.key", "pred_class or"),
        (
            {"max_share": 0.3, "key": {"feature": "x", "bucket": -1}},
            "queues[0].diversity.key.bucket",
            "positive",
        ),
        ({"max_share": 0.3, "cap": 1}, "queues[0].diversity.cap", "unknown key"),
    ],
)
def test_bad_diversity_names_the_key(diversity, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"queues": [{"name": "q", "when": {"max_prob_below": 0.9}, "diversity": diversity}]}
        )
    assert err.value.key == key and problem in str(err.value)
