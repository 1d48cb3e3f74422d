"""The ``prometheus`` and ``promtool`` binaries: from PATH, else from Debian's package.

Without both on PATH, Debian's ``prometheus`` package (which ships promtool) is fetched
with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into ``<cache>/prometheus``
(``<cache>`` as for the local Kafka): nothing is installed on the system. Missing package
lists get one ``apt-get update`` (as root only).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hitl_router.errors import PrometheusError
from hitl_router.localkafka.broker import _locked, cache_dir

log = logging.getLogger(__name__)

PACKAGE = "prometheus"
_COMPLETE = ".complete"
# apt-get download's complaints that a fresh `apt-get update` cures: no lists at all, or
# lists so old that the mirror no longer has the version they name
_STALE_LISTS = re.compile(r"Unable to locate package|no installation candidate|404\s+Not Found")
INSTALL_HINT = (
    "install Debian's prometheus package (apt-get install prometheus), "
    "or put prometheus and promtool on PATH"
)


@dataclass(frozen=True)
class Binaries:
    """Paths of the two executables; ``source`` says where they came from."""

    prometheus: Path
    promtool: Path
    source: str  # "PATH" or the unpacked .deb's file name

    def versions(self) -> dict[str, str]:
        """First line of each binary's ``--version``, e.g. ``promtool, version 2.42.0+ds ...``."""
        versions = {}
        for path in (self.prometheus, self.promtool):
            proc = _run([str(path), "--version"], f"{path} --version", 30)
            versions[path.name] = (proc.stdout or proc.stderr).strip().split("\n")[0]
        return versions


def package_dir() -> Path:
    """Where the package is unpacked: ``<cache>/prometheus`` (binaries in ``usr/bin``)."""
    return cache_dir() / PACKAGE


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _exec(
    cmd: list[str], what: str, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing its output; a timeout or a missing executable raise."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PrometheusError(f"`{what}` did not finish within {timeout:g}s") from exc
    except OSError as exc:
        raise PrometheusError(f"`{what}` could not run: {exc}") from exc


def _run(
    cmd: list[str], what: str, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`_exec`, and a non-zero exit raises too, with the output's tail."""
    proc = _exec(cmd, what, timeout, cwd)
    if proc.returncode != 0:
        raise PrometheusError(
            f"`{what}` failed (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
        )
    return proc


def _on_path() -> Binaries | None:
    found = [shutil.which(name) for name in ("prometheus", "promtool")]
    if found[0] is None or found[1] is None:
        return None
    return Binaries(Path(found[0]), Path(found[1]), "PATH")


def _cached(root: Path) -> Binaries | None:
    marker = root / _COMPLETE
    if not marker.exists():
        return None
    bin_dir = root / "usr" / "bin"
    return Binaries(bin_dir / "prometheus", bin_dir / "promtool", marker.read_text().strip())


def _verified(binaries: Binaries, hint: str = "") -> Binaries:
    """``binaries`` once ``promtool --version`` ran (``hint`` ends the error if not)."""
    try:
        _run([str(binaries.promtool), "--version"], f"{binaries.promtool} --version", 30)
    except PrometheusError as exc:
        raise PrometheusError(f"{exc}{hint}") from exc
    return binaries


def fetch_prometheus() -> Binaries:
    """``prometheus`` and ``promtool`` from PATH, else from the cache (fetched once)."""
    on_path = _on_path()
    if on_path is not None:
        return _verified(on_path)
    root = package_dir()
    cached = _cached(root)
    stale = f"\n(delete {root} to fetch the package again)"
    if cached is not None:
        return _verified(cached, stale)
    with _locked(root):
        cached = _cached(root)
        if cached is None:
            return _unpack_package(root)
    return _verified(cached, stale)


def _tools() -> tuple[str, str]:
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt_get is None or dpkg_deb is None:
        raise PrometheusError(
            "prometheus and promtool are not both on PATH, and fetching Debian's package "
            f"needs apt-get and dpkg-deb (Debian/Ubuntu); {INSTALL_HINT}"
        )
    return apt_get, dpkg_deb


def _download(apt_get: str, work: Path) -> Path:
    """``apt-get download prometheus`` into ``work`` (one ``apt-get update`` if lists are stale)."""
    cmd = [apt_get, "download", PACKAGE]
    what = f"apt-get download {PACKAGE}"
    try:
        _run(cmd, what, 900, cwd=work)
    except PrometheusError as exc:
        if not _STALE_LISTS.search(str(exc)):
            raise
        if os.geteuid() != 0:
            raise PrometheusError(
                f"{exc}\nthe package lists lack {PACKAGE}: run `apt-get update` as root, "
                f"or {INSTALL_HINT}"
            ) from exc
        log.info("package lists lack %s; running apt-get update once", PACKAGE)
        _run([apt_get, "update"], "apt-get update", 900)
        _run(cmd, what, 900, cwd=work)
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise PrometheusError(f"`{what}` succeeded but left no {PACKAGE}_*.deb in {work}")
    return debs[0]


def _unpack_package(root: Path) -> Binaries:
    apt_get, dpkg_deb = _tools()
    log.info("fetching Debian's %s package into %s", PACKAGE, root)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        deb = _download(apt_get, work)
        unpacked = work / "root"
        _run([dpkg_deb, "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}", 300)
        fresh = _cached_layout(unpacked, deb.name)
        _verified(fresh)
        if (root / "usr").exists():  # an incomplete leftover (marker missing)
            shutil.rmtree(root / "usr")
        os.rename(unpacked / "usr", root / "usr")
        (root / _COMPLETE).write_text(deb.name + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("unpacked %s into %s", deb.name, root)
    cached = _cached(root)
    assert cached is not None
    return cached


def _cached_layout(unpacked: Path, deb_name: str) -> Binaries:
    bin_dir = unpacked / "usr" / "bin"
    missing = [n for n in ("prometheus", "promtool") if not (bin_dir / n).is_file()]
    if missing:
        raise PrometheusError(f"{deb_name} has no usr/bin/{' or usr/bin/'.join(missing)}")
    return Binaries(bin_dir / "prometheus", bin_dir / "promtool", deb_name)


def promtool(
    *args: str, check: bool = True, timeout: float = 60, binaries: Binaries | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS``; unless ``check=False`` a non-zero exit raises with its output."""
    tool = (binaries or fetch_prometheus()).promtool
    what = "promtool " + " ".join(args)
    run = _run if check else _exec
    return run([str(tool), *args], what, timeout)


# --- command line: `hitl-router prometheus fetch` ---------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    binaries = fetch_prometheus()
    versions = binaries.versions()
    print(f"# from {binaries.source}")
    for path in (binaries.prometheus, binaries.promtool):
        print(f"{path}\t{versions[path.name]}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``prometheus`` and its actions on the root CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "prometheus", help="local Prometheus and promtool (Debian's package) for tests and demo"
    )
    actions = parser.add_subparsers(dest="prometheus_action", required=True, metavar="ACTION")
    action = actions.add_parser(
        "fetch", help="use them from PATH or fetch Debian's package; print paths and versions"
    )
    action.set_defaults(handler=_cmd_fetch)
    return parser
