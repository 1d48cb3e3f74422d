"""Local single-node Apache Kafka (KRaft) for development and tests; see :mod:`.broker`."""

from hitl_router.localkafka.broker import (
    KAFKA_VERSION,
    LocalKafka,
    add_parser,
    cache_dir,
    fetch_jars,
    is_reachable,
)

__all__ = ["KAFKA_VERSION", "LocalKafka", "add_parser", "cache_dir", "fetch_jars", "is_reachable"]
