"""One local Prometheus server, started and stopped by this process, and its HTTP API.

All its files live under ``data_dir``: the TSDB in ``tsdb/`` and the server's log in
``prometheus.log``. It listens on ``127.0.0.1:<port>`` with ``--web.enable-lifecycle``
(so :meth:`LocalPrometheus.reload` works) and a one-day retention.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from hitl_router.errors import PrometheusError, PrometheusQueryError
from hitl_router.localkafka.broker import _tail
from hitl_router.localprom.binaries import Binaries, fetch_prometheus

log = logging.getLogger(__name__)


class LocalPrometheus:
    """A Prometheus server on ``host:port`` reading ``config``; a context manager.

    >>> prom = LocalPrometheus(Path("p.yml"), 9190, Path("/tmp/run"))
    >>> prom.url
    'http://127.0.0.1:9190'
    """

    def __init__(
        self,
        config: Path,
        port: int,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        retention: str = "1d",
        extra_args: tuple[str, ...] = (),
        binaries: Binaries | None = None,
    ) -> None:
        self.config = config
        self.port = port
        self.data_dir = data_dir
        self.host = host
        self.retention = retention
        self.extra_args = extra_args
        self.binaries = binaries
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "prometheus.log"

    def command(self, prometheus: Path) -> list[str]:
        """The server's command line, ``prometheus`` being its executable."""
        return [
            str(prometheus),
            f"--config.file={Path(self.config).resolve()}",
            f"--storage.tsdb.path={Path(self.data_dir).resolve() / 'tsdb'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            *self.extra_args,
        ]

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pid(self) -> int | None:
        """The server's process id while it runs (its own session: stop it with kill)."""
        return self._proc.pid if self.running() and self._proc is not None else None

    def start(self, timeout: float = 30) -> LocalPrometheus:
        """Start the server and wait up to ``timeout`` s for ``/-/ready``; raise if it fails."""
        if self.running():
            return self
        with socket.socket() as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise PrometheusError(f"{self.host}:{self.port} is in use; choose another port")
        binaries = self.binaries or fetch_prometheus()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command(binaries.prometheus)
        log.info("starting Prometheus at %s (log %s)", self.url, self.log_file)
        with open(self.log_file, "wb") as out:
            self._proc = subprocess.Popen(
                cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise PrometheusError(
                    f"Prometheus exited during startup (exit {code})\n{_tail(self.log_file)}"
                )
            if self._ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(
            f"Prometheus did not answer {self.url}/-/ready within {timeout:g}s; stopped it\n"
            f"{_tail(self.log_file)}"
        )

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return int(resp.status) == 200
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 10) -> bool:
        """SIGTERM the server (SIGKILL after ``timeout`` s); True if one was running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "Prometheus (pid %d) ignored SIGTERM for %.0fs; killing", proc.pid, timeout
                )
                proc.kill()
                proc.wait(10)
        return True

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- HTTP API ---------------------------------------------------------------------------

    def _request(
        self, path: str, params: dict[str, str] | None = None, post: bool = False
    ) -> bytes:
        query = urllib.parse.urlencode(params or {})
        url = f"{self.url}{path}" + (f"?{query}" if query and not post else "")
        data = query.encode() if post else None
        try:
            with urllib.request.urlopen(url, data=data, timeout=30) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError as exc:
            body = exc.read()
            with contextlib.suppress(ValueError):
                doc = json.loads(body)
                if isinstance(doc, dict) and doc.get("status") == "error":
                    error_type, error = doc.get("errorType", "?"), doc.get("error", "")
                    raise PrometheusQueryError(path, error_type, error) from exc
            text = body.decode(errors="replace").strip()
            raise PrometheusError(f"Prometheus {path}: HTTP {exc.code}: {text[-2000:]}") from exc
        except OSError as exc:
            raise PrometheusError(f"Prometheus at {self.url} cannot be reached: {exc}") from exc

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """``data`` of a ``/api/v1/...`` answer; an error answer raises PrometheusQueryError."""
        body = self._request(path, params)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            raise PrometheusError(f"Prometheus {path}: not an API answer: {body[:200]!r}")
        return doc.get("data")

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the series (``metric``, ``value`` = [time, "text"]) of ``expr``."""
        params = {"query": expr} | ({"time": str(at)} if at is not None else {})
        data = self.api("/api/v1/query", params)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query: the series (``metric``, ``values``) of ``expr``."""
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        return list(self.api("/api/v1/query_range", params)["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (``labels``, ``health``, ``lastError``, ...)."""
        return list(self.api("/api/v1/targets", {"state": "active"})["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """The rule groups (``name``, ``file``, ``rules``)."""
        return list(self.api("/api/v1/rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """The pending and firing alerts."""
        return list(self.api("/api/v1/alerts")["alerts"])

    def reload(self) -> None:
        """Re-read the config and rule files; raise with Prometheus' message if it refuses."""
        self._request("/-/reload", post=True)
