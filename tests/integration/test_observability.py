"""What the SREs get, end to end, and the demo as a user runs it: ``hitl-router demo
--prometheus`` on the real local Kafka
(router, sampler and drift agents, the label loop, a simulated review team, load control
and dedup on, the stream drifting half-way) with Debian's Prometheus scraping both workers
and evaluating the project's rules. Every query of every dashboard panel must parse and
return data, every rule must evaluate without error, and the drift alarm must fire."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hitl_router import dashboard
from hitl_router.localprom import LocalPrometheus, PrometheusQueryError
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.kafka

DURATION_S = 40
RATE = 300


def _panel_queries() -> dict[tuple[str, str], str]:
    """(panel, expr as Grafana writes it) → the PromQL Grafana would send."""
    board = json.loads((REPO / dashboard.OUT).read_text())
    return {
        (title, expr): expr.replace("$__rate_interval", "30s")
        for title, expr in dashboard.queries(board)
    }


class _Lines(threading.Thread):
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def find(self, prefix: str) -> str | None:
        return next((x for x in self.lines if x.startswith(prefix)), None)


def test_demo_prometheus_answers_every_panel_and_raises_the_drift_alarm(kafka_bootstrap):
    prom_port = free_port()
    argv = [sys.executable, "-m", "hitl_router.cli", "demo", "--duration", str(DURATION_S)]
    argv += ["--rate", str(RATE), "--drift-at", str(RATE * DURATION_S // 2)]
    argv += ["--bootstrap", kafka_bootstrap, "--metrics-port", str(free_port())]
    argv += ["--prometheus", "--prometheus-port", str(prom_port)]
    argv += ["--seed", "1", "--review-error-rate", "0"]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = _Lines(proc)
    out.start()
    try:
        deadline = time.monotonic() + 120
        while out.find("Prometheus on ") is None and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(out.lines)
            time.sleep(0.5)
        assert out.find("Prometheus on ") is not None, "".join(out.lines)
        prom = LocalPrometheus(Path("unused.yml"), prom_port, Path("unused"))  # a client

        pending = _panel_queries()
        failed: dict[tuple[str, str], str] = {}
        alarm = firing = False
        deadline = time.monotonic() + DURATION_S + 60
        while (pending or not firing) and proc.poll() is None and time.monotonic() < deadline:
            for key, query in list(pending.items()):
                try:
                    if prom.query(query):
                        del pending[key]
                except PrometheusQueryError as exc:  # does not parse: never will
                    failed[key] = str(exc)
                    del pending[key]
            alarm = alarm or bool(prom.query("hitl_drift_alarm == 1"))
            firing = any(
                a["labels"]["alertname"] == "HitlDriftAlarm" and a["state"] == "firing"
                for a in prom.alerts()
            )
            time.sleep(2)
        assert not failed, failed
        assert not pending, f"panels without data: {sorted(pending)}"
        assert alarm and firing, "the drift alarm did not fire"

        groups = prom.rules()
        assert {g["name"] for g in groups} == {
            "hitl-router.sre",
            "hitl-router.warning-signs",
        }
        broken = {r["name"]: r.get("lastError") for g in groups for r in g["rules"]}
        broken = {k: v for k, v in broken.items() if v}
        assert not broken, broken
        targets = prom.targets()
        assert {t["labels"]["job"] for t in targets} == {"hitl-router", "hitl-router-labels"}
        assert all(t["health"] == "up" for t in targets), targets

        assert proc.wait(timeout=120) == 0, "".join(out.lines)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    out.join(timeout=10)
    text = "".join(out.lines)
    n = RATE * DURATION_S
    assert f"published {n}, decided {n} (each exactly one fate)" in text, text
    assert "drift: windows of 500; an alarm is 4 drifted of the last 6" in text
    # the demo's own summary: every prediction one fate, a routed item with its reasons,
    # and the label loop closed: the review team's labels measured the model and fitted a
    # temperature that softens the over-confident committee (--sharpen 0.3)
    assert "review/uncertain" in text and " e.g. demo-" in text
    assert "Stopped the local Kafka" not in text  # it used the broker that was there
    sent = re.search(
        r"labels sent by the review team: eval (\d+), review (\d+), qa (\d+); joined (\d+)",
        text,
    )
    assert sent, text
    eval_n, review_n, qa_n, joined = map(int, sent.groups())
    assert eval_n >= 100 and review_n > 0 and joined == eval_n + review_n + qa_n
    line = re.search(
        r"digits-committee: eval accuracy (\S+) \[(\S+), (\S+)\] on n=(\d+) eval "
        r"labels; ECE (\S+) before, (\S+) after temperature T=(\S+) \(fitted",
        text,
    )
    assert line, text
    acc, lo, hi, n, ece, ece_after, t = (float(x) for x in line.groups())
    assert lo < acc < hi and n > 0 and 0 < ece < 0.3 and 0 < ece_after < 0.3 and t > 1.2
    assert "=== where to look ===" in text
    assert f"Prometheus stopped with the demo: http://127.0.0.1:{prom_port}/graph" in text
    assert "deploy/grafana/dashboards/hitl-router.json" in text
