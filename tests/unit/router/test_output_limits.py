"""Every output fits by construction: dead letters carry a bounded prefix of the raw
bytes (with its size and SHA-256), and an output that would not fit is dead-lettered as
``output_too_large`` instead of sent — the poison pills that stopped the worker."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from hitl_router.router.config import LimitsConfig, parse_config
from hitl_router.router.decision import Policy, decide_batch
from hitl_router.router.outputs import Source, eval_outputs, letter, router_outputs
from hitl_router.router.validation import ErrorInfo
from tests.unit.test_schemas import validator

DLQ = "predictions.deadletter"
CONFIG = {
    "topics": {"accepted": "accepted"},
    "queues": [{"name": "uncertain", "when": {"max_prob_below": 0.7}}],
}


def decide(raws, **config):
    policy = Policy(parse_config({**CONFIG, **config}))
    batch = decide_batch(raws, policy)
    sources = [Source("predictions", 0, 100 + i) for i in range(len(raws))]
    return batch, sources, policy.config


def big_prediction(pid: str, size: int, probs=(0.5, 0.5)) -> bytes:
    head = orjson.dumps({"id": pid, "model": "m", "probs": list(probs), "meta": {"pad": ""}})
    pad = b"a" * (size - len(head))
    return head.replace(b'"pad":""', b'"pad":"' + pad + b'"')


def check_letter(value: bytes, raw: bytes, code: str, limits: LimitsConfig) -> dict:
    assert len(value) <= limits.max_output_bytes
    doc = orjson.loads(value)
    assert validator("dead_letter").is_valid(doc), doc.keys()
    assert doc["error"]["code"] == code
    assert doc["raw_size"] == len(raw)
    assert doc["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert doc["raw_truncated"] == (len(raw) > limits.dead_letter_raw_bytes)
    prefix = (
        base64.b64decode(doc["raw"])
        if doc["raw_encoding"] == "base64"
        else doc["raw"].encode("utf-8")
    )
    assert raw.startswith(prefix) and len(prefix) <= limits.dead_letter_raw_bytes
    return doc


@pytest.mark.parametrize(
    "raw, code, encoding",
    [
        (b"\xff" * 900_000, "not_utf8", "base64"),  # base64 of it all: 1.2 MB
        (b"\x01" * 900_000, "not_json", "utf-8"),  # JSON-escaped 6-fold: 5.4 MB
        (b'{"id": "p", "x": "' + "é".encode() * 450_000 + b'"', "not_json", "utf-8"),
    ],
)
def test_poison_pills_give_dead_letters_that_fit(raw, code, encoding):
    batch, sources, config = decide([raw])
    outs = router_outputs(batch, batch.raws, sources, now=1.0)
    assert [o.topic for o in outs] == [DLQ]
    doc = check_letter(outs[0].value, raw, code, config.limits)
    assert doc["raw_encoding"] == encoding and doc["raw_truncated"] is True
    assert doc["source"] == {"topic": "predictions", "partition": 0, "offset": 100}
    if encoding == "utf-8":  # a character cut at the prefix's end is dropped, not mangled
        assert len(doc["raw"].encode()) in (65_536, 65_535)


def test_a_huge_valid_prediction_is_dead_lettered_as_output_too_large_not_sent():
    big = big_prediction("huge-1", 1_040_000)  # valid (under the 1 MiB input limit)
    small = big_prediction("small-1", 2_000, probs=(0.9, 0.1))
    batch, sources, config = decide([big, small], eval_sample={"rate": 0.0})
    assert batch.fate_name(0) == "review" and batch.fate_name(1) == "pass"
    outs = router_outputs(batch, batch.raws, sources, now=1.0)
    assert [o.topic for o in outs] == [DLQ, "accepted"]
    assert outs[0].key == b"huge-1"  # keyed by id, like the output it replaces
    doc = check_letter(outs[0].value, big, "output_too_large", config.limits)
    assert "review item" in doc["error"]["message"] and doc["id"] == "huge-1"
    assert all(len(o.value) <= config.limits.max_output_bytes for o in outs)


def test_accepted_and_eval_outputs_too_large_are_dead_lettered():
    big = big_prediction("huge-2", 1_040_000, probs=(0.9, 0.1))
    batch, sources, config = decide([big], eval_sample={"rate": 0.0})
    (out,) = router_outputs(batch, batch.raws, sources, now=1.0)
    assert out.topic == DLQ
    assert (
        "accepted item"
        in check_letter(out.value, big, "output_too_large", config.limits)["error"]["message"]
    )
    batch, sources, config = decide([big], eval_sample={"rate": 1.0})
    assert batch.fate_name(0) == "eval"
    (out,) = eval_outputs(batch, 1.0, sources)
    assert out.topic == DLQ and out.key == b"huge-2"
    check_letter(out.value, big, "output_too_large", config.limits)


def test_lower_max_output_bytes_moves_the_line():
    raw = big_prediction("mid", 20_000)
    batch, sources, config = decide(
        [raw], limits={"max_output_bytes": 50_000, "dead_letter_raw_bytes": 100}
    )
    assert router_outputs(batch, batch.raws, sources, now=1.0)[0].topic == "review.uncertain"
    batch, sources, config = decide(
        [raw], limits={"max_output_bytes": 19_000, "dead_letter_raw_bytes": 100}
    )
    (out,) = router_outputs(batch, batch.raws, sources, now=1.0)
    check_letter(out.value, raw, "output_too_large", config.limits)


def test_error_message_and_path_are_bounded():
    """A path names a key of the payload, which can be as long as the payload."""
    key = "k" * 500_000
    raw = orjson.dumps({"id": "p", "model": "m", "probs": [0.5, 0.5], "features": {key: [1]}})
    batch, sources, config = decide([raw])
    (out,) = router_outputs(batch, batch.raws, sources, now=1.0)
    doc = check_letter(out.value, raw, batch.errors[0].code, config.limits)
    assert len(doc["error"]["message"]) <= 1024 and len(doc["error"].get("path", "")) <= 1024


def test_letter_shrinks_its_prefix_when_a_hand_made_limit_is_too_small():
    """parse_config refuses such limits; letter() still never returns an output over
    the limit."""
    limits = LimitsConfig(max_output_bytes=20_000, dead_letter_raw_bytes=65_536)
    raw = b"\x01" * 100_000
    value = letter(ErrorInfo("not_json", "no"), raw, None, 1.0, limits)
    assert len(value) <= 20_000
    doc = orjson.loads(value)
    assert doc["raw_size"] == 100_000 and doc["raw_truncated"] is True


def test_small_payloads_are_kept_whole():
    raw = b'{"id": "x", "model": "m"}'
    batch, sources, config = decide([raw])
    (out,) = router_outputs(batch, batch.raws, sources, now=1.0)
    doc = check_letter(out.value, raw, "missing_field", config.limits)
    assert doc["raw"] == raw.decode() and doc["raw_truncated"] is False and doc["id"] == "x"
