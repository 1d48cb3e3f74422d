"""hitl_router.localkafka without java, mvn or a broker."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hitl_router.errors import KafkaSetupError, RouterError
from hitl_router.localkafka import (
    KAFKA_VERSION,
    LocalKafka,
    add_parser,
    broker,
    cache_dir,
    fetch_jars,
)
from hitl_router.localkafka.broker import is_reachable, new_cluster_id, parse_java_major

REAL_JAVA = shutil.which("java")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HITL_ROUTER_HOME", str(home))
    return home


def test_version_matches_pom() -> None:
    pom = ET.parse(broker.POM).getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    assert pom.findtext("m:properties/m:kafka.version", namespaces=ns) == KAFKA_VERSION


def test_package_data_next_to_module() -> None:
    assert broker.POM.is_file()
    text = broker.LOG4J_CONFIG.read_text()
    assert "${sys:kafka.logs.dir}/server.log" in text
    assert "rootLogger.level = INFO" in text


def test_cache_dir_honours_env(empty_home: Path) -> None:
    assert cache_dir() == empty_home
    assert broker.jars_dir() == empty_home / f"kafka-{KAFKA_VERSION}" / "libs"
    assert LocalKafka(port=9500).run_path == empty_home / "run-9500"


def test_missing_java_and_mvn_named(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(KafkaSetupError) as info:
        fetch_jars()
    message = str(info.value)
    assert "java" in message and "openjdk-17-jre-headless" in message
    assert "mvn" in message and "apt-get install maven" in message
    assert isinstance(info.value, RouterError)
    assert not broker.jars_dir().exists()


@pytest.mark.skipif(REAL_JAVA is None, reason="needs java on PATH to isolate the mvn check")
def test_missing_mvn_only_named(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(Path(str(REAL_JAVA)).resolve())
    monkeypatch.setenv("PATH", str(only_java))
    with pytest.raises(KafkaSetupError, match="mvn") as info:
        fetch_jars()
    assert "Maven" in str(info.value) and "java:" not in str(info.value)


def test_start_without_java_fails_clearly(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    kafka = LocalKafka(port=free_port(), run_dir=tmp_path / "run")
    with pytest.raises(KafkaSetupError, match="Java 17"):
        kafka.start(timeout=5)
    assert not kafka.pid_file.exists()


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("something else", None),
    ],
)
def test_parse_java_major(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


def test_server_properties_for_given_ports(tmp_path: Path) -> None:
    kafka = LocalKafka(port=29092, run_dir=tmp_path)
    props = dict(
        line.split("=", 1) for line in kafka.server_properties().splitlines() if "=" in line
    )
    assert kafka.bootstrap == "127.0.0.1:29092"
    assert kafka.controller == 29093
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert "auto.create.topics.enable" not in props  # Kafka's default, nothing relies on it

    other = LocalKafka(port=29092, controller_port=31000, run_dir=tmp_path)
    assert "CONTROLLER://127.0.0.1:31000" in other.server_properties()


def test_cluster_id_shape() -> None:
    for _ in range(200):
        cid = new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")


def test_is_reachable_false_when_nothing_listens() -> None:
    started = time.monotonic()
    assert not is_reachable(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 1.5


def test_is_reachable_false_for_a_silent_non_kafka_listener() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            accepted.append(server.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        started = time.monotonic()
        assert not is_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_stop_without_broker_is_a_noop(tmp_path: Path) -> None:
    kafka = LocalKafka(port=free_port(), run_dir=tmp_path)
    assert kafka.stop() is False
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    kafka.pid_file.write_text(f"{dead.pid}\n")  # stale pid file of an exited process
    assert kafka.pid() is None
    assert kafka.stop() is False
    assert not kafka.pid_file.exists()


def test_status_when_nothing_runs(tmp_path: Path) -> None:
    kafka = LocalKafka(port=free_port(), run_dir=tmp_path)
    assert kafka.status() == {
        "running": False,
        "pid": None,
        "bootstrap": kafka.bootstrap,
        "run_dir": str(tmp_path),
        "version": KAFKA_VERSION,
    }


def test_cli_parser_and_status_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="hitl-router")
    add_parser(parser.add_subparsers(dest="command", required=True))
    port = free_port()
    args = parser.parse_args(["kafka", "status", "--port", str(port), "--dir", str(tmp_path)])
    assert (args.port, args.dir, args.timeout) == (port, tmp_path, None)
    assert args.handler(args) == 1
    assert f"not running at 127.0.0.1:{port}" in capsys.readouterr().out
    for action in ("start", "stop", "fetch"):
        assert callable(parser.parse_args(["kafka", action]).handler)
    assert parser.parse_args(["kafka", "start"]).port == 9092
    with pytest.raises(SystemExit):
        parser.parse_args(["kafka"])


@pytest.mark.skipif(
    REAL_JAVA is None or shutil.which("mvn") is None, reason="needs java and mvn on PATH"
)
def test_mvn_failure_reported_and_nothing_half_written(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "pom.xml"
    broken.write_text("<project>this is not a pom")  # mvn fails before any download
    monkeypatch.setattr(broker, "POM", broken)
    with pytest.raises(KafkaSetupError, match=r"mvn could not fetch .*\(exit 1") as info:
        fetch_jars()
    assert "pom.xml" in str(info.value)  # mvn's own explanation is included
    version_dir = broker.jars_dir().parent
    assert [p.name for p in version_dir.iterdir()] == [".lock"]  # no libs, no temp dir left


def test_is_reachable_accepts_lists_and_default_port() -> None:
    closed = free_port()
    assert not is_reachable(f" 127.0.0.1:{closed} , 127.0.0.1:{free_port()}")
    assert isinstance(is_reachable("127.0.0.1"), bool)  # port 9092 implied


def test_broker_heap_regions_hold_the_largest_produce_request() -> None:
    """A produce request is read into one heap buffer; G1 treats a buffer of half a region
    or more as "humongous" (allocated in old space, starting a concurrent mark cycle).
    The worker's largest request must stay below that, or the local broker spends a
    large share of the machine marking (BENCHMARKS.md)."""
    from hitl_router.agents.app import build_app
    from hitl_router.router.config import parse_config

    opts = dict(o.split("=", 1) for o in broker.JVM_OPTS if "=" in o)
    region = opts["-XX:G1HeapRegionSize"]
    assert region.endswith("M")
    region_bytes = int(region[:-1]) * 1024 * 1024
    heap = next(o for o in broker.JVM_OPTS if o.startswith("-Xmx"))
    assert heap == next(o for o in broker.JVM_OPTS if o.startswith("-Xms")).replace("s", "x", 1)
    app = build_app(parse_config({"kafka": {"bootstrap_servers": "127.0.0.1:1"}}))
    assert app.conf.producer_max_request_size < region_bytes // 2
    assert app.conf.producer_max_batch_size < region_bytes // 2
