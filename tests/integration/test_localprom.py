"""The real Prometheus and promtool (PATH or Debian's package): scrape, query, rules, reload.

A ``prometheus_client`` HTTP server in this process exposes a gauge of known value; no
Kafka is involved.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from hitl_router.localprom import (
    Binaries,
    LocalPrometheus,
    PrometheusError,
    PrometheusQueryError,
    fetch_prometheus,
    promtool,
)

HITL_ROUTER = Path(sys.executable).with_name("hitl-router")
GAUGE = "hitl_localprom_test_value"
VALUE = 42.5
RULES = f"""\
groups:
  - name: localprom-test
    interval: 1s
    rules:
      - record: job:{GAUGE}:max
        expr: max by (job) ({GAUGE})
      - alert: LocalpromValueHigh
        expr: {GAUGE} > 40
        labels: {{severity: page}}
        annotations: {{summary: "value is {{{{ $value }}}}"}}
"""
RULE_TESTS = f"""\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{GAUGE}{{job="x"}}'
        values: '10 50 50'
    alert_rule_test:
      - eval_time: 0m
        alertname: LocalpromValueHigh
        exp_alerts: []
      - eval_time: 2m
        alertname: LocalpromValueHigh
        exp_alerts:
          - exp_labels: {{severity: page, job: x}}
            exp_annotations: {{summary: "value is 50"}}
    promql_expr_test:
      - expr: job:{GAUGE}:max
        eval_time: 1m
        exp_samples:
          - labels: 'job:{GAUGE}:max{{job="x"}}'
            value: 50
"""
BROKEN_CONFIG = "scrape_configs:\n  - job_name: broken\n    bogus_field: 1\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    """``probe()``'s first truthy answer within ``timeout`` s (the first scrape takes ~6 s)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g}s (last answer {answer!r})")
        time.sleep(0.25)


def config(exporter_port: int, job: str = "exporter", rules: bool = True) -> str:
    rule_files = "rule_files: [rules.yml]\n" if rules else ""
    return (
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"{rule_files}"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    return fetch_prometheus()


@pytest.fixture
def exporter() -> Iterator[int]:
    """A /metrics endpoint with ``GAUGE`` = ``VALUE``; yields its port."""
    registry = CollectorRegistry()
    Gauge(GAUGE, "a value the test knows", registry=registry).set(VALUE)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yml").write_text(RULES)
    return tmp_path


def test_scrape_query_rules_alerts(binaries: Binaries, exporter: int, workdir: Path) -> None:
    (workdir / "prometheus.yml").write_text(config(exporter))
    prom = LocalPrometheus(workdir / "prometheus.yml", free_port(), workdir / "run")
    with prom:
        series = wait_for(GAUGE, lambda: prom.query(GAUGE))
        assert len(series) == 1
        assert series[0]["metric"] == {
            "__name__": GAUGE,
            "instance": f"127.0.0.1:{exporter}",
            "job": "exporter",
        }
        assert float(series[0]["value"][1]) == VALUE

        [target] = prom.targets()
        assert (target["health"], target["labels"]["job"]) == ("up", "exporter")
        now = time.time()
        [ranged] = prom.query_range(f"{GAUGE} * 2", now - 10, now, 1)
        assert {float(v) for _, v in ranged["values"]} == {2 * VALUE}

        recorded = wait_for("recording rule", lambda: prom.query(f"job:{GAUGE}:max"))
        assert float(recorded[0]["value"][1]) == VALUE
        [group] = prom.rules()
        assert group["name"] == "localprom-test"
        assert [rule["name"] for rule in group["rules"]] == [
            f"job:{GAUGE}:max",
            "LocalpromValueHigh",
        ]
        [alert] = wait_for("alert", prom.alerts)
        assert alert["state"] == "firing"  # no `for:`, so firing at the first evaluation
        assert alert["labels"]["severity"] == "page"
        assert alert["annotations"]["summary"] == f"value is {VALUE:g}"
    assert not prom.running()
    assert "Server is ready to receive web requests." in prom.log_file.read_text()


def test_bad_query_raises_with_prometheus_message(binaries: Binaries, workdir: Path) -> None:
    (workdir / "prometheus.yml").write_text(config(free_port(), rules=False))
    with LocalPrometheus(workdir / "prometheus.yml", free_port(), workdir / "run") as prom:
        assert prom.query("1 + 1")[0]["value"][1] == "2"  # parses
        assert prom.start() is prom and prom.running()  # already running: a no-op
        assert prom.query("time()", at=1700000000.5)[0]["value"] == [1700000000.5, "1700000000.5"]
        with pytest.raises(PrometheusQueryError) as info:
            prom.query(f"sum({GAUGE}")
        assert info.value.error_type == "bad_data"
        assert "parse error: unclosed left parenthesis" in str(info.value)
        with pytest.raises(PrometheusQueryError, match="bad_data: .*rate"):
            prom.query(f"rate({GAUGE})")  # a range vector is needed


def test_reload(binaries: Binaries, exporter: int, workdir: Path) -> None:
    path = workdir / "prometheus.yml"
    path.write_text(config(exporter, job="before", rules=False))
    with LocalPrometheus(path, free_port(), workdir / "run") as prom:
        assert prom.rules() == []
        path.write_text(config(exporter, job="after"))
        prom.reload()
        assert [group["name"] for group in prom.rules()] == ["localprom-test"]
        wait_for("job 'after'", lambda: prom.query(f'{GAUGE}{{job="after"}}'))

        path.write_text(BROKEN_CONFIG)
        with pytest.raises(PrometheusError) as info:
            prom.reload()
        assert "HTTP 500: failed to reload config" in str(info.value)
        assert "field bogus_field not found" in str(info.value)
        assert [group["name"] for group in prom.rules()] == ["localprom-test"]  # kept the old


def test_start_with_broken_config_shows_the_log(binaries: Binaries, workdir: Path) -> None:
    (workdir / "prometheus.yml").write_text(BROKEN_CONFIG)
    prom = LocalPrometheus(workdir / "prometheus.yml", free_port(), workdir / "run")
    with pytest.raises(PrometheusError) as info:
        prom.start(timeout=30)
    assert "Prometheus exited during startup (exit 2)" in str(info.value)
    assert "field bogus_field not found" in str(info.value)
    assert not prom.running()


def test_promtool_check_config(binaries: Binaries, workdir: Path) -> None:
    good, bad = workdir / "prometheus.yml", workdir / "broken.yml"
    good.write_text(config(9999))
    bad.write_text(BROKEN_CONFIG)
    proc = promtool("check", "config", str(good), binaries=binaries)
    assert "SUCCESS" in proc.stdout and "1 rule files found" in proc.stdout
    with pytest.raises(PrometheusError) as info:
        promtool("check", "config", str(bad), binaries=binaries)
    assert f"`promtool check config {bad}` failed (exit 1)" in str(info.value)
    assert "field bogus_field not found" in str(info.value)
    assert promtool("check", "config", str(bad), check=False, binaries=binaries).returncode == 1


def test_promtool_check_and_test_rules(binaries: Binaries, workdir: Path) -> None:
    rules, tests = workdir / "rules.yml", workdir / "rules_test.yml"
    assert "SUCCESS: 2 rules found" in promtool("check", "rules", str(rules)).stdout
    tests.write_text(RULE_TESTS)
    assert "SUCCESS" in promtool("test", "rules", str(tests)).stdout

    tests.write_text(RULE_TESTS.replace("value: 50", "value: 51"))
    with pytest.raises(PrometheusError) as failed:
        promtool("test", "rules", str(tests))
    message = str(failed.value)
    assert "Unit Testing:" in message and "FAILED:" in message
    assert f'exp: {{__name__="job:{GAUGE}:max", job="x"}} 5.1E+01' in message

    rules.write_text(RULES.replace(f"{GAUGE} > 40", f"{GAUGE} >"))
    with pytest.raises(PrometheusError) as broken:
        promtool("check", "rules", str(rules))
    assert "parse error" in str(broken.value)


def test_cli_fetch_prints_paths_and_versions(binaries: Binaries) -> None:
    proc = subprocess.run(
        [str(HITL_ROUTER), "prometheus", "fetch"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"# from {binaries.source}"
    assert lines[1].startswith(f"{binaries.prometheus}\tprometheus, version ")
    assert lines[2].startswith(f"{binaries.promtool}\tpromtool, version ")
