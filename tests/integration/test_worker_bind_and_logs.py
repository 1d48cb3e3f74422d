"""The worker's operational surface on the real local Kafka: the address its web
server binds to (``metrics.host``, ``--metrics-host``), and JSON logs
(``--log-format json``) whose every line carries the worker's id, group and the
partitions it holds."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port
from tests.integration.helpers import start_worker, stop, write_config

pytestmark = pytest.mark.kafka

FIELDS = {"ts", "level", "logger", "message", "worker", "group", "assignment"}


def get(host: str, port: int, path: str) -> tuple[int, dict]:
    """Status and JSON body of ``http://host:port/path`` (a 503 is an answer too)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def wait_ready(proc, host: str, port: int, log: Path, timeout: float = 90) -> dict:
    """Until /readyz says 200: the worker joined its group and holds its assignment."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            status, body = get(host, port, "/readyz")
            if status == 200:
                return body
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, f"not ready in {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def refused(host: str, port: int) -> bool:
    """Nothing listens on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) != 0


@pytest.mark.parametrize(
    ("configured", "flag", "listens", "not_on"),
    [
        ("127.0.0.1", None, "127.0.0.1", "127.0.0.2"),  # metrics.host of the config
        ("127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.1"),  # --metrics-host overrides it
    ],
)
def test_web_server_listens_on_the_configured_address_only(
    kafka_bootstrap, tmp_path, configured, flag, listens, not_on
):
    """Both addresses are this machine's (127.0.0.0/8): a server bound to every interface
    would answer on both, so answering on one only shows the bind address is used."""
    cfg_path = tmp_path / "config.yaml"
    port = free_port()
    write_config(cfg_path, kafka_bootstrap, metrics={"port": port, "host": configured})
    log = tmp_path / "worker.log"
    proc = start_worker(cfg_path, port, log, *(["--metrics-host", flag] if flag else []))
    try:
        body = wait_ready(proc, listens, port, log)
        assert body["ready"] is True and body["partitions"] >= 3
        status, health = get(listens, port, "/healthz")
        assert status == 200 and health["healthy"] is True
        with urllib.request.urlopen(f"http://{listens}:{port}/metrics", timeout=2) as resp:
            assert b"hitl_predictions_total" in resp.read()
        assert refused(not_on, port)
    finally:
        stop([proc])
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_json_logs_carry_worker_group_and_assignment(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "config.yaml"
    cfg = write_config(cfg_path, kafka_bootstrap)
    port = cfg["metrics"]["port"]
    predictions = cfg["topics"]["predictions"]
    log = tmp_path / "worker.log"  # the worker's stdout and stderr, both
    proc = start_worker(cfg_path, port, log, "--log-format", "json")
    try:
        wait_ready(proc, "127.0.0.1", port, log)
        assigned_at = log.stat().st_size  # every line from here on is logged after it
    finally:
        stop([proc])  # SIGTERM: the worker logs its way out
    assert proc.returncode == 0, log.read_text()[-3000:]

    raw = log.read_bytes()
    assert raw.endswith(b"\n")
    lines, after = [], []
    start = 0
    for text in raw.split(b"\n")[:-1]:
        try:
            line = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {text[:300]!r}") from None
        lines.append(line)
        if start >= assigned_at:
            after.append(line)
        start += len(text) + 1
    assert len(lines) >= 10 and after, raw.decode()[-3000:]
    for line in lines:
        assert set(line) >= FIELDS, line
        assert line["worker"] == f"{socket.gethostname()}:{proc.pid}"
        assert line["group"] == cfg["kafka"]["group_id"]
        assert datetime.fromisoformat(line["ts"]).utcoffset() == timedelta(0)
        assert line["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert isinstance(line["message"], str) and line["logger"]
    # the worker's lines and the libraries' (Faust, mode, aiokafka) alike
    loggers = {line["logger"].split(".")[0] for line in lines}
    assert {"hitl_router", "faust"} <= loggers, loggers
    # nothing held before the first rebalance; every line after it names what is held
    assert lines[0]["assignment"] == {}
    for line in after:
        assert line["assignment"].get(predictions) == [0, 1, 2], line
