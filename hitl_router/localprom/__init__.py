"""Local Prometheus and promtool (Debian's package) for tests and the demo.

:mod:`.binaries` finds or fetches the executables; :mod:`.server` runs a server and
queries its HTTP API.
"""

from hitl_router.errors import PrometheusError, PrometheusQueryError
from hitl_router.localprom.binaries import (
    Binaries,
    add_parser,
    fetch_prometheus,
    package_dir,
    promtool,
)
from hitl_router.localprom.server import LocalPrometheus

__all__ = [
    "Binaries",
    "LocalPrometheus",
    "PrometheusError",
    "PrometheusQueryError",
    "add_parser",
    "fetch_prometheus",
    "package_dir",
    "promtool",
]
