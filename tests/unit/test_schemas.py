"""schemas/*.v1.json: valid 2020-12 schemas that agree with the code.

The prediction schema and the code's validator (``parse_batch``) must agree on
every message the schema can judge; the rules a JSON Schema cannot express
(sums, equal lengths, size, depth, NaN, encoding) are listed apart, and the
code must reject those with the documented error code. Every output the
router builds must validate against its schema. No network: ``$ref``s between
the schemas resolve from a local registry that refuses to retrieve anything.
"""

from __future__ import annotations

import base64
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from hitl_router.router import outputs
from hitl_router.router.config import LimitsConfig, parse_config
from hitl_router.router.decision import PASS, Policy, decide_batch, poisoned
from hitl_router.router.rules import _NEGATED_OP
from hitl_router.router.uncertainty import SCORE_NAMES
from hitl_router.router.validation import ERROR_CODES, parse_batch

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
NAMES = (
    "prediction",
    "review_item",
    "eval_sample",
    "dead_letter",
    "label",
    "calibration",
    "qa_item",
)
BASE_URI = "https://hitl-router.dev/schemas/"
SCHEMAS: dict[str, dict[str, Any]] = {
    name: json.loads((SCHEMA_DIR / f"{name}.v1.json").read_text(encoding="utf-8")) for name in NAMES
}


def _no_retrieve(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)


REGISTRY = Registry(retrieve=_no_retrieve).with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
)


def validator(schema: str | dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(
        SCHEMAS[schema] if isinstance(schema, str) else schema, registry=REGISTRY
    )


PREDICTION = validator("prediction")
LIMITS = LimitsConfig()


# ---------------------------------------------------------------- the schemas themselves


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_2020_12(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{BASE_URI}{name}.v1.json"
    assert schema["title"] and schema["description"]


def test_enums_match_the_code() -> None:
    error = SCHEMAS["dead_letter"]["properties"]["error"]["properties"]["code"]
    assert set(error["enum"]) == set(ERROR_CODES)
    defs = SCHEMAS["review_item"]["$defs"]
    assert tuple(defs["score_name"]["enum"]) == SCORE_NAMES
    assert set(defs["scores"]["properties"]) == set(SCORE_NAMES)
    ops = set(_NEGATED_OP) | set(_NEGATED_OP.values())
    assert set(defs["reason"]["properties"]["op"]["enum"]) == ops


# ---------------------------------------------------------------- prediction corpus

BASE = {"id": "p-1", "model": "digits@2", "probs": [0.2, 0.8]}


def msg(*drop: str, **fields: Any) -> bytes:
    """``BASE`` with ``fields`` set and ``drop`` removed, as JSON bytes."""
    doc = {**BASE, **fields}
    for key in drop:
        del doc[key]
    return orjson.dumps(doc)


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    code: str | None  # None: valid

    @property
    def valid(self) -> bool:
        return self.code is None


FULL = {
    "classes": ["cat", "dog"],
    "ensemble": [[0.1, 0.9], [0.3, 0.7], [0.25, 0.75]],
    "flags": ["pii", "user_report"],
    "features": {"age": 41, "score": 0.5, "country": "FR"},
    "ts": 1767225600.25,
    "meta": {"request": {"path": "/predict", "tags": ["a", "b"]}},
}

#: Messages the schema can judge: schema and code must agree.
AGREEMENT = [
    Case("minimal", msg(), None),
    Case("all_optional_fields", msg(**FULL), None),
    Case("unknown_fields", msg(extra={"x": [1, {"y": None}]}, other=None, n=3), None),
    Case("classes", msg(classes=["neg", "pos"]), None),
    Case("ensemble", msg(ensemble=[[0.2, 0.8], [0.4, 0.6]]), None),
    Case("flags", msg(flags=["pii"]), None),
    Case("flags_empty", msg(flags=[]), None),
    Case("features_numbers_and_strings", msg(features={"a": 1, "b": -2.5, "c": "x"}), None),
    Case("features_empty", msg(features={}), None),
    Case("integer_probs", msg(probs=[0, 1]), None),
    Case("many_classes", msg(probs=[0.1] * 10), None),
    Case("sum_within_tolerance", msg(probs=[0.5, 0.5009]), None),
    Case("id_256_chars", msg(id="x" * 256), None),
    Case("id_unicode", msg(id="é-😀"), None),
    Case("ts_integer", msg(ts=1767225600), None),
    Case("meta_empty", msg(meta={}), None),
    Case("meta_32_levels", msg(meta=nested(32)), None),
    Case("missing_id", msg("id"), "missing_field"),
    Case("missing_model", msg("model"), "missing_field"),
    Case("missing_probs", msg("probs"), "missing_field"),
    Case("id_empty", msg(id=""), "bad_id"),
    Case("id_257_chars", msg(id="x" * 257), "bad_id"),
    Case("id_not_string", msg(id=17), "bad_type"),
    Case("id_null", msg(id=None), "bad_type"),
    Case("model_not_string", msg(model=["m"]), "bad_type"),
    Case("model_empty", msg(model=""), "bad_value"),
    Case("probs_not_array", msg(probs={"a": 0.5, "b": 0.5}), "bad_type"),
    Case("probs_string", msg(probs="0.5,0.5"), "bad_type"),
    Case("probs_one_element", msg(probs=[1.0]), "too_few_classes"),
    Case("probs_empty", msg(probs=[]), "too_few_classes"),
    Case("probs_with_string", msg(probs=[0.5, "0.5"]), "bad_type"),
    Case("probs_with_boolean", msg(probs=[True, False]), "bad_type"),
    Case("probs_with_null", msg(probs=[0.5, None]), "bad_type"),
    Case("probs_nested", msg(probs=[[0.5], [0.5]]), "bad_type"),
    Case("probs_negative", msg(probs=[-0.1, 1.1]), "prob_out_of_range"),
    Case("probs_above_one", msg(probs=[1.2, 0.0]), "prob_out_of_range"),
    Case("classes_not_array", msg(classes="neg,pos"), "bad_type"),
    Case("classes_with_number", msg(classes=["neg", 1]), "bad_type"),
    Case("ensemble_one_member", msg(ensemble=[[0.2, 0.8]]), "bad_value"),
    Case("ensemble_empty", msg(ensemble=[]), "bad_value"),
    Case("ensemble_not_array", msg(ensemble={"a": [0.2, 0.8]}), "bad_type"),
    Case("ensemble_member_not_array", msg(ensemble=[0.2, 0.8]), "bad_type"),
    Case("ensemble_member_above_one", msg(ensemble=[[1.2, 0.0], [0.2, 0.8]]), "prob_out_of_range"),
    Case("ensemble_member_with_string", msg(ensemble=[["a", 0.8], [0.2, 0.8]]), "bad_type"),
    Case("flags_with_number", msg(flags=["pii", 3]), "bad_type"),
    Case("flags_not_array", msg(flags="pii"), "bad_type"),
    Case("features_nested_object", msg(features={"a": {"b": 1}}), "bad_type"),
    Case("features_boolean", msg(features={"a": True}), "bad_type"),
    Case("features_null_value", msg(features={"a": None}), "bad_type"),
    Case("features_array_value", msg(features={"a": [1, 2]}), "bad_type"),
    Case("features_not_object", msg(features=[["a", 1]]), "bad_type"),
    Case("ts_string", msg(ts="2026-01-01T00:00:00Z"), "bad_type"),
    Case("ts_boolean", msg(ts=True), "bad_type"),
    Case("meta_array", msg(meta=[1, 2]), "bad_type"),
    Case("meta_string", msg(meta="x"), "bad_type"),
    Case("top_level_array", b'[{"id":"a","model":"m","probs":[0.5,0.5]}]', "not_object"),
    Case("top_level_string", b'"{\\"id\\":\\"a\\"}"', "not_object"),
    Case("top_level_number", b"42", "not_object"),
    Case("top_level_null", b"null", "not_object"),
]

#: The SPEC gives optional fields a type ("classes: array of strings"): an explicit
#: null is the wrong type, not an absent field, for the schema and the code alike.
NULL_OPTIONAL = [
    pytest.param(Case(f"{field}_null", msg(**{field: None}), "bad_type"), id=f"{field}_null")
    for field in ("classes", "ensemble", "flags", "features", "ts", "meta")
]


def strict_json(raw: bytes) -> Any:
    """``raw`` decoded as a schema validator would see it: strict UTF-8 JSON, no
    NaN/Infinity, no number overflowing a double. Raises ValueError (or
    RecursionError) when that is not possible."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} overflows a double")
        return value

    return json.loads(raw.decode("utf-8"), parse_constant=no_constant, parse_float=finite)


def code_verdict(raw: bytes) -> str | None:
    """The code's error code for ``raw`` (None: valid)."""
    batch = parse_batch([raw], LIMITS)
    assert (batch.docs[0] is None) == (0 in batch.errors)
    return batch.errors[0].code if 0 in batch.errors else None


def test_corpus_is_big_enough() -> None:
    assert len(AGREEMENT) >= 40
    assert len({c.name for c in AGREEMENT}) == len(AGREEMENT)
    assert sum(c.valid for c in AGREEMENT) >= 10


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in AGREEMENT] + NULL_OPTIONAL)
def test_schema_and_code_agree(case: Case) -> None:
    doc = strict_json(case.raw)
    schema_valid = PREDICTION.is_valid(doc)
    assert schema_valid == case.valid, list(PREDICTION.iter_errors(doc))
    assert code_verdict(case.raw) == case.code


# ------------------------------------------------- what the schema cannot express

ACCEPTS, UNPARSEABLE = "accepts", "unparseable"


@dataclass(frozen=True)
class CodeOnly:
    name: str
    raw: bytes
    schema: str  # ACCEPTS: schema-valid, the code's extra rule rejects; UNPARSEABLE: not JSON
    code: str


def _base_text(tail: str = "") -> bytes:
    return b'{"id":"p-1","model":"m","probs":[0.5,0.5]' + tail.encode() + b"}"


BEYOND_SCHEMA = [
    CodeOnly("sum_below_one", msg(probs=[0.3, 0.3]), ACCEPTS, "prob_sum"),
    CodeOnly("sum_just_outside_tolerance", msg(probs=[0.5, 0.502]), ACCEPTS, "prob_sum"),
    CodeOnly("ensemble_member_sum", msg(ensemble=[[0.3, 0.3], [0.5, 0.5]]), ACCEPTS, "prob_sum"),
    CodeOnly("classes_wrong_length", msg(classes=["a", "b", "c"]), ACCEPTS, "length_mismatch"),
    CodeOnly(
        "ensemble_member_wrong_length",
        msg(ensemble=[[0.2, 0.8], [0.2, 0.3, 0.5]]),
        ACCEPTS,
        "length_mismatch",
    ),
    CodeOnly("meta_33_levels", msg(meta=nested(33)), ACCEPTS, "too_deep"),
    CodeOnly(
        "unknown_field_33_levels", msg(x=json.loads("[" * 33 + "]" * 33)), ACCEPTS, "too_deep"
    ),
    CodeOnly(
        "document_2000_levels",
        _base_text(',"x":' + "[" * 2000 + "]" * 2000),
        UNPARSEABLE,
        "too_deep",
    ),
    CodeOnly("over_1_mib", msg(pad="x" * LIMITS.max_message_bytes), ACCEPTS, "too_large"),
    CodeOnly("over_max_classes", msg(probs=[1 / 10_001] * 10_001), ACCEPTS, "too_many_classes"),
    CodeOnly("over_max_members", msg(ensemble=[[0.5, 0.5]] * 257), ACCEPTS, "too_many_classes"),
    CodeOnly(
        "nan_literal", b'{"id":"p-1","model":"m","probs":[NaN,0.5]}', UNPARSEABLE, "not_finite"
    ),
    CodeOnly("infinity_literal", _base_text(',"ts":Infinity'), UNPARSEABLE, "not_finite"),
    CodeOnly("minus_infinity_literal", _base_text(',"ts":-Infinity'), UNPARSEABLE, "not_finite"),
    CodeOnly(
        "number_overflows_double", _base_text(',"features":{"x":1e400}'), UNPARSEABLE, "not_finite"
    ),
    CodeOnly("not_utf8", b'{"id":"p-\xff","model":"m","probs":[0.5,0.5]}', UNPARSEABLE, "not_utf8"),
    CodeOnly(
        "latin1_text",
        '{"id":"café","model":"m","probs":[0.5,0.5]}'.encode("latin-1"),
        UNPARSEABLE,
        "not_utf8",
    ),
    CodeOnly("utf8_bom", b"\xef\xbb\xbf" + _base_text(), UNPARSEABLE, "not_utf8"),
    CodeOnly("not_json", b"nope", UNPARSEABLE, "not_json"),
    CodeOnly("empty_payload", b"", UNPARSEABLE, "not_json"),
    CodeOnly("truncated", b'{"id":"p-1","model":"m","probs":[0.5,', UNPARSEABLE, "not_json"),
    CodeOnly("trailing_garbage", _base_text() + b" x", UNPARSEABLE, "not_json"),
    CodeOnly(
        "single_quotes", b"{'id':'p-1','model':'m','probs':[0.5,0.5]}", UNPARSEABLE, "not_json"
    ),
    CodeOnly(
        "lone_surrogate_escape",
        b'{"id":"p-\\ud800","model":"m","probs":[0.5,0.5]}',
        ACCEPTS,
        "not_json",
    ),
]

#: "NaN" inside a string of broken JSON is broken JSON, not a non-finite number.
MISCLASSIFIED = pytest.param(
    CodeOnly("truncated_with_nan_in_a_string", b'{"id":"NaN","model":"m"', UNPARSEABLE, "not_json"),
    id="truncated_with_nan_in_a_string",
)


def schema_verdict(raw: bytes) -> str:
    try:
        doc = strict_json(raw)
    except (ValueError, RecursionError):
        return UNPARSEABLE
    return ACCEPTS if PREDICTION.is_valid(doc) else "rejects"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name) for c in BEYOND_SCHEMA] + [MISCLASSIFIED]
)
def test_code_enforces_what_the_schema_cannot(case: CodeOnly) -> None:
    assert schema_verdict(case.raw) == case.schema
    assert code_verdict(case.raw) == case.code


def test_corpus_covers_every_error_code() -> None:
    seen = {c.code for c in AGREEMENT if c.code} | {c.code for c in BEYOND_SCHEMA}
    assert seen <= set(ERROR_CODES)
    assert set(ERROR_CODES) - seen == {"internal_error", "output_too_large"}  # not input errors


# ---------------------------------------------------------------- property


def _normalised(k: int) -> st.SearchStrategy[list[Any]]:
    """``k`` probabilities summing to 1 (to rounding), or a one-hot vector of integers."""
    weights = st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k)
    one_hot = st.integers(0, k - 1).map(lambda j: [int(i == j) for i in range(k)])
    return st.one_of(weights.map(lambda w: [x / math.fsum(w) for x in w]), one_hot)


_INT = st.integers(-(2**53), 2**53)  # orjson writes 64-bit integers only
_SCALAR = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    _INT,
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)


def _first(v: Any, value: Any) -> list[Any]:
    return [value, *v[1:]]


def _member(doc: dict[str, Any], change: Any) -> None:
    members = doc.get("ensemble") or [doc["probs"], doc["probs"]]
    doc["ensemble"] = [change(members[0]), *members[1:]]


#: Slight breakages, some the schema sees and some only the sum/length rules see.
#: No nulls for optional fields: NULL_OPTIONAL covers those.
FAULTS: dict[str, Any] = {
    "drop_id": lambda d: d.pop("id", None),
    "drop_model": lambda d: d.pop("model", None),
    "drop_probs": lambda d: d.pop("probs", None),
    "id_empty": lambda d: d.update(id=""),
    "id_long": lambda d: d.update(id="x" * 257),
    "id_number": lambda d: d.update(id=12),
    "model_empty": lambda d: d.update(model=""),
    "model_number": lambda d: d.update(model=7),
    "probs_one": lambda d: d.update(probs=[1.0]),
    "probs_half_sum": lambda d: d.update(probs=[x * 0.5 for x in d["probs"]]),
    "probs_sum_1_5": lambda d: d.update(probs=[x * 1.5 for x in d["probs"]]),
    "probs_negative": lambda d: d.update(probs=_first(d["probs"], -0.25)),
    "probs_above_one": lambda d: d.update(probs=_first(d["probs"], 1.25)),
    "probs_string_item": lambda d: d.update(probs=_first(d["probs"], "0.5")),
    "probs_bool_item": lambda d: d.update(probs=_first(d["probs"], True)),
    "probs_null_item": lambda d: d.update(probs=_first(d["probs"], None)),
    "probs_object": lambda d: d.update(probs={"a": 1}),
    "classes_short": lambda d: d.update(classes=["a"] * (len(d["probs"]) - 1)),
    "classes_long": lambda d: d.update(classes=["a"] * (len(d["probs"]) + 1)),
    "classes_number_item": lambda d: d.update(classes=[1] * len(d["probs"])),
    "classes_string": lambda d: d.update(classes="ab"),
    "ensemble_one": lambda d: d.update(ensemble=[d["probs"]]),
    "ensemble_object": lambda d: d.update(ensemble={"a": d["probs"]}),
    "ensemble_flat": lambda d: d.update(ensemble=d["probs"]),
    "member_long": lambda d: _member(d, lambda v: [*v, 0.0]),
    "member_half_sum": lambda d: _member(d, lambda v: [x * 0.5 for x in v]),
    "member_above_one": lambda d: _member(d, lambda v: _first(v, 1.25)),
    "member_string_item": lambda d: _member(d, lambda v: _first(v, "x")),
    "flags_number_item": lambda d: d.update(flags=["pii", 3]),
    "flags_string": lambda d: d.update(flags="pii"),
    "features_nested": lambda d: d.update(features={"a": {"b": 1}}),
    "features_bool": lambda d: d.update(features={"a": False}),
    "features_array": lambda d: d.update(features=[1]),
    "ts_string": lambda d: d.update(ts="now"),
    "ts_bool": lambda d: d.update(ts=True),
    "meta_array": lambda d: d.update(meta=[1]),
    "meta_string": lambda d: d.update(meta="x"),
}


@st.composite
def prediction_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid prediction with random optional fields, then 0 to 2 ``FAULTS``."""
    k = draw(st.integers(2, 4))
    doc: dict[str, Any] = {
        "id": draw(st.text(min_size=1, max_size=12)),
        "model": draw(st.sampled_from(["m", "digits@2", "é"])),
        "probs": draw(_normalised(k)),
    }
    if draw(st.booleans()):
        doc["classes"] = draw(st.lists(st.text(max_size=4), min_size=k, max_size=k))
    if draw(st.booleans()):
        doc["ensemble"] = draw(st.lists(_normalised(k), min_size=2, max_size=4))
    if draw(st.booleans()):
        doc["flags"] = draw(st.lists(st.text(max_size=5), max_size=3))
    if draw(st.booleans()):
        values = st.one_of(
            st.floats(allow_nan=False, allow_infinity=False), _INT, st.text(max_size=5)
        )
        doc["features"] = draw(st.dictionaries(st.text(max_size=5), values, max_size=3))
    if draw(st.booleans()):
        doc["ts"] = draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False), _INT))
    if draw(st.booleans()):
        doc["meta"] = draw(st.dictionaries(st.text(max_size=3), _SCALAR, max_size=3))
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["extra", "label", "x-y"]))] = draw(_SCALAR)
    for fault in draw(st.lists(st.sampled_from(sorted(FAULTS)), max_size=2, unique=True)):
        if _applicable(fault, doc):
            FAULTS[fault](doc)
    return doc


def _numeric(v: Any) -> bool:
    return isinstance(v, list) and all(type(x) in (int, float) for x in v)


def _applicable(fault: str, doc: dict[str, Any]) -> bool:
    """Faults on probs, classes and the ensemble are defined relative to numeric probs."""
    if not fault.startswith(("probs_", "classes_", "ensemble_", "member_")):
        return True
    if not _numeric(doc.get("probs")):
        return False
    members = doc.get("ensemble", [])
    return not fault.startswith("member_") or (
        isinstance(members, list) and all(_numeric(m) for m in members)
    )


def sums_and_lengths_ok(doc: dict[str, Any]) -> bool:
    """The rules outside the schema, for a schema-valid document."""
    k = len(doc["probs"])
    vectors = [doc["probs"], *doc.get("ensemble", [])]
    if any(abs(math.fsum(v) - 1.0) > 1e-3 for v in vectors):
        return False
    if "classes" in doc and len(doc["classes"]) != k:
        return False
    return all(len(v) == k for v in vectors)


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(prediction_like())
def test_schema_plus_sums_and_lengths_is_the_code(doc: dict[str, Any]) -> None:
    raw = orjson.dumps(doc)
    schema_valid = PREDICTION.is_valid(strict_json(raw))
    expected = schema_valid and sums_and_lengths_ok(doc)
    assert (code_verdict(raw) is None) == expected


# ---------------------------------------------------------------- outputs

CONFIG = {
    "topics": {"accepted": "predictions.accepted"},
    "eval_sample": {"rate": 0.3, "salt": "schema-test"},
    "calibration": {"temperatures": {"digits@2": 1.5}},
    "queues": [
        {"name": "flagged", "when": {"flags_any": ["pii"]}},
        {"name": "disagreement", "when": {"ensemble_kl_above": 0.05}},
        {"name": "uncertain", "when": {"any": [{"max_prob_below": 0.7}, {"margin_below": 0.1}]}},
        # Below: rules that only add reasons with the other ops (not_in, >=, <=, ...).
        {"name": "both-flags", "when": {"flags_all": ["pii", "user_report"]}},
        {
            "name": "audit",
            "when": {
                "all": [
                    {"model_in": ["odd"]},
                    {"not": {"model_in": ["other"]}},
                    {"not": {"ensemble_kl_above": 0.5}},
                    {"not": {"max_prob_below": 0.0}},
                    {"not": {"flags_any": ["never"]}},
                    {"not": {"flags_all": ["pii", "never"]}},
                ]
            },
        },
    ],
}


def _dist(rng: random.Random, k: int, sharp: float) -> list[float]:
    w = [rng.random() ** sharp for _ in range(k)]
    total = math.fsum(w) or 1.0
    return [x / total for x in w]


def varied_messages(n: int, seed: int = 7) -> list[bytes | None]:
    rng = random.Random(seed)
    raws: list[bytes | None] = []
    for i in range(n):
        k = rng.randint(2, 5)
        doc: dict[str, Any] = {
            "id": f"m-{i}",
            "model": rng.choice(["digits", "digits@2", "fraud@3", "odd"]),
            "probs": _dist(rng, k, rng.choice([1, 4, 12])),
        }
        if rng.random() < 0.35:
            doc["ensemble"] = [_dist(rng, k, rng.choice([1, 8])) for _ in range(rng.randint(2, 4))]
        if rng.random() < 0.3:
            doc["flags"] = rng.sample(["pii", "user_report", "lang:fr"], rng.randint(0, 3))
        if rng.random() < 0.3:
            doc["classes"] = [f"c{j}" for j in range(k)]
        if rng.random() < 0.3:
            doc["features"] = {"age": rng.randint(18, 90), "country": rng.choice(["FR", "US"])}
        if rng.random() < 0.3:
            doc["ts"] = 1_767_225_600 + rng.random() * 1000
        if rng.random() < 0.2:
            doc["meta"] = {"trace": f"t{i}", "nested": {"a": [1, 2]}}
        if rng.random() < 0.1:
            doc["unknown"] = {"kept": True}
        raws.append(orjson.dumps(doc))
    raws += [c.raw for c in AGREEMENT if not c.valid]
    raws += [c.raw for c in BEYOND_SCHEMA]
    raws += [bytes(rng.randrange(128, 256) for _ in range(20)) for _ in range(5)]
    raws.append(None)
    rng.shuffle(raws)
    return raws


def accepted_schema() -> dict[str, Any]:
    """``accepted_item`` has no schema file of its own: it is a review item without
    queue, priority and reasons."""
    review = f"{BASE_URI}review_item.v1.json"
    required = ["id", "model", "scores", "temperature", "prediction", "routed_at", "router"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": required,
        "properties": {key: {"$ref": f"{review}#/properties/{key}"} for key in required},
        "additionalProperties": False,
    }


def test_outputs_validate_against_their_schemas() -> None:
    config = parse_config(CONFIG)
    policy = Policy(config)
    raws = varied_messages(400)
    sources = [
        None if i % 7 == 0 else outputs.Source(config.topics.predictions, i % 3, 1000 + i)
        for i in range(len(raws))
    ]
    batch = decide_batch(raws, policy)  # type: ignore[arg-type]
    now = 1_767_225_700.5
    sent = outputs.router_outputs(batch, raws, sources, now) + outputs.eval_outputs(batch, now)

    by_topic = {
        config.topics.eval: validator("eval_sample"),
        config.topics.deadletter: validator("dead_letter"),
        config.topics.accepted: validator(accepted_schema()),
    }
    review = validator("review_item")
    queue_of = {q.topic: q.name for q in config.queues}
    by_topic.update({topic: review for topic in queue_of})
    seen: dict[str, int] = {}
    ops: set[str] = set()
    encodings: set[str] = set()
    for out in sent:
        doc = orjson.loads(out.value)
        errors = list(by_topic[out.topic].iter_errors(doc))
        assert not errors, (out.topic, doc, errors)
        seen[out.topic] = seen.get(out.topic, 0) + 1
        if out.topic in queue_of:
            assert doc["queue"] == queue_of[out.topic]
            ops.update(r["op"] for r in doc["reasons"])
        if out.topic == config.topics.deadletter:
            encodings.add(doc["raw_encoding"])
            assert out.key == (doc["id"].encode() if "id" in doc else None)
        else:
            assert out.key == doc["id"].encode()
    assert seen.get(config.topics.deadletter) == len(batch.errors)
    for topic in (config.topics.eval, config.topics.accepted, *queue_of):
        if topic != "review.both-flags":  # its items all land in "flagged" first
            assert seen.get(topic, 0) > 0, (topic, seen)
    assert ops == set(SCHEMAS["review_item"]["$defs"]["reason"]["properties"]["op"]["enum"])
    assert encodings == {"utf-8", "base64"}
    # the accepted items built one by one (router_outputs inlines accepted_item) are the
    # same ones, byte for byte and in order
    passed = [outputs.accepted_item(batch, int(i), now) for i in batch.rows(PASS)]
    assert len(passed) == seen[config.topics.accepted]
    published = [o.value for o in sent if o.topic == config.topics.accepted]
    assert published == [orjson.dumps(item) for item in passed]


def test_base64_dead_letter_round_trips() -> None:
    raw = b'{"id":"p-\xff"}'
    batch = decide_batch([raw], Policy(parse_config({})))
    letter = outputs.dead_letter(batch, 0, raw, None, 1.0)
    assert validator("dead_letter").is_valid(orjson.loads(orjson.dumps(letter)))
    assert letter["raw_encoding"] == "base64" and "id" not in letter
    assert base64.b64decode(letter["raw"]) == raw


def test_internal_error_dead_letter() -> None:
    policy = Policy(parse_config({}))
    raw = msg()
    batch = poisoned(policy, raw, RuntimeError("boom"))
    letter = outputs.dead_letter(batch, 0, raw, outputs.Source("predictions", 0, 5), 1.0)
    assert validator("dead_letter").is_valid(orjson.loads(orjson.dumps(letter)))
    assert letter["error"]["code"] == "internal_error" and letter["id"] == BASE["id"]


def test_schemas_refuse_broken_outputs() -> None:
    config = parse_config({**CONFIG, "eval_sample": {"rate": 0.0}})
    batch = decide_batch([msg(flags=["pii"])], Policy(config))
    assert batch.fate_name(0) == "review"
    item = orjson.loads(orjson.dumps(outputs.review_item(batch, 0, 1.0)))  # as published
    review = validator("review_item")
    assert review.is_valid(item)
    broken = [
        {**item, "reasons": []},
        {**item, "priority": "high"},
        {**item, "temperature": 0},
        {**item, "extra": 1},
        {**item, "scores": {**item["scores"], "ensemble_kl": 0.1}},  # without vote_entropy, bald
        {**item, "reasons": [{**item["reasons"][0], "op": "<"}]},  # flags need a set op
        {**item, "prediction": {**item["prediction"], "probs": [2, -1]}},
        {k: v for k, v in item.items() if k != "router"},
    ]
    for doc in broken:
        assert not review.is_valid(doc), doc


# ---------------------------------------------------------------- labels

LABEL = {"id": "p-1", "label": "cat", "annotator": "ann-7", "source": "review"}
GOOD_LABELS = [
    LABEL,
    {**LABEL, "label": 3, "source": "eval"},
    {
        **LABEL,
        "queue": "uncertain",
        "ts": 1767225600.5,
        "correction": {"reason": "wrong_class_boundary", "note": "looks like a 7"},
    },
    {**LABEL, "correction": {"reason": "model_correct"}},
    {**LABEL, "tool": "label-studio"},
]
BAD_LABELS = [
    {k: v for k, v in LABEL.items() if k != "annotator"},
    {k: v for k, v in LABEL.items() if k != "label"},
    {**LABEL, "id": ""},
    {**LABEL, "label": True},
    {**LABEL, "label": None},
    {**LABEL, "label": 1.5},
    {**LABEL, "label": -1},
    {**LABEL, "source": "train"},
    {**LABEL, "queue": 2},
    {**LABEL, "ts": "now"},
    {**LABEL, "correction": {"reason": "other"}},
    {**LABEL, "correction": {"note": "no reason"}},
    {**LABEL, "correction": {"reason": "bad_input", "note": 3}},
    {**LABEL, "correction": "bad_input"},
]


@pytest.mark.parametrize("doc", GOOD_LABELS)
def test_good_labels(doc: dict[str, Any]) -> None:
    assert validator("label").is_valid(doc), list(validator("label").iter_errors(doc))


@pytest.mark.parametrize("doc", BAD_LABELS)
def test_bad_labels(doc: dict[str, Any]) -> None:
    assert not validator("label").is_valid(doc)


@pytest.mark.parametrize("doc", GOOD_LABELS + BAD_LABELS)
def test_the_label_parser_agrees_with_the_schema(doc: dict[str, Any]) -> None:
    from hitl_router.router.config import DEFAULT_REASONS
    from hitl_router.router.labels import Label, parse_label

    parsed = parse_label(orjson.dumps(doc), DEFAULT_REASONS)
    assert isinstance(parsed, Label) == validator("label").is_valid(doc), parsed


def test_label_loop_outputs_validate_against_their_schemas() -> None:
    from hitl_router.router.join import decision_record, qa_item
    from hitl_router.router.label_metrics import assess, temperature_message
    from hitl_router.router.labels import Label

    policy = Policy(
        parse_config(
            {"eval_sample": {"rate": 0.0}, "queues": [{"name": "q", "when": {"max_prob_below": 1}}]}
        )
    )
    batch = decide_batch([b'{"id":"a","model":"m","probs":[0.7,0.3],"classes":["x","y"]}'], policy)
    router = {"version": "0.1.0", "config_hash": "abc"}
    item = qa_item(decision_record(batch, 0, 1.0), Label("a", "x", "ann", "review"), 2.0, router)
    assert validator("qa_item").is_valid(item), list(validator("qa_item").iter_errors(item))
    rng = random.Random(0)
    probs = [[p, 1 - p] for p in (rng.random() for _ in range(400))]
    labels = [0 if rng.random() < p[0] ** 3 else 1 for p in probs]
    import numpy as np

    report = assess(np.array(probs), np.array(labels), [str(i) for i in range(400)], min_labels=50)
    msg = temperature_message("m@1", 1.0, report, 3.0, router)
    assert validator("calibration").is_valid(msg), list(validator("calibration").iter_errors(msg))
    assert not validator("calibration").is_valid({**msg, "temperature": 0})
