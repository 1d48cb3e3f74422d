"""Structured logs (``hitl-router worker --log-format json``): every log line — the
worker's own, Faust's, mode's, aiokafka's — is one JSON object with ``ts`` (ISO 8601,
UTC), ``level``, ``logger``, ``message``, the worker's ``worker`` id, consumer ``group``
and the partitions it holds now (``assignment``, ``{topic: [partition, ...]}``, updated
at every rebalance), and ``exc_info`` (the traceback) when there is one.

The JSON is python-json-logger's; :class:`ContextFilter`, a ``logging.Filter`` on each
handler, stamps the per-process fields on every record that reaches the handler —
including those of libraries that log through their own loggers.

>>> import io, logging
>>> from faust.types import TP
>>> context = LogContext(worker="host:1", group="hitl-router")
>>> handler = logging.StreamHandler(out := io.StringIO())
>>> install(context, [handler])
>>> logger = logging.getLogger("doctest.json_logs")
>>> logger.addHandler(handler)
>>> logger.warning("held %d partitions", 0)
>>> context.assigned([TP("predictions", 2), TP("predictions", 0)])
>>> logger.warning("rebalanced")
>>> logger.removeHandler(handler)
>>> import orjson
>>> lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
>>> [(line["message"], line["assignment"]) for line in lines]
[('held 0 partitions', {}), ('rebalanced', {'predictions': [0, 2]})]
>>> sorted(lines[0])
['assignment', 'group', 'level', 'logger', 'message', 'ts', 'worker']
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

#: the record's attributes in every line, and their names there
_FIELDS = ("levelname", "name", "message", "worker", "group", "assignment")
_RENAMED = {"levelname": "level", "name": "logger"}


def worker_id() -> str:
    """This process's id in the logs: ``<hostname>:<pid>`` (unique among the workers of a
    group, also when several run on one host)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LogContext:
    """What every line says about this worker. ``assignment`` is replaced, never changed
    in place, so a line (from any thread) reads one assignment, whole."""

    def __init__(self, worker: str | None = None, group: str | None = None) -> None:
        self.worker = worker or worker_id()
        #: the consumer group; None until the config and the agents are known
        self.group = group
        self.assignment: dict[str, list[int]] = {}
        self._held: frozenset[tuple[str, int]] = frozenset()

    def assigned(self, partitions: Iterable[Any]) -> None:
        """A rebalance gave this worker ``partitions`` (its whole new assignment)."""
        self._hold(frozenset((tp.topic, tp.partition) for tp in partitions))

    def revoked(self, partitions: Iterable[Any]) -> None:
        """A rebalance took ``partitions`` away."""
        self._hold(self._held - {(tp.topic, tp.partition) for tp in partitions})

    def _hold(self, held: frozenset[tuple[str, int]]) -> None:
        assignment: dict[str, list[int]] = {}
        for topic, partition in sorted(held):
            assignment.setdefault(topic, []).append(partition)
        self._held = held
        self.assignment = assignment


class ContextFilter(logging.Filter):
    """Stamps ``worker``, ``group`` and ``assignment`` on every record a handler sees."""

    def __init__(self, context: LogContext) -> None:
        super().__init__()
        self.context = context

    def filter(self, record: logging.LogRecord) -> bool:
        context = self.context
        record.worker = context.worker
        record.group = context.group
        record.assignment = context.assignment
        return True


def formatter() -> logging.Formatter:
    """python-json-logger's formatter (orjson), one line per record."""
    return OrjsonFormatter(
        list(_FIELDS),
        rename_fields=_RENAMED,
        timestamp="ts",  # the record's time, UTC, as ISO 8601
        defaults={"ts": None},  # only so that ts comes first in each line
    )


def install(context: LogContext, handlers: Sequence[logging.Handler] | None = None) -> None:
    """Format ``handlers`` (default: every handler of the root logger, where Faust's worker
    sends every library's records) as JSON lines carrying ``context``. Idempotent."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.setFormatter(formatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter(context))


def track_assignment(app: Any, context: LogContext) -> None:
    """Keep ``context.assignment`` equal to what ``app``'s consumer holds, from the same
    rebalance signals that ``/readyz`` follows."""

    @app.on_partitions_assigned.connect  # type: ignore[misc]
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        context.assigned(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        context.revoked(revoked)
