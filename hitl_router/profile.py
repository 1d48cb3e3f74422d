"""``hitl-router profile``: the reference profile of an unlabelled pool, for drift detection.

Reads a JSONL pool (one prediction per line, validated like the router validates them:
invalid lines are counted, skipped and reported on stderr), builds the profile with
:func:`hitl_router.router.drift_profile.build_profile` and writes it as JSON. Also the glue
``replay`` and the drift agent use to make a monitor from a config: :func:`drift_monitor`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from hitl_router.errors import InputError
from hitl_router.router.config import Config, LimitsConfig
from hitl_router.router.drift import DriftMonitor
from hitl_router.router.drift_pool import build_profile
from hitl_router.router.drift_profile import DriftProfile, load_profile, save_profile
from hitl_router.router.validation import parse_batch

BATCH = 1000


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "profile", help="reference profile of an unlabelled pool, for the drift agent"
    )
    p.add_argument("pool", help="JSONL file of predictions, one per line (- = stdin)")
    p.add_argument("-o", "--output", required=True, help="profile JSON file to write")
    p.add_argument(
        "--window",
        type=int,
        default=1000,
        help="predictions per drift window, as drift.window will be (default 1000)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.01, help="false-alarm rate per window (default 0.01)"
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="null windows drawn per model to calibrate thresholds (default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.set_defaults(handler=run_profile)
    return p


class PoolReader:
    """The valid predictions of JSONL ``lines`` (blank lines ignored), counting the others
    by error code in ``invalid``."""

    def __init__(self, lines: Iterable[bytes], limits: LimitsConfig | None = None) -> None:
        self.lines = lines
        self.limits = limits or LimitsConfig()
        self.valid = 0
        self.invalid: Counter[str] = Counter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        chunk: list[bytes] = []
        for line in self.lines:
            if line.strip():
                chunk.append(line)
            if len(chunk) >= BATCH:
                yield from self._parse(chunk)
                chunk = []
        yield from self._parse(chunk)

    def _parse(self, chunk: list[bytes]) -> Iterator[dict[str, Any]]:
        parsed = parse_batch(chunk, self.limits)
        self.invalid.update(e.code for e in parsed.errors.values())
        for doc in parsed.docs:
            if doc is not None:
                self.valid += 1
                yield doc


def run_profile(args: argparse.Namespace) -> int:
    from hitl_router.replay import read_lines

    if args.window < 10:
        raise InputError(f"--window must be ≥ 10, got {args.window}")
    if not 0.0 < args.alpha < 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha:g}")
    if args.bootstrap * args.alpha < 1.0:
        raise InputError(
            f"--bootstrap must be ≥ 1/alpha = {1 / args.alpha:g} to calibrate "
            f"a false-alarm rate of {args.alpha:g}, got {args.bootstrap}"
        )
    if args.seed < 0:
        raise InputError(f"--seed must be ≥ 0, got {args.seed}")
    pool = PoolReader(read_lines(args.pool))
    profile = build_profile(
        pool, window=args.window, alpha=args.alpha, bootstrap=args.bootstrap, seed=args.seed
    )
    if pool.invalid:
        print(
            f"hitl-router profile: skipped {sum(pool.invalid.values())} invalid line(s) "
            f"of {args.pool}: {dict(sorted(pool.invalid.items()))}",
            file=sys.stderr,
        )
    if pool.valid == 0:
        raise InputError(f"{args.pool} holds no valid prediction")
    if not profile.models:
        reasons = "; ".join(f"{m}: {r}" for m, r in profile.skipped_models.items())
        raise InputError(f"no model of {args.pool} can be profiled ({reasons})")
    for model, reason in profile.skipped_models.items():
        print(f"hitl-router profile: model {model} not profiled: {reason}", file=sys.stderr)
    save_profile(profile, args.output)
    summary = describe(profile)
    summary.update(pool=args.pool, output=args.output, predictions=pool.valid)
    summary["invalid_lines"] = dict(pool.invalid)
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


def describe(profile: DriftProfile) -> dict[str, Any]:
    """What ``profile`` prints: per model, its features' kinds, skips and thresholds."""
    models = {}
    for name, mp in profile.models.items():
        thresholds: dict[str, dict[str, float]] = {}
        for (f, m), t in mp.thresholds.items():
            thresholds.setdefault(f, {})[m] = round(t, 6)
        models[name] = {
            "n": mp.n,
            "features": {f: ref.kind for f, ref in mp.features.items()},
            "skipped": dict(mp.skipped),
            "thresholds": thresholds,
        }
    return {
        "window": profile.window,
        "alpha": profile.alpha,
        "bootstrap": profile.bootstrap,
        "seed": profile.seed,
        "models": models,
        "skipped_models": dict(profile.skipped_models),
    }


def drift_monitor(config: Config, profile_path: str | None = None) -> DriftMonitor:
    """The monitor ``config``'s ``drift`` section asks for, on the profile at
    ``profile_path`` (else ``drift.profile``; relative paths from the current directory)."""
    path = profile_path or config.drift.profile
    if not path:
        raise InputError(
            "drift needs a reference profile: pass --profile PROFILE.json or set drift.profile "
            "in the config (make one with `hitl-router profile POOL.jsonl -o PROFILE.json`)"
        )
    return DriftMonitor(
        load_profile(path),
        window=config.drift.window,
        overrides=config.drift.thresholds,
        alpha=config.drift.alpha,
        persistence=config.drift.persistence,
    )
