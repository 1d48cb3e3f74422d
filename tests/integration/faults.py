"""Fault-injection harness on the real local Kafka.

A run (:class:`FaultRun`) has a config with ``topics.accepted`` set, so every valid id
has exactly one output (eval, review or accepted) and every invalid message a dead
letter; the fates ``replay`` gives as the truth; a :class:`PacedProducer` publishing the
predictions at a steady rate (so that a fault happens mid-stream and the duplicate bound
is concrete); an :class:`OutputReader` reading every output topic for the whole run
(outputs in a topic deleted mid-run must have been read before it went); worker
subprocesses; and a checker (:meth:`FaultRun.finish`) holding every id and dead letter
to replay's verdict, counting duplicates. Each test prints one ``FAULT-RESULT {json}``
line (RELIABILITY.md's table is made from them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from hitl_router.agents.topics import ensure_topics
from hitl_router.simulate import Simulator
from tests.conftest import free_port
from tests.integration.helpers import cli, scrape, start_worker, total, write_config

#: predictions per second of the paced producer
RATE = 2500
#: Faust's ``broker_commit_interval`` as the app sets it (agents/app.py)
COMMIT_INTERVAL_S = 1.0
#: the contract's defaults of the worker's new settings
DELIVERY_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 15.0


# --- config and expected fates --------------------------------------------------------------


def fault_config(path: Path, bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """A test config (helpers.write_config) with 6 partitions and ``topics.accepted``."""
    cfg = write_config(path, bootstrap, kafka={"partitions": 6}, **overrides)
    tag = cfg["topics"]["eval"].split("-", 1)[1]
    cfg["topics"]["accepted"] = f"accepted-{tag}"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def all_topics(cfg: dict[str, Any]) -> list[str]:
    """Every output topic of a config with ``topics.accepted``."""
    t = cfg["topics"]
    return [t["eval"], t["deadletter"], t["accepted"], *[q["topic"] for q in cfg["queues"]]]


def replay_fates(tmp_path: Path, cfg_path: Path, raws: list[bytes]) -> list[dict[str, Any]]:
    """``hitl-router replay``'s verdict for each of ``raws`` (one line each)."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(raws) + b"\n")
    out = tmp_path / "decisions.jsonl"
    res = cli("replay", str(src), "-c", str(cfg_path), "-o", str(out))
    assert res.returncode == 0, res.stderr.decode()
    fates = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(fates) == len(raws)
    return fates


def duplicate_bound(cfg: dict[str, Any], rate: float) -> int:
    """Duplicate outputs one fault may cause, from the mechanism: the messages decided but
    not yet acked (the fetch loop lets ``max_in_flight`` × ``batch_size`` be in flight, plus
    the fetch it is handing over) and those acked but not yet committed (one commit
    interval of input at ``rate``). Every prediction has one output, so a redelivered
    message is at most one duplicate."""
    worker = cfg.get("worker", {})
    batch = worker.get("batch_size", 1000)
    in_flight = (worker.get("max_in_flight", 4) + 1) * batch
    return in_flight + math.ceil(COMMIT_INTERVAL_S * rate)


# --- the paced producer ---------------------------------------------------------------------


class PacedProducer(threading.Thread):
    """Publishes ``raws`` at ``rate`` per second (kafka-python, idempotent, retrying for up
    to 5 minutes, so it rides out a broker outage) and records each message's
    (partition, offset)."""

    def __init__(self, bootstrap: str, topic: str, raws: list[bytes], rate: float) -> None:
        super().__init__(daemon=True, name="paced-producer")
        self.bootstrap, self.topic, self.raws, self.rate = bootstrap, topic, raws, rate
        self.positions: list[tuple[int, int] | None] = [None] * len(raws)
        #: when the broker acknowledged each message (time.time())
        self.acked_at: list[float] = [0.0] * len(raws)
        self.errors: list[tuple[int, BaseException]] = []
        self.sent = 0  # handed to the producer
        self.finished_at: float | None = None
        self._failure: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                linger_ms=5,
                batch_size=256 * 1024,
                max_request_size=4 * 1024 * 1024,
                max_block_ms=300_000,
                delivery_timeout_ms=300_000,
                request_timeout_ms=10_000,
                reconnect_backoff_max_ms=500,
            )
            tick = 0.01
            t0 = time.monotonic()
            n = len(self.raws)
            while self.sent < n:
                due = min(n, int((time.monotonic() - t0) * self.rate) + 1)
                for i in range(self.sent, due):
                    future = producer.send(self.topic, value=self.raws[i])
                    future.add_callback(self._delivered, i)
                    future.add_errback(self._failed, i)
                    self.sent = i + 1
                time.sleep(tick)
            producer.flush(timeout=300)
            producer.close(timeout=30)
        except BaseException as exc:  # reported by join_all
            self._failure = exc
        finally:
            self.finished_at = time.time()

    def _delivered(self, i: int, metadata: Any) -> None:
        self.positions[i] = (metadata.partition, metadata.offset)
        self.acked_at[i] = time.time()

    def _failed(self, i: int, exc: BaseException) -> None:
        self.errors.append((i, exc))

    def wait_sent(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` messages were handed to the producer."""
        deadline = time.monotonic() + timeout
        while self.sent < n:
            assert time.monotonic() < deadline, f"only {self.sent} of {n} sent in {timeout}s"
            assert self.is_alive() or self.sent >= n, f"producer stopped: {self._failure!r}"
            time.sleep(0.05)

    def join_all(self, timeout: float = 300) -> list[tuple[int, int]]:
        """Wait until every message was delivered; return their positions."""
        self.join(timeout)
        assert not self.is_alive(), f"the producer did not finish in {timeout}s"
        assert self._failure is None, f"the producer failed: {self._failure!r}"
        assert not self.errors, f"{len(self.errors)} not delivered, e.g. {self.errors[0]!r}"
        missing = sum(p is None for p in self.positions)
        assert not missing, f"{missing} messages without a position"
        return [p for p in self.positions if p is not None]


# --- the continuous output reader -----------------------------------------------------------


@dataclass
class Seen:
    """What the reader saw: outputs per valid id, dead letters per source position, and
    every output's (CreateTime ms, id or None, source position or None)."""

    fates: dict[str, list[tuple[str, str | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    dead: dict[tuple[int, int], list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    timeline: list[tuple[int, str | None, tuple[int, int] | None]] = field(default_factory=list)


class OutputReader(threading.Thread):
    """Reads every output topic from the beginning for a whole run (kafka-python, no
    group, partitions assigned explicitly). Other threads talk to its consumer only
    through :meth:`call`, which runs a function on this thread."""

    def __init__(self, bootstrap: str, cfg: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="output-reader")
        self.bootstrap = bootstrap
        topics = cfg["topics"]
        self.kind = {topics["eval"]: ("eval", None), topics["accepted"]: ("pass", None)}
        self.kind.update({q["topic"]: ("review", q["name"]) for q in cfg["queues"]})
        self.deadletter = topics["deadletter"]
        self.topics = [*self.kind, self.deadletter]
        self.seen = Seen()
        self.lock = threading.Lock()
        self._calls: queue.Queue[tuple[Callable[[Any], Any], Future[Any]]] = queue.Queue()
        self._stop_event = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                max_partition_fetch_bytes=8 * 1024 * 1024,
                fetch_max_bytes=32 * 1024 * 1024,
                reconnect_backoff_max_ms=500,
            )
            parts = []
            for topic in self.topics:
                n = self._partitions(consumer, topic)
                parts += [TopicPartition(topic, p) for p in range(n)]
            consumer.assign(parts)
            consumer.seek_to_beginning()
            self._ready.set()
            while not self._stop_event.is_set():
                while not self._calls.empty():
                    fn, fut = self._calls.get()
                    try:
                        fut.set_result(fn(consumer))
                    except BaseException as exc:
                        fut.set_exception(exc)
                for records in consumer.poll(timeout_ms=200, max_records=5000).values():
                    self._take(records)
            consumer.close()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    @staticmethod
    def _partitions(consumer: Any, topic: str, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while True:
            parts = consumer.partitions_for_topic(topic)
            if parts:
                return len(parts)
            assert time.monotonic() < deadline, f"topic {topic} has no partitions"
            time.sleep(0.2)

    def _take(self, records: list[Any]) -> None:
        rows = []
        for r in records:
            msg = orjson.loads(r.value)
            if r.topic == self.deadletter:
                src = msg["source"]
                rows.append((r.timestamp, None, (src["partition"], src["offset"]), msg))
            else:
                rows.append((r.timestamp, msg["id"], self.kind[r.topic], None))
        with self.lock:
            for ts, pid, what, letter in rows:
                if pid is None:
                    self.seen.dead[what].append(letter)
                    self.seen.timeline.append((ts, None, what))
                else:
                    self.seen.fates[pid].append(what)
                    self.seen.timeline.append((ts, pid, None))

    def start_reading(self, timeout: float = 60) -> OutputReader:
        self.start()
        assert self._ready.wait(timeout), "the output reader did not start"
        assert self._failure is None, f"the output reader failed: {self._failure!r}"
        return self

    def call(self, fn: Callable[[Any], Any], timeout: float = 60) -> Any:
        """Run ``fn(consumer)`` on the reader's thread; return its result."""
        assert self.is_alive(), f"the output reader stopped: {self._failure!r}"
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        return fut.result(timeout)

    def covers(self, ids: set[str], dead: set[tuple[int, int]]) -> tuple[int, int]:
        """How many of ``ids`` and ``dead`` positions have not been seen yet."""
        with self.lock:
            return (
                sum(1 for i in ids if i not in self.seen.fates),
                sum(1 for p in dead if p not in self.seen.dead),
            )

    def catch_up(self, timeout: float = 60) -> None:
        """Until everything written to the output topics so far has been read."""
        end = self.call(lambda c: c.end_offsets(list(c.assignment())))
        deadline = time.monotonic() + timeout
        while not self.call(lambda c: all(c.position(tp) >= o for tp, o in end.items())):
            assert time.monotonic() < deadline, "the reader did not catch up"
            time.sleep(0.1)

    def drop_topic(self, topic: str) -> None:
        """Stop reading ``topic`` (before it is deleted)."""

        def drop(c: Any) -> None:
            c.assign([tp for tp in c.assignment() if tp.topic != topic])

        self.call(drop)

    def add_topic(self, topic: str, partitions: int) -> None:
        """Read ``topic`` (again, e.g. re-created) from its beginning."""
        from kafka import TopicPartition

        def add(c: Any) -> None:
            new = [TopicPartition(topic, p) for p in range(partitions)]
            c.assign([*c.assignment(), *new])
            c.seek_to_beginning(*new)

        self.call(add)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


# --- workers --------------------------------------------------------------------------------


@dataclass
class Worker:
    """A ``hitl-router worker`` subprocess and its metrics port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started_at: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def predictions(self) -> float:
        return total(scrape(self.port), "hitl_predictions_total")

    def rss_mb(self, field_name: str = "VmRSS") -> float:
        """Resident memory (``VmRSS``, or the peak: ``VmHWM``) from /proc, in MB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field_name} for pid {self.pid}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the worker used so far, from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_ready(self, timeout: float = 90) -> Worker:
        """Until /metrics answers (fails if the worker exits first)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            try:
                scrape(self.port)
                return self
            except OSError:
                assert time.monotonic() < deadline, f"no /metrics in {timeout}s:\n{self.tail()}"
                time.sleep(0.2)

    def wait_deciding(
        self, at_least: float | Callable[[], float] = 1, timeout: float = 120
    ) -> float:
        """Until this worker decided ``at_least`` predictions (a number, or one that moves:
        a function asked each time); returns when (time.time())."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"worker exited:\n{self.tail()}"
            with contextlib.suppress(OSError):
                if self.predictions() >= (at_least() if callable(at_least) else at_least):
                    return time.time()
            assert time.monotonic() < deadline, f"nothing decided in {timeout}s:\n{self.tail()}"
            time.sleep(0.1)

    def signal(self, sig: int) -> float:
        """Send ``sig``; returns when (time.time())."""
        os.kill(self.pid, sig)
        return time.time()

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout:.0f}s:\n{self.tail()}"
            ) from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of ``GET path`` on the worker's web port; None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, TimeoutError):
        return None


def log_records(path: Path, since: int = 0, until: int | None = None) -> tuple[int, int, int]:
    """(warnings and errors, all log records, lines) of a worker log between two byte
    offsets. A record starts with Faust's ``[YYYY-MM-DD ...`` prefix (other lines continue
    one: tracebacks); its level is the third bracket."""
    with path.open("rb") as fh:
        fh.seek(since)
        data = fh.read() if until is None else fh.read(until - since)
    lines = data.decode(errors="replace").splitlines()
    records = [x for x in lines if x.startswith("[") and x[1:3].isdigit()]
    loud = sum(1 for x in records if re.search(r"\] \[(WARNING|ERROR|CRITICAL)\]", x))
    return loud, len(records), len(lines)


def create_topic(bootstrap: str, topic: str, partitions: int, config: dict[str, str]) -> None:
    """Create ``topic`` with topic-level ``config`` (e.g. ``max.message.bytes``)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs=config)], wait_for_metadata=True
        )
    finally:
        admin.close()


def wait_members(bootstrap: str, group: str, n: int, timeout: float = 90) -> None:
    """Until the consumer group is stable with ``n`` members."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    desc: Any = None
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                desc = admin.describe_groups([group])[group]
            except KafkaError as exc:  # e.g. the coordinator is still loading
                desc = exc
            else:
                if desc["group_state"] == "Stable" and len(desc["members"]) == n:
                    return
            time.sleep(0.5)
        raise AssertionError(f"group {group} not stable with {n} members: {desc}")
    finally:
        admin.close()


# --- a run ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    predictions: int
    valid: int
    dead_letters: int
    ids_lost: list[str]
    dead_lost: list[int]
    wrong: list[str]
    duplicates: int

    def assert_nothing_lost(self) -> None:
        assert not self.ids_lost, f"{len(self.ids_lost)} ids lost, e.g. {self.ids_lost[:5]}"
        assert not self.dead_lost, f"{len(self.dead_lost)} dead letters lost"
        assert not self.wrong, f"{len(self.wrong)} wrong fates, e.g. {self.wrong[:5]}"


def report(fault: str, outcome: Outcome | None, bound: int | None, **extra: Any) -> None:
    """The machine-readable line RELIABILITY.md's table is made from."""
    line: dict[str, Any] = {"fault": fault}
    if outcome is not None:
        line |= {
            "predictions": outcome.predictions,
            "ids_lost": len(outcome.ids_lost) + len(outcome.dead_lost),
            "wrong_fates": len(outcome.wrong),
            "duplicates": outcome.duplicates,
        }
    line["bound"] = bound
    line |= {k: round(v, 2) if isinstance(v, float) else v for k, v in extra.items()}
    print("FAULT-RESULT " + json.dumps(line), flush=True)


class FaultRun:
    """Predictions, their replayed fates, the producer, the reader and the workers of one
    fault test. Use as a context manager: workers and threads are stopped at the end."""

    def __init__(
        self,
        bootstrap: str,
        tmp_path: Path,
        *,
        n: int = 15_000,
        rate: float = RATE,
        seed: int = 0,
        malformed_rate: float = 0.002,
        raws: list[bytes] | None = None,
        predictions_topic_config: dict[str, str] | None = None,
        **overrides: Any,
    ) -> None:
        self.bootstrap, self.tmp_path, self.rate = bootstrap, tmp_path, rate
        self.cfg_path = tmp_path / "config.yaml"
        self.cfg = fault_config(self.cfg_path, bootstrap, **overrides)
        self.topics = self.cfg["topics"]
        if raws is None:
            sim = Simulator(seed=seed, malformed_rate=malformed_rate, id_prefix=f"f{seed}")
            raws = list(sim.messages(n))
        self.raws = raws
        self.expected = replay_fates(tmp_path, self.cfg_path, raws)
        self.bound = duplicate_bound(self.cfg, rate)
        if predictions_topic_config:
            create_topic(
                bootstrap,
                self.topics["predictions"],
                self.cfg["kafka"]["partitions"],
                predictions_topic_config,
            )
        ensure_topics(
            bootstrap,
            [self.topics["predictions"], self.topics["labels"], *all_topics(self.cfg)],
            self.cfg["kafka"]["partitions"],
        )
        self.reader = OutputReader(bootstrap, self.cfg).start_reading()
        self.producer = PacedProducer(bootstrap, self.topics["predictions"], raws, rate)
        self.workers: list[Worker] = []
        self.positions: list[tuple[int, int]] = []
        self.completed_at: float | None = None

    def __enter__(self) -> FaultRun:
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()
        self.reader.stop()

    def start_worker(self, name: str | None = None, cfg_path: Path | None = None) -> Worker:
        name = name or f"w{len(self.workers)}"
        port = free_port()
        log = self.tmp_path / f"{name}.log"
        proc = start_worker(cfg_path or self.cfg_path, port, log)
        worker = Worker(proc, port, log, time.time())
        self.workers.append(worker)
        return worker

    def produce(self) -> PacedProducer:
        self.producer.start()
        return self.producer

    def wait_steady(self, worker: Worker, timeout: float = 60) -> float:
        """Until ``worker`` keeps up with the paced producer (it has decided all but the
        last 0.2 s of what was sent), then one commit interval more: what it decided
        faster than the rate while catching up (its first read comes a moment after the
        producer starts) is committed by then, so the next commit interval holds one
        interval of input at the rate, as ``duplicate_bound`` counts. Returns when."""
        worker.wait_deciding(lambda: self.producer.sent - 0.2 * self.rate, timeout)
        time.sleep(COMMIT_INTERVAL_S * 1.5)
        return time.time()

    def expected_ids(self) -> set[str]:
        return {rec["id"] for rec in self.expected if rec["fate"] != "deadletter"}

    def expected_dead(self) -> set[tuple[int, int]]:
        """Source positions of the expected dead letters (once the positions are known)."""
        return {self.positions[i] for i, r in enumerate(self.expected) if r["fate"] == "deadletter"}

    def wait_covered(self, ids: set[str], dead: set[tuple[int, int]], timeout: float) -> bool:
        """Until the reader saw every one of ``ids`` and ``dead`` (True) or ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        while self.reader.covers(ids, dead) != (0, 0):
            if time.monotonic() > deadline:
                return False
            if self.workers and all(w.proc.poll() is not None for w in self.workers):
                time.sleep(1)  # every worker exited: what they sent is read by now
                return self.reader.covers(ids, dead) == (0, 0)
            time.sleep(0.2)
        return True

    def finish(self, timeout: float = 120) -> Outcome:
        """Wait for the producer, then read until every expected output was seen (or
        ``timeout``), then up to the output topics' ends at that moment; check. (A test
        that produced by itself sets ``positions`` first.)"""
        if self.producer.is_alive() or self.producer.finished_at is not None:
            self.positions = self.producer.join_all()
        assert len(self.positions) == len(self.raws), "positions of every message needed"
        self.wait_covered(self.expected_ids(), self.expected_dead(), timeout)
        self.completed_at = time.time()
        self.reader.catch_up()
        return self.check()

    def check(self) -> Outcome:
        seen = self.reader.seen
        line_of = {pos: i for i, pos in enumerate(self.positions)}
        lost, wrong, dead_lost = [], [], []
        duplicates = 0
        with self.reader.lock:
            for i, rec in enumerate(self.expected):
                if rec["fate"] == "deadletter":
                    letters = seen.dead.get(self.positions[i], [])
                    if not letters:
                        dead_lost.append(i)
                    codes = {d["error"]["code"] for d in letters}
                    if letters and codes != {rec["error"]["code"]}:
                        wrong.append(f"line {i}: {codes} != {rec['error']['code']}")
                    duplicates += max(len(letters) - 1, 0)
                    continue
                got = seen.fates.get(rec["id"], [])
                if not got:
                    lost.append(rec["id"])
                elif set(got) != {(rec["fate"], rec.get("queue"))}:  # duplicates agree
                    wrong.append(f"{rec['id']}: {got} != {(rec['fate'], rec.get('queue'))}")
                duplicates += max(len(got) - 1, 0)
            strays = set(seen.dead) - set(line_of)
            strays_ids = set(seen.fates) - {rec["id"] for rec in self.expected if rec.get("id")}
        assert not strays, f"dead letters from unknown positions: {sorted(strays)[:5]}"
        assert not strays_ids, f"outputs for unknown ids: {sorted(strays_ids)[:5]}"
        return Outcome(
            predictions=len(self.raws),
            valid=sum(1 for r in self.expected if r["fate"] != "deadletter"),
            dead_letters=sum(1 for r in self.expected if r["fate"] == "deadletter"),
            ids_lost=lost,
            dead_lost=dead_lost,
            wrong=wrong,
            duplicates=duplicates,
        )

    # --- timing from the outputs' CreateTime (set by the worker when it sends) ------------

    def first_output_after(self, t: float) -> float | None:
        """Seconds from ``t`` (time.time()) to the first output the worker created after
        it; None if there is none."""
        ms = t * 1000
        with self.reader.lock:
            later = [ts for ts, _, _ in self.reader.seen.timeline if ts >= ms]
        return (min(later) - ms) / 1000 if later else None

    def resume_per_partition(self, t: float) -> dict[int, float | None]:
        """For each input partition: seconds from ``t`` to the first output created after
        ``t`` for a message of that partition."""
        part_of_id = {
            rec["id"]: self.positions[i][0] for i, rec in enumerate(self.expected) if rec.get("id")
        }
        first: dict[int, float] = {}
        ms = t * 1000
        with self.reader.lock:
            for ts, pid, pos in self.reader.seen.timeline:
                if ts < ms:
                    continue
                p = part_of_id[pid] if pid is not None else pos[0]  # type: ignore[index]
                if p not in first or ts < first[p]:
                    first[p] = ts
        n = self.cfg["kafka"]["partitions"]
        return {p: (first[p] - ms) / 1000 if p in first else None for p in range(n)}


class HealthPoller(threading.Thread):
    """Polls a worker's ``/healthz`` and its ``hitl_predictions_total`` twice a second, to
    hold /healthz to the truth: no 200 from a process that has stopped deciding."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="health-poller")
        self.worker: Worker | None = None
        self.samples: list[tuple[float, int, int | None, float | None]] = []  # t, pid, ...
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            w = self.worker
            if w is None:
                continue
            status = http_status(w.port, "/healthz")
            decided = None
            with contextlib.suppress(Exception):
                decided = w.predictions()
            self.samples.append((time.time(), w.pid, status, decided))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def lies(self, window: float, until: float) -> list[tuple[float, int]]:
        """200s answered at a time ``t`` < ``until`` (while input was waiting) by a process
        whose decision count had not moved in the ``window`` seconds before ``t`` — once it
        had been deciding for ``window`` seconds (start-up is not judged)."""
        out = []
        by_pid: dict[int, list[tuple[float, int | None, float | None]]] = defaultdict(list)
        for t, pid, status, decided in self.samples:
            by_pid[pid].append((t, status, decided))
        for pid, rows in by_pid.items():
            first_progress = next((t for t, _, d in rows if d), None)
            if first_progress is None:
                continue
            for t, status, _ in rows:
                if status != 200 or t >= until or t < first_progress + window:
                    continue
                counts = [d for tt, _, d in rows if t - window <= tt <= t and d is not None]
                if len(set(counts)) <= 1:
                    out.append((t, pid))
        return out


@contextlib.contextmanager
def stopped(proc_pid: int) -> Iterator[None]:
    """SIGSTOP a process for the duration of the block."""
    os.kill(proc_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc_pid, signal.SIGCONT)
