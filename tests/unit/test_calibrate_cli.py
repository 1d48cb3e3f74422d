"""``hitl-router calibrate`` and ``replay`` on labelled input, as a user runs them."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from sklearn.metrics import log_loss

from hitl_router.cli import main
from hitl_router.router import calibration as cal
from hitl_router.simulate import write_jsonl


def _run(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr()


def test_calibrate_prints_the_measures_of_an_over_confident_model(tmp_path, capsys):
    src = tmp_path / "labelled.jsonl"
    write_jsonl(src, 3000, seed=5, sharpen=0.2, malformed_rate=0.01)
    code, out = _run(capsys, ["calibrate", str(src)])
    assert code == 0
    r = orjson.loads(out.out)
    docs = [orjson.loads(line) for line in src.read_bytes().splitlines() if b'"p-0' in line]
    p = np.array([d["probs"] for d in docs])
    y = np.array([int(d["label"]) for d in docs])
    assert r["n"] == len(docs) and sum(r["skipped"].values()) == 3000 - len(docs)
    assert r["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-9)
    assert r["ece"] == pytest.approx(cal.ece(p, y), abs=1e-6)
    assert r["nll_before"] == pytest.approx(log_loss(y, p, labels=range(10)), abs=1e-6)
    assert r["temperature"] > 1.5 and r["accepted"]
    assert r["ece_after"] < r["ece"] and r["nll_after"] < r["nll_before"]
    assert set(r["recall"]) == {str(d) for d in range(10)}
    assert r["accuracy_lower"] < r["accuracy"] < r["accuracy_upper"]
    assert set(r["models"]) == {"digits-committee", "digits-committee@1"}


def test_calibrate_uses_the_configs_temperature_as_the_one_in_use(tmp_path, capsys):
    src = tmp_path / "labelled.jsonl"
    write_jsonl(src, 2000, seed=5, sharpen=0.2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("calibration: {temperatures: {digits-committee: 2.5}}\n")
    code, out = _run(capsys, ["calibrate", str(src), "-c", str(cfg)])
    r = orjson.loads(out.out)
    assert code == 0 and r["current"]["temperature"] == 2.5
    assert r["current"]["nll"] < r["nll_before"]


def test_calibrate_without_labels_exits_2_saying_why(tmp_path, capsys):
    src = tmp_path / "unlabelled.jsonl"
    src.write_bytes(b'{"id":"a","model":"m","probs":[0.6,0.4]}\nnot json\n')
    code, out = _run(capsys, ["calibrate", str(src)])
    assert code == 2
    assert "no labelled prediction" in out.err and "no_label" in out.err
    assert main(["calibrate", str(tmp_path / "missing.jsonl")]) == 2


def test_calibrate_skips_labels_that_name_no_class(tmp_path, capsys):
    src = tmp_path / "l.jsonl"
    src.write_bytes(
        b'{"id":"a","model":"m","probs":[0.6,0.4],"classes":["x","y"],"label":"y"}\n'
        b'{"id":"b","model":"m","probs":[0.6,0.4],"classes":["x","y"],"label":"z"}\n'
        b'{"id":"c","model":"m","probs":[0.3,0.7],"label":1}\n'
    )
    code, out = _run(capsys, ["calibrate", str(src), "-o", str(tmp_path / "r.json")])
    r = orjson.loads((tmp_path / "r.json").read_bytes())
    assert code == 0 and r["n"] == 2 and r["skipped"] == {"unknown_class": 1}
    assert r["accuracy"] == 0.5 and not r["accepted"]  # 2 labels: below min_labels


def test_replay_reports_calibration_on_the_eval_sample_and_on_all(tmp_path, capsys):
    src = tmp_path / "labelled.jsonl"
    write_jsonl(src, 4000, seed=2, sharpen=0.2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "eval_sample: {rate: 0.25, salt: s}\n"
        "queues: [{name: uncertain, when: {max_prob_below: 0.9}}]\n"
    )
    code, out = _run(capsys, ["replay", str(src), "-c", str(cfg), "-o", str(tmp_path / "d.jsonl")])
    assert code == 0
    labels = orjson.loads(out.out)["labels"]
    ev, everything = labels["calibration"]["eval"], labels["calibration"]["all"]
    assert ev["n"] == labels["by_fate"]["eval"]["labelled"]
    assert everything["n"] == 4000
    assert ev["accuracy"] == pytest.approx(labels["eval_accuracy"])
    assert ev["temperature"] > 1.2 and everything["temperature"] > 1.2
