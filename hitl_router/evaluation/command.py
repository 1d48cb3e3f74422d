"""``hitl-router evaluate-loop``: the options, the seeds run in parallel, the outputs.

Writes to ``--out`` (default ``evaluate-loop/``): ``summary.json`` (settings, curves,
savings, costs, verdicts, per-seed warning signs), ``curves.csv`` (every checkpoint of
every strategy and seed) and ``learning-curves.png``; prints a table and the verdict.
The outputs are the same bytes for the same options.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import yaml

from hitl_router.errors import InputError
from hitl_router.evaluation.loop import Settings, run_seed
from hitl_router.evaluation.strategies import CONFIG, NAMES
from hitl_router.evaluation.tasks import TASKS, stream_size
from hitl_router.router.config import Config, load_config, parse_config


def add_parser(sub: Any) -> argparse.ArgumentParser:
    d = Settings()
    p = sub.add_parser(
        "evaluate-loop",
        help="does routing pay? the config's routing against random labelling, closed loop",
    )
    p.add_argument("-c", "--config", help="YAML config under test (default: the demo's)")
    p.add_argument(
        "--task", choices=TASKS, default=d.task, help="data and model (default: %(default)s)"
    )
    p.add_argument(
        "--budget",
        type=int,
        default=d.budget,
        help="labels each strategy buys (default: %(default)s)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=d.rounds,
        metavar="R",
        help="refit the model every R labels (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=d.seeds,
        help="seeds 0..S-1, each its own split, seed set and stream (default: %(default)s)",
    )
    p.add_argument(
        "--seed-size",
        type=int,
        default=d.seed_size,
        help="random labels the first model is fitted on (default: %(default)s)",
    )
    p.add_argument("--drift-at", type=int, help="stream position from which inputs drift")
    p.add_argument(
        "--label-error",
        type=float,
        default=d.label_error,
        help="annotators' error rate on an average item, more on hard ones (default: %(default)s)",
    )
    p.add_argument(
        "--label-cost", type=float, default=1.0, help="cost of one label (default: %(default)s)"
    )
    p.add_argument(
        "--queue-cost",
        action="append",
        default=[],
        metavar="QUEUE=COST",
        help="cost of one label from a config queue (repeatable)",
    )
    p.add_argument(
        "--retrain-cost", type=float, default=0.0, help="cost of one refit (default: %(default)s)"
    )
    p.add_argument(
        "--window",
        type=int,
        default=d.window,
        help="the single scores' target-rate window (default: %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="predictions per second of ts, for per-minute budgets (default: %(default)s)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="seeds run in parallel (default: %(default)s)",
    )
    p.add_argument("--out", default="evaluate-loop", help="output directory (default: %(default)s)")
    p.set_defaults(handler=run)
    return p


def settings_of(args: argparse.Namespace) -> Settings:
    checks = [
        ("--budget", args.budget >= 1, "must be at least 1"),
        ("--rounds", 1 <= args.rounds <= args.budget, "must be between 1 and --budget"),
        ("--seeds", args.seeds >= 1, "must be at least 1"),
        ("--seed-size", args.seed_size >= 2, "must be at least 2"),
        ("--drift-at", args.drift_at is None or args.drift_at >= 0, "must be 0 or more"),
        ("--label-error", 0.0 <= args.label_error < 1.0, "must be in [0, 1)"),
        ("--label-cost", args.label_cost >= 0, "must be 0 or more"),
        ("--retrain-cost", args.retrain_cost >= 0, "must be 0 or more"),
        ("--window", args.window >= 1, "must be at least 1"),
        ("--rate", args.rate > 0, "must be positive"),
        ("--jobs", args.jobs >= 1, "must be at least 1"),
    ]
    for option, ok, problem in checks:
        if not ok:
            raise InputError(f"{option}: {problem}")
    stream = stream_size(args.task, args.seed_size)
    if stream < 1:
        raise InputError(f"--seed-size {args.seed_size}: the {args.task} pool is smaller")
    if args.budget >= stream:
        raise InputError(
            f"--budget {args.budget}: the {args.task} stream holds {stream} predictions; "
            "a budget that buys all of them leaves nothing to choose"
        )
    if args.drift_at is not None and args.drift_at >= stream:
        raise InputError(f"--drift-at {args.drift_at}: the stream holds {stream} predictions")
    return Settings(
        task=args.task,
        budget=args.budget,
        rounds=args.rounds,
        seeds=args.seeds,
        seed_size=args.seed_size,
        drift_at=args.drift_at,
        label_error=args.label_error,
        window=args.window,
        rate=args.rate,
    )


def queue_costs(values: list[str], config: Config) -> dict[str, float]:
    names = {q.name for q in config.queues}
    out: dict[str, float] = {}
    for value in values:
        queue, sep, cost = value.partition("=")
        if not sep:
            raise InputError(f"--queue-cost {value!r}: expected QUEUE=COST")
        if queue not in names:
            raise InputError(f"--queue-cost {value!r}: no queue {queue!r} in the config")
        try:
            out[queue] = float(cost)
        except ValueError:
            raise InputError(f"--queue-cost {value!r}: {cost!r} is not a number") from None
        if out[queue] < 0:
            raise InputError(f"--queue-cost {value!r}: must be 0 or more")
    return out


def _config(path: str | None) -> Config:
    if path:
        return load_config(path)
    from hitl_router.demo import default_config_text

    return parse_config(yaml.safe_load(default_config_text()))


def _seed(path: str | None, settings: Settings, seed: int) -> dict[str, Any]:
    return run_seed(_config(path), settings, seed)


def evaluate(path: str | None, settings: Settings, jobs: int = 1) -> list[dict[str, Any]]:
    """Every seed's results, in seed order (in ``jobs`` processes)."""
    seeds = range(settings.seeds)
    if jobs <= 1 or settings.seeds == 1:
        return [_seed(path, settings, s) for s in seeds]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, settings.seeds), mp_context=ctx) as pool:
        return list(pool.map(_seed, [path] * settings.seeds, [settings] * settings.seeds, seeds))


def run(args: argparse.Namespace) -> int:
    from hitl_router.evaluation.curves import seed_warnings, summarize
    from hitl_router.evaluation.plot import plot

    settings = settings_of(args)
    config = _config(args.config)
    costs = queue_costs(args.queue_cost, config)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: {exc.strerror}") from exc
    started = time.monotonic()
    seeds = evaluate(args.config, settings, args.jobs)
    summary = summarize(
        seeds, settings.grid(), settings.seed_size, costs, args.label_cost, args.retrain_cost
    )
    summary = {
        "settings": {
            **settings.__dict__,
            "label_cost": args.label_cost,
            "queue_costs": costs,
            "retrain_cost": args.retrain_cost,
            "config": args.config or "(demo config)",
            "stream": seeds[0]["stream"],
        },
        **summary,
        "verdict": _headline(summary),
        "seeds": [
            {
                "seed": r["seed"],
                "spent": {n: s["spent"] for n, s in r["strategies"].items()},
                "warnings": seed_warnings(r),
            }
            for r in seeds
        ],
    }
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    _write_csv(out / "curves.csv", seeds, settings.seed_size)
    title = (
        f"{settings.task}: {settings.seeds} seeds, seed set {settings.seed_size}, "
        f"refit every {settings.rounds} labels"
        + (f", drift at {settings.drift_at}" if settings.drift_at is not None else "")
        + f" — {summary['verdict']}"
    )
    plot(summary, title, out / "learning-curves.png")
    _print(summary, out, time.monotonic() - started)
    return 0


def _headline(summary: dict[str, Any]) -> str:
    mine = summary["strategies"][CONFIG]
    if mine["verdict"] == "pays":
        return f"routing pays here: it {mine['why']}"
    return f"routing does not pay here: {mine['why']}"


def _write_csv(path: Path, seeds: list[dict[str, Any]], seed_size: int) -> None:
    from hitl_router.evaluation.curves import recall_spread

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            [
                "strategy",
                "seed",
                "labels",
                "total_labels",
                "stream_pos",
                "accuracy",
                "ece",
                "recall_spread",
                "wrong_labels",
            ]
        )
        for r in seeds:
            for name in NAMES:
                for c in r["strategies"][name]["checkpoints"]:
                    w.writerow(
                        [
                            name,
                            r["seed"],
                            c["labels"],
                            seed_size + c["labels"],
                            c["stream_pos"],
                            c["accuracy"],
                            c["ece"],
                            round(recall_spread(c["recall"]), 4),
                            c["wrong_labels"],
                        ]
                    )


def _print(summary: dict[str, Any], out: Path, elapsed: float) -> None:
    w = sys.stdout.write
    total = summary["total_labels"][-1]
    w(
        f"{'strategy':12s} {'final acc':>14s} {'labels to reach':>16s} {'saving':>7s} "
        f"{'vs random (pts)':>22s} {'cost/point':>10s}  verdict\n"
    )
    w(f"{'':12s} {'':>14s} {'random final':>16s}\n")
    for name, s in summary["strategies"].items():
        final = "-" if s["final"] is None else f"{s['final']:.4f}"
        sd = s["sd"][-1]
        final += "" if sd is None or s["final"] is None else f" ±{sd:.4f}"
        reach = s["labels_to_reach_random_final"]
        if not summary["labels_help"]["verdict"]:
            reach_s = "n/a"
        else:
            reach_s = "not reached" if reach is None else f"{reach:.0f} of {total}"
        saving = "-" if s["saving"] is None else f"{s['saving']:.0%}"
        vs = s.get("vs_random_points")
        vs_s = (
            ""
            if vs is None or vs["mean"] is None
            else (f"{vs['mean']:+.2f} [{_f(vs['low'])}, {_f(vs['high'])}]")
        )
        cost = s["cost"]["per_point"]
        w(
            f"{name:12s} {final:>14s} {reach_s:>16s} {saving:>7s} {vs_s:>22s} "
            f"{'-' if cost is None else f'{cost:.2f}':>10s}  {s.get('verdict', 'baseline')}\n"
        )
    fired = summary["warnings"]["fired"]
    n = summary["warnings"]["seeds"]
    for name, signs in fired.items():
        if signs:
            w(
                f"warning signs, {name}: "
                + ", ".join(f"{k} on {v} of {n} seeds" for k, v in signs.items())
                + "\n"
            )
    w(f"\n{summary['verdict']}\n")
    w(f"wrote {out}/summary.json, {out}/curves.csv, {out}/learning-curves.png in {elapsed:.0f} s\n")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"
