"""``hitl-router profile`` and ``replay --drift-out`` as a user runs them."""

from __future__ import annotations

import re

import orjson
import pytest
import yaml

from hitl_router.cli import main
from hitl_router.router.drift import DriftMonitor
from hitl_router.router.drift_profile import load_profile
from hitl_router.simulate import Simulator, write_jsonl
from tests.conftest import REPO

W = 200
MODEL = "digits-committee@1"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("drift")
    write_jsonl(d / "pool.jsonl", 3000, seed=41, malformed_rate=0.01)
    with (d / "pool.jsonl").open("ab") as f:
        f.write(b"\n\nnot json\n")  # blank lines are ignored, the bad one counted
    write_jsonl(d / "live.jsonl", 2400, seed=42, drift_at=1200, malformed_rate=0.01)
    write_config(d / "config.yaml", {"window": W})
    return d


def write_config(path, drift: dict) -> None:
    """The example config with this ``drift`` section."""
    data = yaml.safe_load((REPO / "examples" / "config.yaml").read_text())
    path.write_text(yaml.safe_dump({**data, "drift": drift}))


@pytest.fixture(scope="module")
def profile_path(files):
    path = files / "profile.json"
    argv = ["profile", str(files / "pool.jsonl"), "-o", str(path)]
    assert main([*argv, "--window", str(W), "--bootstrap", "300", "--seed", "1"]) == 0
    return path


def test_profile_writes_a_loadable_profile_and_reports_invalid_lines(files, capsys):
    out = files / "p.json"
    argv = ["profile", str(files / "pool.jsonl"), "-o", str(out), "--window", str(W)]
    assert main([*argv, "--bootstrap", "200", "--alpha", "0.02"]) == 0
    captured = capsys.readouterr()
    summary = orjson.loads(captured.out)
    bad = summary["invalid_lines"]
    assert bad.get("not_json", 0) >= 1 and sum(bad.values()) + summary["predictions"] == 3001
    assert f"skipped {sum(bad.values())} invalid line(s)" in captured.err
    profile = load_profile(out)
    assert (profile.window, profile.alpha, profile.bootstrap) == (W, 0.02, 200)
    assert profile.models[MODEL].n == summary["predictions"]
    kinds = summary["models"][MODEL]["features"]
    assert kinds["device"] == "categorical" and kinds["max_prob"] == "numeric"
    assert summary["models"][MODEL]["thresholds"]["ink"]["psi"] > 0


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        (None, [], "cannot read"),
        (b"not json\n[1]\n", [], "holds no valid prediction"),
        (b"", ["--window", "5"], "--window must be ≥ 10"),
        (b"", ["--alpha", "1"], "--alpha must be between 0 and 1"),
        (b"", ["--bootstrap", "50"], "--bootstrap must be ≥ 1/alpha = 100"),
        ("small", ["--window", "2000"], "no model of .* can be profiled .*need at least 4000"),
    ],
)
def test_profile_usage_errors_exit_2(tmp_path, capsys, files, content, options, message):
    pool = tmp_path / "pool.jsonl"
    if content == "small":
        pool = files / "pool.jsonl"
    elif content is not None:
        pool.write_bytes(content)
    assert main(["profile", str(pool), "-o", str(tmp_path / "p.json"), *options]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "p.json").exists()


def test_replay_writes_drift_reports_from_the_monitor(files, profile_path, capsys):
    reports_path = files / "reports.jsonl"
    argv = ["replay", str(files / "live.jsonl"), "-c", str(files / "config.yaml")]
    argv += ["-o", str(files / "out.jsonl"), "--drift-out", str(reports_path)]
    assert main([*argv, "--profile", str(profile_path)]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    lines = [orjson.loads(x) for x in reports_path.read_bytes().splitlines()]
    keys = {"window", "model", "feature", "method", "score", "threshold", "drifted", "n"}
    assert all(set(r) >= keys | {"first_id", "last_id", "window_drifted"} for r in lines)
    # the same reports as the monitor fed the valid predictions directly, in order
    sim = Simulator(seed=42, drift_at=1200, malformed_rate=0.01)
    valid = [orjson.loads(m) for kind, m in sim.tagged_messages(2400) if kind is None]
    direct = DriftMonitor(load_profile(profile_path), window=W).update(valid)
    assert lines == [orjson.loads(orjson.dumps(r.as_dict())) for r in direct]
    drift = summary["drift"]["models"][MODEL]
    assert drift["windows"] == len(valid) // W and drift["pending"] == len(valid) % W
    assert drift["first_drifted_window"] in (1200 // W - 1, 1200 // W, 1200 // W + 1)
    assert summary["drift"]["drifted"] == len({r["window"] for r in lines if r["window_drifted"]})


def test_replay_takes_the_profile_from_the_config(files, profile_path, capsys):
    config = files / "with_profile.yaml"
    write_config(config, {"window": W, "profile": str(profile_path)})
    argv = ["replay", str(files / "live.jsonl"), "-c", str(config), "-o", str(files / "o.jsonl")]
    assert main([*argv, "--drift-out", str(files / "r.jsonl")]) == 0
    assert orjson.loads(capsys.readouterr().out)["drift"]["windows"] > 0


def test_replay_drift_errors_exit_2(files, profile_path, capsys):
    argv = ["replay", str(files / "live.jsonl"), "-o", str(files / "o.jsonl")]
    argv += ["--drift-out", str(files / "r.jsonl")]
    assert main([*argv, "-c", str(files / "config.yaml")]) == 2
    assert "drift needs a reference profile: pass --profile" in capsys.readouterr().err
    example = str(REPO / "examples" / "config.yaml")  # drift.window 1000 ≠ the profile's 200
    assert main([*argv, "-c", example, "--profile", str(profile_path)]) == 2
    assert "drift.window: is 1000 but" in capsys.readouterr().err
    assert main([*argv, "-c", example, "--profile", str(files / "nope.json")]) == 2
    assert "cannot read profile" in capsys.readouterr().err
