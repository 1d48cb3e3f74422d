"""hitl_router.locallabelstudio without a Label Studio: its command line, environment,
port and data-dir checks, the venv's install logic and the CLI's parsing and exit codes.

A fake ``label-studio`` is a shell script; an HTTP server in this process plays
``/health`` and ``whoami``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from hitl_router import toolvenv
from hitl_router.cli import main
from hitl_router.errors import ConfigError, RouterError
from hitl_router.locallabelstudio import (
    DEFAULT_TOKEN,
    LS_VERSION,
    LabelStudioError,
    LocalLabelStudio,
    health,
    install,
    venv_dir,
    whoami,
)
from hitl_router.locallabelstudio import server as server_module
from hitl_router.locallabelstudio import venv as venv_module

TOKEN = "0123456789abcdef0123456789abcdef01234567"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HITL_ROUTER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that reaches install() has failed: it must not spend 90 s on pip."""

    def refuse() -> Path:
        raise AssertionError("install() was called")

    monkeypatch.setattr(server_module, "install", refuse)


# --- command line and environment ------------------------------------------------------------


def test_command_line(tmp_path: Path) -> None:
    ls = LocalLabelStudio(18080, tmp_path / "data")
    assert ls.url == "http://127.0.0.1:18080"
    assert ls.command(Path("/v/bin/label-studio")) == [
        "/v/bin/label-studio", "start", "--no-browser", "--internal-host", "127.0.0.1",
        "--port", "18080", "--data-dir", str(tmp_path / "data"), "--log-level", "WARNING",
    ]  # fmt: skip
    assert ls.log_file == tmp_path / "data" / "label-studio.log"


def test_relative_data_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ls = LocalLabelStudio(18080, Path("rel"))
    assert ls.data_dir == tmp_path / "rel"
    assert ls.environment({})["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "rel")


def test_environment_drops_what_label_studio_misreads(tmp_path: Path) -> None:
    inherited = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "USERNAME": "bob",
        "PASSWORD": "hunter2",
        "USER_TOKEN": "zzzzzzzz",
        "HOST": "example.org",
        "PORT": "9999",
        "LABEL_STUDIO_DATABASE_NAME": "/elsewhere.sqlite3",
        "HEARTEX_USERNAME": "eve",
        "SENTRY_DSN": "https://key@sentry.example/1",
    }
    ls = LocalLabelStudio(
        18080,
        tmp_path / "d",
        username="u@x.test",
        password="pw-123456",
        token=TOKEN,
        extra_env={"LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false"},
    )
    env = ls.environment(inherited)
    for name in ("USERNAME", "PASSWORD", "USER_TOKEN", "HOST", "PORT", "HEARTEX_USERNAME"):
        assert name not in env
    assert "LABEL_STUDIO_DATABASE_NAME" not in env
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/x"
    assert env["LABEL_STUDIO_USERNAME"] == "u@x.test"
    assert env["LABEL_STUDIO_PASSWORD"] == "pw-123456"
    assert env["LABEL_STUDIO_USER_TOKEN"] == TOKEN
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "d")
    assert env["LATEST_VERSION_CHECK"] == "false"
    assert env["SENTRY_DSN"] == "" and env["FRONTEND_SENTRY_DSN"] == ""
    assert env["COLLECT_ANALYTICS"] == "false"
    assert env["SECRET_KEY"]
    assert env["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"


def test_default_environment_is_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERNAME", "bob")
    monkeypatch.setenv("HITL_MARKER", "kept")
    env = LocalLabelStudio(18080, tmp_path).environment()
    assert env["HITL_MARKER"] == "kept" and "USERNAME" not in env
    assert env["LABEL_STUDIO_USER_TOKEN"] == DEFAULT_TOKEN


@pytest.mark.parametrize("token", ["", "abc12", "x" * 41, "has space 123", "0123456789-abcdef"])
def test_unusable_tokens_are_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError, match="6 to 40 letters or digits"):
        LocalLabelStudio(18080, tmp_path, token=token)


def test_default_token_is_40_hex() -> None:
    assert len(DEFAULT_TOKEN) == 40 and int(DEFAULT_TOKEN, 16) >= 0


# --- start refusals --------------------------------------------------------------------------


def test_busy_port_is_refused(tmp_path: Path, no_install: None) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ls = LocalLabelStudio(port, tmp_path / "d")
        with pytest.raises(LabelStudioError) as info:
            ls.start()
    assert f"127.0.0.1:{port} is in use" in str(info.value)
    assert info.value.kind == "setup"
    assert isinstance(info.value, RouterError)
    assert not ls.running() and not (tmp_path / "d").exists()


def test_bound_but_not_listening_port_is_refused(tmp_path: Path, no_install: None) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(LabelStudioError, match=f":{port} is in use"):
            LocalLabelStudio(port, tmp_path / "d").start()


def test_data_dir_of_a_running_server_is_refused(tmp_path: Path, no_install: None) -> None:
    # not `exec sleep`: the process must look like `.../label-studio start`
    fake = script(tmp_path / "bin" / "label-studio", "sleep 30 &\nwait")
    proc = subprocess.Popen([str(fake), "start"], start_new_session=True)
    try:
        # once it looks so (under load in CI the check once ran before it did)
        deadline = time.monotonic() + 10
        while not server_module._is_label_studio(proc.pid):
            assert time.monotonic() < deadline, "the fake never looked like label-studio"
            time.sleep(0.05)
        data = tmp_path / "d"
        data.mkdir()
        (data / "label-studio.pid").write_text(f"{proc.pid}\n")
        with pytest.raises(LabelStudioError, match=f"in use by Label Studio pid {proc.pid}"):
            LocalLabelStudio(free_port(), data).start()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def fake_server(tmp_path: Path, body: str) -> Path:
    """A ``label-studio`` that runs ``body`` (``$PORT_ARG`` is its --port)."""
    return script(
        tmp_path / "bin" / "label-studio",
        'PORT_ARG=$6\necho "args: $*"\necho "user: $LABEL_STUDIO_USERNAME"\n' + body,
    )


def test_exit_during_startup_raises_with_the_log(tmp_path: Path) -> None:
    exe = fake_server(tmp_path, 'echo "django.db.utils.OperationalError: boom" >&2\nexit 3')
    ls = LocalLabelStudio(free_port(), tmp_path / "d", executable=exe)
    with pytest.raises(LabelStudioError) as info:
        ls.start(timeout=20)
    message = str(info.value)
    assert "exited during startup (exit 3)" in message
    assert "OperationalError: boom" in message
    assert "user: admin@hitl-router.local" in message  # ran with our environment
    assert not ls.running() and not ls.pid_file.exists()


def test_no_answer_within_the_deadline_raises_and_stops_it(tmp_path: Path) -> None:
    exe = fake_server(tmp_path, "exec sleep 60")
    ls = LocalLabelStudio(free_port(), tmp_path / "d", executable=exe)
    with pytest.raises(LabelStudioError, match=r"did not answer .*/health within 1.5s"):
        ls.start(timeout=1.5)
    assert not ls.running() and not ls.pid_file.exists()


def test_moving_to_another_port_is_noticed(tmp_path: Path) -> None:
    exe = fake_server(
        tmp_path, 'echo "* Port $PORT_ARG is in use."\necho "* Trying to start at 1"\nexec sleep 60'
    )
    ls = LocalLabelStudio(free_port(), tmp_path / "d", executable=exe)
    with pytest.raises(LabelStudioError, match="moved to another port"):
        ls.start(timeout=20)
    assert not ls.running()


def test_add_user_needs_a_running_server(tmp_path: Path) -> None:
    ls = LocalLabelStudio(free_port(), tmp_path / "d", executable=Path("/nonexistent"))
    with pytest.raises(LabelStudioError, match="not running"):
        ls.add_user("a@x.test", "pw-123456", TOKEN)


# --- HTTP helpers against a stand-in -------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith("/health"):
            self._send(200, {"status": "UP"})
        elif self.path == "/api/version":
            self._send(200, {"release": "9.9.9"})
        elif self.path == "/api/current-user/whoami":
            if self.headers.get("Authorization") == f"Token {TOKEN}":
                self._send(200, {"id": 7, "email": "u@x.test"})
            else:
                self._send(401, {"detail": "Invalid token."})
        else:
            self._send(404, {})

    def _send(self, code: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[int]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_health_and_whoami(stand_in: int) -> None:
    url = f"http://127.0.0.1:{stand_in}"
    assert health(url)
    assert not health(f"http://127.0.0.1:{free_port()}")
    assert whoami(url, TOKEN) == {"id": 7, "email": "u@x.test"}
    with pytest.raises(LabelStudioError) as info:
        whoami(url, "wrong0token")
    assert info.value.kind == "unauthorized" and "HTTP 401" in str(info.value)
    with pytest.raises(LabelStudioError) as info:
        whoami(f"http://127.0.0.1:{free_port()}", TOKEN)
    assert info.value.kind == "unreachable"


# --- install() -------------------------------------------------------------------------------


def test_complete_venv_is_not_rebuilt(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = venv_dir()
    assert root == home / f"label-studio-{LS_VERSION}"
    (root / "bin").mkdir(parents=True)
    (root / ".complete").write_text(f"label-studio {LS_VERSION}\n")

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("install() ran a command although the venv is complete")

    monkeypatch.setattr(toolvenv, "run", no_run)
    assert install() == root / "bin" / "label-studio"


@pytest.mark.timeout(120)
def test_failed_pip_install_raises_with_its_output(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = venv_dir()
    root.mkdir(parents=True)
    (root / "leftover").write_text("from an interrupted install\n")
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline and fast: nothing can be found
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setattr(venv_module, "REQUIREMENT", "hitl-router-no-such-package==0.0.1")
    with pytest.raises(LabelStudioError) as info:
        install()
    message = str(info.value)
    assert "pip install hitl-router-no-such-package==0.0.1" in message
    assert "No matching distribution found" in message
    assert info.value.kind == "setup"
    assert not (root / ".complete").exists()
    assert not (root / "leftover").exists()  # the incomplete leftover was cleared first
    assert (root / "bin" / "python").exists()  # the venv itself was made


# --- CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["label-studio"],
        ["label-studio", "bogus"],
        ["label-studio", "start", "--port", "http"],
        ["label-studio", "start", "--port", "70000"],
        ["label-studio", "status", "--port", "0"],
        ["label-studio", "status", "--timeout", "soon"],
        ["label-studio", "fetch", "--port", "8080"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: hitl-router" in err and "error:" in err


def test_bad_token_in_the_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_install: None
) -> None:
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "short")
    assert main(["label-studio", "start", "--port", str(free_port())]) == 2
    assert "6 to 40 letters or digits" in capsys.readouterr().err


def test_cli_start_on_a_busy_port_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_install: None
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["label-studio", "start", "--port", str(port), "--data-dir", str(tmp_path)])
    assert code == 1
    assert f"127.0.0.1:{port} is in use" in capsys.readouterr().err


def test_cli_status(stand_in: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["label-studio", "status", "--port", str(stand_in)]) == 0
    assert f"Label Studio 9.9.9 running at http://127.0.0.1:{stand_in}" in capsys.readouterr().out
    port = free_port()
    assert main(["label-studio", "status", "--port", str(port)]) == 1
    assert f"not answering at http://127.0.0.1:{port}/health" in capsys.readouterr().out


def test_cli_stop_with_nothing_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "label-studio.pid").write_text("999999999\n")  # no such process
    assert main(["label-studio", "stop", "--data-dir", str(tmp_path)]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_cli_stop_stops_the_recorded_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = script(tmp_path / "bin" / "label-studio", "sleep 60")
    proc = subprocess.Popen([str(fake), "start"], start_new_session=True)
    try:
        (tmp_path / "label-studio.pid").write_text(f"{proc.pid}\n")
        assert main(["label-studio", "stop", "--data-dir", str(tmp_path), "--timeout", "5"]) == 0
        assert proc.wait(5) == -signal.SIGTERM
        assert f"stopped (pid {proc.pid})" in capsys.readouterr().out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
