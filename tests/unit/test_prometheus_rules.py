"""The alert rules and the Prometheus config, checked by Debian's promtool (fetched by
``make test``): syntax, and ``promtool test rules`` unit tests of every alert, firing and
not firing. Every alert carries a severity, a summary and a README runbook line."""

from __future__ import annotations

import re

import pytest
import yaml

from hitl_router.localprom import promtool
from tests.conftest import REPO

RULES = REPO / "deploy/prometheus/rules/hitl-router.rules.yml"
TESTS = sorted((REPO / "deploy/prometheus/tests").glob("*.test.yml"))
CONFIG = REPO / "deploy/prometheus/prometheus.yml"


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_accepts_the_rules_and_the_config():
    out = promtool("check", "rules", str(RULES)).stdout
    n = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert f"SUCCESS: {n} rules found" in out
    assert "SUCCESS" in promtool("check", "config", str(CONFIG)).stdout


def test_every_alert_passes_its_promtool_unit_tests():
    assert len(TESTS) == 2
    res = promtool("test", "rules", *map(str, TESTS), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(TESTS)


def test_promtool_unit_tests_fail_when_a_rule_is_wrong(tmp_path):
    """The unit tests can fail: with one threshold changed, promtool reports it."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(
        "hitl:deadletter:ratio5m > 0.05", "hitl:deadletter:ratio5m > 0.5"
    )
    assert broken != RULES.read_text()
    (tmp_path / "rules" / RULES.name).write_text(broken)
    for t in TESTS:
        (tmp_path / "tests" / t.name).write_text(t.read_text())
    res = promtool("test", "rules", *(str(tmp_path / "tests" / t.name) for t in TESTS), check=False)
    assert res.returncode != 0 and "HitlDeadLetterSpike" in res.stdout + res.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    tests = [t for f in TESTS for t in yaml.safe_load(f.read_text())["tests"]]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_every_alert_has_a_severity_a_summary_and_a_runbook_line(alert):
    assert alert["labels"]["severity"] in {"page", "ticket", "warning"}
    assert alert["annotations"]["summary"]
    assert alert["annotations"]["runbook"] == f"README.md#alerts: {alert['alert']}"
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## Alerts") :]
    section = section[: section.index("\n## ", 1)]
    assert re.search(rf"^\| `{alert['alert']}` \|.+\|.+\|", section, re.M), alert["alert"]
