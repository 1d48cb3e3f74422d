"""Sub-commands of ``hitl-router``: each registers its parser and a handler."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import orjson
import yaml

from hitl_router.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hitl_router.demo import add_parser as add_demo
    from hitl_router.evaluation.command import add_parser as add_evaluate_loop
    from hitl_router.labelstudio.command import add_parser as add_bridge
    from hitl_router.localkafka.broker import add_parser as add_kafka
    from hitl_router.locallabelstudio.server import add_parser as add_label_studio
    from hitl_router.localprom.binaries import add_parser as add_prometheus
    from hitl_router.profile import add_parser as add_profile
    from hitl_router.simulate import add_parser as add_simulate

    p = sub.add_parser("worker", help="run the Faust worker (all agents, or --agents)")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument(
        "--agents",
        default="all",
        help="comma-separated agents to run: router,sampler (default: all)",
    )
    p.add_argument("--loglevel", default="info")
    p.add_argument(
        "--metrics-port", type=int, help="port of /metrics (default: metrics.port of the config)"
    )
    p.add_argument(
        "--metrics-host",
        help="address /metrics, /healthz and /readyz listen on (default: metrics.host)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line, with the worker's id, group and partitions",
    )
    p.set_defaults(handler=_worker)

    p = sub.add_parser("replay", help="decide a JSONL file of predictions offline")
    p.add_argument("input", help="JSONL file of predictions, one message per line (- = stdin)")
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("-o", "--output", default="-", help="decisions JSONL (default: stdout)")
    p.add_argument("--summary", help="also write the summary JSON to this file")
    p.add_argument(
        "--drift-out", help="also write drift reports (JSONL, one per window and feature/method)"
    )
    p.add_argument(
        "--profile", help="drift reference profile (default: drift.profile of the config)"
    )
    p.set_defaults(handler=_replay)

    p = sub.add_parser(
        "calibrate",
        help="accuracy, ECE (before/after), NLL and a fitted temperature of labelled predictions",
    )
    p.add_argument(
        "input", help="JSONL predictions, each with its true 'label' (class name or index)"
    )
    p.add_argument("-c", "--config", help="YAML config (temperatures in use, labels.min_labels)")
    p.add_argument("-o", "--output", default="-", help="write the JSON here (default: stdout)")
    p.set_defaults(handler=_calibrate)

    p = sub.add_parser("check-config", help="validate a config and print the resolved rules")
    p.add_argument("config", help="YAML config file")
    p.set_defaults(handler=_check_config)

    add_kafka(sub)
    add_prometheus(sub)
    add_label_studio(sub)
    add_bridge(sub)
    add_profile(sub)
    add_simulate(sub)
    add_evaluate_loop(sub)
    add_demo(sub)


def _worker(args: argparse.Namespace) -> int:
    from hitl_router.agents import json_logs
    from hitl_router.agents.worker import run_worker
    from hitl_router.router.config import check_bind_host, load_config

    log_context = None
    if args.log_format == "json":  # first, so that even a config error is a JSON line
        log_context = json_logs.LogContext()
        json_logs.install(log_context)
        logging.captureWarnings(True)  # a warning is a line like the others
    config = load_config(args.config)
    if args.metrics_host is not None:
        check_bind_host(args.metrics_host, "--metrics-host")
    agents = {a.strip() for a in args.agents.split(",") if a.strip()}
    return run_worker(
        config,
        agents=agents,
        loglevel=args.loglevel,
        web_port=args.metrics_port,
        web_host=args.metrics_host,
        log_context=log_context,
    )


def _replay(args: argparse.Namespace) -> int:
    from hitl_router.profile import drift_monitor
    from hitl_router.replay import read_lines, replay
    from hitl_router.router.config import load_config

    config = load_config(args.config)
    monitor = drift_monitor(config, args.profile) if args.drift_out or args.profile else None
    with ExitStack() as files:
        drift_out = files.enter_context(_open_out(args.drift_out)) if args.drift_out else None
        if args.output == "-":
            summary = replay(read_lines(args.input), config, sys.stdout.buffer, monitor, drift_out)
            sys.stdout.buffer.flush()
            print(_pretty(summary), file=sys.stderr)
        else:
            with _open_out(args.output) as out:
                summary = replay(read_lines(args.input), config, out, monitor, drift_out)
            print(_pretty(summary))
    if args.summary:
        Path(args.summary).write_text(_pretty(summary) + "\n", encoding="utf-8")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from hitl_router.calibrate import calibrate
    from hitl_router.replay import read_lines
    from hitl_router.router.config import load_config, parse_config

    config = load_config(args.config) if args.config else parse_config({})
    report = _pretty(calibrate(read_lines(args.input), config, args.input)) + "\n"
    if args.output == "-":
        sys.stdout.write(report)
    else:
        with _open_out(args.output) as out:
            out.write(report.encode())
    return 0


def _open_out(path: str) -> IO[bytes]:
    try:
        return Path(path).open("wb")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc


def _check_config(args: argparse.Namespace) -> int:
    from hitl_router.router.config import load_config

    config = load_config(args.config)
    print(yaml.safe_dump(config.describe(), sort_keys=False), end="")
    print(f"# config OK: {len(config.queues)} queue(s), hash {config.config_hash}")
    return 0


def _pretty(data: object) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
