"""What the agents that keep Faust tables (the label join, the calibration windows,
dedup's routed ids) share: a batch's writes, and writing a table without a stream event.

They are fed by the batching consumer, not Faust streams, so Faust's
``table[key] = value`` (which takes its changelog partition from the current event)
is not theirs: :func:`put` sets the table's store and adds the change, a record for the
changelog partition given, to the batch's outputs, so a batch is acked only once its
changes are durable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust

from hitl_router.router.outputs import Output

#: hands outputs to the producer; the awaitables resolve once the broker has them
Publish = Callable[[list[Output]], list[Awaitable[Any]]]


class Writes:
    """What handling a batch produced: outputs to publish, among them the tables'
    changelog writes (:func:`put`). The batch is acked only when all are delivered, so an
    acked message never has a change the changelog lacks."""

    __slots__ = ("outputs",)

    def __init__(self) -> None:
        self.outputs: list[Output] = []

    def deliveries(self, publish: Publish) -> list[Awaitable[Any]]:
        return publish(self.outputs)


def put(table: Any, outputs: list[Output], partition: int, key: bytes, value: bytes | None) -> None:
    """Set (``None``: delete) ``key`` in ``table``'s store, and add the change to
    ``outputs``: a record for the table's changelog ``partition``, published with the
    batch's other outputs. Deleting a key the table does not hold writes nothing.

    Not ``Table.send_changelog``: that goes through Faust's producer buffer, a
    ``FutureMessage``, sensors and an ``await producer.send()`` per change (measured: a
    tenth of the routing worker's samples with dedup on). The tables are in-memory stores
    (they keep no persisted changelog offset), with ``bytes`` keys and values, which
    Faust writes as they are ("raw"): the record is the one ``send_changelog`` writes."""
    data = table.data
    if value is None:
        if data.pop(key, None) is None:
            return
    else:
        data[key] = value
    topic = table.changelog_topic.get_topic_name()
    outputs.append(Output(topic, key, value, None, partition))


def active_partitions(app: faust.App, topic: str) -> set[int]:
    """The partitions of ``topic`` this worker is active for."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
