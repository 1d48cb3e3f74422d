"""How each contender is started and measured.

Every contender runs as subprocesses reading the prefilled topic with a fresh consumer
group and writing to its own output topics. Throughput is N / (t_last - t_first) over the
CreateTime stamps of all its output records (set by its producer at send time), read
after the run; CPU time per message is read from ``/proc`` between the first output and
the N-th. The contenders that decide (the router, the confluent-kafka loop, the Quix app)
have their fates checked against replay's (``bench/agreement.py``) once they stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import agreement, procs
from bench.anchor_rules import RECORDS
from bench.kafka_io import Admin, OutputReader, free_port, prefill, quiesce, settle
from bench.peer import topics as peer_topics

log = logging.getLogger(__name__)

POLL_S = 0.25


class ContenderFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Setup:
    """What every contender shares: the broker, the prefilled topic, a scratch directory."""

    bootstrap: str
    input_topic: str
    messages: list[bytes]  # what the input topic holds, in memory for refills
    keys: list[bytes | None]
    partitions: int
    tag: str
    tmp: Path
    admin: Admin
    timeout: float
    broker_pid: int | None
    py_spy: bool = False  # run the router contender under py-spy (--py-spy)
    load_control: bool = False  # the router's queues with LOAD_CONTROL (--load-control)

    @property
    def count(self) -> int:
        return len(self.messages)

    @property
    def env(self) -> dict[str, str]:
        # Faust puts its datadir under the temp dir: keep it in our scratch directory.
        return {**os.environ, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1"}


#: --load-control: what each queue gets (issue #11), on the benchmark's own queues
LOAD_CONTROL: dict[str, dict[str, Any]] = {
    "flagged": {"priority": 10},
    "disagreement": {
        "when": {"ensemble_kl_above": {"target_rate": 0.1, "window": 10000}},
        "priority": {"ensemble_kl": 1.0, "entropy_norm": 0.5},
        "diversity": {"max_share": 0.3, "window": 500},
    },
    "uncertain": {"budget": {"items": 3000, "per": "minute"}},
}


#: --load-control: dedup on too (every id of the workload is routed at most once)
LOAD_CONTROL_DEDUP = {"retention_s": 3600, "max_ids": 100_000}


def router_config(
    setup: Setup, name: str, input_topic: str | None = None, dedup: bool = True
) -> dict[str, Any]:
    """The router's config; with ``setup.load_control``, LOAD_CONTROL on its queues and,
    unless ``dedup`` is false, LOAD_CONTROL_DEDUP."""
    config = _router_config(setup, name, input_topic)
    if setup.load_control:
        config["queues"] = [{**q, **LOAD_CONTROL.get(q["name"], {})} for q in config["queues"]]
        if dedup:
            config["dedup"] = LOAD_CONTROL_DEDUP
    return config


def _router_config(setup: Setup, name: str, input_topic: str | None) -> dict[str, Any]:
    t = f"{name}-{setup.tag}"
    return {
        "kafka": {
            "bootstrap_servers": setup.bootstrap,
            "group_id": f"bench-router-{t}",
            "partitions": setup.partitions,
        },
        "topics": {
            "predictions": input_topic or setup.input_topic,
            "eval": f"bench-eval-{t}",
            "deadletter": f"bench-dlq-{t}",
            "labels": f"bench-labels-{t}",
            "accepted": f"bench-accepted-{t}",
            "decisions": f"bench-decisions-{t}",
        },
        "eval_sample": {"rate": 0.02, "salt": "bench"},
        "queues": [
            {
                "name": "flagged",
                "topic": f"bench-review-flagged-{t}",
                "when": {"flags_any": ["pii", "user_report"]},
            },
            {
                "name": "disagreement",
                "topic": f"bench-review-disagreement-{t}",
                "when": {"ensemble_kl_above": 0.05},
            },
            {
                "name": "uncertain",
                "topic": f"bench-review-uncertain-{t}",
                "when": {"any": [{"max_prob_below": 0.7}, {"margin_below": 0.1}]},
            },
        ],
        "worker": {"batch_size": 1000},
    }


def output_topics(config: dict[str, Any]) -> list[str]:
    """The fates' topics of a router with ``config``: one of them gets each input."""
    t = config["topics"]
    return [t["eval"], t["deadletter"], t["accepted"], *(q["topic"] for q in config["queues"])]


def records_topic(config: dict[str, Any]) -> str:
    """Where a router with ``config`` writes its decision records (eval and review items)."""
    return str(config["topics"]["decisions"])


def write_config(setup: Setup, config: dict[str, Any], name: str) -> Path:
    path = setup.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def spawn_workers(
    setup: Setup, config_path: Path, name: str, n: int, profile: Path | None = None
) -> list[procs.Proc]:
    """``n`` worker processes; with ``profile``, the first runs under ``py-spy record``
    (raw stacks written there when it stops)."""
    out = []
    for i in range(n):
        argv = [procs.PYTHON, "-m", "hitl_router.cli", "worker", "-c", str(config_path)]
        argv += ["--metrics-port", str(free_port()), "--loglevel", "warning"]
        if profile is not None and i == 0:
            py_spy = str(Path(procs.PYTHON).with_name("py-spy"))
            argv = [py_spy, "record", "-r", "200", "-f", "raw", "-o", str(profile), "--", *argv]
        log_path = setup.tmp / f"{name}-{i}.log"
        proc = procs.Proc(f"{name}[{i}]", argv, log_path, env=setup.env)
        if profile is not None and i == 0:
            proc.stop_signal, proc.signal_group = signal.SIGINT, True
        out.append(proc)
    return out


def check_alive(running: list[procs.Proc]) -> None:
    if procs.INTERRUPTED.is_set():
        raise KeyboardInterrupt
    for p in running:
        if not p.alive():
            raise ContenderFailed(
                f"{p.name} exited with code {p.popen.returncode}; last lines of "
                f"{p.log_path}:\n{p.tail()}"
            )


async def wait_group(
    setup: Setup, group: str, topic: str, members: int, running: list[procs.Proc]
) -> float:
    """Wait until ``members`` members of ``group`` read ``topic``; return when (epoch s)."""
    deadline = time.monotonic() + setup.timeout
    while time.monotonic() < deadline:
        check_alive(running)
        if await asyncio.to_thread(setup.admin.members_reading, group, topic) >= members:
            return time.time()
        await asyncio.sleep(POLL_S)
    raise ContenderFailed(f"group {group} did not get {members} assigned members in time")


async def measure(setup: Setup, running: list[procs.Proc], reader: OutputReader) -> dict[str, Any]:
    """Wait until ``running`` has produced one output per input, then read the outputs."""
    n = setup.count
    t_spawn = min(p.started for p in running)
    deadline = time.monotonic() + setup.timeout
    pids = [p.pid for p in running]
    first: tuple[int, procs.Usage] | None = None
    while True:
        check_alive(running)
        total = await reader.end_total()
        if total and first is None:
            first = (total, procs.Usage.now(pids, setup.broker_pid))
        if total >= n:
            assert first is not None
            last = (total, procs.Usage.now(pids, setup.broker_pid))
            await reader.drain()
            if reader.stats.distinct >= n:
                break
        if time.monotonic() > deadline:
            raise ContenderFailed(
                f"timed out after {setup.timeout:.0f}s with {total} of {n} outputs written"
            )
        await asyncio.sleep(POLL_S)
    stats = reader.stats
    stamps = sorted(stats.stamps)
    t_first, t_last = stamps[0] / 1000.0, stamps[-1] / 1000.0
    span = max(t_last - t_first, 1e-3)
    lo, hi = stamps[len(stamps) // 10] / 1000.0, stamps[(len(stamps) * 9) // 10] / 1000.0
    msgs = max(last[0] - first[0], 1)
    u0, u1 = first[1], last[1]
    return {
        "ok": True,
        "processes": len(running),
        "n": n,
        "outputs": stats.total,
        "distinct": stats.distinct,
        "duplicates": stats.total - stats.distinct,
        "by_topic": dict(sorted(stats.by_topic.items())),
        "rate": n / span,
        "rate_p10_p90": 0.8 * len(stamps) / max(hi - lo, 1e-3),
        "span_s": span,
        "startup_s": t_first - t_spawn,
        "wall_s": u1.at - t_spawn,
        "cpu_us_per_msg": (u1.procs - u0.procs) / msgs * 1e6,
        # the event loop's thread, a worker's limit (librdkafka's threads run beside it),
        # and how long it waited for a CPU while it could run (the machine was full)
        "main_cpu_us_per_msg": (u1.main - u0.main) / msgs * 1e6,
        "main_cpu_wait_us_per_msg": (u1.main_waited - u0.main_waited) / msgs * 1e6,
        "broker_cpu_us_per_msg": (u1.broker - u0.broker) / msgs * 1e6 if setup.broker_pid else None,
        "cpu_window_msgs": msgs,
        **u1.since(u0),
    }


async def fresh_outputs(
    setup: Setup, outputs: list[str], topic_configs: dict[str, str] | None = None
) -> None:
    """Create a contender's output topics (with ``topic_configs``), settle them
    (:func:`~bench.kafka_io.settle`) and write back the page cache
    (:func:`~bench.kafka_io.quiesce`): what every contender gets before it starts."""
    await asyncio.to_thread(setup.admin.create_topics, outputs, setup.partitions, topic_configs)
    await asyncio.to_thread(settle, setup.bootstrap, outputs, setup.partitions)
    await asyncio.to_thread(quiesce)


async def run_processes(
    setup: Setup,
    outputs: list[str],
    start: Callable[[], list[procs.Proc]],
    feed: Callable[[list[procs.Proc]], Awaitable[dict[str, Any]]] | None = None,
    labels: Mapping[str, str] | None = None,
    topic_configs: dict[str, str] | None = None,
    records: str | None = None,
) -> dict[str, Any]:
    """Create ``outputs`` and ``records`` (with ``topic_configs``), start the processes
    ``start()`` returns, ``feed`` them if given, measure, stop them; with ``labels`` (output
    topic → fate), check the fates of the outputs against replay's, and the decision
    records written to ``records`` (``result["agreement"]``)."""
    await fresh_outputs(setup, [*outputs, *([records] if records else [])], topic_configs)
    reader = OutputReader(setup.bootstrap, outputs, setup.partitions, labels)
    recorded = OutputReader(setup.bootstrap, [records], setup.partitions) if records else None
    await reader.start()
    if recorded is not None:
        await recorded.start()
    running: list[procs.Proc] = []
    try:
        running = start()
        fed = await feed(running) if feed is not None else {}
        result = await measure(setup, running, reader)
    except BaseException:
        if recorded is not None:
            await recorded.stop()
        raise
    finally:
        stop_s = procs.stop_all(running)
        await reader.stop()
    result.update(fed)
    result["shutdown_s"] = stop_s
    result["killed_at_shutdown"] = [p.name for p in running if p.killed]
    check_records = None
    if recorded is not None:
        try:
            await recorded.drain()  # everything the stopped contender wrote
        finally:
            await recorded.stop()
        result["decision_records"] = recorded.stats.total
    if labels is not None:
        ref = await reference_fates(setup)
        if recorded is not None:
            stats = recorded.stats
            check_records = agreement.compare_records(ref, stats.keys, stats.total, stats.unkeyed)
        result["agreement"] = check = agreement.compare(ref, reader.stats.fates, check_records)
        if not check["ok"]:
            log.error(
                "FATES DIFFER from replay's: %s; e.g. %s",
                agreement.summary(check).replace("*", ""),
                check["examples"][:3]
                or check["missing_examples"][:3]
                or (check_records or {}).get("missing_examples", [])[:3]
                or (check_records or {}).get("extra_examples", [])[:3],
            )
    return result


_REFERENCE: dict[str, agreement.Fates] = {}
_SETTINGS: dict[str, dict[str, Any]] = {}


async def reference_fates(setup: Setup) -> agreement.Fates:
    """Replay's fates of the prefilled messages under the plain benchmark config (computed
    once per run, between contenders)."""
    if setup.tag not in _REFERENCE:
        config = _router_config(setup, "reference", None)
        t0 = time.perf_counter()
        ref = await asyncio.to_thread(agreement.reference, setup.messages, config)
        _REFERENCE[setup.tag] = ref
        log.info("replay's fates of the %d inputs in %.1f s", setup.count, time.perf_counter() - t0)
    return _REFERENCE[setup.tag]


def worker_settings(setup: Setup) -> dict[str, Any]:
    """The worker's Kafka client settings (``bench.ceiling.worker_client_settings``) for the
    benchmark's config, read once per run."""
    if setup.tag not in _SETTINGS:
        from bench.ceiling import worker_client_settings
        from hitl_router.router.config import parse_config

        cfg = parse_config(router_config(setup, "settings"))
        _SETTINGS[setup.tag] = worker_client_settings(cfg)
    return _SETTINGS[setup.tag]


async def router(
    setup: Setup, name: str = "router", dedup: bool = True, client: str | None = None
) -> dict[str, Any]:
    """One worker over the prefilled topic (under py-spy with ``setup.py_spy``: its CPU
    figures then count py-spy, not the worker, and the result carries the profile).
    ``dedup``: see :func:`router_config`; ``client``: its ``worker.consumer`` and
    ``worker.producer`` (default: librdkafka)."""
    from bench.profile import summarize

    config = router_config(setup, name, dedup=dedup)
    client = client or "librdkafka"
    config["worker"] = {**config["worker"], "consumer": client, "producer": client}
    path = write_config(setup, config, name)
    profile = setup.tmp / f"{name}.pyspy.txt" if setup.py_spy else None
    # with load control, budgets and caps make fates differ from the plain rules' by design
    labels = None if setup.load_control else agreement.router_labels(config)
    result = await run_processes(
        setup,
        output_topics(config),
        lambda: spawn_workers(setup, path, name, 1, profile),
        labels=labels,
        records=records_topic(config),
    )
    if profile is not None:
        result["profile"] = {"raw": str(profile)}
        if profile.exists():
            with profile.open() as lines:
                result["profile"].update(summarize(lines))
    return result


async def router_aiokafka(setup: Setup, name: str = "router-aiokafka") -> dict[str, Any]:
    """The router on Faust's own aiokafka clients (``worker.consumer`` and
    ``worker.producer: aiokafka``): the router as it was before librdkafka."""
    return await router(setup, name, client="aiokafka")


async def scale(setup: Setup, workers: int) -> dict[str, Any]:
    """``workers`` workers in one group; the input is written once all hold partitions.

    Started on a full topic, the first worker to join would take every partition and the
    others' arrival would force a rebalance mid-run; here they all join an empty topic of
    their own, then the driver writes the same messages into it as fast as it can.
    """
    name = f"scale{workers}"
    input_topic = f"bench-{name}-in-{setup.tag}"
    config = router_config(setup, name, input_topic=input_topic)
    path = write_config(setup, config, name)
    await asyncio.to_thread(setup.admin.create_topics, [input_topic], setup.partitions)

    async def feed(running: list[procs.Proc]) -> dict[str, Any]:
        group = config["kafka"]["group_id"]
        t_stable = await wait_group(setup, group, input_topic, workers, running)
        rate = await prefill(
            setup.bootstrap, input_topic, setup.messages, setup.keys, setup.partitions
        )
        started = min(p.started for p in running)
        return {"group_ready_after_s": t_stable - started, "fill_rate": rate}

    return await run_processes(
        setup,
        output_topics(config),
        lambda: spawn_workers(setup, path, name, workers),
        feed,
        records=records_topic(config),
    )


def spawn_ceiling(
    setup: Setup, config_path: Path, name: str, output: str, group: str
) -> procs.Proc:
    argv = [procs.PYTHON, "-m", "bench.ceiling", "-c", str(config_path), "--output", output]
    argv += ["--group", group]
    return procs.Proc(name, argv, setup.tmp / f"{name}.log", env=setup.env)


async def ceiling(setup: Setup, name: str = "ceiling") -> dict[str, Any]:
    """The pass-through over the prefilled topic (``name`` tells runs apart: the
    broker's warm-up is one)."""
    config = router_config(setup, name)
    path = write_config(setup, config, name)
    output = f"bench-{name}-out-{setup.tag}"
    group = f"bench-{name}-{setup.tag}"
    return await run_processes(
        setup, [output], lambda: [spawn_ceiling(setup, path, name, output, group)]
    )


async def peer(setup: Setup) -> dict[str, Any]:
    argv = [procs.PYTHON, "-m", "bench.peer", "--bootstrap", setup.bootstrap]
    argv += ["--input", setup.input_topic, "--group", f"bench-peer-{setup.tag}"]
    argv += ["--tag", setup.tag]
    return await run_processes(
        setup,
        list(peer_topics(setup.tag).values()),
        lambda: [procs.Proc("peer", argv, setup.tmp / "peer.log", env=setup.env)],
    )


def _librdkafka_args(setup: Setup) -> list[str]:
    from bench.confluent_pass import librdkafka_settings

    return ["--settings", json.dumps(librdkafka_settings(worker_settings(setup)))]


def spawn_confluent_pass(
    setup: Setup, name: str, input_topic: str, output: str, group: str
) -> procs.Proc:
    argv = [procs.PYTHON, "-m", "bench.confluent_pass", "--bootstrap", setup.bootstrap]
    argv += ["--input", input_topic, "--group", group, "--output", output]
    argv += _librdkafka_args(setup)
    return procs.Proc(name, argv, setup.tmp / f"{name}.log", env=setup.env)


async def confluent_pass(setup: Setup, name: str = "confluent-pass") -> dict[str, Any]:
    """confluent-kafka consume → produce of the same bytes to one topic (the limit of a
    Python process)."""
    output = f"bench-{name}-out-{setup.tag}"
    group = f"bench-{name}-{setup.tag}"
    return await run_processes(
        setup,
        [output],
        lambda: [spawn_confluent_pass(setup, name, setup.input_topic, output, group)],
    )


async def confluent_loop(setup: Setup, name: str = "confluent-loop") -> dict[str, Any]:
    """The router's rules and outputs hand-written on confluent-kafka, per message."""
    from bench.confluent_loop import topics

    names = topics(name, setup.tag)
    records = names.pop(RECORDS)
    argv = [procs.PYTHON, "-m", "bench.confluent_loop", "--bootstrap", setup.bootstrap]
    argv += ["--input", setup.input_topic, "--group", f"bench-{name}-{setup.tag}"]
    argv += ["--tag", setup.tag, "--name", name, *_librdkafka_args(setup)]
    return await run_processes(
        setup,
        list(names.values()),
        lambda: [procs.Proc(name, argv, setup.tmp / f"{name}.log", env=setup.env)],
        labels={topic: fate for fate, topic in names.items()},
        records=records,
    )


async def quix(setup: Setup, name: str = "quix") -> dict[str, Any]:
    """The same rules and outputs as a Quix Streams app, in its own venv. Its output topics
    stamp records at append (LogAppendTime): Quix gives an output its input's timestamp."""
    from bench import quix_venv
    from bench.quix_app import topics

    python = await asyncio.to_thread(quix_venv.install)
    names = topics(name, setup.tag)
    records = names.pop(RECORDS)
    argv = [str(python), "-m", "bench.quix_app", "--bootstrap", setup.bootstrap]
    argv += ["--input", setup.input_topic, "--group", f"bench-{name}-{setup.tag}"]
    argv += ["--tag", setup.tag, "--name", name, "--state-dir", str(setup.tmp / f"{name}-state")]
    env = {**setup.env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("VIRTUAL_ENV", None)
    return await run_processes(
        setup,
        list(names.values()),
        lambda: [procs.Proc(name, argv, setup.tmp / f"{name}.log", env=env)],
        labels={topic: fate for fate, topic in names.items()},
        topic_configs={"message.timestamp.type": "LogAppendTime"},
        records=records,
    )
