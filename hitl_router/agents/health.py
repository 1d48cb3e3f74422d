"""``/healthz`` and ``/readyz`` on the worker's web port, from the real state of its
consumer and producer.

- **healthz** (liveness): 200 while the worker runs; 503 once it crashed or is
  stopping (it then exits within ``worker.shutdown_timeout_s``), or when its consumer
  or producer crashed. A supervisor restarts a worker that stays unhealthy.
- **readyz** (readiness): 200 when healthy *and* the consumer has joined its group and
  holds its assignment (possibly empty, when the group has more workers than
  partitions) *and* the producer has started; 503 before the first assignment, during a
  rebalance, and whenever it is not healthy.

Each answers a JSON body with the checks, so ``curl`` tells why.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View


class Health:
    """What the probes read: the app's services, and whether the consumer holds an
    assignment (set by the rebalance signals)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.assigned = False
        self.partitions = 0

    def on_assigned(self, assigned: Any) -> None:
        self.assigned = True
        self.partitions = len(self.app.consumer.assignment())

    def on_revoked(self) -> None:
        self.assigned = False

    def checks(self) -> dict[str, Any]:
        app = self.app
        consumer = app._consumer  # None until the worker builds it
        producer = app._producer
        return {
            "running": app.started and not app.should_stop,
            "consumer": _state(consumer),
            "producer": _state(producer),
            "assigned": self.assigned,
            "partitions": self.partitions if self.assigned else 0,
        }

    def healthy(self, checks: dict[str, Any]) -> bool:
        return bool(checks["running"]) and "crashed" not in (checks["consumer"], checks["producer"])

    def ready(self, checks: dict[str, Any]) -> bool:
        return (
            self.healthy(checks)
            and checks["assigned"]
            and checks["consumer"] == "running"
            and checks["producer"] == "running"
        )


def _state(service: Any) -> str:
    if service is None:
        return "not started"
    if service.crashed:
        return "crashed"
    if service.should_stop:
        return "stopping"
    return "running" if service.started else "starting"


def install(app: faust.App) -> Health:
    """Serve the probes on ``app``'s web server; returns the state they read."""
    health = Health(app)

    @app.on_partitions_assigned.connect  # type: ignore[misc]
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        health.on_assigned(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        health.on_revoked()

    @app.page("/healthz")
    class Healthz(View):
        async def get(self, request: Request) -> Response:
            checks = health.checks()
            ok = health.healthy(checks)
            return self.json({"healthy": ok, **checks}, status=200 if ok else 503)

    @app.page("/readyz")
    class Readyz(View):
        async def get(self, request: Request) -> Response:
            checks = health.checks()
            ok = health.ready(checks)
            return self.json({"ready": ok, **checks}, status=200 if ok else 503)

    return health
