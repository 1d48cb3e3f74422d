"""The simulator: a real scikit-learn model, valid messages, flags, drift, malformed ones, CLI.

No network: Kafka publishing is exercised with a fake producer and an unreachable port.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from hitl_router.errors import InputError, KafkaSetupError
from hitl_router.simulate import (
    DEVICES,
    FLAGS,
    MALFORMED_KINDS,
    Simulator,
    add_parser,
    features,
    get_committee,
    message_key,
    publish,
    write_jsonl,
)

MAX_DEPTH = 32  # the tests' (and router's) bound on JSON nesting


# ---------------------------------------------------------------- a plain contract check


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _depth(x: Any) -> int:
    if isinstance(x, dict):
        return 1 + max((_depth(v) for v in x.values()), default=0)
    if isinstance(x, list):
        return 1 + max((_depth(v) for v in x), default=0)
    return 0


def _dist_problem(p: Any, what: str) -> str | None:
    if not isinstance(p, list) or len(p) < 2:
        return f"{what} must be a list of >= 2 numbers"
    if not all(_is_num(x) and 0.0 <= x <= 1.0 for x in p):
        return f"{what} must hold numbers in [0, 1]"
    if abs(sum(p) - 1.0) > 1e-3:
        return f"{what} must sum to 1"
    return None


def contract_problem(raw: bytes) -> str | None:
    """None if ``raw`` is a valid prediction message, else what is wrong with it."""
    try:
        msg = json.loads(raw)  # note: python's json accepts NaN; the range check rejects it
    except ValueError as exc:  # includes UnicodeDecodeError
        return f"not JSON: {exc}"
    if not isinstance(msg, dict):
        return "not an object"
    if _depth(msg) > MAX_DEPTH:
        return "nested too deeply"
    mid = msg.get("id")
    if not isinstance(mid, str) or not 1 <= len(mid) <= 256:
        return "id must be a string of 1-256 chars"
    if not isinstance(msg.get("model"), str) or not msg["model"]:
        return "model must be a string"
    if "probs" not in msg:
        return "probs missing"
    problem = _dist_problem(msg["probs"], "probs")
    if problem:
        return problem
    n = len(msg["probs"])
    if "classes" in msg:
        c = msg["classes"]
        if not isinstance(c, list) or len(c) != n or not all(isinstance(x, str) for x in c):
            return "classes must be strings, one per prob"
    if "ensemble" in msg:
        e = msg["ensemble"]
        if not isinstance(e, list) or len(e) < 2:
            return "ensemble must be a list of >= 2 members"
        for j, member in enumerate(e):
            problem = _dist_problem(member, f"ensemble[{j}]")
            if problem:
                return problem
            if len(member) != n:
                return f"ensemble[{j}] has the wrong length"
    if "flags" in msg:
        f = msg["flags"]
        if not isinstance(f, list) or not all(isinstance(x, str) for x in f):
            return "flags must be strings"
    if "features" in msg:
        f = msg["features"]
        if not isinstance(f, dict) or not all(isinstance(v, str) or _is_num(v) for v in f.values()):
            return "features must map to numbers or strings"
    if "ts" in msg and not _is_num(msg["ts"]):
        return "ts must be a number"
    if "meta" in msg and not isinstance(msg["meta"], dict):
        return "meta must be an object"
    return None


def _without_ts(raw: bytes) -> Any:
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(obj, dict):
        obj.pop("ts", None)
    return obj


# ---------------------------------------------------------------- the model


def test_committee_is_a_real_model() -> None:
    c = get_committee(0)
    assert get_committee(0) is c  # trained once per process
    X, y = c.holdout
    assert X.shape[1] == 64 and len(X) == len(y) > 300
    probs, members = c.predict_batch(X)
    assert probs.shape == (len(X), 10) and members.shape == (5, len(X), 10)
    accuracy = float(np.mean(probs.argmax(axis=1) == y))
    assert accuracy > 0.9
    assert c.accuracy == pytest.approx(accuracy)
    assert c.name == "digits-committee@1" and list(c.classes) == [str(d) for d in range(10)]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(members.sum(axis=2), 1.0, atol=1e-12)
    np.testing.assert_allclose(probs, members.mean(axis=0), atol=1e-12)
    # the vectorised committee is exactly the members' own predict_proba
    ref = np.stack([m.predict_proba(X / 16.0) for m in c.members])
    np.testing.assert_allclose(members, ref, atol=1e-9)
    # members really differ (bootstrap resamples), so the ensemble carries information
    assert np.abs(members[0] - members[1]).max() > 1e-3


def test_features_summaries() -> None:
    X, _ = get_committee(0).holdout
    rows = features(X[:200], rng=1)
    assert rows == features(X[:200], rng=1)
    assert len(rows) == 200
    for row, img in zip(rows, X[:200], strict=True):
        assert set(row) == {"ink", "ink_pixels", "row_center", "col_center", "device"}
        assert row["ink"] == pytest.approx(img.mean(), abs=1e-4)
        assert row["ink_pixels"] == int((img > 0).sum())
        assert 0.0 <= row["row_center"] <= 7.0 and 0.0 <= row["col_center"] <= 7.0
        assert row["device"] in DEVICES
        for k in ("ink", "row_center", "col_center"):
            assert round(row[k], 4) == row[k]
    blank = features(np.zeros((1, 64)), rng=0)[0]
    assert blank["ink"] == 0 and blank["row_center"] == 3.5 and blank["col_center"] == 3.5


# ---------------------------------------------------------------- valid messages


def test_every_message_is_a_valid_prediction() -> None:
    sim = Simulator(seed=3, flag_rate=0.05, drift_at=2500)
    msgs = list(sim.messages(5000))
    assert len(msgs) == 5000
    ids = set()
    for raw in msgs:
        assert b"\n" not in raw
        assert contract_problem(raw) is None, raw[:200]
        m = json.loads(raw)
        ids.add(m["id"])
        assert m["model"] == "digits-committee@1"
        assert m["classes"] == [str(d) for d in range(10)]
        assert m["label"] in m["classes"]
        assert len(m["probs"]) == 10
        assert len(m["ensemble"]) == 5 and all(len(e) == 10 for e in m["ensemble"])
        # rounded to 6 decimals and renormalised: sums hold to well within 1e-6
        assert abs(sum(m["probs"]) - 1.0) < 1e-9
        assert all(abs(sum(e) - 1.0) < 1e-9 for e in m["ensemble"])
        assert all(round(x, 6) == x for x in m["probs"])
        mean = [sum(col) / 5 for col in zip(*m["ensemble"], strict=True)]
        assert max(abs(a - b) for a, b in zip(mean, m["probs"], strict=True)) < 1e-5
        assert set(m["features"]) == {"ink", "ink_pixels", "row_center", "col_center", "device"}
        assert m["features"]["device"] in DEVICES
        assert abs(m["ts"] - time.time()) < 600
        assert set(m.get("flags", [])) <= set(FLAGS)
        assert message_key(raw) == m["id"].encode()
    assert len(ids) == 5000
    assert f"p-{0:08d}" in ids and f"p-{4999:08d}" in ids


def test_ids_unique_and_prefixed() -> None:
    ids = [json.loads(r)["id"] for r in Simulator(seed=4, id_prefix="run7").messages(20_000)]
    assert len(set(ids)) == 20_000
    assert ids[:2] == ["run7-00000000", "run7-00000001"]


def test_flag_rate_within_four_sigma() -> None:
    n, rate = 20_000, 0.05
    flags = [json.loads(r).get("flags") for r in Simulator(seed=5, flag_rate=rate).messages(n)]
    flagged = [f for f in flags if f]
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(len(flagged) - n * rate) < 4 * sigma
    assert all(len(f) == 1 and f[0] in FLAGS for f in flagged)
    assert set(Counter(f[0] for f in flagged)) == set(FLAGS)
    assert not any(json.loads(r).get("flags") for r in Simulator(flag_rate=0).messages(2000))


def test_drift_lowers_confidence_and_shifts_features() -> None:
    n, at = 8000, 4000
    recs = list(Simulator(seed=6, drift_at=at).records(n))
    before, after = recs[:at], recs[at:]

    def top(rs: list[dict]) -> float:
        return float(np.mean([max(r["probs"]) for r in rs]))

    def acc(rs: list[dict]) -> float:
        return float(np.mean([r["classes"][int(np.argmax(r["probs"]))] == r["label"] for r in rs]))

    def mean_feature(rs: list[dict], k: str) -> float:
        return float(np.mean([r["features"][k] for r in rs]))

    def phone(rs: list[dict]) -> float:
        return float(np.mean([r["features"]["device"] == "phone" for r in rs]))

    assert top(before) > 0.85 and top(after) < top(before) - 0.15
    assert acc(before) > 0.9 and acc(after) < acc(before) - 0.1
    assert abs(mean_feature(after, "ink") - mean_feature(before, "ink")) > 0.5
    assert mean_feature(after, "ink_pixels") > mean_feature(before, "ink_pixels") + 5
    assert phone(before) < 0.2 and phone(after) > 0.6

    # committee disagreement grows under drift too
    def spread(rs: list[dict]) -> float:
        return float(np.mean([np.std(np.array(r["ensemble"]), axis=0).max() for r in rs]))

    assert spread(after) > spread(before)
    # no drift without drift_at: a later window looks like an earlier one
    plain = list(Simulator(seed=6).records(n))
    assert abs(top(plain[:at]) - top(plain[at:])) < 0.03


# ---------------------------------------------------------------- malformed messages


def test_malformed_fraction_and_kinds() -> None:
    n, rate = 20_000, 0.1
    tagged = list(Simulator(seed=7, malformed_rate=rate).tagged_messages(n))
    bad = [(k, m) for k, m in tagged if k is not None]
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(len(bad) - n * rate) < 4 * sigma
    assert set(k for k, _ in bad) == set(MALFORMED_KINDS)
    for kind, raw in bad:
        assert b"\n" not in raw
        assert contract_problem(raw) is not None, (kind, raw[:200])
    for kind, raw in tagged:
        if kind is None:
            assert contract_problem(raw) is None
    examples = {k: m for k, m in bad}
    assert examples["not_json"] == b"not json"
    assert examples["bad_utf8"] == b"\xff\xfe"
    assert examples["not_object"] == b"[1,2]"
    assert b"NaN" in examples["nan"]
    assert _depth(json.loads(examples["deep_meta"])["meta"]) == 200
    assert json.loads(examples["empty_id"])["id"] == ""
    assert abs(sum(json.loads(examples["probs_sum"])["probs"]) - 1.5) < 1e-5
    assert min(json.loads(examples["negative_prob"])["probs"]) < 0
    assert "probs" not in json.loads(examples["missing_probs"])
    ens = json.loads(examples["ensemble_length"])["ensemble"]
    assert sorted(len(e) for e in ens) == [9, 10, 10, 10, 10]
    # ids of malformed messages that have one are marked and keyed
    for kind in ("nan", "deep_meta", "probs_sum", "negative_prob", "missing_probs"):
        key = message_key(examples[kind])
        assert key is not None and key.startswith(b"p-bad-")
    for kind in ("not_json", "bad_utf8", "not_object", "empty_id"):
        assert message_key(examples[kind]) is None
    # messages() yields the same stream as tagged_messages(), and malformed positions
    # replace messages without shifting the valid ones
    head = 3000
    again = list(Simulator(seed=7, malformed_rate=rate).messages(head))
    assert [_without_ts(m) for m in again] == [_without_ts(m) for _, m in tagged[:head]]
    clean = list(Simulator(seed=7).messages(head))
    for (kind, raw), ok in zip(tagged[:head], clean, strict=True):
        if kind is None:
            assert _without_ts(raw) == _without_ts(ok)


def test_records_skip_malformed_positions() -> None:
    recs = list(Simulator(seed=8, malformed_rate=0.5).records(1000))
    assert 350 < len(recs) < 650
    for r in recs:
        assert isinstance(r["probs"], list) and isinstance(r["ensemble"][0], list)
        assert contract_problem(json.dumps(r).encode()) is None


# ---------------------------------------------------------------- determinism


def test_same_seed_same_messages_except_ts() -> None:
    kw = {"seed": 11, "flag_rate": 0.05, "malformed_rate": 0.05, "drift_at": 1500}
    a = list(Simulator(**kw).messages(3000))
    b = list(Simulator(**kw).messages(3000))
    assert [_without_ts(m) for m in a] == [_without_ts(m) for m in b]
    c = list(Simulator(**{**kw, "seed": 12}).messages(3000))
    assert [_without_ts(m) for m in a] != [_without_ts(m) for m in c]


def test_bad_simulator_arguments() -> None:
    with pytest.raises(ValueError):
        Simulator(flag_rate=1.5)
    with pytest.raises(ValueError):
        Simulator(malformed_rate=-0.1)
    with pytest.raises(ValueError):
        Simulator(drift_at=-1)
    with pytest.raises(ValueError):
        list(Simulator().messages(-1))


def test_endless_stream() -> None:
    it = Simulator(seed=1).messages(None)
    msgs = [next(it) for _ in range(2500)]
    assert json.loads(msgs[-1])["id"] == "p-00002499"


# ---------------------------------------------------------------- files and CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hitl-router")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return parser


def test_write_jsonl(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    assert write_jsonl(path, 2345, seed=2, malformed_rate=0.05) == 2345
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2346


def test_cli_out_writes_count_lines(tmp_path, capsys) -> None:
    path = tmp_path / "out.jsonl"
    args = _parser().parse_args(
        ["simulate", "--count", "1234", "--out", str(path), "--drift-at", "600", "--seed", "3"]
    )
    assert args.topic == "predictions" and args.rate == 0.0 and args.malformed_rate == 0.0
    assert args.handler(args) == 0
    lines = path.read_bytes().splitlines()
    assert len(lines) == 1234
    assert all(contract_problem(line) is None for line in lines)
    assert "wrote 1234 messages" in capsys.readouterr().out


def test_cli_defaults(monkeypatch) -> None:
    monkeypatch.setenv("HITL_BOOTSTRAP", "kafka.example:9999")
    args = _parser().parse_args(["simulate"])
    assert args.bootstrap == "kafka.example:9999"
    assert args.count == 10_000 and args.drift_at is None and args.out is None
    monkeypatch.delenv("HITL_BOOTSTRAP")
    assert _parser().parse_args(["simulate"]).bootstrap == "127.0.0.1:9092"


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "-1"],
        ["--count", "-5"],
        ["--flag-rate", "1.5"],
        ["--malformed-rate", "-0.2"],
        ["--drift-at", "-3"],
        ["--rate", "nan"],
    ],
)
def test_cli_bad_options(argv: list[str], tmp_path) -> None:
    args = _parser().parse_args(["simulate", *argv, "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(InputError):
        args.handler(args)


def test_cli_unwritable_out(tmp_path) -> None:
    args = _parser().parse_args(
        ["simulate", "--count", "5", "--out", str(tmp_path / "missing" / "x.jsonl")]
    )
    with pytest.raises(InputError):
        args.handler(args)


# ---------------------------------------------------------------- publishing


class _Future:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def add_errback(self, fn: Any) -> _Future:
        if self.error is not None:
            fn(self.error)
        return self


class FakeProducer:
    def __init__(self, fail_every: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, float]] = []
        self.flushed = False
        self.fail_every = fail_every

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> _Future:
        self.sent.append((topic, value, key, time.perf_counter()))
        failing = self.fail_every and len(self.sent) % self.fail_every == 0
        return _Future(RuntimeError("boom") if failing else None)

    def flush(self, timeout: float | None = None) -> None:
        self.flushed = True


def test_publish_keys_and_flush() -> None:
    tagged = list(Simulator(seed=9, malformed_rate=0.2).tagged_messages(500))
    prod = FakeProducer()
    n = publish("unused:1", "preds", (m for _, m in tagged), rate=0, producer=prod)
    assert n == 500 and prod.flushed
    for (kind, raw), (topic, value, key, _) in zip(tagged, prod.sent, strict=True):
        assert topic == "preds" and value == raw
        if kind is None:
            assert key == json.loads(raw)["id"].encode()
        elif kind in ("not_json", "bad_utf8", "not_object", "empty_id"):
            assert key is None
        else:
            assert key is not None and key.startswith(b"p-bad-")
    prod = FakeProducer()
    publish("unused:1", "preds", [b'{"id":"a"}'], keys=None, producer=prod)
    assert prod.sent[0][2] is None


def test_publish_paces_to_rate() -> None:
    prod = FakeProducer()
    t0 = time.perf_counter()
    n = publish("unused:1", "t", Simulator(seed=1).messages(300), rate=1000, producer=prod)
    elapsed = time.perf_counter() - t0
    assert n == 300
    assert elapsed >= 0.28  # 300 messages at 1000/s: pacing only ever waits, so a lower bound


def test_publish_counts_failures_and_stops() -> None:
    prod = FakeProducer(fail_every=10)
    assert publish("unused:1", "t", [b'{"id":"a"}'] * 100, producer=prod) == 90
    stop = threading.Event()
    prod = FakeProducer()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    t0 = time.perf_counter()
    n = publish("unused:1", "t", Simulator().messages(None), rate=500, stop=stop, producer=prod)
    timer.join()
    assert time.perf_counter() - t0 < 2.0
    assert 0 < n < 500


def test_publish_rejects_negative_rate() -> None:
    with pytest.raises(InputError):
        publish("unused:1", "t", [], rate=-1, producer=FakeProducer())


def test_publish_unreachable_broker() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KafkaSetupError):
        publish(f"127.0.0.1:{port}", "t", [b"x"], bootstrap_timeout_ms=300)


def test_message_key_fallbacks() -> None:
    assert message_key(b'{"model":"m","id":"abc"}') == b"abc"
    assert message_key(b'{"id":"a\\"b","model":"m"}') == b'a"b'
    assert message_key(b'{"id":"","model":"m"}') is None
    assert message_key(b'{"id":5}') is None
    assert message_key(b"[1,2]") is None
    assert message_key(b"\xff\xfe") is None
