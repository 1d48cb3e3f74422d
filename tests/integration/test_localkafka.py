"""A real local Kafka broker: start, idempotence, produce/consume, stop.

Uses its own free ports and run dir, independent of the session broker of conftest.py.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from hitl_router.errors import KafkaSetupError
from hitl_router.localkafka import KAFKA_VERSION, LocalKafka, add_parser, is_reachable

pytestmark = pytest.mark.kafka

HITL_ROUTER = Path(sys.executable).with_name("hitl-router")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_broker_lifecycle_and_roundtrip(tmp_path: Path) -> None:
    port, controller = free_ports(2)
    kafka = LocalKafka(port=port, controller_port=controller, run_dir=tmp_path / "kafka")
    try:
        started = time.monotonic()
        assert kafka.start(timeout=120) is True
        print(f"broker ready in {time.monotonic() - started:.1f}s")
        status = kafka.status()
        assert status["running"] is True
        assert status["pid"] == int(kafka.pid_file.read_text())
        assert status["version"] == KAFKA_VERSION
        assert (kafka.data_dir / "meta.properties").exists()
        assert "Kafka Server started" in (kafka.run_path / "server.log").read_text()
        assert kafka.start() is False  # idempotent: answers already

        topic = "localkafka-roundtrip"
        admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        try:
            admin.create_topics(
                {topic: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True
            )
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
        try:
            producer.send(topic, key=b"k", value=b"hello kafka").get(timeout=30)
        finally:
            producer.close()
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=30_000,
        )
        try:
            record = next(iter(consumer))
        finally:
            consumer.close()
        assert (record.key, record.value) == (b"k", b"hello kafka")
    finally:
        stopped = kafka.stop()
    assert stopped is True
    assert not is_reachable(kafka.bootstrap)
    assert kafka.status()["running"] is False
    assert not kafka.pid_file.exists()
    assert kafka.stop() is False


def test_cli_status_exit_1_when_nothing_runs(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    proc = subprocess.run(
        [str(HITL_ROUTER), "kafka", "status", "--port", str(port), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"not running at 127.0.0.1:{port}" in proc.stdout


def test_cli_handlers_start_status_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="hitl-router")
    add_parser(parser.add_subparsers(dest="command", required=True))
    port, _ = free_ports(2)  # the controller takes port + 1; checked free below
    common = ["--port", str(port), "--dir", str(tmp_path / "kafka")]

    def run(action: str) -> tuple[int, str]:
        args = parser.parse_args(["kafka", action, *common])
        code = args.handler(args)
        return code, capsys.readouterr().out

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port + 1))
        except OSError:
            pytest.skip(f"controller port {port + 1} is taken")
    try:
        code, out = run("start")
        assert code == 0 and f"Kafka {KAFKA_VERSION} (KRaft) ready at 127.0.0.1:{port}" in out
        code, out = run("start")
        assert code == 0 and "already running" in out
        code, out = run("status")
        assert code == 0 and "running at" in out
    finally:
        code, out = run("stop")
    assert code == 0 and "stopped" in out
    assert run("status")[0] == 1


def test_broker_dying_at_startup_reports_its_log(tmp_path: Path) -> None:
    port, controller = free_ports(2)
    kafka = LocalKafka(port=port, controller_port=controller, run_dir=tmp_path / "kafka")
    kafka.data_dir.mkdir(parents=True)
    # Storage formatted for another node id: the broker refuses to start and exits.
    (kafka.data_dir / "meta.properties").write_text(
        "version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=7\n"
        "directory.id=AAAAAAAAAAAAAAAAAAAAAQ\n"
    )
    try:
        with pytest.raises(KafkaSetupError, match="exited during startup") as info:
            kafka.start(timeout=60)
        assert "server.log" in str(info.value)
        assert not kafka.pid_file.exists()
    finally:
        kafka.stop()
