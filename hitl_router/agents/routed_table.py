"""Dedup's live state (issue #11): the ids routed to review, in the Faust table
``hitl-routed-ids`` of the routing group (id → event time), partitioned as the
predictions topic.

The router agent's batch writes each change :func:`decide_parsed` reports
(``BatchDecisions.routed_changes``) to the table, and publishes the changelog records
with the batch's outputs, so a batch is acked only once the ids it routed are durable.
After a recovery, the policy's :class:`~hitl_router.router.dedup.RoutedIds` is rebuilt
from the table's partitions this worker holds.
"""

from __future__ import annotations

import logging

import faust

from hitl_router.agents.tables import active_partitions, put
from hitl_router.router.config import Config
from hitl_router.router.decision import BatchDecisions, Policy
from hitl_router.router.outputs import Output

log = logging.getLogger(__name__)

ROUTED_TABLE = "hitl-routed-ids"


def changelog_configs(config: Config) -> dict[str, str]:
    assert config.dedup is not None
    return {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(int(config.dedup.retention_s * 1000) + 3_600_000),
        "segment.ms": "3600000",
    }


class RoutedTable:
    def __init__(self, app: faust.App, config: Config, policy: Policy) -> None:
        assert policy.routed is not None
        self.app, self.config, self.policy = app, config, policy
        self.table = app.Table(
            ROUTED_TABLE,
            default=None,
            partitions=config.kafka.partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs=changelog_configs(config),
        )
        self.table.on_recover(self._rebuild)

    def write(self, batch: BatchDecisions) -> list[Output]:
        """The batch's dedup changes into the table; returns their changelog records,
        to publish with the batch's outputs."""
        out: list[Output] = []
        for part, pid, t in batch.routed_changes:
            # "<partition> <time>": the partition it was read from
            value = None if t is None else f"{part} {t!r}".encode()
            put(self.table, out, part, pid.encode(), value)
        return out

    async def _rebuild(self) -> None:
        active = active_partitions(self.app, self.config.topics.predictions)
        data = self.table.data
        entries = []
        for key in list(data.keys()):
            part, _, t = data[key].decode().partition(" ")
            if int(part) not in active:
                data.pop(key, None)  # another worker's now: no stale copy kept here
            else:
                entries.append((int(part), key.decode(), float(t)))
        assert self.policy.routed is not None
        self.policy.routed.load(entries)
        log.info("dedup: %d routed ids recovered", len(entries))
