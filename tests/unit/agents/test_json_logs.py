"""JSON logs: one object per line with the worker's id, group and current assignment,
the assignment following Faust's rebalance signals, tracebacks kept, and the
rate limit of library lines still in force."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import faust
import orjson
import pytest
from faust.types import TP

from hitl_router.agents import json_logs
from hitl_router.agents.quiet_logs import RateLimit
from tests.conftest import REPO

FIELDS = {"ts", "level", "logger", "message", "worker", "group", "assignment"}


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """A handler on the loggers the tests use (as the worker's root handler would be)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(n) for n in ("hitl_router.test", "aiokafka.test", "faust.test")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    stream.handler = handler  # type: ignore[attr-defined]
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_one_json_object_with_the_workers_context(out):
    context = json_logs.LogContext(group="hitl-router-labels")
    json_logs.install(context, [out.handler])
    before = datetime.now(UTC)
    logging.getLogger("hitl_router.test").info("decided %d predictions", 500)
    logging.getLogger("aiokafka.test").warning("Heartbeat failed for group %s", "g")
    logging.getLogger("faust.test").debug("[^Worker]: Ready")
    after = datetime.now(UTC)
    got = lines(out)
    assert [(g["level"], g["logger"], g["message"]) for g in got] == [
        ("INFO", "hitl_router.test", "decided 500 predictions"),
        ("WARNING", "aiokafka.test", "Heartbeat failed for group g"),
        ("DEBUG", "faust.test", "[^Worker]: Ready"),
    ]
    for g in got:
        assert set(g) == FIELDS  # no exc_info without an exception
        assert g["worker"] == f"{socket.gethostname()}:{os.getpid()}"
        assert g["group"] == "hitl-router-labels" and g["assignment"] == {}
        ts = datetime.fromisoformat(g["ts"])
        assert ts.utcoffset() == timedelta(0)
        assert before - timedelta(milliseconds=1) <= ts <= after
    assert out.getvalue().startswith('{"ts":')  # the time first, for a reader


def test_assignment_follows_the_apps_rebalance_signals(out):
    """Through Faust's own signals, as the worker's consumer sends them."""
    context = json_logs.LogContext(worker="w-1", group="g")
    json_logs.install(context, [out.handler])
    app = faust.App("json-logs-test", broker="kafka://127.0.0.1:1")
    json_logs.track_assignment(app, context)
    log = logging.getLogger("hitl_router.test")

    async def rebalances() -> None:
        log.info("joining")
        held = {TP("predictions", p) for p in (2, 0, 1)} | {TP("g-__assignor-__leader", 0)}
        await app.on_partitions_assigned.send(held)
        log.info("assigned")
        await app.on_partitions_revoked.send({TP("predictions", 1)})
        log.info("one revoked")
        await app.on_partitions_revoked.send(held)
        log.info("all revoked")
        await app.on_partitions_assigned.send({TP("predictions", 4)})
        log.info("reassigned")

    asyncio.run(rebalances())
    assert [(g["message"], g["assignment"]) for g in lines(out)] == [
        ("joining", {}),
        ("assigned", {"g-__assignor-__leader": [0], "predictions": [0, 1, 2]}),
        ("one revoked", {"g-__assignor-__leader": [0], "predictions": [0, 2]}),
        ("all revoked", {}),
        ("reassigned", {"predictions": [4]}),
    ]
    assert {g["worker"] for g in lines(out)} == {"w-1"}


def test_an_exception_is_kept_whole_in_one_line(out):
    json_logs.install(json_logs.LogContext(group="g"), [out.handler])
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("hitl_router.test").exception("batch of %d failed", 3)
    [line] = out.getvalue().splitlines()  # the traceback's newlines are escaped
    got = orjson.loads(line)
    assert got["level"] == "ERROR" and got["message"] == "batch of 3 failed"
    assert got["exc_info"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in got["exc_info"]
    assert set(got) == FIELDS | {"exc_info"}


def test_rate_limited_library_lines_stay_json(out):
    """The worker's handler has both filters: quiet_logs' rate limit and the context."""
    now = [0.0]
    out.handler.addFilter(RateLimit(interval=30.0, clock=lambda: now[0]))
    json_logs.install(json_logs.LogContext(group="g"), [out.handler])
    library = logging.getLogger("aiokafka.test")
    for node in range(50):
        library.error("Unable to connect to node %d", node)
    now[0] = 31.0
    library.error("Unable to connect to node %d", 99)
    got = lines(out)
    assert [g["message"] for g in got] == [
        "Unable to connect to node 0",
        "Unable to connect to node 99 (49 like it held back in the last 31 s)",
    ]
    assert all(set(g) == FIELDS for g in got)


def test_install_again_replaces_nothing_twice(out):
    context = json_logs.LogContext(group="g")
    json_logs.install(context, [out.handler])
    json_logs.install(context, [out.handler])
    assert sum(isinstance(f, json_logs.ContextFilter) for f in out.handler.filters) == 1
    logging.getLogger("hitl_router.test").info("once")
    assert len(lines(out)) == 1


def test_a_config_error_is_a_json_line_like_the_others(tmp_path):
    """With --log-format json the worker's stderr holds only JSON lines, also when it
    refuses to start (exit 2, the message naming the key)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("metrics: {host: '0.0.0.0:9108'}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hitl_router.cli", "worker", "-c", str(cfg), "--log-format", "json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr.decode()
    assert stdout == b""
    [error] = [orjson.loads(line) for line in stderr.splitlines()]
    assert error["level"] == "ERROR" and error["logger"] == "hitl_router.cli"
    assert error["message"].startswith("hitl-router worker: metrics.host: expected an IP")
    assert error["worker"] == f"{socket.gethostname()}:{proc.pid}"
    assert error["group"] is None and error["assignment"] == {}  # not known yet


def test_a_stop_before_startup_finished_prints_no_empty_line(capsys, caplog):
    """Faust's worker prints an empty line when a stop signal came before its startup
    finished (to end its spinner); with ``--log-format json`` that broke the one-JSON-
    object-per-line output (seen in the suite, worker.log of
    test_json_logs_carry_worker_group_and_assignment). The worker logs instead."""
    from hitl_router.agents.worker import _QuietWorker

    worker = _QuietWorker.__new__(_QuietWorker)  # the method uses nothing of the worker
    worker.quiet, worker.stdout = False, sys.stdout
    with caplog.at_level(logging.INFO, logger="hitl_router.agents.worker"):
        worker._on_shutdown_immediately()
    assert capsys.readouterr() == ("", "")
    assert "before the worker's startup finished" in caplog.text
    faust.Worker._on_shutdown_immediately(worker)  # what it replaces
    assert capsys.readouterr().out == "\n"
