"""``hitl-router`` command line. Exit codes: 0 success, 2 usage/config, 1 runtime failure."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hitl_router import __version__
from hitl_router.errors import ConfigError, InputError, RouterError


def _build_parser() -> argparse.ArgumentParser:
    from hitl_router import commands

    parser = argparse.ArgumentParser(
        prog="hitl-router",
        description="Event-driven human-in-the-loop router for ML predictions on Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"hitl-router {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, InputError) as exc:
        _report(args, exc)
        return 2
    except RouterError as exc:
        _report(args, exc)
        return 1
    except KeyboardInterrupt:
        return 130


def _report(args: argparse.Namespace, exc: Exception) -> None:
    message = f"hitl-router {args.command}: {exc}"
    if getattr(args, "log_format", "text") == "json":  # a JSON line like every other
        logging.getLogger("hitl_router.cli").error(message)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
