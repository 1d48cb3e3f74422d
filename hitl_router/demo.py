"""``hitl-router demo``: a local broker, a worker and a real model's predictions, live.

Starts a local Kafka when none answers at ``--bootstrap``, runs a worker with
the embedded config (``demo_config.yaml``) in a subprocess, publishes the
digits committee's predictions for ``--duration`` seconds, and counts every
fate from the output topics as they arrive.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml

from hitl_router.errors import InputError, KafkaSetupError
from hitl_router.router.config import Config, parse_config


def default_config_text() -> str:
    return resources.files("hitl_router").joinpath("demo_config.yaml").read_text("utf-8")


def demo_config(bootstrap: str, metrics_port: int, config_path: str | None) -> tuple[Config, str]:
    """The demo's config (embedded default unless ``config_path``) and its YAML text."""
    text = Path(config_path).read_text("utf-8") if config_path else default_config_text()
    data = yaml.safe_load(text) or {}
    data.setdefault("kafka", {})["bootstrap_servers"] = bootstrap
    data.setdefault("metrics", {})["port"] = metrics_port
    if not config_path:
        data.setdefault("topics", {}).setdefault("accepted", "accepted")
    return parse_config(data), yaml.safe_dump(data, sort_keys=False)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="local Kafka + worker + a real model's predictions")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of traffic (30)")
    p.add_argument("--rate", type=float, default=300.0, help="predictions per second (300)")
    p.add_argument("--bootstrap", default=os.environ.get("HITL_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--config", help="YAML config instead of the embedded default")
    p.add_argument("--metrics-port", type=int, default=9108)
    p.add_argument("--malformed-rate", type=float, default=0.002)
    p.add_argument("--drift-at", type=int, help="degrade the model's inputs from message N on")
    p.add_argument(
        "--keep-kafka",
        action="store_true",
        help="leave a broker the demo started running at the end",
    )
    p.set_defaults(handler=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    from hitl_router.localkafka.broker import LocalKafka, is_reachable
    from hitl_router.simulate import Simulator, batch_for_rate, publish

    logging.getLogger("kafka").setLevel(logging.WARNING)  # the tally's client is chatty
    if args.duration <= 0 or args.rate <= 0:
        raise InputError("--duration and --rate must be > 0")
    config, config_text = demo_config(args.bootstrap, args.metrics_port, args.config)
    broker = None
    if not is_reachable(args.bootstrap):
        host, _, port = args.bootstrap.rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port.isdigit():
            raise KafkaSetupError(
                f"no broker answers at {args.bootstrap}, and the demo only "
                "starts a local one on 127.0.0.1"
            )
        broker = LocalKafka(port=int(port))
        print(f"No broker at {args.bootstrap}: starting a local Kafka (KRaft)…", flush=True)
        broker.start()
    cfg_file = Path(tempfile.mkstemp(prefix="hitl-demo-", suffix=".yaml")[1])
    cfg_file.write_text(config_text, encoding="utf-8")
    worker = None
    tally: _Tally | None = None
    stop = threading.Event()
    try:
        from hitl_router.agents.topics import ensure_topics

        ensure_topics(
            config.kafka.bootstrap_servers,
            [config.topics.predictions, config.topics.labels, *config.output_topics()],
            config.kafka.partitions,
            config.kafka.replication_factor,
        )
        run_id = uuid.uuid4().hex[:8]
        tally = _Tally(config, prefix=f"demo-{run_id}-")
        tally.start()
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hitl_router.cli",
                "worker",
                "-c",
                str(cfg_file),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(cfg_file.with_suffix(".log"), "wb"),
        )
        print(
            f"Worker pid {worker.pid} (log {cfg_file.with_suffix('.log')}); "
            f"metrics on http://127.0.0.1:{args.metrics_port}/metrics",
            flush=True,
        )
        _wait_metrics(args.metrics_port, worker, timeout=60)
        count = int(args.rate * args.duration)
        sim = Simulator(
            seed=int(time.time()),
            malformed_rate=args.malformed_rate,
            drift_at=args.drift_at,
            id_prefix=f"demo-{run_id}",
            batch=batch_for_rate(args.rate),
        )
        sent: list[int] = []
        producer_thread = threading.Thread(
            target=lambda: sent.append(
                publish(
                    config.kafka.bootstrap_servers,
                    config.topics.predictions,
                    sim.messages(count),
                    args.rate,
                    stop=stop,
                )
            ),
            daemon=True,
        )
        print(
            f"Publishing {count} predictions of a scikit-learn committee on the digits "
            f"data at {args.rate:g}/s for {args.duration:g}s…\n",
            flush=True,
        )
        producer_thread.start()
        started = time.time()
        while producer_thread.is_alive():
            producer_thread.join(timeout=2.0)
            print(tally.line(time.time() - started), flush=True)
            if worker.poll() is not None:
                raise KafkaSetupError(
                    f"the worker exited with {worker.returncode}; see "
                    f"{cfg_file.with_suffix('.log')}"
                )
        total = sent[0] if sent else 0
        deadline = time.time() + 30
        while tally.decided() < total and time.time() < deadline:
            time.sleep(0.5)
        print(tally.line(time.time() - started), flush=True)
        print(tally.summary(total, _scrape(args.metrics_port)))
        return 0 if tally.decided() >= total else 1
    finally:
        stop.set()
        if tally is not None:
            tally.close()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None and not args.keep_kafka:
            broker.stop()
            print("Stopped the local Kafka the demo started (--keep-kafka keeps it).")


class _Tally(threading.Thread):
    """Consumes every output topic from the moment the demo starts; counts this run's ids."""

    def __init__(self, config: Config, prefix: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.config = config
        self.prefix = prefix
        self._halt = threading.Event()
        self.by_topic: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.examples: dict[str, dict[str, Any]] = {}
        self.consumer = KafkaConsumer(
            bootstrap_servers=config.kafka.bootstrap_servers,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            group_id=None,
        )
        topics = config.output_topics()
        self.consumer.subscribe(topics)
        while not self.consumer.assignment():
            self.consumer.poll(timeout_ms=200)
        self.consumer.seek_to_end()
        for tp in self.consumer.assignment():
            self.consumer.position(tp)

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.consumer.close()

    def run(self) -> None:
        while not self._halt.is_set():
            for records in self.consumer.poll(timeout_ms=200).values():
                for r in records:
                    msg = orjson.loads(r.value)
                    pid = msg.get("id") or ""
                    # dead letters of unparseable payloads have no id: since the tally
                    # starts at the topics' ends, they are this run's
                    anonymous = r.topic == self.config.topics.deadletter and not pid
                    if not (anonymous or pid.startswith(self.prefix)):
                        continue
                    self.by_topic[r.topic] += 1
                    if r.topic == self.config.topics.deadletter:
                        self.codes[msg["error"]["code"]] += 1
                    elif "reasons" in msg:
                        self.examples.setdefault(msg["queue"], msg)

    def decided(self) -> int:
        return sum(self.by_topic.values())

    def line(self, elapsed: float) -> str:
        c, t = self.by_topic, self.config.topics
        queues = " ".join(f"{q.name}={c[q.topic]}" for q in self.config.queues)
        passed = c[t.accepted] if t.accepted else "-"
        return (
            f"[{elapsed:5.1f}s] decided={self.decided():6d}  eval={c[t.eval]:5d}  "
            f"review: {queues}  pass={passed}  deadletter={c[t.deadletter]}"
        )

    def summary(self, sent: int, scraped: dict[str, float]) -> str:
        c, t = self.by_topic, self.config.topics
        decided = self.decided()
        valid = max(decided - c[t.deadletter], 1)
        lines = [
            "",
            "=== hitl-router demo summary ===",
            f"published {sent}, decided {decided} (each exactly one fate)",
            f"eval sample   {c[t.eval]:6d}  ({c[t.eval] / valid:.2%} of valid; "
            f"configured {self.config.eval_sample.rate:.2%})",
        ]
        for q in self.config.queues:
            lines.append(
                f"review/{q.name:<12s}{c[q.topic]:6d}  ({c[q.topic] / valid:.2%}) → topic {q.topic}"
            )
        if t.accepted:
            lines.append(f"pass          {c[t.accepted]:6d}  ({c[t.accepted] / valid:.2%})")
        lines.append(f"dead letters  {c[t.deadletter]:6d}  {dict(self.codes)}")
        for queue, item in self.examples.items():
            reasons = "; ".join(
                f"{r['metric']} {r['op']} {r['threshold']} (value {r['value']})"
                for r in item["reasons"]
            )
            lines.append(f"  e.g. {item['id']} → {queue}: {reasons}")
        if scraped:
            lines.append("metrics: " + ", ".join(f"{k}={v:g}" for k, v in scraped.items()))
        return "\n".join(lines)


def _wait_metrics(port: int, worker: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if worker.poll() is not None:
            raise KafkaSetupError(f"the worker exited with {worker.returncode} at start")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
            return
        except OSError:
            time.sleep(0.5)
    raise KafkaSetupError(f"the worker's /metrics did not answer on port {port} in {timeout}s")


def _scrape(port: int) -> dict[str, float]:
    """A few of the worker's own metrics, read from /metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name in ("hitl_predictions", "hitl_deadletter"):
            out[family.name + "_total"] = sum(
                s.value for s in family.samples if s.name.endswith("_total")
            )
        if family.name == "hitl_decision_latency_seconds":
            for s in family.samples:
                if s.name.endswith("_count"):
                    out["latency_count"] = s.value
                if s.name.endswith("_sum"):
                    out["latency_sum_s"] = s.value
    return out
