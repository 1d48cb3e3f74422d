"""Labels as review tools write them: every malformed one gets a code, none raises."""

from __future__ import annotations

import orjson
import pytest

from hitl_router.router.config import DEFAULT_REASONS
from hitl_router.router.labels import Label, LabelError, class_index, parse_label

GOOD = {"id": "p-1", "label": "7", "annotator": "ann", "source": "review", "queue": "uncertain"}


def _parse(doc):
    return parse_label(orjson.dumps(doc), DEFAULT_REASONS)


def test_a_full_label_parses():
    doc = {**GOOD, "correction": {"reason": "ambiguous_input", "note": "smudged"}, "ts": 1.5}
    assert _parse(doc) == Label(
        "p-1", "7", "ann", "review", "uncertain", "ambiguous_input", "smudged", 1.5
    )


@pytest.mark.parametrize(
    ("raw", "code", "path"),
    [
        (b"not json", "invalid_json", None),
        (b"[1]", "not_an_object", None),
        (b'{"id":"a"' + b" " * 70_000 + b"}", "too_large", None),
        (
            orjson.dumps({k: v for k, v in GOOD.items() if k != "annotator"}),
            "missing_field",
            "annotator",
        ),
        (orjson.dumps({**GOOD, "id": ""}), "invalid_field", "id"),
        (orjson.dumps({**GOOD, "id": "x" * 257}), "invalid_field", "id"),
        (orjson.dumps({**GOOD, "label": True}), "invalid_field", "label"),
        (orjson.dumps({**GOOD, "label": -1}), "invalid_field", "label"),
        (orjson.dumps({**GOOD, "label": 1.5}), "invalid_field", "label"),
        (orjson.dumps({**GOOD, "source": "qa"}), "invalid_field", "source"),
        (orjson.dumps({**GOOD, "queue": 3}), "invalid_field", "queue"),
        (orjson.dumps({**GOOD, "ts": "now"}), "invalid_field", "ts"),
        (orjson.dumps({**GOOD, "correction": "typo"}), "invalid_field", "correction"),
        (
            orjson.dumps({**GOOD, "correction": {"reason": "lazy"}}),
            "unknown_reason",
            "correction.reason",
        ),
        (
            orjson.dumps({**GOOD, "correction": {"reason": "bad_input", "note": 1}}),
            "invalid_field",
            "correction.note",
        ),
    ],
)
def test_malformed_labels_get_a_code_and_a_path(raw, code, path):
    err = parse_label(raw, DEFAULT_REASONS)
    assert isinstance(err, LabelError) and err.code == code and err.path == path
    assert err.message


def test_the_taxonomy_is_the_configured_one():
    doc = {**GOOD, "correction": {"reason": "sensor_glare"}}
    assert isinstance(_parse(doc), LabelError)
    assert parse_label(orjson.dumps(doc), ("sensor_glare",)).reason == "sensor_glare"


def test_class_names_and_indices_resolve_against_the_prediction():
    assert class_index("dog", ["cat", "dog"], 2) == 1
    assert class_index(0, ["cat", "dog"], 2) == 0
    assert class_index(2, ["cat", "dog"], 2) is None
    assert class_index("0", ["cat", "dog"], 2) is None  # names given: a digit is not one
    assert class_index("1", None, 3) == 1 and class_index("٣", None, 5) is None
