"""The benchmark's anchors (issue #15) decide like the router, without a broker.

The confluent-kafka loop and the Quix Streams app run ``bench.anchor_rules.decide`` per
message (the Quix app through ``bench.quix_app.routed``, importable without quixstreams);
their fates on simulated predictions, malformed ones included, must be ``replay``'s, and
they write the router's decision record of every eval and review item.
"""

from __future__ import annotations

import doctest
import pickle
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import agreement, anchor_rules, confluent_loop, quix_app, report
from bench.contenders import Setup, _router_config, records_topic
from hitl_router.router.config import parse_config
from hitl_router.router.decision import EVAL, REVIEW, Policy, decide_batch
from hitl_router.router.join import decision_record
from hitl_router.simulate import Simulator

N = 600


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    setup = Setup(
        bootstrap="127.0.0.1:1",
        input_topic="in",
        messages=[],
        keys=[],
        partitions=6,
        tag="t",
        tmp=Path("/nonexistent"),
        admin=None,  # type: ignore[arg-type]
        timeout=1.0,
        broker_pid=None,
    )
    return _router_config(setup, "unit", None)


@pytest.fixture(scope="module")
def messages() -> list[bytes]:
    # more flags and malformed messages than the benchmark's workload, for every fate
    sim = Simulator(seed=7, flag_rate=0.05, malformed_rate=0.05, id_prefix="u")
    return list(sim.messages(N))


@pytest.fixture(scope="module")
def replayed(messages: list[bytes], config: dict[str, Any]) -> agreement.Fates:
    return agreement.reference(messages, config)


def test_rules_are_the_benchmark_config(config: dict[str, Any]) -> None:
    """The hand-written constants are the router config's of the benchmark."""
    assert config["eval_sample"] == {"rate": anchor_rules.EVAL_RATE, "salt": "bench"}
    assert anchor_rules.SALT == b"bench"
    assert [q["name"] for q in config["queues"]] == list(anchor_rules.QUEUES)
    flagged, disagreement, uncertain = (q["when"] for q in config["queues"])
    assert flagged == {"flags_any": list(anchor_rules.REVIEW_FLAGS)}
    assert disagreement == {"ensemble_kl_above": anchor_rules.KL_ABOVE}
    assert uncertain == {
        "any": [
            {"max_prob_below": anchor_rules.MAX_PROB_BELOW},
            {"margin_below": anchor_rules.MARGIN_BELOW},
        ]
    }
    assert config["topics"]["accepted"]  # every input gets an output


def test_workload_has_every_fate(replayed: agreement.Fates) -> None:
    labels = set(replayed.by_key.values())
    assert labels == set(anchor_rules.FATES), labels
    assert replayed.unkeyed["deadletter"] > 0  # not JSON, not an object: no id


def _fates(decide: Any, messages: list[bytes]) -> tuple[agreement.Fates, list[Any]]:
    got, outputs = agreement.Fates(), []
    for offset, raw in enumerate(messages):
        fate, key, out, record = decide(raw, "in", 0, offset, 1.0)
        got.add(fate, key)
        outputs.append((fate, key, out, record))
    return got, outputs


def test_confluent_loop_decides_like_replay(
    messages: list[bytes], replayed: agreement.Fates
) -> None:
    got, outputs = _fates(anchor_rules.decide, messages)
    res = agreement.compare(replayed, got)
    assert res["ok"], res
    assert res["checked"] == N and res["deadletter_ids_equal"]
    names = confluent_loop.topics("confluent-loop", "t")
    assert set(names) == {*anchor_rules.FATES, anchor_rules.RECORDS}
    assert len(set(names.values())) == len(names)
    for (fate, key, out, _), raw in zip(outputs, messages, strict=True):
        doc = orjson.loads(orjson.dumps(out))  # what the loop sends
        if fate == "deadletter":
            assert doc["raw"] == raw.decode("utf-8", errors="replace")
            continue
        assert key == doc["id"].encode()
        assert doc["prediction"] == orjson.loads(raw)  # embedded as received
        if fate.startswith("review-"):
            assert doc["queue"] == fate.removeprefix("review-")
            assert doc["reasons"] and doc["reasons"][0]["queue"] == doc["queue"]
            assert doc["priority"] == pytest.approx(1.0 - doc["scores"]["max_prob"])


def test_quix_app_decides_like_replay(messages: list[bytes], replayed: agreement.Fates) -> None:
    assert "quixstreams" not in sys.modules  # the decision is importable without Quix
    got, outputs = _fates(quix_app.routed, messages)
    assert agreement.compare(replayed, got)["ok"]
    for offset, (row, raw) in enumerate(zip(outputs, messages, strict=True)):
        # what Quix does at the branching point (a pickled copy), then in the fate's branch
        key = row[1]
        copy = pickle.loads(pickle.dumps(row))
        out = quix_app.embedded(copy)
        assert quix_app.key_of(out) == key
        _, _, loop_out, loop_record = anchor_rules.decide(raw, "in", 0, offset, 1.0)
        assert orjson.loads(orjson.dumps(out)) == orjson.loads(orjson.dumps(loop_out))
        # the records' branch: the same record, keyed by the id
        assert quix_app.recorded(copy) == (loop_record is not None)
        if loop_record is not None:
            assert quix_app.record_of(copy) == loop_record
            assert quix_app.key_of(loop_record) == key
    assert set(quix_app.topics("quix", "t")) == {*anchor_rules.FATES, anchor_rules.RECORDS}


def test_anchors_write_the_routers_decision_records(
    messages: list[bytes], config: dict[str, Any]
) -> None:
    """Every eval and review item gets the decision record the router writes for it (its
    scores to float precision: plain Python against numpy); every other input none."""
    batch = decide_batch(messages, Policy(parse_config(dict(config))))
    _, outputs = _fates(anchor_rules.decide, messages)
    recorded = 0
    for i, (fate, key, _, record) in enumerate(outputs):
        if fate not in ("eval",) and not fate.startswith("review-"):
            assert record is None, fate
            continue
        recorded += 1
        want = orjson.loads(orjson.dumps(decision_record(batch, i, 1.0)))
        got = orjson.loads(orjson.dumps(record))
        assert got.pop("scores") == pytest.approx(want.pop("scores"), rel=1e-9, abs=1e-12)
        assert got == want
        assert key == record["id"].encode()
    assert recorded == len(batch.rows(EVAL)) + len(batch.rows(REVIEW))
    assert recorded >= 30
    assert records_topic(config) == config["topics"]["decisions"] != "hitl.decisions"


def test_missing_or_extra_decision_records_are_caught(
    messages: list[bytes], replayed: agreement.Fates
) -> None:
    want = agreement.recorded_ids(replayed)
    assert want and all(
        replayed.by_key[k] == "eval" or replayed.by_key[k].startswith("review-") for k in want
    )
    fine = agreement.compare_records(replayed, want, len(want) + 2, 0)
    assert fine["ok"] and fine["duplicates"] == 2 and fine["expected"] == len(want)
    accepted = next(k for k, label in replayed.by_key.items() if label == "accepted")
    wrong = {*list(want)[1:], accepted}
    res = agreement.compare_records(replayed, wrong, len(wrong), 0)
    assert not res["ok"] and res["missing"] == 1 and res["extra"] == 1
    unkeyed = agreement.compare_records(replayed, want, len(want) + 1, 1)
    assert not unkeyed["ok"] and unkeyed["extra"] == 1
    got, _ = _fates(anchor_rules.decide, messages)
    check = agreement.compare(replayed, got, res)
    assert not check["ok"]
    assert "decision records: 1 missing, 1 extra" in agreement.summary(check)
    assert agreement.compare(replayed, got, fine)["ok"]


def test_a_different_fate_is_caught(messages: list[bytes], replayed: agreement.Fates) -> None:
    got, _ = _fates(anchor_rules.decide, messages)
    key = next(k for k, label in got.by_key.items() if label == "accepted")
    got.by_key[key] = "review-uncertain"
    got.add("eval", next(iter(got.by_key)))  # one id in two fates' topics
    res = agreement.compare(replayed, got)
    assert not res["ok"] and res["differ"] == 1 and res["conflicts"] == 1
    assert "MISMATCHES" in agreement.summary(res)


def test_anchor_rules_doctests() -> None:
    assert doctest.testmod(anchor_rules).failed == 0


def test_report_has_the_anchor_rows_and_targets() -> None:
    def row(rate: float, **extra: Any) -> dict[str, Any]:
        return {
            "ok": True,
            "rate": rate,
            "rate_p10_p90": rate,
            "outputs": N,
            "duplicates": 0,
            "span_s": N / rate,
            "cpu_us_per_msg": 1e6 / rate,
            **extra,
        }

    fine = {"ok": True, "checked": N}
    results: dict[str, Any] = {
        "router": row(20_000, agreement=fine),
        "confluent_pass": row(150_000),
        "confluent_loop": row(22_000, agreement=fine),
        "quix": row(9_000, agreement={**fine, "ok": False, "differ": 2, "missing": 0}),
    }
    results["quix"]["agreement"].update(extra=0, conflicts=0, deadletter_ids_equal=True)
    report.derive(results)
    verdicts = {
        t["metric"]: (round(t["value"], 2), t["pass"])
        for t in results["targets"]
        if t["value"] is not None
    }
    assert verdicts["router_over_confluent_loop"] == (0.91, False)
    assert verdicts["router_over_quix"] == (2.22, False)
    assert verdicts["router_over_confluent_pass"] == (0.13, False)
    text = report.table(results)
    assert "Quix Streams app" in text and "2 MISMATCHES" in text
    assert report.disagreeing(results) == [report.LABELS["quix"]]
    md = "\n".join(report.md_anchors(results, None))
    assert "router / confluent-kafka loop = **0.91** (target ≥ 1.5)" in md


def test_report_has_the_rate_latency_curve_and_its_targets() -> None:
    def lat(rate: float, p50: float, p99: float) -> dict[str, Any]:
        return {
            "ok": True,
            "achieved_rate": rate,
            "measured": int(rate * 10),
            "append_p50_ms": p50,
            "append_p99_ms": p99,
            "append_max_ms": p99 * 2,
            "worker_cores": 0.3,
            "machine_busy_cores": 0.9,
        }

    curve = {
        "1000": {"confluent-pass": lat(1000, 5.0, 20.0), "router": lat(1000, 9.0, 25.0)},
        "2000": {
            "confluent-pass": lat(2000, 6.0, 30.0),
            "router": lat(2000, 18.0, 40.0),
            "router-aiokafka": {"ok": False, "error": "ContenderFailed: it died"},
        },
    }
    results: dict[str, Any] = {"router": {"ok": True, "rate": 1.0}, "latency_curve": curve}
    report.derive(results)
    verdicts = {
        t["metric"]: (round(t["value"], 2), t["pass"])
        for t in results["targets"]
        if t["value"] is not None
    }
    assert verdicts["curve_p99_over_pass"] == (1.33, True)
    assert verdicts["curve_p50_minus_pass_ms"] == (12.0, False)  # 18 − 6 > 10 ms
    md = "\n".join(report._md_curve(results))
    assert "| 2,000 | router (librdkafka) | 2,000 | 20,000 | 18.0 | 40.0 |" in md
    assert "router (aiokafka) | FAILED: ContenderFailed: it died" in md
    assert "= **1.33** (target ≤ 1.5)" in md and "= **12.0 ms** (target ≤ 10)" in md
    # without the target rate in the curve, the targets are not measured (not failed)
    del curve["2000"]
    report.derive(results)
    assert {t["metric"]: t["pass"] for t in results["targets"]}["curve_p99_over_pass"] is None


def test_a_full_run_takes_the_median_of_three_rounds_and_a_smoke_run_one():
    """The same code's rate moves by 10-15% between runs on the development machine:
    ratios near their targets are judged on medians, unless told otherwise."""
    from bench.run import parse_args

    assert parse_args([]).rounds == 3
    assert parse_args(["--quick"]).rounds == 1
    assert parse_args(["--quick", "--rounds", "2"]).rounds == 2
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
