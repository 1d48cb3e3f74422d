"""The ceiling: a raw aiokafka consume → produce pass-through of the same bytes.

It uses the Kafka client settings of the worker's Faust app (read from the app
``build_app`` makes for the same config, so they follow the worker's changes), takes
``getmany(max_records=worker.batch_size)`` batches, sends each message with
``AIOKafkaProducer.send``, awaits the batch's delivery futures and commits per batch —
the work of the worker minus Faust and the decision.

    python -m bench.ceiling -c CONFIG --output TOPIC
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from hitl_router.router.config import Config, load_config


def worker_client_settings(config: Config) -> dict[str, Any]:
    """The Kafka client settings of the worker's Faust app for ``config``."""
    from hitl_router.agents.app import build_app

    conf = build_app(config, web_port=65535).conf
    acks = conf.producer_acks
    return {
        "producer_linger_ms": int(conf.producer_linger * 1000),
        "producer_max_batch_size": conf.producer_max_batch_size,
        "producer_max_request_size": conf.producer_max_request_size,
        "producer_acks": "all" if acks == -1 else acks,
        "producer_compression_type": conf.producer_compression_type,
        "producer_request_timeout_ms": int(conf.producer_request_timeout * 1000),
        "consumer_max_poll_records": conf.broker_max_poll_records,
        "consumer_max_fetch_size": conf.consumer_max_fetch_size,
        "consumer_fetch_max_wait_ms": config.worker.fetch_max_wait_ms,
        "consumer_fetch_min_bytes": config.worker.fetch_min_bytes,
        "consumer_check_crcs": conf.broker_check_crcs,
        "consumer_auto_offset_reset": conf.consumer_auto_offset_reset,
        "stream_buffer_maxsize": conf.stream_buffer_maxsize,
        "broker_commit_interval_s": conf.broker_commit_interval,
        "broker_commit_every": conf.broker_commit_every,
        "worker_batch_size": config.worker.batch_size,
        # the router's fetch loop waits for the oldest batch beyond this many messages
        "worker_in_flight_messages": config.worker.max_in_flight * config.worker.batch_size,
    }


async def pass_through(config: Config, output: str, group: str) -> None:
    s = worker_client_settings(config)
    bootstrap = config.kafka.bootstrap_servers
    consumer = AIOKafkaConsumer(
        config.topics.predictions,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset=s["consumer_auto_offset_reset"],
        max_poll_records=s["consumer_max_poll_records"],
        max_partition_fetch_bytes=s["consumer_max_fetch_size"],
        fetch_max_wait_ms=s["consumer_fetch_max_wait_ms"],
        fetch_min_bytes=s["consumer_fetch_min_bytes"],
        check_crcs=s["consumer_check_crcs"],
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=s["producer_acks"],
        linger_ms=s["producer_linger_ms"],
        max_batch_size=s["producer_max_batch_size"],
        max_request_size=s["producer_max_request_size"],
        compression_type=s["producer_compression_type"],
        request_timeout_ms=s["producer_request_timeout_ms"],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await consumer.start()
    await producer.start()
    try:
        batch_size = config.worker.batch_size
        timeout_ms = 1000  # as the worker: getmany returns as soon as records arrive
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=batch_size)
            futures = []
            for records in batches.values():
                for r in records:
                    futures.append(await producer.send(output, r.value, key=r.key))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--output", required=True, help="the one output topic")
    parser.add_argument("--group", help="consumer group (default: kafka.group_id)")
    args = parser.parse_args()
    config = load_config(args.config)
    asyncio.run(pass_through(config, args.output, args.group or config.kafka.group_id))


if __name__ == "__main__":
    main()
