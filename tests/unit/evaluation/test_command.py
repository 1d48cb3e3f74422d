"""``hitl-router evaluate-loop`` as a user runs it: the verdicts on a task where
uncertainty sampling is known to help and on one where nothing can, the outputs, their
determinism, and bad options refused before any work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hitl_router.cli import main
from hitl_router.evaluation.strategies import NAMES


def run(tmp_path: Path, name: str, *args: str) -> tuple[dict, Path]:
    out = tmp_path / name
    assert main(["evaluate-loop", "--out", str(out), "--jobs", "2", *args]) == 0
    return json.loads((out / "summary.json").read_text()), out


def test_on_a_well_separated_task_with_a_small_seed_set_routing_pays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary, out = run(
        tmp_path, "separable", "--task", "separable", "--seeds", "6", "--budget", "100",
        "--rounds", "20",
    )  # fmt: skip
    mine = summary["strategies"]["config"]
    assert summary["labels_help"]["verdict"] is True
    assert mine["verdict"] == "pays", mine
    assert mine["vs_random_points"]["low"] > 0 and mine["saving"] > 0.1
    assert summary["verdict"].startswith("routing pays here")
    for name in ("max_prob", "margin", "entropy"):
        assert summary["strategies"][name]["verdict"] == "pays", name
    printed = capsys.readouterr().out
    assert "routing pays here" in printed and "learning-curves.png" in printed
    # the outputs: every checkpoint of every strategy and seed, and a real PNG
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == 6 * len(NAMES) * len(summary["grid"])
    assert {r["strategy"] for r in rows} == set(NAMES)
    png = (out / "learning-curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


def test_on_pure_label_noise_routing_does_not_pay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary, _ = run(
        tmp_path, "noise", "--task", "noise", "--seeds", "3", "--budget", "60", "--rounds", "20"
    )
    assert summary["labels_help"]["verdict"] is False
    assert summary["labels_help"]["p_value"] > 0.2
    for name, s in summary["strategies"].items():
        assert s["saving"] is None, name
        if name != "random":
            assert s["verdict"] == "does not pay", name
    assert summary["verdict"].startswith("routing does not pay here")
    assert "routing does not pay here" in capsys.readouterr().out


def test_the_outputs_are_the_same_bytes_for_the_same_options(tmp_path: Path) -> None:
    args = "--seeds 2 --budget 40 --rounds 20 --drift-at 300 --label-error 0.1".split()
    args += ["--queue-cost", "flagged=4", "--retrain-cost", "0.5"]
    one, a = run(tmp_path, "a", *args)
    out = tmp_path / "b"
    assert main(["evaluate-loop", "--out", str(out), "--jobs", "1", *args]) == 0
    for f in ("summary.json", "curves.csv", "learning-curves.png"):
        assert (a / f).read_bytes() == (out / f).read_bytes(), f
    assert one["settings"]["drift_at"] == 300 and one["settings"]["queue_costs"] == {"flagged": 4.0}
    assert len(one["seeds"]) == 2 and set(one["seeds"][0]["warnings"]) == set(NAMES)
    config = one["strategies"]["config"]["cost"]
    assert config["retrain_cost"] == 1.0  # two refits each, 0.5 each


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "--budget: must be at least 1"),
        (["--budget", "10", "--rounds", "20"], "--rounds: must be between 1 and --budget"),
        (["--budget", "2000"], "the digits stream holds 1228 predictions"),
        (["--drift-at", "5000"], "--drift-at 5000: the stream holds 1228"),
        (["--label-error", "1"], "--label-error: must be in [0, 1)"),
        (["--queue-cost", "nosuch=2"], "no queue 'nosuch' in the config"),
        (["--queue-cost", "flagged"], "expected QUEUE=COST"),
        (["--queue-cost", "flagged=x"], "'x' is not a number"),
        (["-c", "/nonexistent.yaml"], "cannot read config file"),
    ],
)
def test_bad_options_stop_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["evaluate-loop", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
