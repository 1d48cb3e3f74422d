"""``hitl-router worker``: create the topics, then run the Faust worker."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hitl_router.agents.app import AGENTS, build_app, group_id
from hitl_router.agents.topics import ensure_topics
from hitl_router.errors import ConfigError
from hitl_router.router.config import Config

log = logging.getLogger(__name__)


def run_worker(
    config: Config,
    *,
    agents: Iterable[str] = ("all",),
    loglevel: str = "info",
    web_port: int | None = None,
) -> int:
    """Run until stopped (SIGINT/SIGTERM); returns the process exit code."""
    import faust

    chosen = set(agents)
    if "all" in chosen:
        chosen = set(AGENTS)
    unknown = chosen - set(AGENTS)
    if unknown or not chosen:
        raise ConfigError(
            "--agents", f"unknown agent(s) {sorted(unknown)}; known: {', '.join(AGENTS)} or all"
        )
    if config.kafka.create_topics:
        ensure_topics(
            config.kafka.bootstrap_servers,
            [config.topics.predictions, config.topics.labels, *config.output_topics()],
            config.kafka.partitions,
            config.kafka.replication_factor,
        )
    app = build_app(config, agents=sorted(chosen), web_port=web_port)
    log.info(
        "hitl-router worker: agents=%s group=%s config_hash=%s",
        sorted(chosen),
        group_id(config, sorted(chosen)),
        config.config_hash,
    )
    worker = faust.Worker(app, loglevel=loglevel)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
