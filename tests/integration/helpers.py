"""Real-Kafka helpers for integration tests: produce, drain topics, run a worker."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, free_port


def produce(
    bootstrap: str, topic: str, raws: Sequence[bytes], keys: Sequence[bytes | None] | None = None
) -> list[tuple[int, int]]:
    """Send ``raws``; return each message's (partition, offset)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024
    )
    futures = [
        producer.send(topic, value=raw, key=keys[i] if keys else None) for i, raw in enumerate(raws)
    ]
    producer.flush()
    out = []
    for f in futures:
        md = f.get(timeout=30)
        out.append((md.partition, md.offset))
    producer.close()
    return out


def _reader(bootstrap: str, *topics: str) -> Any:
    """A kafka-python consumer of no group, from the earliest offsets, committing nothing
    (subscribed to ``topics``, if any)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


def drain(
    bootstrap: str, topics: Sequence[str], until: int, timeout: float = 120.0, idle: float = 3.0
) -> list[Any]:
    """Read ``topics`` from the beginning until ``until`` records arrived (then ``idle``
    more seconds, to see duplicates or strays) or ``timeout`` passes."""
    consumer = _reader(bootstrap, *topics)
    records: list[Any] = []
    deadline = time.time() + timeout
    reached_at = None
    try:
        while time.time() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
            if len(records) >= until:
                reached_at = reached_at or time.time()
                if time.time() - reached_at >= idle:
                    break
    finally:
        consumer.close()
    return records


def read_to_end(bootstrap: str, topics: Sequence[str], timeout: float = 30.0) -> list[Any]:
    """Every record of ``topics`` from the beginning up to their end offsets as of this
    call (a topic that does not exist yet holds none): what is there now, without
    waiting for quiet. Raises if the end is not reached within ``timeout``."""
    from kafka import TopicPartition

    consumer = _reader(bootstrap)
    records: list[Any] = []
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return records
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.time() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.time() > deadline:
                left = {
                    f"{tp.topic}[{tp.partition}]": ends[tp] - consumer.position(tp) for tp in tps
                }
                raise AssertionError(f"{topics} not read to their end in {timeout:g} s: {left}")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def write_config(path: Path, bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """A test config with topics and group unique to this call."""
    tag = uuid.uuid4().hex[:8]
    data: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"test-{tag}", "partitions": 3},
        "topics": {
            "predictions": f"predictions-{tag}",
            "eval": f"eval-{tag}",
            "deadletter": f"dlq-{tag}",
            "labels": f"labels-{tag}",
            "calibration": f"calibration-{tag}",
            "qa": f"qa-{tag}",
            "labels_deadletter": f"labels-dlq-{tag}",
            "decisions": f"decisions-{tag}",
            "joined": f"joined-{tag}",
        },
        "eval_sample": {"rate": 0.05, "salt": "integration"},
        "queues": [
            {
                "name": "flagged",
                "topic": f"review-flagged-{tag}",
                "when": {"flags_any": ["pii", "user_report"]},
            },
            {
                "name": "disagreement",
                "topic": f"review-disagreement-{tag}",
                "when": {"ensemble_kl_above": 0.05},
            },
            {
                "name": "uncertain",
                "topic": f"review-uncertain-{tag}",
                "when": {"any": [{"max_prob_below": 0.7}, {"margin_below": 0.1}]},
            },
        ],
        "metrics": {"port": free_port()},
        "worker": {"batch_size": 500},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def cli(
    *args: str, input_bytes: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "hitl_router.cli", *args],
        cwd=REPO,
        input=input_bytes,
        capture_output=True,
        timeout=timeout,
    )


def start_cli(log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A ``hitl-router ARGS`` subprocess writing its output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hitl_router.cli", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def start_worker(cfg_path: Path, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A ``hitl-router worker`` subprocess writing its output to ``log``."""
    return start_cli(log, "worker", "-c", str(cfg_path), "--metrics-port", str(port), *extra)


def until(value: Any, want: Any, timeout: float, what: str) -> Any:
    """Poll ``value()`` until ``want(v)`` holds (or ``v == want``); return ``v``."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = value()
        if want(last) if callable(want) else last == want:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not reached in {timeout:.0f} s (last: {last!r})")


def wait_metrics(
    proc: subprocess.Popen[bytes], port: int, timeout: float = 60, log: Path | None = None
) -> None:
    """Until the worker's /metrics answers (it fails if the worker exits first)."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"worker exited {proc.returncode}:\n{tail}")
        try:
            scrape(port)
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Terminate the workers still running, and wait for each (30 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


@contextlib.contextmanager
def running_worker(
    config_path: Path, metrics_port: int, *extra: str, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``hitl-router worker`` subprocess, ready when its /metrics answers."""
    log = log or config_path.with_suffix(".log")
    proc = start_worker(config_path, metrics_port, log, *extra)
    try:
        wait_metrics(proc, metrics_port, log=log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The /metrics samples as {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def topic_config(bootstrap: str, topic: str, name: str) -> str | None:
    """A topic's effective config value, read with kafka-python's admin client."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: None})
        configs = admin.describe_configs([resource], config_filter="all").get("topic", {})
        return configs.get(topic, {}).get(name, {}).get("value")
    finally:
        admin.close()


def create_topic(bootstrap: str, topic: str, partitions: int, **configs: str) -> None:
    """Create ``topic`` (``configs``: its topic configs, dots as underscores)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        settings = {k.replace("_", "."): v for k, v in configs.items()}
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=settings)])
    finally:
        admin.close()


def produce_to(
    bootstrap: str, topic: str, partition: int, keys: Sequence[bytes], values: Sequence[bytes]
) -> None:
    """Send records to one partition of ``topic``."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    for k, v in zip(keys, values, strict=True):
        producer.send(topic, key=k, value=v, partition=partition)
    producer.flush()
    producer.close()


def commit_ends(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Commit, for ``group``, the end offset of every partition of ``topic`` (as if the
    group had read it all); returns them."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
        consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
        return {tp.partition: ends[tp] for tp in tps}
    finally:
        consumer.close()
