"""``python -m bench.run`` (``make bench``): the whole benchmark in one run.

Starts a dedicated local Kafka (or uses ``--bootstrap``), prefills a topic with ``--count``
simulated predictions, measures the contenders one after the other, prints a table and,
after a complete run, writes ``bench/results/latest.json`` and ``BENCHMARKS.md`` (a
``--quick`` or ``--skip`` run writes ``bench/results/partial.json`` only). Subprocesses and
the broker are stopped at the end, on failure and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import contenders, environment, latency, procs, report
from bench.contenders import ContenderFailed, Setup
from bench.kafka_io import Admin, free_port, prefill

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "latest.json"  # of a complete run
PARTIAL = REPO / "bench" / "results" / "partial.json"  # of --quick or --skip runs
MARKDOWN = REPO / "BENCHMARKS.md"
#: the throughput contenders: (--skip name, results key, label in the log, the coroutine)
THROUGHPUT: tuple[tuple[str, str, str, Callable[..., Any]], ...] = (
    ("router", "router", "router", contenders.router),
    ("router-aiokafka", "router_aiokafka", "router on aiokafka", contenders.router_aiokafka),
    ("ceiling", "ceiling", "ceiling", contenders.ceiling),
    ("confluent-pass", "confluent_pass", "confluent-kafka pass-through", contenders.confluent_pass),
    ("confluent-loop", "confluent_loop", "confluent-kafka loop", contenders.confluent_loop),
    ("quix", "quix", "Quix Streams app", contenders.quix),
)
CONTENDERS = (
    *(skip for skip, _, _, _ in THROUGHPUT),
    "peer",
    "latency",
    "latency-ceiling",
    "latency-curve",
    "scale",
    "drift",
)
#: the anchors of issue #15, each in round_ratios_anchors as router / it
ANCHORS = ("confluent_pass", "confluent_loop", "quix")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--count", type=int, default=None, help="prefilled messages (200000)")
    p.add_argument("--partitions", type=int, default=6, help="partitions (default: 6)")
    p.add_argument("--bootstrap", help="use this Kafka instead of starting a dedicated one")
    p.add_argument(
        "--skip",
        default="",
        help=f"comma-separated contenders to skip: {','.join(CONTENDERS)}",
    )
    p.add_argument(
        "--latency-seconds", type=float, default=None, help="paced run length (default: 20)"
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="input rate of the latency run (default: half the router's measured rate)",
    )
    p.add_argument(
        "--curve-rates",
        default="1000,2000,4000",
        help="input rates of the rate-latency curve (issue #15: its targets are at 2000)",
    )
    p.add_argument(
        "--curve-seconds", type=float, default=None, help="each paced run of the curve (10)"
    )
    p.add_argument("--workers", default="1,2,3", help="worker counts of the scale-out runs")
    p.add_argument("--quick", action="store_true", help="smoke run: count 20000, latency 5 s")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="per contender, seconds (default: 600)"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON results file (default: bench/results/latest.json, or partial.json after "
        "--quick or --skip)",
    )
    p.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="write this Markdown report (default: BENCHMARKS.md after a complete full run)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and logs")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="run the throughput contenders (router, ceiling, the anchors) this many times, in a "
        "rotated order each round, and report each one's median run (default: 3, 1 with "
        "--quick: the same code's rate moves by 10-15%% between runs here, so one round "
        "settles no ratio)",
    )
    p.add_argument(
        "--load-control",
        action="store_true",
        help="the router's config with load control on (bench.contenders.LOAD_CONTROL: "
        "priorities, a target rate, a budget, a diversity cap); BENCHMARKS.md is not written",
    )
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="profile the router contender with py-spy and print where its samples went "
        "(implies --keep; its CPU figures are then py-spy's, and BENCHMARKS.md is not written)",
    )
    args = p.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.keep = args.keep or args.py_spy  # the raw stacks stay in the scratch directory
    unknown = args.skip - set(CONTENDERS)
    if unknown:
        p.error(f"--skip: unknown contender(s) {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error(f"--workers: comma-separated integers expected, got {args.workers!r}")
    try:
        args.curve_rates = [float(r) for r in args.curve_rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--curve-rates: comma-separated numbers expected, got {args.curve_rates!r}")
    if any(r <= 0 for r in args.curve_rates):
        p.error("--curve-rates: each rate must be > 0")
    if args.curve_seconds is None:
        args.curve_seconds = 5.0 if args.quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        p.error(f"--rounds: at least 1, got {args.rounds}")
    if any(w < 1 for w in args.workers):
        p.error("--workers: each count must be >= 1")
    if args.count is None:
        args.count = 20_000 if args.quick else 200_000
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if args.quick else 20.0
    if args.count < 1000 or args.partitions < 1 or args.latency_seconds <= 0:
        p.error("--count must be >= 1000, --partitions >= 1, --latency-seconds > 0")
    return args


def workload(count: int, tag: str) -> tuple[list[bytes], list[bytes | None], dict[str, Any]]:
    """The prefilled messages, their keys, and a description."""
    from hitl_router.simulate import Simulator, message_key

    t0 = time.perf_counter()
    sim = Simulator(seed=1, flag_rate=0.01, malformed_rate=0.001, id_prefix=f"b{tag}")
    tagged = list(sim.tagged_messages(count))
    messages = [m for _, m in tagged]
    keys = [message_key(m) for m in messages]
    return (
        messages,
        keys,
        {
            "count": count,
            "avg_message_bytes": sum(map(len, messages)) / len(messages),
            "malformed": sum(1 for kind, _ in tagged if kind is not None),
            "flagged": sum(1 for _, m in tagged if b'"flags":' in m),
            "generate_s": time.perf_counter() - t0,
        },
    )


async def run_all(args: argparse.Namespace, setup: Setup, results: dict[str, Any]) -> None:
    results["worker_settings"] = contenders.worker_settings(setup)
    await asyncio.to_thread(setup.admin.create_topics, [setup.input_topic], setup.partitions)
    rate = await prefill(
        setup.bootstrap, setup.input_topic, setup.messages, setup.keys, setup.partitions
    )
    results["workload"]["prefill_rate"] = rate
    log.info("prefilled %d messages in %s (%.0f msgs/s)", setup.count, setup.input_topic, rate)

    async def attempt(name: str, coro: Any) -> dict[str, Any]:
        if procs.INTERRUPTED.is_set():
            raise KeyboardInterrupt
        log.info("measuring %s ...", name)
        try:
            res = await coro
        except (ContenderFailed, TimeoutError) as exc:
            log.error("%s failed: %s", name, exc)
            res = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug or a broker error: report it, go on with the others
            log.exception("%s failed", name)
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if procs.INTERRUPTED.is_set():
            raise KeyboardInterrupt
        log.info("%s: %s", name, report.one_line(res))
        return res

    if any(skip not in args.skip for skip, _, _, _ in THROUGHPUT):
        # A fresh broker's JVM compiles its hot paths during the first contender (C2
        # compiler threads took ~3 s of CPU on the first run, under 1 s on later ones),
        # which charged that work to whichever contender ran first: one unmeasured
        # pass-through warms it for all.
        results["warmup"] = await attempt("broker warm-up", contenders.ceiling(setup, "warmup"))
    await _throughput(args, setup, results, attempt)
    if "peer" not in args.skip:
        results["peer"] = await attempt("peer", contenders.peer(setup))
    router_rate = (results.get("router") or {}).get("rate")
    lat_rate = args.latency_rate or (router_rate / 2 if router_rate else None)
    for of, key in (("router", "latency"), ("ceiling", "latency-ceiling")):
        if key in args.skip:
            continue
        if lat_rate is None:
            results[key] = {"ok": False, "error": "no router rate: pass --latency-rate"}
        else:
            coro = latency.measure(setup, lat_rate, args.latency_seconds, of=of)
            results[key] = await attempt(f"{of} latency", coro)
    if "latency-curve" not in args.skip:
        results["latency_curve"] = await _curve(args, setup, attempt)
    if "scale" not in args.skip:
        results["scale"] = {}
        for k in args.workers:
            coro = contenders.scale(setup, k)
            results["scale"][str(k)] = await attempt(f"router x{k} workers", coro)
    if "drift" not in args.skip:
        from bench import drift_cost

        coro = asyncio.to_thread(drift_cost.measure, setup.messages)
        results["drift_cost"] = await attempt("drift cost", coro)


async def _throughput(
    args: argparse.Namespace,
    setup: Setup,
    results: dict[str, Any],
    attempt: Callable[[str, Any], Awaitable[dict[str, Any]]],
) -> None:
    """The router, its ceiling (and, with --load-control, the router without dedup:
    what dedup costs) and the anchors of issue #15 (confluent-kafka pass-through and loop,
    Quix Streams app), ``args.rounds`` times. Round r starts r places further into the
    list, so that no contender always runs after the others: the broker's JVM keeps
    getting faster over the first runs (its CPU per message fell by a third between the
    second and the fourth pass-through of one run), which favoured whichever ran last.
    Each contender's result is its median-rate run, with every round's rate in
    ``round_rates``; ``round_ratios`` pairs the router with the ceiling of its round,
    ``round_ratios_anchors`` with each anchor of its round."""
    runs: list[tuple[str, str, Callable[[str], Any]]] = []
    for skip, key, label, coro in THROUGHPUT:
        if skip in args.skip:
            continue
        runs.append((key, label, lambda n, coro=coro: coro(setup, n)))
        if key == "router" and args.load_control:
            runs.append(
                (
                    "router_no_dedup",
                    "router without dedup",
                    lambda n: contenders.router(setup, n, dedup=False),
                )
            )
    if not runs:
        return
    by_key: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in runs}
    for r in range(args.rounds):
        order = runs[r % len(runs) :] + runs[: r % len(runs)]
        for key, label, make in order:
            name = key.replace("_", "-") + (f"-r{r}" if args.rounds > 1 else "")
            suffix = f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""
            by_key[key].append(await attempt(label + suffix, make(name)))
    for key, done in by_key.items():
        ok = sorted((d for d in done if d.get("ok")), key=lambda d: d["rate"])
        results[key] = ok[(len(ok) - 1) // 2] if ok else done[-1]  # the lower median
        if args.rounds > 1:
            results[key]["round_rates"] = [d.get("rate") if d.get("ok") else None for d in done]

    def ratios(of: str) -> list[float | None]:
        return [
            a["rate"] / b["rate"] if a.get("ok") and b.get("ok") else None
            for a, b in zip(by_key["router"], by_key[of], strict=True)
        ]

    if args.rounds > 1 and "router" in by_key and "ceiling" in by_key:
        results["round_ratios"] = ratios("ceiling")
    anchors = [a for a in ANCHORS if a in by_key]
    if args.rounds > 1 and "router" in by_key and anchors:
        results["round_ratios_anchors"] = {a: ratios(a) for a in anchors}


#: the curve's contenders: the limit first, then the router with each output producer
CURVE_OF = ("confluent-pass", "router", "router-aiokafka")


async def _curve(
    args: argparse.Namespace,
    setup: Setup,
    attempt: Callable[[str, Any], Awaitable[dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Issue #15's rate-latency curve: at each of ``args.curve_rates``, the confluent-kafka
    pass-through and the router (on librdkafka and on aiokafka; ``--skip router-aiokafka``
    leaves that one out) fed live, one after the other. Keyed by rate (``"2000"``), then
    contender."""
    curve: dict[str, dict[str, Any]] = {}
    for rate in args.curve_rates:
        row = curve[f"{rate:g}"] = {}
        for of in CURVE_OF:
            if of in args.skip:
                continue
            coro = latency.measure(setup, rate, args.curve_seconds, of=of, suffix=f"-at{rate:g}")
            row[of] = await attempt(f"{of} latency at {rate:,.0f} msgs/s", coro)
    return curve


def _interrupt(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: remember it (wait loops check, in case a library swallows the
    exception) and raise KeyboardInterrupt; the ``finally`` of ``main`` stops everything."""
    if procs.INTERRUPTED.is_set():
        return  # already stopping: let the cleanup finish
    procs.INTERRUPTED.set()
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("aiokafka", "kafka", "hitl_router.localkafka"):
        # aiokafka logs retried errors (e.g. no leader yet for a new topic) as ERROR
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # not asyncio's: it only cancels a task
    started = time.time()
    tag = f"{int(started) % 1_000_000:06d}{os.getpid() % 100:02d}"
    tmp = Path(tempfile.mkdtemp(prefix="hitl-bench-"))
    results: dict[str, Any] = {
        "command": environment.command_line(),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "params": {
            "count": args.count,
            "partitions": args.partitions,
            "latency_seconds": args.latency_seconds,
            "curve_rates": args.curve_rates,
            "curve_seconds": args.curve_seconds,
            "latency_rate": args.latency_rate,
            "workers": args.workers,
            "skip": sorted(args.skip),
            "timeout_s": args.timeout,
            "rounds": args.rounds,
            "broker": "external" if args.bootstrap else "dedicated",
        },
        "machine": environment.machine(),
        "versions": environment.versions(external=bool(args.bootstrap)),
        "source": environment.source_state(),
    }
    broker = None
    admin = None
    code = 0
    try:
        if args.bootstrap:
            bootstrap, broker_pid = args.bootstrap, None
        else:
            from hitl_router.localkafka.broker import LocalKafka

            broker = LocalKafka(
                port=free_port(), controller_port=free_port(), run_dir=tmp / "kafka"
            )
            log.info("starting a dedicated Kafka at %s", broker.bootstrap)
            broker.start(timeout=120)
            bootstrap, broker_pid = broker.bootstrap, broker.pid()
        admin = Admin(bootstrap)
        messages, keys, results["workload"] = workload(args.count, tag)
        results["workload"]["topic_partitions"] = args.partitions
        setup = Setup(
            bootstrap=bootstrap,
            input_topic=f"bench-predictions-{tag}",
            messages=messages,
            keys=keys,
            partitions=args.partitions,
            tag=tag,
            tmp=tmp,
            admin=admin,
            timeout=args.timeout,
            broker_pid=broker_pid,
            py_spy=args.py_spy,
            load_control=args.load_control,
        )
        asyncio.run(run_all(args, setup, results))
        if "quix" in results:
            from bench import quix_venv

            results["versions"]["quixstreams (own venv)"] = quix_venv.versions()
    except KeyboardInterrupt:
        log.error("interrupted; stopping everything")
        results["interrupted"] = True
        code = 130
    finally:
        procs.stop_all()
        if admin is not None:
            if args.bootstrap:
                try:
                    gone = admin.delete_topics_containing(tag)
                    log.info("deleted the run's %d topics from %s", len(gone), args.bootstrap)
                except Exception as exc:  # cleanup is best effort; the results still count
                    log.warning("could not delete the run's topics (tag %s): %s", tag, exc)
            admin.close()
        if broker is not None:
            broker.stop()
        if args.keep:
            log.info("scratch directory kept: %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["duration_s"] = time.time() - started
    report.derive(results)
    print(report.table(results))
    if code == 130:
        print("interrupted: no results written")
        return code
    profile = (results.get("router") or {}).get("profile")
    if profile:
        print(f"router profile ({profile['raw']}), shares of active samples:")
        for stage, share in (profile.get("stages") or {}).items():
            print(f"  {stage:28s} {share:6.1%}")
    complete = not args.quick and not args.skip and not args.py_spy and not args.load_control
    path = args.results or (
        RESULTS if complete else report.LOAD_CONTROL if args.load_control else PARTIAL
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"results: {path}")
    markdown = args.markdown or (MARKDOWN if complete else None)
    if markdown is not None:
        markdown.write_text(report.markdown(results))
        print(f"report:  {markdown}")
    if code == 0 and not all(r.get("ok") for _, r in report.named(results)):
        code = 1
    disagree = report.disagreeing(results)
    if disagree:
        print(f"FATES DIFFER from replay's: {', '.join(disagree)} (see the table)")
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
