"""hitl_router.localprom without the network or the real binaries.

apt-get, dpkg-deb, prometheus and promtool are shell scripts in a fake PATH dir; their
behaviour is switched by files in ``$FAKE_STATE``, and apt-get logs its calls there.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from hitl_router.cli import main
from hitl_router.errors import RouterError
from hitl_router.localprom import (
    Binaries,
    LocalPrometheus,
    PrometheusError,
    PrometheusQueryError,
    fetch_prometheus,
    package_dir,
    promtool,
)
from hitl_router.localprom.binaries import _run

APT_GET = """\
echo "$*" >> "$FAKE_STATE/apt-calls"
case "$1" in
  update)
    if [ -e "$FAKE_STATE/update-fails" ]; then echo "E: Could not resolve 'deb.x'" >&2; exit 100; fi
    touch "$FAKE_STATE/lists" ;;
  download)
    [ -e "$FAKE_STATE/slow" ] && sleep 0.5
    if [ ! -e "$FAKE_STATE/lists" ]; then
      echo "E: Unable to locate package prometheus" >&2; exit 100
    fi
    if [ -e "$FAKE_STATE/download-fails" ]; then
      echo "E: Failed to fetch http://deb.x/prometheus.deb  Connection refused" >&2; exit 100
    fi
    echo deb > prometheus_9.9.9+ds-1_amd64.deb ;;
esac
"""
DPKG_DEB = """\
if [ -e "$FAKE_STATE/dpkg-fails" ]; then
  echo "dpkg-deb: error: '$2' is not a Debian format archive" >&2; exit 2
fi
mkdir -p "$3" && cp -r "$FAKE_STATE/payload/usr" "$3/"
"""
VERSION = 'echo "$(basename "$0"), version 9.9.9+ds (branch: fake)"'
BROKEN = 'echo "$(basename "$0"): cannot execute binary file" >&2; exit 126'


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nPATH=/usr/bin:/bin\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, a PATH of fake apt-get and dpkg-deb, a payload of working binaries."""
    monkeypatch.setenv("HITL_ROUTER_HOME", str(tmp_path / "home"))
    state = tmp_path / "state"
    monkeypatch.setenv("FAKE_STATE", str(state))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    script(tmp_path / "bin" / "apt-get", APT_GET)
    script(tmp_path / "bin" / "dpkg-deb", DPKG_DEB)
    for name in ("prometheus", "promtool"):
        script(state / "payload" / "usr" / "bin" / name, VERSION)
    (state / "lists").touch()
    return state


def apt_calls(state: Path) -> list[str]:
    log = state / "apt-calls"
    return log.read_text().splitlines() if log.exists() else []


def test_binaries_from_path_when_both_there(fake: Path, tmp_path: Path) -> None:
    for name in ("prometheus", "promtool"):
        script(tmp_path / "bin" / name, VERSION)
    binaries = fetch_prometheus()
    assert binaries == Binaries(tmp_path / "bin/prometheus", tmp_path / "bin/promtool", "PATH")
    assert binaries.versions()["promtool"] == "promtool, version 9.9.9+ds (branch: fake)"
    assert apt_calls(fake) == []
    assert not package_dir().exists()


def test_one_binary_on_path_is_not_enough(fake: Path, tmp_path: Path) -> None:
    script(tmp_path / "bin" / "prometheus", VERSION)
    binaries = fetch_prometheus()
    assert binaries.promtool == package_dir() / "usr/bin/promtool"
    assert apt_calls(fake) == ["download prometheus"]


def test_fetch_unpacks_once_into_cache(fake: Path, tmp_path: Path) -> None:
    binaries = fetch_prometheus()
    assert package_dir() == tmp_path / "home" / "prometheus"
    assert binaries.prometheus == package_dir() / "usr/bin/prometheus"
    assert binaries.source == "prometheus_9.9.9+ds-1_amd64.deb"
    assert binaries.versions() == {
        "prometheus": "prometheus, version 9.9.9+ds (branch: fake)",
        "promtool": "promtool, version 9.9.9+ds (branch: fake)",
    }
    assert (package_dir() / ".complete").read_text() == "prometheus_9.9.9+ds-1_amd64.deb\n"
    assert [p.name for p in package_dir().glob(".fetch-*")] == []  # work dir removed
    assert fetch_prometheus() == binaries  # cached: no second download
    assert apt_calls(fake) == ["download prometheus"]


def test_missing_lists_get_one_update_as_root(fake: Path) -> None:
    (fake / "lists").unlink()
    assert fetch_prometheus().source == "prometheus_9.9.9+ds-1_amd64.deb"
    assert apt_calls(fake) == ["download prometheus", "update", "download prometheus"]


def test_missing_lists_without_root_say_what_to_run(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fake / "lists").unlink()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrometheusError) as info:
        fetch_prometheus()
    message = str(info.value)
    assert "`apt-get download prometheus` failed (exit 100)" in message
    assert "E: Unable to locate package prometheus" in message
    assert "run `apt-get update` as root" in message
    assert "apt-get install prometheus" in message
    assert isinstance(info.value, RouterError) and isinstance(info.value, RuntimeError)
    assert apt_calls(fake) == ["download prometheus"]
    assert not (package_dir() / ".complete").exists()


def test_failed_update_is_surfaced(fake: Path) -> None:
    (fake / "lists").unlink()
    (fake / "update-fails").touch()
    with pytest.raises(PrometheusError, match=r"`apt-get update` failed \(exit 100\)") as info:
        fetch_prometheus()
    assert "Could not resolve 'deb.x'" in str(info.value)
    assert apt_calls(fake) == ["download prometheus", "update"]


def test_other_download_failure_is_not_retried(fake: Path) -> None:
    (fake / "download-fails").touch()
    with pytest.raises(PrometheusError) as info:
        fetch_prometheus()
    assert "`apt-get download prometheus` failed (exit 100)" in str(info.value)
    assert "Connection refused" in str(info.value)
    assert apt_calls(fake) == ["download prometheus"]


def test_no_apt_tools_names_what_to_install(fake: Path, tmp_path: Path) -> None:
    (tmp_path / "bin" / "dpkg-deb").unlink()
    with pytest.raises(PrometheusError) as info:
        fetch_prometheus()
    message = str(info.value)
    assert "needs apt-get and dpkg-deb" in message
    assert "apt-get install prometheus" in message and "on PATH" in message


def test_dpkg_deb_failure_names_the_package(fake: Path) -> None:
    (fake / "dpkg-fails").touch()
    with pytest.raises(PrometheusError) as info:
        fetch_prometheus()
    assert "`dpkg-deb -x prometheus_9.9.9+ds-1_amd64.deb` failed (exit 2)" in str(info.value)
    assert "is not a Debian format archive" in str(info.value)
    assert not (package_dir() / ".complete").exists()


def test_package_without_promtool(fake: Path) -> None:
    (fake / "payload/usr/bin/promtool").unlink()
    with pytest.raises(PrometheusError, match="has no usr/bin/promtool$"):
        fetch_prometheus()
    assert not (package_dir() / "usr").exists()


def test_unpacked_binary_that_does_not_run(fake: Path) -> None:
    script(fake / "payload/usr/bin/promtool", BROKEN)
    with pytest.raises(PrometheusError) as info:
        fetch_prometheus()
    assert "promtool --version` failed (exit 126)" in str(info.value)
    assert "promtool: cannot execute binary file" in str(info.value)
    assert not (package_dir() / ".complete").exists()


def test_broken_cache_says_to_delete_it(fake: Path) -> None:
    binaries = fetch_prometheus()
    script(binaries.promtool, BROKEN)
    with pytest.raises(PrometheusError) as info:
        fetch_prometheus()
    assert f"(delete {package_dir()} to fetch the package again)" in str(info.value)


def test_incomplete_leftover_is_replaced(fake: Path) -> None:
    leftover = package_dir() / "usr" / "bin" / "half-written"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("")
    fetch_prometheus()
    assert not leftover.exists()
    assert (package_dir() / "usr/bin/promtool").exists()


def test_concurrent_fetches_download_once(fake: Path) -> None:
    (fake / "slow").touch()
    results: list[Binaries] = []
    threads = [threading.Thread(target=lambda: results.append(fetch_prometheus())) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0] == results[1]
    assert apt_calls(fake) == ["download prometheus"]


def test_run_timeout_and_missing_executable(tmp_path: Path) -> None:
    sleeper = script(tmp_path / "sleeper", "exec /bin/sleep 5")
    with pytest.raises(PrometheusError, match=r"^`sleeper` did not finish within 0.2s$"):
        _run([str(sleeper)], "sleeper", 0.2)
    with pytest.raises(PrometheusError, match=r"^`nothing --version` could not run: "):
        _run([str(tmp_path / "nothing")], "nothing --version", 5)


def test_promtool_helper_raises_unless_told_not_to(tmp_path: Path) -> None:
    tool = script(tmp_path / "promtool", 'echo "checking $2"; echo "  FAILED: bad" >&2; exit 1')
    binaries = Binaries(tmp_path / "prometheus", tool, "PATH")
    with pytest.raises(PrometheusError) as info:
        promtool("check", "config", "p.yml", binaries=binaries)
    assert str(info.value).startswith("`promtool check config p.yml` failed (exit 1):")
    assert "FAILED: bad" in str(info.value)
    proc = promtool("check", "config", "p.yml", check=False, binaries=binaries)
    assert (proc.returncode, proc.stdout) == (1, "checking config\n")


def test_cli_prints_paths_and_versions(
    fake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prometheus", "fetch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bin_dir = package_dir() / "usr/bin"
    assert lines == [
        "# from prometheus_9.9.9+ds-1_amd64.deb",
        f"{bin_dir / 'prometheus'}\tprometheus, version 9.9.9+ds (branch: fake)",
        f"{bin_dir / 'promtool'}\tpromtool, version 9.9.9+ds (branch: fake)",
    ]


def test_cli_failure_exits_1(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fake / "dpkg-fails").touch()
    assert main(["prometheus", "fetch"]) == 1
    assert "hitl-router prometheus: `dpkg-deb -x" in capsys.readouterr().err


# --- LocalPrometheus ---------------------------------------------------------------------------


def test_command_line(tmp_path: Path) -> None:
    prom = LocalPrometheus(
        tmp_path / "p.yml",
        9191,
        tmp_path / "run",
        retention="2h",
        extra_args=("--log.level=debug",),
    )
    assert prom.url == "http://127.0.0.1:9191"
    assert prom.log_file == tmp_path / "run" / "prometheus.log"
    assert prom.command(Path("/x/prometheus")) == [
        "/x/prometheus",
        f"--config.file={tmp_path / 'p.yml'}",
        f"--storage.tsdb.path={tmp_path / 'run' / 'tsdb'}",
        "--storage.tsdb.retention.time=2h",
        "--web.listen-address=127.0.0.1:9191",
        "--web.enable-lifecycle",
        "--log.level=debug",
    ]


def fake_server(tmp_path: Path, body: str, port: int | None = None) -> LocalPrometheus:
    exe = script(tmp_path / "bin" / "prometheus", body)
    binaries = Binaries(exe, exe, "PATH")
    return LocalPrometheus(
        tmp_path / "p.yml", port or free_port(), tmp_path / "run", binaries=binaries
    )


def test_start_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    prom = fake_server(tmp_path, 'echo "level=error msg=\\"bad flag: $2\\""; exit 3')
    with pytest.raises(PrometheusError) as info:
        prom.start(timeout=10)
    message = str(info.value)
    assert message.startswith("Prometheus exited during startup (exit 3)\n")
    assert f'msg="bad flag: --storage.tsdb.path={tmp_path / "run" / "tsdb"}"' in message
    assert not prom.running()


def test_start_gives_up_after_timeout_and_stops_it(tmp_path: Path) -> None:
    prom = fake_server(tmp_path, 'echo "starting $$"; exec /bin/sleep 60')
    started = time.monotonic()
    with pytest.raises(PrometheusError) as info:
        prom.start(timeout=1)
    assert time.monotonic() - started < 10
    assert f"did not answer {prom.url}/-/ready within 1s; stopped it" in str(info.value)
    pid = int(prom.log_file.read_text().split()[1])
    assert not prom.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped by stop()
    assert prom.stop() is False


def test_start_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        prom = fake_server(tmp_path, "exit 0", port=busy.getsockname()[1])
        with pytest.raises(PrometheusError, match=r"127\.0\.0\.1:\d+ is in use"):
            prom.start()
    assert not prom.log_file.exists()


def test_query_without_a_server(tmp_path: Path) -> None:
    prom = LocalPrometheus(tmp_path / "p.yml", free_port(), tmp_path / "run")
    with pytest.raises(PrometheusError, match=r"^Prometheus at http://127\.0\.0\.1:\d+ cannot be"):
        prom.query("up")


class _Canned(BaseHTTPRequestHandler):
    """Answers every request with the server's ``canned`` (status, body)."""

    def do_GET(self) -> None:
        status, body = self.server.canned  # type: ignore[attr-defined]
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[tuple[HTTPServer, LocalPrometheus]]:
    server = HTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, LocalPrometheus(tmp_path / "p.yml", server.server_port, tmp_path / "run")
    finally:
        server.shutdown()
        server.server_close()


def test_api_answers(canned: tuple[HTTPServer, LocalPrometheus]) -> None:
    server, prom = canned
    error = {"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unclosed"}
    server.canned = (400, json.dumps(error))  # type: ignore[attr-defined]
    with pytest.raises(PrometheusQueryError) as info:
        prom.query("sum(")
    assert str(info.value) == "Prometheus /api/v1/query: bad_data: 1:5: parse error: unclosed"
    assert (info.value.error_type, info.value.error) == ("bad_data", "1:5: parse error: unclosed")

    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.5, "2"]}}
    server.canned = (200, json.dumps(scalar))  # type: ignore[attr-defined]
    assert prom.query("1+1") == [{"metric": {}, "value": [1.5, "2"]}]

    server.canned = (200, "<html>not prometheus</html>")  # type: ignore[attr-defined]
    with pytest.raises(PrometheusError, match=r"^Prometheus /api/v1/rules: not an API answer: b'<"):
        prom.rules()
    server.canned = (200, '{"status": "pending"}')  # type: ignore[attr-defined]
    with pytest.raises(PrometheusError, match=r"answer: b'{\"status\": \"pending\"}'$") as info:
        prom.alerts()
    assert not isinstance(info.value, PrometheusQueryError)

    server.canned = (500, "failed to reload config: bad yaml")  # type: ignore[attr-defined]
    with pytest.raises(PrometheusError) as reload_info:
        prom.reload()
    assert (
        str(reload_info.value)
        == "Prometheus /-/reload: HTTP 500: failed to reload config: bad yaml"
    )
    assert not isinstance(reload_info.value, PrometheusQueryError)


def test_stop_without_start(tmp_path: Path) -> None:
    assert LocalPrometheus(tmp_path / "p.yml", 1, tmp_path).stop() is False
