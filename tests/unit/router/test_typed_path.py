"""The typed decoding path gives the exact path's verdicts, docs and numbers.

``parse_batch`` tries ``typed_decode`` (msgspec, types checked in C) first and falls back
to the exact path (orjson and Python checks) for anything it does not vouch for. These
tests run both over every corpus the schema tests use, hypothesis' predictions and the
simulator's, and demand the same result; numbers may differ only in type (the typed path
gives JSON integers as floats of equal value).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from hitl_router.router.config import LimitsConfig
from hitl_router.router.validation import ParsedBatch, parse_batch, typed_decode
from hitl_router.simulate import Simulator
from tests.unit.test_schemas import (
    AGREEMENT,
    BEYOND_SCHEMA,
    NULL_OPTIONAL,
    prediction_like,
    varied_messages,
)

LIMITS = LimitsConfig()


def _as_numbers(value: Any) -> Any:
    """Ints → floats, recursively (bools and strings untouched)."""
    if isinstance(value, dict):
        return {k: _as_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_numbers(v) for v in value]
    if type(value) is int:
        return float(value)
    return value


def _groups(batch: ParsedBatch) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    out = {}
    for g in batch.groups:
        for j, row in enumerate(g.rows):
            out[int(row)] = (g.probs[j], None if g.members is None else g.members[j])
    return out


def assert_same(raws: list[bytes | None], limits: LimitsConfig = LIMITS) -> ParsedBatch:
    typed = parse_batch(raws, limits)
    exact = parse_batch(raws, limits, typed=False)
    assert typed.errors == exact.errors
    assert [d is None for d in typed.docs] == [d is None for d in exact.docs]
    for i, (a, b) in enumerate(zip(typed.docs, exact.docs, strict=True)):
        if a is not None and a != b:
            assert set(a) <= set(b), i  # the typed path keeps the schema's fields only
            assert _as_numbers(a) == _as_numbers({k: b[k] for k in a}), i
    g_typed, g_exact = _groups(typed), _groups(exact)
    assert g_typed.keys() == g_exact.keys()
    for row, (probs, members) in g_exact.items():
        np.testing.assert_array_equal(g_typed[row][0], probs)
        if members is None:
            assert g_typed[row][1] is None
        else:
            np.testing.assert_array_equal(g_typed[row][1], members)
    return typed


def test_corpora_agree() -> None:
    cases = AGREEMENT + [p.values[0] for p in NULL_OPTIONAL] + BEYOND_SCHEMA
    raws = [c.raw for c in cases] + varied_messages(400)
    batch = assert_same(raws)
    assert batch.errors and any(d is not None for d in batch.docs)  # both kinds judged


def test_simulator_predictions_take_the_typed_path_and_agree() -> None:
    raws = list(Simulator(seed=5, malformed_rate=0.05).messages(3000))
    assert_same(raws)
    valid = [r for r in raws if not parse_batch([r], LIMITS, typed=False).errors]
    assert len(valid) > 2500
    assert all(typed_decode(r, LIMITS) is not None for r in valid)


BASE = {"id": "p-1", "model": "m", "probs": [0.25, 0.75]}


def raw(**fields: Any) -> bytes:
    return json.dumps({**BASE, **fields}, separators=(",", ":")).encode()  # takes any int


EDGES = [
    raw(),
    raw(probs=[0, 1]),
    raw(ts=-1, features={"n": -0, "big": 2**60 + 1, "s": "x"}),
    raw(label=3),
    raw(label="3"),
    raw(label=2**64),
    raw(label=-(2**63) - 1),
    raw(label=2**63),
    raw(label=3.5),
    raw(meta={"a": 1, "b": None, "c": True}),
    raw(meta={"a": {"b": 1}}),
    raw(extra=1),
    raw(classes=["a", "b"], ensemble=[[0.5, 0.5], [0.0, 1.0]]),
    raw(ensemble=[[0.5, 0.5], [0.0, 1.0, 0.0]]),
    raw(ensemble=[[0.5, 0.5]]),
    raw(id=""),
    raw(id="x" * 257),
    raw(model=""),
    raw(ts=None),
    raw(flags=None),
    raw(probs=[True, False]),
    raw(probs=["0.5", "0.5"]),
    raw(probs=[0.5, 0.7]),
    raw(probs=[-0.5, 1.5]),
    b'{"id":"p","model":"m","probs":[0.25,0.75],"ts":1' + b"0" * 400 + b"}",
    b'{"id":"p","model":"m","probs":[0.25,0.75],"label":1' + b"0" * 400 + b"}",
    b'{"id":"p","model":"m","probs":[0.25,0.75],"features":{"x":1e400}}',
    b'{"id":"p","model":"m","probs":[1e400,0.75]}',
    b'{"id":"p","model":"m","probs":[0.25,0.75],"ts":NaN}',
    b'{"id":"a","id":"b","model":"m","probs":[0.25,0.75]}',
    b'{"id":"\\ud800","model":"m","probs":[0.25,0.75]}',
    b'{"id":"\\u00e9\\u0000","model":"m","probs":[0.25,0.75]}',
    b'\xef\xbb\xbf{"id":"p","model":"m","probs":[0.25,0.75]}',
    b'{"id":"p","model":"m","probs":[0.25,0.75]} x',
    b'{"id":"p\xff","model":"m","probs":[0.25,0.75]}',
    b"[1, 2]",
    b"",
    None,
]


def test_edge_cases_agree() -> None:
    assert_same(EDGES)


@pytest.mark.parametrize(
    "limits",
    [
        LimitsConfig(max_classes=2, max_members=2),
        LimitsConfig(max_message_bytes=60),
        LimitsConfig(max_depth=1),
    ],
)
def test_limits_agree(limits: LimitsConfig) -> None:
    assert_same(EDGES + [c.raw for c in AGREEMENT], limits)


def test_typed_path_refuses_what_it_cannot_vouch_for() -> None:
    assert typed_decode(raw(), LIMITS) is not None
    assert typed_decode(raw(extra=1), LIMITS) is None  # unknown field: exact path
    assert typed_decode(raw(meta={"a": {"b": 1}}), LIMITS) is None  # nested meta
    assert typed_decode(raw(label=2**64), LIMITS) is None  # orjson makes it a float
    assert typed_decode(raw(label=-(2**63)), LIMITS) is not None
    assert typed_decode(raw(ts=None), LIMITS) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_like())
def test_random_predictions_agree(doc: dict[str, Any]) -> None:
    assert_same([orjson.dumps(doc)])


@pytest.mark.parametrize("typed", [True, False])
def test_ensemble_numbers_live_in_the_group_not_the_doc(typed: bool) -> None:
    members = [[0.1, 0.9], [0.3, 0.7], [0.25, 0.75]]
    raw = orjson.dumps({"id": "a", "model": "m", "probs": [0.2, 0.8], "ensemble": members})
    batch = parse_batch([raw, raw.replace(b'"a"', b'"b"')], LIMITS, typed=typed)
    assert not batch.errors
    assert all("ensemble" not in d and d["probs"] == [0.2, 0.8] for d in batch.docs)
    (group,) = batch.groups
    assert group.rows.tolist() == [0, 1]
    np.testing.assert_array_equal(group.members, [members, members])
