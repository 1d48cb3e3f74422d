"""``/healthz`` and ``/readyz`` on the worker's web port, from the real state of its
consumer and producer.

- **healthz** (liveness): 200 while the worker runs; 503 once it crashed or is
  stopping (it then exits within ``worker.shutdown_timeout_s``), or when its consumer
  or producer crashed — the consumer's group coordination included: a timer crashes
  the worker when it stops. A supervisor restarts a worker that stays unhealthy.
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

from hitl_router.errors import RouterError


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
            "consumer": "crashed" if coordination_error(app) else _state(consumer),
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


def coordination_error(app: faust.App) -> BaseException | None:
    """Why the consumer's group coordination stopped, if it did. aiokafka runs it as a
    task that, once it has raised (e.g. Faust's assignor refusing an assignment), never
    joins the group again — and the consumer, holding no partition, never reads the
    error: the worker would idle for ever, looking alive."""
    try:
        coordinator = app._consumer._thread._consumer._coordinator  # type: ignore[union-attr]
        task = coordinator._coordination_task
    except AttributeError:  # not started yet, or no group
        return None
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()


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

    @app.timer(1.0)
    async def _watch_coordination() -> None:
        """A consumer whose group coordination died crashes the worker (it then exits
        within worker.shutdown_timeout_s), instead of idling with no partition."""
        error = coordination_error(app)
        if error is not None and app._consumer is not None and not app._consumer.crashed:
            await app._consumer.crash(
                RouterError(f"the consumer's group coordination stopped: {error!r}")
            )

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
