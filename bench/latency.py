"""Latency at a fixed input rate: ``measure`` (used by ``bench.run``), the probe that times
every output, and the paced producer (this module's ``__main__``, run as a subprocess).

``measure`` starts a fresh router worker (or the ceiling) on a fresh topic, warms it up,
then lets the pacer feed it. The pacer generates its messages up front, connects, says
``ready``, waits for ``go`` on stdin, sends ``rate`` messages/s for ``lead_in`` and then
``seconds`` (each message's ``ts`` rewritten to its send time) and prints a JSON summary
line. Only the outputs of predictions stamped after the lead-in are in the percentiles.

The output topics are created with ``message.timestamp.type=LogAppendTime``: the broker
stamps each output when it appends it, the moment it becomes readable. The latency of an
output is that stamp − ``prediction.ts`` (the target's "prediction produced → output
readable"). The stamps are read after the run: a consumer reading (and parsing) every
output while the contender runs took ~0.2–0.3 of the machine's 2 cores from it.

    python -m bench.latency --bootstrap HOST:PORT --topic T --partitions P --rate R \
        --seconds S [--lead-in L]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson

from bench import contenders, procs
from bench.kafka_io import OutputReader, partition_of_each, prefill

TS_FIELD = b',"ts":'
WARMUP = 500  # messages through the contender before the clock starts
#: seconds paced before the clock starts: traffic starting wakes the broker, the
#: contender and the pacer at once on 2 cores, and the pacer stalled 166–258 ms once in
#: its first 0.06 s in half the runs (the pass-through's too), delaying what it had just
#: stamped. Reported apart (``lead_in_max_ms``), not in the percentiles.
LEAD_IN_S = 1.0


def split_ts(msg: bytes) -> tuple[bytes, bytes] | None:
    """(before, after) the value of a trailing ``"ts"`` field, or None if there is none."""
    at = msg.rfind(TS_FIELD)
    if at < 0 or not msg.endswith(b"}"):
        return None
    value = msg[at + len(TS_FIELD) : -1]
    try:
        float(value)
    except ValueError:
        return None
    return msg[: at + len(TS_FIELD)], b"}"


def prediction_ts(value: bytes) -> float | None:
    """The ``ts`` of the prediction an output carries: a review, accepted or eval item's
    ``prediction``, a dead letter's ``raw``, or the output itself (the pass-through)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    pred = doc.get("prediction", doc)
    if "raw" in doc and "error" in doc:
        if doc.get("raw_encoding") != "utf-8":
            return None
        try:
            pred = orjson.loads(doc["raw"])
        except (orjson.JSONDecodeError, TypeError):
            return None
    ts = pred.get("ts") if isinstance(pred, dict) else None
    return float(ts) if isinstance(ts, int | float) else None


class LatencyProbe:
    """Collects per-output latencies for predictions stamped at or after ``since`` and
    before ``until``."""

    def __init__(self) -> None:
        self.since = float("inf")
        self.until = float("inf")
        self.appended: list[float] = []
        self.stamps: list[float] = []  # prediction ts of each, for the trace
        self.unstamped = 0

    def __call__(self, record: Any) -> None:
        ts = prediction_ts(record.value)
        if ts is None:
            self.unstamped += 1
        elif self.since <= ts < self.until:
            self.appended.append(record.timestamp / 1000.0 - ts)
            self.stamps.append(ts)

    def save_trace(self, path: Any) -> None:
        """Columns: prediction ts, seconds to LogAppendTime (``--keep``)."""
        np.save(path, np.array([self.stamps, self.appended]).T)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"measured": len(self.appended), "unstamped": self.unstamped}
        for name, values in (("append", self.appended),):
            if values:
                ms = np.asarray(values) * 1000.0
                out[f"{name}_p50_ms"] = float(np.percentile(ms, 50))
                out[f"{name}_p99_ms"] = float(np.percentile(ms, 99))
                out[f"{name}_max_ms"] = float(ms.max())
        return out


async def pace(
    producer: Any,
    topic: str,
    messages: list[bytes],
    keys: list[bytes | None],
    rate: float,
    partitions: int,
    lead_in: float = 0.0,
) -> dict[str, Any]:
    """Send ``messages`` at ``rate`` with ``producer`` (started, with the topic's
    metadata; stopped by the caller, :func:`_serve`): every 2 ms, the messages due are
    stamped (``ts`` = now) and sent as one record batch per partition (the key's murmur2
    partition, as any producer), like a producer with a 2 ms linger. One ``send`` per
    message cost the machine ~0.25 cores at 6k msgs/s, taken from the contender it
    measures."""
    parts = [split_ts(m) for m in messages]
    partition = partition_of_each(keys, partitions)
    futures = []
    sent = 0
    t0 = time.time()
    last, gap, gap_at, lead_gap = t0, 0.0, 0.0, 0.0
    while sent < len(messages):
        due = min(len(messages), int((time.time() - t0) * rate) + 1)
        batches: dict[int, Any] = {}
        now = time.time()
        # the pacer's own stalls: what it stamped just before waits for them
        if last - t0 < lead_in:
            lead_gap = max(lead_gap, now - last)
        elif now - last > gap:
            gap, gap_at = now - last, last - t0
        last = now
        for i in range(sent, due):
            msg, part = messages[i], parts[i]
            if part is not None:
                msg = b"%b%r%b" % (part[0], now, part[1])
            batch = batches.get(partition[i])
            if batch is None:
                batch = batches[partition[i]] = producer.create_batch()
            if batch.append(key=keys[i], value=msg, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition[i]))
                batch = batches[partition[i]] = producer.create_batch()
                batch.append(key=keys[i], value=msg, timestamp=None)
        for p, batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=p))
        sent = due
        await asyncio.sleep(0.002)
    t_end = time.time()
    results = await asyncio.gather(*futures, return_exceptions=True)
    failed = sum(1 for r in results if isinstance(r, BaseException))
    return {
        "sent": sent,
        "failed": failed,
        "unstamped": sum(1 for p in parts if p is None),
        "seconds": t_end - t0,
        "rate": sent / max(t_end - t0, 1e-9),
        "t0": t0,
        #: the longest time between two of the pacer's rounds (2 ms apart when it keeps
        #: up) after the lead-in, and when it began (s into the run); in the lead-in
        "max_gap_ms": gap * 1000.0,
        "max_gap_at_s": gap_at,
        "lead_in_max_gap_ms": lead_gap * 1000.0,
    }


#: what ``measure`` can feed: the router (with either output producer) and two
#: pass-throughs of the same bytes (aiokafka's, the ceiling; librdkafka's, the limit)
LATENCY_OF = ("router", "router-aiokafka", "ceiling", "confluent-pass")


async def measure(
    setup: contenders.Setup, rate: float, seconds: float, of: str = "router", suffix: str = ""
) -> dict[str, Any]:
    """``of`` (one of :data:`LATENCY_OF`) fed live at ``rate`` msgs/s for ``seconds``;
    every output timed. ``suffix`` tells apart runs of one contender (the curve's rates)."""
    if of not in LATENCY_OF:
        raise ValueError(f"latency of {of!r}: expected one of {LATENCY_OF}")
    name = f"latency-{of}{suffix}"
    input_topic = f"bench-{name}-in-{setup.tag}"
    config = contenders.router_config(setup, name, input_topic=input_topic)
    if of.startswith("router"):
        client = "aiokafka" if of == "router-aiokafka" else "librdkafka"
        config["worker"] = {**config["worker"], "consumer": client, "producer": client}
    path = contenders.write_config(setup, config, name)
    if of.startswith("router"):
        outputs = contenders.output_topics(config)
        group = config["kafka"]["group_id"]

        def start() -> list[procs.Proc]:
            return contenders.spawn_workers(setup, path, name, 1)
    else:
        outputs = [f"bench-{name}-out-{setup.tag}"]
        group = f"bench-{of}-{name}-{setup.tag}"
        spawn = contenders.spawn_ceiling if of == "ceiling" else _spawn_pass

        def start() -> list[procs.Proc]:
            return [spawn(setup, path, name, outputs[0], group)]

    await asyncio.to_thread(setup.admin.create_topics, [input_topic], setup.partitions)
    # a router's decision records go to a topic of their own, settled as its outputs are
    records = [contenders.records_topic(config)] if of.startswith("router") else []
    await contenders.fresh_outputs(
        setup, [*outputs, *records], {"message.timestamp.type": "LogAppendTime"}
    )
    reader = OutputReader(setup.bootstrap, outputs, setup.partitions)
    await reader.start()
    probe = LatencyProbe()
    running: list[procs.Proc] = []
    try:
        running = start()
        argv = [procs.PYTHON, "-m", "bench.latency", "--bootstrap", setup.bootstrap]
        argv += ["--topic", input_topic, "--rate", f"{rate:.1f}", "--seconds", str(seconds)]
        argv += ["--lead-in", str(LEAD_IN_S)]
        argv += ["--partitions", str(setup.partitions)]
        argv += ["--id-prefix", f"lat-{setup.tag}"]
        pacer = procs.Proc(
            "pacer", argv, setup.tmp / f"{name}-pacer.log", env=setup.env,
            stdin=procs.PIPE, stdout=procs.PIPE,
        )  # fmt: skip
        running.append(pacer)
        await contenders.wait_group(setup, group, input_topic, 1, running)
        # warm up: a first batch goes through before the clock starts
        warm = slice(0, WARMUP)
        await prefill(
            setup.bootstrap, input_topic, setup.messages[warm], setup.keys[warm], setup.partitions
        )
        await _wait_for(reader.end_total, WARMUP, running, setup.timeout, "warm-up")
        line = await _read_line(pacer, setup.timeout)
        if line != "ready":
            raise contenders.ContenderFailed(
                f"pacer said {line!r} instead of 'ready':\n{pacer.tail()}"
            )
        pids = [p.pid for p in running]
        u0 = procs.Usage.now(pids, setup.broker_pid)
        w0 = procs.cpu_seconds(running[0].pid)
        assert pacer.popen.stdin is not None
        pacer.popen.stdin.write(b"go\n")
        pacer.popen.stdin.flush()
        paced = json.loads(await _read_line(pacer, seconds * 3 + 60))
        u1 = procs.Usage.now(pids, setup.broker_pid)
        w1 = procs.cpu_seconds(running[0].pid)
        expected = WARMUP + paced["sent"] - paced["failed"]
        await _wait_for(reader.end_total, expected, running[:1], 60.0, "outputs")
        probe.since = paced["t0"] + LEAD_IN_S
        lead = LatencyProbe()
        lead.since, lead.until = paced["t0"], probe.since

        def both(record: Any) -> None:
            probe(record)
            lead(record)

        await reader.drain(handle=both)  # the broker's stamps, read once the run is over
    finally:
        stop_s = procs.stop_all(running)
        await reader.stop()
    probe.save_trace(setup.tmp / f"{name}-trace.npy")
    usage = u1.since(u0)
    return {
        "ok": True,
        "target_rate": rate,
        "achieved_rate": paced["rate"],
        "seconds": paced["seconds"],
        "sent": paced["sent"],
        "failed_sends": paced["failed"],
        "pacer_max_gap_ms": paced.get("max_gap_ms"),
        "pacer_max_gap_at_s": paced.get("max_gap_at_s"),
        "lead_in_s": LEAD_IN_S,
        "lead_in_max_ms": lead.summary().get("append_max_ms"),
        "lead_in_pacer_max_gap_ms": paced.get("lead_in_max_gap_ms"),
        "outputs": reader.stats.total - WARMUP,
        "outputs_read_after_run": True,
        "worker_cores": (w1 - w0) / max(u1.at - u0.at, 1e-9),
        "machine_busy_cores": usage["machine_busy_cores"],
        "others_cores": usage["others_cores"],
        **probe.summary(),
        "shutdown_s": stop_s,
        "killed_at_shutdown": [p.name for p in running if p.killed],
    }


def _spawn_pass(
    setup: contenders.Setup, config_path: Any, name: str, output: str, group: str
) -> procs.Proc:
    """The confluent-kafka pass-through, reading the latency run's own input topic."""
    input_topic = f"bench-{name}-in-{setup.tag}"
    return contenders.spawn_confluent_pass(setup, name, input_topic, output, group)


async def _wait_for(
    count: Callable[[], Awaitable[int]],
    at_least: int,
    running: list[procs.Proc],
    timeout: float,
    what: str,
) -> None:
    """Until ``await count()`` reaches ``at_least`` (end offsets: no record is read)."""
    deadline = time.monotonic() + timeout
    while await count() < at_least:
        contenders.check_alive(running)
        if time.monotonic() > deadline:
            raise contenders.ContenderFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _read_line(proc: procs.Proc, timeout: float) -> str:
    assert proc.popen.stdout is not None
    try:
        raw = await asyncio.wait_for(asyncio.to_thread(proc.popen.stdout.readline), timeout)
    except TimeoutError as exc:
        raise contenders.ContenderFailed(f"{proc.name} said nothing for {timeout:.0f}s") from exc
    if not raw:
        raise contenders.ContenderFailed(f"{proc.name} ended early:\n{proc.tail()}")
    return raw.decode().strip()


def main() -> None:
    from hitl_router.simulate import Simulator, message_key

    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--seconds", type=float, required=True, help="after the lead-in")
    parser.add_argument("--lead-in", type=float, default=0.0, help="seconds paced before")
    parser.add_argument("--partitions", type=int, required=True, help="of --topic")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--id-prefix", default="lat")
    args = parser.parse_args()
    count = max(1, int(args.rate * (args.seconds + args.lead_in)))
    sim = Simulator(seed=args.seed, flag_rate=0.01, malformed_rate=0.001, id_prefix=args.id_prefix)
    messages = list(sim.messages(count))
    keys = [message_key(m) for m in messages]
    summary = asyncio.run(_serve(args, messages, keys))
    if summary is not None:
        print(json.dumps(summary), flush=True)


async def _serve(
    args: argparse.Namespace, messages: list[bytes], keys: list[bytes | None]
) -> dict[str, Any] | None:
    """Connect and learn the topic's partitions, say ``ready``, pace on ``go``: the
    producer's start is not in the paced window."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks=1, linger_ms=0)
    await producer.start()
    try:
        await producer.partitions_for(args.topic)
        print("ready", flush=True)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
            return None
        return await pace(
            producer, args.topic, messages, keys, args.rate, args.partitions, args.lead_in
        )
    finally:
        await producer.stop()


if __name__ == "__main__":
    main()
