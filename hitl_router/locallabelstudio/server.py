"""One local Label Studio server, started and stopped by this process, and its users.

Everything lives under ``data_dir``: the SQLite database, media, ``label-studio.log``
(the server's stdout and stderr) and ``label-studio.pid``. The server listens on
``127.0.0.1:<port>`` only. The admin user and its API token are fixed by the environment
on the first start of a data dir, with legacy ``Authorization: Token`` keys enabled (in
1.23 they are off by default and can only be switched on when the organization is
created), so tests and the demo know the token without a login dance.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hitl_router import toolvenv
from hitl_router.errors import ConfigError, LabelStudioError
from hitl_router.localkafka.broker import _tail, cache_dir
from hitl_router.locallabelstudio.venv import LS_VERSION, install

log = logging.getLogger(__name__)

DEFAULT_USERNAME = "admin@hitl-router.local"
DEFAULT_PASSWORD = "hitl-router-local-only"
DEFAULT_TOKEN = "6c0ca1ab0dd5e7f00d5eedbadc0ffee5ca1ab1e0"  # a local dev server's, not a secret
SECRET_KEY = "hitl-router-local-label-studio-not-secret"
# Label Studio's get_env(NAME) also reads plain NAME (after LABEL_STUDIO_NAME and
# HEARTEX_NAME): an inherited USERNAME, HOST or PORT would change the user or the address.
_DROPPED = frozenset({"USERNAME", "PASSWORD", "USER_TOKEN", "HOST", "PORT"})
_DROPPED_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_")
# Label Studio stores the token as a DRF key (at most 40 characters) and silently ignores
# one of 5 characters or fewer.
_TOKEN = re.compile(r"[0-9A-Za-z]{6,40}")


@dataclass(frozen=True)
class LabelStudioServer:
    """A Label Studio for the tests: its URL, the admin's token and, when the session
    started the server itself, one extra user (``annotator_*``) with a token of its own."""

    url: str
    token: str
    annotator_email: str | None = None
    annotator_token: str | None = None
    annotator_id: int | None = None
    admin_id: int | None = None


def _check_token(token: str, what: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise ConfigError(what, "a token must be 6 to 40 letters or digits (Label Studio's limit)")
    return token


# --- HTTP ------------------------------------------------------------------------------------


def _get_json(url: str, token: str | None = None, timeout: float = 10) -> Any:
    """GET ``url`` as JSON; failures raise LabelStudioError with the bridge's error kinds."""
    headers = {"Authorization": f"Token {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as r:
            body: bytes = r.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip()[-500:]
        kind = "unauthorized" if exc.code in (401, 403) else "refused"
        raise LabelStudioError(f"Label Studio {url}: HTTP {exc.code}: {text}", kind=kind) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise LabelStudioError(
            f"Label Studio {url} cannot be reached: {exc}", "unreachable"
        ) from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise LabelStudioError(f"Label Studio {url}: not JSON: {body[:200]!r}", "refused") from exc


def health(url: str, timeout: float = 2) -> bool:
    """Does ``GET {url}/health`` answer ``{"status": "UP"}``?"""
    try:
        doc = _get_json(f"{url}/health", timeout=timeout)
    except LabelStudioError:
        return False
    return isinstance(doc, dict) and doc.get("status") == "UP"


def whoami(url: str, token: str) -> dict[str, Any]:
    """The user a token belongs to (``id``, ``email``, ...); a refused token raises
    LabelStudioError of kind ``unauthorized``."""
    doc = _get_json(f"{url}/api/current-user/whoami", token)
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), int):
        raise LabelStudioError(f"Label Studio {url}: whoami gave no user id: {doc!r}", "refused")
    return doc


# --- the server ------------------------------------------------------------------------------


def _port_taken(host: str, port: int) -> bool:
    """Is something listening on, or bound to, ``host:port``? (SO_REUSEADDR: a TIME_WAIT
    left by a stopped server does not count, as it does not for Label Studio.)"""
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex((host, port)) == 0:
            return True
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _is_label_studio(pid: int) -> bool:
    """Is ``pid`` a live ``label-studio start`` (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg.endswith(b"label-studio") for arg in cmdline) and b"start" in cmdline


def recorded_pid(data_dir: Path) -> int | None:
    """The pid in ``data_dir/label-studio.pid`` if it is still a running Label Studio."""
    try:
        pid = int((Path(data_dir) / "label-studio.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_label_studio(pid) else None


def _terminate(pid: int, timeout: float, wait_exit: Callable[[float], bool]) -> None:
    """SIGTERM the process group of ``pid`` (the server runs in its own session), then
    SIGKILL after ``timeout`` s; ``wait_exit(seconds)`` says whether it has gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if not wait_exit(timeout):
        log.warning("Label Studio (pid %d) ignored SIGTERM for %.0fs; killing it", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait_exit(10)


class LocalLabelStudio:
    """A Label Studio on ``host:port`` with its files in ``data_dir``; a context manager.

    ``username``/``password``/``token`` make the admin user on the first start of a data
    dir; later starts keep the user the data dir has (a token check in :meth:`start`
    notices a mismatch). ``extra_env`` is added last, e.g.
    ``{"LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false"}`` to let webhooks reach 127.0.0.1.
    """

    def __init__(
        self,
        port: int,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        token: str = DEFAULT_TOKEN,
        executable: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.username = username
        self.password = password
        self.token = _check_token(token, "token")
        self.executable = executable
        self.extra_env = dict(extra_env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "label-studio.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "label-studio.pid"

    def command(self, executable: Path) -> list[str]:
        """The server's command line, ``executable`` being ``label-studio``."""
        return [
            str(executable), "start", "--no-browser",
            "--internal-host", self.host, "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--log-level", "WARNING",
        ]  # fmt: skip

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: ours) without what Label Studio would misread, plus its settings.

        ``LABEL_STUDIO_BASE_DATA_DIR`` too, not only ``--data-dir``: settings are imported,
        and their default dir under ``~/.local/share`` made, before the option is applied.
        """
        env = {
            k: v
            for k, v in (os.environ if base is None else base).items()
            if k not in _DROPPED and not k.startswith(_DROPPED_PREFIXES)
        }
        env.update(
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",  # honoured when the org is created
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LATEST_VERSION_CHECK="false",  # else it asks pypi.org at every start
            SENTRY_DSN="",  # the defaults point at sentry.io
            FRONTEND_SENTRY_DSN="",
            COLLECT_ANALYTICS="false",
            SECRET_KEY=SECRET_KEY,  # else a random one per start, and a warning
            PYTHONUNBUFFERED="1",  # the log is current when we read its tail
        )
        env.update(self.extra_env)
        return env

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pid(self) -> int | None:
        """The server's process id while it runs (its own session and process group)."""
        return self._proc.pid if self._proc is not None and self.running() else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the server has exited by itself (negative: by a signal)."""
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout: float = 180) -> LocalLabelStudio:
        """Start the server; wait up to ``timeout`` s for ``/health`` on this very port.

        A taken port is refused up front: Label Studio would silently move to the next one.
        Once it answers, the admin token is checked (a reused data dir keeps its first token).
        """
        if self.running():
            return self
        if _port_taken(self.host, self.port):
            raise LabelStudioError(
                f"{self.host}:{self.port} is in use; choose another port "
                "(Label Studio would silently move to the next free one)"
            )
        other = recorded_pid(self.data_dir)
        if other is not None:
            raise LabelStudioError(
                f"{self.data_dir} is in use by Label Studio pid {other}; stop it first "
                f"(hitl-router label-studio stop --data-dir {self.data_dir})"
            )
        self.executable = self.executable or install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting Label Studio at %s (log %s)", self.url, self.log_file)
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(
                self.command(self.executable), cwd=self.data_dir, env=self.environment(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(timeout, log_offset)
            self._check_admin_token()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float, log_offset: int) -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self._proc is not None and self._proc.poll() is not None:
                raise LabelStudioError(
                    f"Label Studio exited during startup (exit {self._proc.returncode})\n"
                    f"{_tail(self.log_file, since=log_offset)}"
                )
            if self._moved_port(log_offset):
                raise LabelStudioError(
                    f"{self.host}:{self.port} was taken meanwhile and Label Studio moved to "
                    "another port; stopped it, choose another port"
                )
            if health(self.url, timeout=2):
                log.info(
                    "Label Studio ready at %s after %.1fs", self.url, time.monotonic() - started
                )
                return
            time.sleep(0.5)
        raise LabelStudioError(
            f"Label Studio did not answer {self.url}/health within {timeout:g}s; stopped it\n"
            f"{_tail(self.log_file, since=log_offset)}"
        )

    def _moved_port(self, log_offset: int) -> bool:
        with contextlib.suppress(OSError), self.log_file.open("rb") as fh:
            fh.seek(log_offset)
            return f"Port {self.port} is in use".encode() in fh.read(1 << 16)
        return False

    def _check_admin_token(self) -> None:
        try:
            self.whoami(self.token)
        except LabelStudioError as exc:
            if exc.kind != "unauthorized":
                raise
            raise LabelStudioError(
                f"Label Studio at {self.url} refuses the admin token; {self.data_dir} was "
                "first started with another token, or without legacy tokens: use that token "
                f"or a fresh data dir ({exc})"
            ) from exc

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM the server (SIGKILL after ``timeout`` s); True if one was running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return False
        if proc.poll() is None:

            def gone(seconds: float) -> bool:
                try:
                    proc.wait(seconds)
                    return True
                except subprocess.TimeoutExpired:
                    return False

            _terminate(proc.pid, timeout, gone)
        self.pid_file.unlink(missing_ok=True)
        return True

    def __enter__(self) -> LocalLabelStudio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- users --------------------------------------------------------------------------------

    def whoami(self, token: str) -> dict[str, Any]:
        """The user ``token`` belongs to (``id``, ``email``, ...); see :func:`whoami`."""
        return whoami(self.url, token)

    def add_user(self, email: str, password: str, token: str, timeout: float = 120) -> int:
        """Add a user with a known token to the running server; return its id.

        Runs ``label-studio init`` on the data dir (about 8 s): the user joins the existing
        organization and its token works at once. Like every user ``init`` makes, it is a
        superuser: a second identity for tests, not a permission boundary. An existing user
        keeps its old token, so the token check then fails and raises.
        """
        _check_token(token, "user token")
        if not self.running() or self.executable is None:
            raise LabelStudioError(f"cannot add {email}: Label Studio at {self.url} is not running")
        cmd = [
            str(self.executable), "init", "-q", "--username", email, "--password", password,
            "--user-token", token, "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        what = f"label-studio init --username {email}"
        proc = toolvenv.run(cmd, what, timeout, self.environment(), LabelStudioError)
        try:
            me = self.whoami(token)
        except LabelStudioError as exc:
            existed = f"User {email} already exists" in proc.stdout
            why = (
                f"{email} existed already with another token" if existed else "its token is refused"
            )
            raise LabelStudioError(
                f"label-studio init added no usable {email}: {why} ({exc})"
            ) from exc
        if me.get("email") != email:
            raise LabelStudioError(f"the token given for {email} belongs to {me.get('email')!r}")
        return int(me["id"])


def stop_recorded(data_dir: Path, timeout: float = 30) -> int | None:
    """Stop the Label Studio recorded in ``data_dir`` (another process started it); return
    its pid, or None if none runs."""
    pid = recorded_pid(data_dir)
    if pid is not None:

        def gone(seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while _is_label_studio(pid):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
            return True

        _terminate(pid, timeout, gone)
    return pid


# --- command line: `hitl-router label-studio {fetch,start,stop,status}` ----------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return port


def _cmd_fetch(args: argparse.Namespace) -> int:
    print(install())
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    env = os.environ
    server = LocalLabelStudio(
        args.port,
        args.data_dir,
        username=env.get("LABEL_STUDIO_USERNAME") or DEFAULT_USERNAME,
        password=env.get("LABEL_STUDIO_PASSWORD") or DEFAULT_PASSWORD,
        token=env.get("LABEL_STUDIO_USER_TOKEN") or DEFAULT_TOKEN,
    )
    token_source = (
        "$LABEL_STUDIO_USER_TOKEN"
        if env.get("LABEL_STUDIO_USER_TOKEN")
        else "hitl_router.locallabelstudio.DEFAULT_TOKEN ($LABEL_STUDIO_USER_TOKEN is unset)"
    )
    # SIGTERM acts as Ctrl-C, also during the start: the server never outlives this process
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.start(timeout=args.timeout or 180)
        print(f"Label Studio {LS_VERSION} ready at {server.url} (pid {server.pid()})", flush=True)
        print(f"user {server.username}; API token (Authorization: Token ...): {token_source}")
        print(f"data {server.data_dir}, log {server.log_file}; Ctrl-C or SIGTERM stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while server.running():
                time.sleep(1.0)
        code = server.returncode
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    if code is not None and code != -signal.SIGTERM:  # -SIGTERM: `label-studio stop`
        raise LabelStudioError(f"Label Studio exited (exit {code})\n{_tail(server.log_file)}")
    print(f"Label Studio at {server.url} stopped", flush=True)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    pid = stop_recorded(args.data_dir, timeout=args.timeout or 30)
    if pid is None:
        print(f"no Label Studio running from {args.data_dir} (nothing to stop)")
    else:
        print(f"Label Studio from {args.data_dir} stopped (pid {pid})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    url = f"http://127.0.0.1:{args.port}"
    if not health(url, timeout=args.timeout or 2):
        print(f"Label Studio not answering at {url}/health")
        return 1
    try:
        release = _get_json(f"{url}/api/version", timeout=5).get("release", "?")
    except (LabelStudioError, AttributeError):
        release = "?"
    print(f"Label Studio {release} running at {url}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``label-studio`` and its actions on the root CLI's subparsers."""
    port = argparse.ArgumentParser(add_help=False)
    port.add_argument("--port", type=_port, default=8080, help="port on 127.0.0.1 (default 8080)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data-dir",
        type=Path,
        default=cache_dir() / "label-studio-data",
        help="database, media, log and pid file (default <cache>/label-studio-data)",
    )
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument("--timeout", type=float, default=None, help="seconds to wait")
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "label-studio", help=f"local Label Studio {LS_VERSION} (own venv) for tests and demo"
    )
    actions = parser.add_subparsers(dest="label_studio_action", required=True, metavar="ACTION")
    for name, parents, handler, help_text in (
        ("fetch", [], _cmd_fetch, "install Label Studio into its venv; print its executable"),
        ("start", [port, data, wait], _cmd_start, "run it in the foreground until Ctrl-C"),
        ("stop", [data, wait], _cmd_stop, "stop the server running from the data dir"),
        ("status", [port, wait], _cmd_status, "exit 0 if /health answers on the port, 1 if not"),
    ):
        action = actions.add_parser(name, parents=parents, help=help_text)
        action.set_defaults(handler=handler)
    return parser
