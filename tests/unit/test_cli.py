"""The command line as a user runs it: exit codes, messages, replay's output."""

from __future__ import annotations

import orjson
import pytest

from hitl_router.cli import main
from hitl_router.simulate import write_jsonl
from tests.conftest import REPO


def test_check_config_prints_resolved_rules(capsys):
    assert main(["check-config", str(REPO / "examples" / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "name: disagreement" in out and "ensemble_kl_above: 0.05" in out
    assert "config OK: 3 queue(s)" in out


def test_check_config_never_prints_the_eval_salt(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval_sample: {rate: 0.1, salt: do-not-show-me-42}\n")
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "do-not-show-me-42" not in out
    assert "salt_fingerprint: blake2b:" in out


@pytest.mark.parametrize("command", ["check-config {}", "replay in.jsonl -c {}", "worker -c {}"])
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, command):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("queues:\n  - name: u\n    when: {max_prob_belo: 0.7}\n")
    (tmp_path / "in.jsonl").write_text("")
    argv = [
        a.format(cfg) if "{}" in a else str(tmp_path / a) if a.endswith(".jsonl") else a
        for a in command.split()
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "queues[0].when.max_prob_belo" in err and "unknown rule key" in err


def test_replay_writes_one_line_per_input_and_a_summary(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    n = write_jsonl(src, 2000, seed=3, malformed_rate=0.02)
    with src.open("ab") as f:
        f.write(b"\n")  # an empty line is a message too: a dead letter
    out = tmp_path / "out.jsonl"
    summary_file = tmp_path / "summary.json"
    code = main(
        [
            "replay",
            str(src),
            "-c",
            str(REPO / "examples" / "config.yaml"),
            "-o",
            str(out),
            "--summary",
            str(summary_file),
        ]
    )
    assert code == 0
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == n + 1
    assert [rec["line"] for rec in lines] == list(range(1, n + 2))
    summary = orjson.loads(capsys.readouterr().out)
    assert summary == orjson.loads(summary_file.read_bytes())
    assert summary["messages"] == n + 1
    assert sum(summary["fates"].values()) == n + 1
    assert summary["fates"]["deadletter"] == sum(r["fate"] == "deadletter" for r in lines)
    assert lines[-1]["fate"] == "deadletter" and lines[-1]["error"]["code"] == "not_json"
    for rec in lines:
        assert set(rec) >= {"id", "fate", "reasons", "scores", "line"}
        if rec["fate"] == "review":
            assert rec["queue"] and rec["reasons"]
    # the simulator's messages carry the true label: error capture is reported
    labels = summary["labels"]
    assert labels["labelled"] == n + 1 - summary["fates"]["deadletter"]
    assert 0.0 <= labels["error_capture"] <= 1.0
    assert labels["review_precision"] > labels["by_fate"]["pass"]["error_rate"]


def test_replay_missing_input_exits_2(tmp_path, capsys):
    code = main(
        ["replay", str(tmp_path / "nope.jsonl"), "-c", str(REPO / "examples" / "config.yaml")]
    )
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["replay"])
    assert exc.value.code == 2


def test_check_config_shows_load_control_as_resolved(tmp_path, capsys):
    """Priorities, a target rate, a budget, a diversity cap and dedup, with their
    defaults filled in: what a team reads before deploying a config."""
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        """
queues:
  - name: disagreement
    topic: review.disagreement
    when: {ensemble_kl_above: {target_rate: 0.05}}
    priority: {ensemble_kl: 1.0, entropy_norm: 0.5}
    diversity: {key: pred_class, max_share: 0.3}
  - name: uncertain
    topic: review.uncertain
    when: {max_prob_below: 0.7}
    budget: {items: 600, per: hour}
dedup: {retention_s: 600}
"""
    )
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    disagreement, uncertain = doc["queues"]
    assert disagreement["when"] == {"ensemble_kl_above": {"target_rate": 0.05}}
    rate = {"target_rate": 0.05, "window": 10_000}  # the default window, resolved
    assert disagreement["target_rates"] == {"ensemble_kl_above": rate}
    assert disagreement["priority"] == {"ensemble_kl": 1.0, "entropy_norm": 0.5}
    assert disagreement["diversity"]["max_share"] == 0.3
    assert disagreement["diversity"]["key"] == "pred_class"
    assert "window" in disagreement["diversity"] and "budget" not in disagreement
    assert uncertain["budget"]["items"] == 600 and uncertain["budget"]["per"] == "hour"
    assert uncertain["priority"] == {"const": 1.0, "max_prob": -1.0}  # the default
    assert "diversity" not in uncertain and "target_rates" not in uncertain
    assert doc["dedup"] == {"retention_s": 600.0, "max_ids": 100_000}
    assert "config OK: 2 queue(s)" in out


def test_worker_metrics_host_is_validated_like_the_config(tmp_path, capsys):
    """A bad bind address stops the worker before it touches Kafka: exit 2, naming the
    flag or the config key."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("metrics: {port: 9200}\n")
    assert main(["worker", "-c", str(cfg), "--metrics-host", "0.0.0.0:9200"]) == 2
    err = capsys.readouterr().err
    assert "--metrics-host: expected an IP address or a host name" in err
    assert "'0.0.0.0:9200'" in err
    cfg.write_text("metrics: {port: 9200, host: 'http://localhost'}\n")
    assert main(["worker", "-c", str(cfg)]) == 2
    assert "metrics.host: expected an IP address or a host name" in capsys.readouterr().err


def test_check_config_shows_the_metrics_bind_address(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text("metrics: {port: 9200, host: 127.0.0.1}\n")
    assert main(["check-config", str(cfg)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metrics"]["host"] == "127.0.0.1"
    cfg.write_text("metrics: {port: 9200}\n")
    assert main(["check-config", str(cfg)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metrics"]["host"] == "0.0.0.0"


def test_log_format_takes_text_or_json():
    with pytest.raises(SystemExit) as exc:
        main(["worker", "-c", "c.yaml", "--log-format", "xml"])
    assert exc.value.code == 2
