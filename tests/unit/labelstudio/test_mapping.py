"""Items → tasks and annotations → labels, without Label Studio."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from hitl_router.labelstudio.annotations import annotation_label, timestamp
from hitl_router.labelstudio.cursor import PollCursor
from hitl_router.labelstudio.interface import classes_of, label_config
from hitl_router.labelstudio.tasks import ProjectKey, eval_task, render, review_task
from hitl_router.router.config import DEFAULT_REASONS
from hitl_router.router.validation import ErrorInfo

REPO = Path(__file__).resolve().parents[3]
LABEL_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((REPO / "schemas" / "label.v1.json").read_text())
)


def _item(**over):
    doc = {
        "id": "p-1",
        "model": "digits@2",
        "queue": "uncertain",
        "priority": 0.55,
        "reasons": [
            {
                "queue": "uncertain",
                "rule": "margin_below",
                "metric": "margin",
                "value": 0.05,
                "op": "<",
                "threshold": 0.1,
            }
        ],
        "scores": {"max_prob": 0.45, "margin": 0.05, "entropy": 1.1, "entropy_norm": 0.5},
        "temperature": 1.3,
        "routed_at": 1000.0,
        "router": {"version": "0.1.0", "config_hash": "ab"},
        "prediction": {
            "id": "p-1",
            "model": "digits@2",
            "probs": [0.1, 0.5, 0.4],
            "classes": ["a&b", "$price", "<c>"],
            "features": {"ink": 0.25, "device": "x1"},
            "flags": ["pii"],
            "meta": {"src": "cam"},
            "label": "SECRET-TRUTH",
        },
    }
    doc.update(over)
    return doc


def test_a_review_item_becomes_a_task_with_the_models_answer_pre_annotated():
    spec = review_task(orjson.dumps(_item()))
    assert not isinstance(spec, ErrorInfo)
    assert spec.id == "p-1"
    assert spec.key == ProjectKey("review", "uncertain", ("a&b", "$price", "<c>"))
    (pre,) = spec.task["predictions"]
    # the top class of the probabilities, scored with the calibrated max_prob
    assert pre["result"][0]["value"] == {"choices": ["c1"]}
    assert pre["score"] == 0.45 and pre["model_version"] == "digits@2"
    data = spec.task["data"]
    assert data["priority"] == 0.55 and data["predicted"] == 1 and data["decided_at"] == 1000.0
    assert data["reasons"] == _item()["reasons"] and data["scores"] == _item()["scores"]
    assert "model says $price (calibrated p = 0.450)" in data["why"]
    assert "fired: margin_below (margin 0.050 < 0.1)" in data["why"]
    assert "ink = 0.25" in data["text"] and "flags: pii" in data["text"]
    assert "SECRET-TRUTH" not in json.dumps(spec.task)  # unknown fields are not shown
    assert classes_of(label_config(spec.key.classes, DEFAULT_REASONS)) == spec.key.classes


def test_priority_defaults_to_one_minus_max_prob_and_names_to_indices():
    doc = _item(priority=None)
    del doc["prediction"]["classes"]
    spec = review_task(orjson.dumps(doc))
    assert spec.task["data"]["priority"] == pytest.approx(0.55)
    assert spec.key.classes == ("0", "1", "2") and spec.task["data"]["named"] is False


def test_eval_tasks_are_blind_unless_configured_otherwise():
    sample = {
        "id": "e-1",
        "model": "m",
        "sample_rate": 0.02,
        "sampled_at": 5.0,
        "router": {"version": "v", "config_hash": "ab"},
        "prediction": {"id": "e-1", "model": "m", "probs": [0.2, 0.8]},
    }
    blind = eval_task(orjson.dumps(sample))
    assert "predictions" not in blind.task
    assert set(blind.task["data"]) == {
        "id",
        "model",
        "source",
        "classes",
        "named",
        "decided_at",
        "header",
        "text",
    }
    assert "0.8" not in json.dumps(blind.task)
    shown = eval_task(orjson.dumps(sample), blind=False)
    assert shown.task["predictions"][0]["result"][0]["value"] == {"choices": ["c1"]}
    assert shown.task["predictions"][0]["score"] == 0.8
    assert classes_of(label_config(blind.key.classes, None)) == ("0", "1")


@pytest.mark.parametrize(
    ("raw", "code", "path"),
    [
        (None, "not_json", None),
        (b"{oops", "not_json", None),
        (b"[1]", "not_object", None),
        (orjson.dumps({"id": "x", "model": "m", "queue": "q"}), "missing_field", "prediction"),
        (orjson.dumps(_item(id="")), "bad_type", "id"),
        (orjson.dumps(_item(prediction={"probs": "no"})), "bad_type", "prediction.probs"),
        (
            orjson.dumps(_item(prediction={"probs": [0.5, 0.5], "classes": ["a"]})),
            "length_mismatch",
            "prediction.classes",
        ),
    ],
)
def test_what_cannot_be_a_task_says_why(raw, code, path):
    error = review_task(raw)
    assert isinstance(error, ErrorInfo)
    assert (error.code, error.path) == (code, path)


def test_render_bounds_the_text():
    text = render({"features": {f"f{i}": "x" * 600 for i in range(100)}})
    assert len(text) <= 20_000 and text.endswith("…")
    assert render({}) == "(no features)"


def _ann(choice, **extra):
    result = [{"from_name": "label", "type": "choices", "value": {"choices": [choice]}}]
    result += extra.pop("more", [])
    return {
        "id": 11,
        "task": 4,
        "created_at": "2026-12-01T10:00:00Z",
        "updated_at": "2026-12-01T10:00:01.250000Z",
        "result": result,
        **extra,
    }


DATA = {
    "id": "p-1",
    "source": "review",
    "queue": "uncertain",
    "classes": ["a&b", "$price", "<c>"],
    "named": True,
    "predicted": 1,
}


def test_annotations_become_valid_labels():
    agree = annotation_label(DATA, _ann("c1"), "ann@x")
    LABEL_SCHEMA.validate(agree)
    assert agree["label"] == "$price" and agree["correction"] == {"reason": "model_correct"}
    assert (agree["annotation_id"], agree["task_id"], agree["tool"]) == (11, 4, "label-studio")
    assert agree["ts"] == timestamp("2026-12-01T10:00:01.25Z")
    more = [
        {"from_name": "correction_reason", "value": {"choices": ["out_of_distribution"]}},
        {"from_name": "correction_note", "value": {"text": ["  glare  "]}},
    ]
    wrong = annotation_label(DATA, _ann("c2", more=more), "ann@x")
    LABEL_SCHEMA.validate(wrong)
    assert wrong["label"] == "<c>"
    assert wrong["correction"] == {"reason": "out_of_distribution", "note": "glare"}
    # a config a team edited: plain class names come back too
    assert annotation_label(DATA, _ann("a&b"), "ann@x")["label"] == "a&b"
    # no class names: the index
    unnamed = annotation_label({**DATA, "named": False, "source": "eval"}, _ann("c2"), "a")
    assert unnamed["label"] == 2 and "correction" not in unnamed and "queue" in unnamed
    LABEL_SCHEMA.validate(unnamed)


@pytest.mark.parametrize(
    "annotation",
    [
        _ann("c1", was_cancelled=True),
        _ann("c9"),  # not a class of the task
        _ann("nope"),
        {"id": 1, "result": [], "updated_at": "2026-12-01T10:00:00Z"},
    ],
)
def test_skips_and_annotations_without_a_class_send_nothing(annotation):
    assert annotation_label(DATA, annotation, "ann@x") is None


def test_times_parse_in_labelstudios_formats():
    from datetime import UTC, datetime

    z = timestamp("2026-12-01T10:00:00.5Z")
    assert z == timestamp("2026-12-01T10:00:00.500000+00:00")
    assert z == timestamp(datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC))
    assert timestamp("yesterday") is None and timestamp(None) is None


def test_a_cursor_sends_each_revision_once_and_stays_small():
    c = PollCursor()
    since = c.since(2.0)
    assert since is None and c.fresh(1, 10.0, since) and c.fresh(2, 11.0, since)
    c.advance([10.1, 11.1], {1: 10.0, 2: 11.0}, overlap=2.0)
    since = c.since(2.0)
    assert since == pytest.approx(9.1)
    assert not c.fresh(1, 10.0, since) and not c.fresh(2, 11.0, since)
    assert c.fresh(1, 12.0, since)  # edited: a new revision
    assert not c.fresh(3, 9.0, since)  # older than since: an earlier poll had it
    c.advance([20.0], {1: 12.0}, overlap=2.0)
    assert c.sent == {}  # revisions at or below since = 18 cannot come back
    c.advance([], {}, overlap=2.0)
    assert c.watermark == 20.0
    again = PollCursor.from_json(c.to_json())
    assert again == c
