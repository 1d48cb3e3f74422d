"""Create the topics a worker reads and writes, with kafka-python's admin client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from hitl_router.agents.connection import kafka_python_kwargs
from hitl_router.errors import KafkaSetupError
from hitl_router.router.kafka_security import SecurityConfig

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    security: SecurityConfig | None = None,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create whichever of ``topics`` do not exist; return the ones created. ``configs``:
    topic configs of some of them (e.g. ``cleanup.policy: compact``).

    Existing topics are left as they are (their partition count included).
    """
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = list(dict.fromkeys(topics))
    with admin_client(bootstrap, security, timeout_s) as admin:
        try:
            existing = set(admin.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                spec = {
                    t: {
                        "num_partitions": partitions,
                        "replication_factor": replication_factor,
                        "configs": dict((configs or {}).get(t, {})),
                    }
                    for t in missing
                }
                try:
                    admin.create_topics(
                        spec, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True
                    )
                except TopicAlreadyExistsError:
                    pass  # another worker created it meanwhile
                log.info("created topics %s (%d partitions)", missing, partitions)
            return missing
        except KafkaError as exc:
            raise KafkaSetupError(f"cannot create topics at {bootstrap}: {exc!r}") from exc


@contextlib.contextmanager
def admin_client(
    bootstrap: str, security: SecurityConfig | None = None, timeout_s: float = 30.0
) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient``, closed on exit; a clear error when no broker
    answers."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","),
            client_id="hitl-router-admin",
            request_timeout_ms=int(timeout_s * 1000),
            **kafka_python_kwargs(security or SecurityConfig()),
        )
    except KafkaError as exc:
        raise KafkaSetupError(f"no Kafka broker reachable at {bootstrap}: {exc!r}") from exc
    try:
        yield admin
    finally:
        admin.close()
