"""``hitl-router bridge label-studio -c CONFIG``: run the Label Studio bridge."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bridge", help="connect the review queues to a labelling tool")
    tools = p.add_subparsers(dest="tool", required=True, metavar="TOOL")
    ls = tools.add_parser(
        "label-studio",
        help="review items and eval samples become Label Studio tasks; annotations come "
        "back as labels on the labels topic",
    )
    ls.add_argument("-c", "--config", required=True, help="YAML config with a label_studio section")
    ls.add_argument(
        "--metrics-port", type=int, help="port of /metrics (default: label_studio.metrics_port)"
    )
    ls.add_argument("--loglevel", default="info")
    ls.set_defaults(handler=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from hitl_router.agents.bridge import bridged_topics, build_bridge, section
    from hitl_router.agents.topics import ensure_topics
    from hitl_router.agents.worker import execute
    from hitl_router.errors import LabelStudioError
    from hitl_router.labelstudio.client import Client
    from hitl_router.router.config import load_config

    config = load_config(args.config)
    ls = section(config)
    client = Client(
        ls.url, ls.token(), timeout_s=ls.request_timeout_s, token_source=ls.token_source()
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if config.kafka.create_topics:
        t = config.topics
        ensure_topics(
            config.kafka.bootstrap_servers,
            [*bridged_topics(config), t.labels, t.deadletter, ls.state_topic],
            config.kafka.partitions,
            config.kafka.replication_factor,
            security=config.kafka.security,
            configs={ls.state_topic: {"cleanup.policy": "compact"}},
        )
    try:
        user = client.whoami()
        log.info(
            "Label Studio at %s answers; the token (%s) is user %d", ls.url, ls.token_source(), user
        )
    except LabelStudioError as exc:  # not fatal: Label Studio may come back, tokens rotate
        log.error("%s; the bridge starts and retries with backoff", exc)
    app = build_bridge(config, client=client, web_port=args.metrics_port)
    log.info(
        "hitl-router bridge label-studio: topics %s, group %s",
        sorted(bridged_topics(config)),
        ls.group_id,
    )
    return execute(app, config.worker, args.loglevel)
