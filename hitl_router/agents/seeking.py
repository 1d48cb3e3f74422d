"""Faust's consumer for the label loop's workers, with one fix: after a rebalance, a
partition with no committed offset is read again from its beginning.

Faust re-reads what its streams skipped during a rebalance (events fetched under the
previous consumer generation) by seeking every partition to its committed offset. But
aiokafka's ``seek_to_committed`` leaves a partition alone when it has no committed offset
(or 0): its position stays past the skipped events, and the first event acked after them
lets Faust commit past them too (``Consumer._new_offset`` checks for a gap at the head
only when there is a committed offset). Measured: after a label worker was killed, its
successor lost every label already written to the partitions it took over in about half
of the runs. Seeking those partitions to their beginning — what ``auto_offset_reset:
earliest`` means for a group that never committed — re-reads them (at least once).
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer

log = logging.getLogger(__name__)


class _SeekingThread(AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Any:
        return await self.call_thread(self._seek_to_committed_or_beginning)

    async def _seek_to_committed_or_beginning(self) -> Any:
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset]  # None or 0
        if fresh:
            await consumer.seek_to_beginning(*fresh)
            log.debug("no committed offset: %s read from the beginning", fresh)
        return committed


class SeekingConsumer(Consumer):
    """Faust's aiokafka consumer whose seek to committed offsets covers every partition."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _SeekingThread(self, loop=self.loop, beacon=self.beacon)
