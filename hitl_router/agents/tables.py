"""What the agents that keep Faust tables (the label join, the calibration windows,
dedup's routed ids) share: a batch's writes, and writing a table without a stream event.

They are fed by the batching consumer, not Faust streams, so Faust's
``table[key] = value`` (which takes its changelog partition from the current event)
is not theirs: :func:`put` sets the table's store and sends the change to the
changelog partition given, and the send's future joins the batch's deliveries, so a
batch is acked only once its changes are durable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust

from hitl_router.router.outputs import Output

#: hands outputs to the producer; the awaitables resolve once the broker has them
Publish = Callable[[list[Output]], list[Awaitable[Any]]]


class Writes:
    """What handling a batch produced: outputs to publish, and the table's changelog
    writes (futures that resolve once the broker has them). The batch is acked only when
    both are delivered, so an acked message never has a change the changelog lacks."""

    __slots__ = ("outputs", "changelog")

    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self.changelog: list[Awaitable[Any]] = []

    def deliveries(self, publish: Publish) -> list[Awaitable[Any]]:
        return [*publish(self.outputs), *self.changelog]


def put(
    table: Any, changelog: list[Awaitable[Any]], partition: int, key: bytes, value: bytes | None
) -> None:
    """Set (``None``: delete) ``key`` in ``table``'s store and send the change to its
    changelog ``partition``; the send's future goes to ``changelog``. Deleting a key the
    table does not hold sends nothing."""
    data = table.data
    if value is None:
        if data.pop(key, None) is None:
            return
    else:
        data[key] = value
    changelog.append(table.send_changelog(partition, key, value))


def active_partitions(app: faust.App, topic: str) -> set[int]:
    """The partitions of ``topic`` this worker is active for."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
