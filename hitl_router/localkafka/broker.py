"""A single-node Apache Kafka broker (KRaft) for development and tests.

The broker's jars come from Maven Central (``mvn dependency:copy-dependencies`` on the
``pom.xml`` next to this file) into ``<cache>/kafka-<version>/libs``; the broker runs
detached from ``<cache>/run-<port>`` (config, data, ``server.log``, ``kafka.pid``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hitl_router.errors import KafkaSetupError
from hitl_router.localkafka import secured

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.0.2"  # keep equal to <kafka.version> in pom.xml (a unit test checks)
MIN_JAVA = 17
POM = Path(__file__).with_name("pom.xml")
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
# The JVM settings of Kafka's own start scripts (kafka-server-start.sh's heap,
# kafka-run-class.sh's G1 options), plus the 16 MB G1 regions Kafka's operations docs
# recommend. With 1 MB regions (a small heap's default) every produce request or fetch
# buffer over 512 KB is a "humongous" allocation: on the benchmark's load each one began
# a concurrent mark cycle, 0.2 s of marking, ~3 cycles a second, up to half a core of the
# 2-core machine and 20–60 ms pauses (measured with -Xlog:gc: BENCHMARKS.md).
JVM_OPTS = (
    "-Xms1g",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:G1HeapRegionSize=16M",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
INSTALL_HINTS = {
    "java": f"Java {MIN_JAVA}+ (e.g. apt-get install openjdk-17-jre-headless)",
    "mvn": "Maven (apt-get install maven)",
}
_COMPLETE = ".complete"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # mvn colours its output even with -B
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # brokers this process launched
_PROBE_LOCK = threading.Lock()


def cache_dir() -> Path:
    """``$HITL_ROUTER_HOME`` or ``~/.cache/hitl-router``."""
    home = os.environ.get("HITL_ROUTER_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "hitl-router"


def jars_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def _require_tools(*names: str) -> dict[str, str]:
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        needs = "; ".join(f"{name}: install {INSTALL_HINTS[name]}" for name in missing)
        raise KafkaSetupError(f"local Kafka needs {' and '.join(missing)} on PATH ({needs})")
    return {name: str(path) for name, path in found.items()}


def parse_java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` output: '"1.8.0_292"' -> 8, '"17.0.15"' -> 17."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _java() -> str:
    java = _require_tools("java")["java"]
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    output = (proc.stderr + proc.stdout).strip()
    major = parse_java_major(output)
    if major is None or major < MIN_JAVA:
        first_line = output.splitlines()[0] if output else f"exit {proc.returncode}"
        raise KafkaSetupError(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, but {java} says {first_line!r}; "
            f"install {INSTALL_HINTS['java']} and put it first on PATH"
        )
    return java


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize fetch/start across processes (e.g. a test session and the CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def fetch_jars() -> Path:
    """Download the broker's jars once (atomically); return their directory."""
    libs = jars_dir()
    if (libs / _COMPLETE).exists():
        return libs
    with _locked(libs.parent):
        if (libs / _COMPLETE).exists():
            return libs
        tools = _require_tools("java", "mvn")
        _java()
        log.info("fetching Kafka %s jars from Maven Central into %s", KAFKA_VERSION, libs)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=libs.parent))
        try:
            shutil.copy(POM, work / "pom.xml")  # mvn never writes next to the installed package
            cmd = [tools["mvn"], "-q", "-B", "-f", str(work / "pom.xml")]
            cmd += ["dependency:copy-dependencies", "-DincludeScope=runtime"]
            cmd += [f"-DoutputDirectory={work / 'libs'}"]
            try:
                proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
            except subprocess.TimeoutExpired as exc:
                raise KafkaSetupError(
                    "mvn took over 30 min to fetch the Kafka jars; check the network and retry"
                ) from exc
            jars = sorted((work / "libs").glob("*.jar"))
            if proc.returncode != 0 or not jars:
                output = _ANSI.sub("", proc.stdout + proc.stderr).strip()
                tail = "\n".join(output.splitlines()[-20:])
                raise KafkaSetupError(
                    f"mvn could not fetch the Kafka {KAFKA_VERSION} jars (exit {proc.returncode}; "
                    f"check network access to Maven Central):\n{tail}"
                )
            (work / "libs" / _COMPLETE).write_text(f"kafka {KAFKA_VERSION}\n{len(jars)} jars\n")
            if libs.exists():  # an incomplete leftover (marker missing)
                shutil.rmtree(libs)
            os.rename(work / "libs", libs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("fetched %d jars into %s", len(list(libs.glob("*.jar"))), libs)
    return libs


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """Does a Kafka broker answer a metadata request at ``bootstrap`` within ``timeout``?"""
    addresses = [a.strip().rpartition(":") for a in bootstrap.split(",") if a.strip()]
    if not any(_tcp_open(h or p, int(p) if h else 9092, timeout) for h, _, p in addresses):
        return False  # fast path: nothing listens
    with _PROBE_LOCK:  # serialized so that concurrent probes restore the right log level
        return _admin_probe(bootstrap, timeout)


def _admin_probe(bootstrap: str, timeout: float) -> bool:
    kafka_logger = logging.getLogger("kafka")  # kafka-python logs every refused connection
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL + 1)
    try:
        from kafka import KafkaAdminClient

        ms = max(int(timeout * 1000), 100)
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
            reconnect_backoff_max_ms=ms,
            client_id="hitl-router-probe",
        )
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()
    except Exception:  # any failure means "not a usable broker"
        return False
    finally:
        kafka_logger.setLevel(level)


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID, base64url without padding, not starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _pid_alive(pid: int) -> bool:
    if pid in _CHILDREN:
        return _CHILDREN[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # guard against a recycled pid (Linux only; elsewhere trust the pid)
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _tail(path: Path, lines: int = 30, since: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after byte offset ``since``."""
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as fh:
        fh.seek(since)
        text = fh.read().decode(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {path} ---\n" + "\n".join(text)


@dataclass(frozen=True)
class LocalKafka:
    """One local broker+controller; all its files live under ``run_path``."""

    port: int = 9092
    controller_port: int | None = None
    run_dir: Path | None = None
    host: str = "127.0.0.1"
    #: a SASL_SSL listener (SCRAM-SHA-512) beside PLAINTEXT, for security tests
    #: (:mod:`.secured`); needs ``ssl_keystore_pem``: the PKCS#8 key + certificate chain
    sasl_ssl_port: int | None = None
    ssl_keystore_pem: Path | None = None
    #: SCRAM-SHA-512 users (name, password), created when the storage is formatted
    scram_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: the ACL authorizer; PLAINTEXT's User:ANONYMOUS is a super user (the test's admin)
    acls: bool = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def controller(self) -> int:
        return self.controller_port if self.controller_port is not None else self.port + 1

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else cache_dir() / f"run-{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.run_path / "data"

    @property
    def pid_file(self) -> Path:
        return self.run_path / "kafka.pid"

    def server_properties(self) -> str:
        h, p, c = self.host, self.port, self.controller
        sasl = f",SASL_SSL://{h}:{self.sasl_ssl_port}" if self.sasl_ssl_port else ""
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{h}:{c}",
                f"listeners=PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}{sasl}",
                f"advertised.listeners=PLAINTEXT://{h}:{p}{sasl}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
                + (",SASL_SSL:SASL_SSL" if sasl else ""),
                f"log.dirs={self.data_dir}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=1",  # fast first group join on a dev broker
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # On restart the controller refuses the broker's new registration until the old
                # session expires (default 9 s); a shorter session makes restarts ~6 s faster.
                "broker.session.timeout.ms=4000",
                "broker.heartbeat.interval.ms=1000",
                *self._secured_properties(),
                "",
            ]
        )

    def _secured_properties(self) -> list[str]:
        lines = list(secured.AUTHORIZER_PROPERTIES) if self.acls else []
        if self.sasl_ssl_port is None:
            return lines
        if self.ssl_keystore_pem is None:
            raise KafkaSetupError("a SASL_SSL listener needs ssl_keystore_pem (key + chain)")
        return secured.listener_properties(Path(self.ssl_keystore_pem).resolve()) + lines

    def pid(self) -> int | None:
        """The pid from the pid file if that process is still a live broker."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _java_cmd(
        self, java: str, libs: Path, main: str, *args: str, heap: tuple[str, ...]
    ) -> list[str]:
        logging_opts = [
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.run_path}",
        ]
        return [java, *heap, *logging_opts, "-cp", str(libs / "*"), main, *args]

    def _format_storage(self, java: str, libs: Path, props: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        id_file = self.run_path / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        args: tuple[str, ...] = ("format", "-t", cluster_id, "-c", str(props))
        for name, password in self.scram_users:
            args += ("--add-scram", secured.scram_credential(name, password))
        cmd = self._java_cmd(java, libs, "kafka.tools.StorageTool", *args, heap=("-Xmx256m",))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise KafkaSetupError(
                f"formatting the Kafka storage in {self.data_dir} failed (exit {proc.returncode}); "
                f"delete {self.run_path} to start afresh:\n{proc.stdout}{proc.stderr}"
            )

    def start(self, timeout: float = 90) -> bool:
        """Start the broker unless one answers already; wait until it is ready.

        Returns True if this call started it. ``timeout`` bounds the wait for readiness,
        not the one-time jar download.
        """
        if is_reachable(self.bootstrap):
            return False
        with _locked(self.run_path):
            if is_reachable(self.bootstrap):
                return False
            pid = self.pid()
            if pid is not None:  # launched by someone else and still booting
                self._wait_ready(pid, timeout)
                return False
            ports = [(self.port, "broker"), (self.controller, "controller")]
            ports += [(self.sasl_ssl_port, "SASL_SSL")] if self.sasl_ssl_port else []
            for port, role in ports:
                if _tcp_open(self.host, port, 1.0):
                    raise KafkaSetupError(
                        f"{self.host}:{port} (wanted as the Kafka {role} port) is in use by "
                        "something that is not this Kafka broker; stop it or choose another --port"
                    )
            libs = fetch_jars()
            java = _java()
            props = self.run_path / "server.properties"
            props.write_text(self.server_properties())
            self._format_storage(java, libs, props)
            cmd = self._java_cmd(java, libs, "kafka.Kafka", str(props), heap=JVM_OPTS)
            log_offset = _size(self.run_path / "server.log")  # server.log is appended to
            log.info("starting Kafka %s at %s in %s", KAFKA_VERSION, self.bootstrap, self.run_path)
            with open(self.run_path / "kafka.out", "wb") as out:
                proc = subprocess.Popen(
                    cmd, cwd=self.run_path, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            _CHILDREN[proc.pid] = proc
            self.pid_file.write_text(f"{proc.pid}\n")
            self._wait_ready(proc.pid, timeout, log_offset)
            return True

    def _wait_ready(self, pid: int, timeout: float, log_offset: int = 0) -> None:
        started = time.monotonic()
        deadline = started + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not _pid_alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise KafkaSetupError(
                    f"Kafka (pid {pid}) exited during startup\n{self._tails(log_offset)}"
                )
            if is_reachable(self.bootstrap, timeout=min(5.0, max(remaining, 0.1))):
                log.info(
                    "Kafka ready at %s after %.1fs", self.bootstrap, time.monotonic() - started
                )
                return
            time.sleep(0.25)
        raise KafkaSetupError(
            f"Kafka (pid {pid}) did not answer at {self.bootstrap} within {timeout:.0f}s; "
            f"it is left running (stop it with `hitl-router kafka stop {self._cli_options()}`)\n"
            f"{self._tails(log_offset)}"
        )

    def _cli_options(self) -> str:
        return f"--port {self.port}" + (f" --dir {self.run_dir}" if self.run_dir else "")

    def _tails(self, log_offset: int) -> str:
        server_log = _tail(self.run_path / "server.log", since=log_offset)
        return server_log + "\n" + _tail(self.run_path / "kafka.out", 10)

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM the broker of the pid file (SIGKILL after ``timeout``); True if one stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        log.info("stopping Kafka at %s (pid %d)", self.bootstrap, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            log.warning("Kafka (pid %d) ignored SIGTERM for %.0fs; killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10)
        _CHILDREN.pop(pid, None)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _wait_exit(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "running": is_reachable(self.bootstrap),
            "pid": self.pid(),
            "bootstrap": self.bootstrap,
            "run_dir": str(self.run_path),
            "version": KAFKA_VERSION,
        }


# --- command line: `hitl-router kafka {start,stop,status,fetch}` -----------------------------


def _broker(args: argparse.Namespace) -> LocalKafka:
    return LocalKafka(port=args.port, run_dir=args.dir)


def _cmd_start(args: argparse.Namespace) -> int:
    kafka = _broker(args)
    if not kafka.start(timeout=args.timeout or 90):
        pid = kafka.pid()
        owner = f"pid {pid}" if pid else "not started by hitl-router"
        print(f"Kafka already running at {kafka.bootstrap} ({owner})")
        return 0
    print(
        f"Kafka {KAFKA_VERSION} (KRaft) ready at {kafka.bootstrap} "
        f"(pid {kafka.pid()}, data {kafka.data_dir})"
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    kafka = _broker(args)
    pid = kafka.pid()
    if kafka.stop(timeout=args.timeout or 30):
        print(f"Kafka at {kafka.bootstrap} stopped (pid {pid})")
    elif is_reachable(kafka.bootstrap):
        print(
            f"a Kafka broker answers at {kafka.bootstrap} but was not started from {kafka.run_path}"
        )
    else:
        print(f"Kafka not running at {kafka.bootstrap} (nothing to stop)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = _broker(args).status()
    if st["running"]:
        pid = f"pid {st['pid']}" if st["pid"] else "not started by hitl-router"
        print(f"Kafka running at {st['bootstrap']} ({pid}, run dir {st['run_dir']})")
        return 0
    print(f"Kafka not running at {st['bootstrap']} (run dir {st['run_dir']})")
    return 1


def _cmd_fetch(args: argparse.Namespace) -> int:
    print(fetch_jars())
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``kafka`` and its actions on the root CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", type=int, default=9092, help="broker port (default 9092)")
    common.add_argument("--dir", type=Path, default=None, help="run dir (default <cache>/run-PORT)")
    common.add_argument("--timeout", type=float, default=None, help="seconds to wait")
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "kafka", help=f"local single-node Kafka {KAFKA_VERSION} (KRaft) for development"
    )
    actions = parser.add_subparsers(dest="kafka_action", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("start", _cmd_start, "start the broker (no-op if it answers) and wait until ready"),
        ("stop", _cmd_stop, "stop the broker started from the run dir"),
        ("status", _cmd_status, "exit 0 if a broker answers on the port, 1 if not"),
        ("fetch", _cmd_fetch, "only download the broker's jars; print their dir"),
    ):
        action = actions.add_parser(name, parents=[common], help=help_text)
        action.set_defaults(handler=handler)
    return parser
