"""``hitl-router worker``: create the topics, check them, then run the Faust worker.

A worker that stops — on a signal, or because it crashed (e.g. outputs it could not
deliver) — exits within ``worker.shutdown_timeout_s``: past it, a watchdog thread ends
the process (exit 1), so a producer flushing to a broker that is gone cannot keep a
dead worker looking alive. A crash exits 1; a clean stop 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

import faust

from hitl_router.agents import access, allocator, json_logs, preflight, quiet_logs
from hitl_router.agents.app import AGENTS, build_app, default_agents, group_id
from hitl_router.agents.label_join import changelog_topics
from hitl_router.agents.routed_table import ROUTED_TABLE
from hitl_router.agents.routed_table import changelog_configs as routed_changelog_configs
from hitl_router.agents.topics import admin_client, ensure_topics
from hitl_router.errors import ConfigError
from hitl_router.router.config import Config, WorkerConfig

log = logging.getLogger(__name__)

#: cyclic GC thresholds of the worker (CPython's default: 700, 10, 10)
GC_THRESHOLDS = (50_000, 20, 100)


class _QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner, with rate-limited library logs and a
    bounded shutdown.

    The spinner sets the root logger to DEBUG (to spin on every record), so every
    library's debug call builds a log record — aiokafka logs one per message sent:
    measured at ~9% of the worker's time."""

    shutdown_timeout_s: float = 15.0
    #: with ``--log-format json``: what every line carries (worker, group, assignment)
    log_context: json_logs.LogContext | None = None
    _watchdog: threading.Thread | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        quiet_logs.install()
        if self.log_context is not None:  # mode replaced the root's handlers: JSON again
            json_logs.install(self.log_context)

    def _on_shutdown_immediately(self) -> None:
        """A stop signalled before Faust's startup finished: Faust prints an empty line
        here, to end its spinner. This worker has none, and with ``--log-format json``
        that line was the one among the JSON ones that is not JSON."""
        log.info("stopping: the stop came before the worker's startup finished")

    def _schedule_shutdown(self, signal: Any) -> None:
        self._arm_watchdog(f"signal {getattr(signal, 'name', signal)}")
        super()._schedule_shutdown(signal)

    def on_worker_shutdown(self) -> None:
        self._arm_watchdog("crash" if self.app.crashed else "stop")
        super().on_worker_shutdown()

    def _arm_watchdog(self, why: str) -> None:
        if self._watchdog is not None:
            return
        timeout = self.shutdown_timeout_s

        def expire() -> None:  # a forced exit is a failure, whatever started the stop
            log.critical(
                "the worker did not stop within %g s of its %s (worker.shutdown_timeout_s); "
                "exiting now: nothing unacked is lost, it is redone from the committed offsets",
                timeout,
                why,
            )
            logging.shutdown()
            sys.stderr.flush()
            os._exit(1)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        self._watchdog = timer


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """One log record per exception that ends a thread (Faust's consumer thread is
    cancelled while it stops): Python's default prints the traceback to stderr, which
    Faust's worker logs line by line as warnings."""
    name = args.thread.name if args.thread is not None else "?"
    if isinstance(args.exc_value, asyncio.CancelledError):
        log.info("thread %s cancelled while stopping", name)
        return
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    log.error("thread %s ended with %r", name, args.exc_value, exc_info=exc_info)  # type: ignore[arg-type]


def run_worker(
    config: Config,
    *,
    agents: Iterable[str] = ("all",),
    loglevel: str = "info",
    web_port: int | None = None,
    web_host: str | None = None,
    log_context: json_logs.LogContext | None = None,
) -> int:
    """Run until stopped (SIGINT/SIGTERM); returns the process exit code. With
    ``log_context`` (JSON logs), its group and assignment follow this worker's."""
    chosen = set(agents)
    if "all" in chosen:
        chosen = set(default_agents(config))
    unknown = chosen - set(AGENTS)
    if unknown or not chosen:
        raise ConfigError(
            "--agents", f"unknown agent(s) {sorted(unknown)}; known: {', '.join(AGENTS)} or all"
        )
    group = group_id(config, sorted(chosen))
    if log_context is not None:
        log_context.group = group
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python: admin only, chatty
    access.authenticate(config.kafka)  # with kafka.security: log in once, clear errors
    if config.kafka.create_topics:
        configs = config.topic_configs()
        if "labels" in chosen:
            configs.update(changelog_topics(config, group))
        if config.dedup is not None and "router" in chosen:  # created before Faust starts
            configs[f"{group}-{ROUTED_TABLE}-changelog"] = routed_changelog_configs(config)
        ensure_topics(
            config.kafka.bootstrap_servers,
            [config.topics.predictions, config.topics.labels, *config.output_topics(), *configs],
            config.kafka.partitions,
            config.kafka.replication_factor,
            security=config.kafka.security,
            configs=configs,
        )
    with admin_client(config.kafka.bootstrap_servers, config.kafka.security) as admin:
        preflight.check(config, admin)
    access.check_access(config, chosen)  # with kafka.security: the ACLs the agents need
    app = build_app(config, agents=sorted(chosen), web_port=web_port, web_host=web_host)
    if log_context is not None:
        json_logs.track_assignment(app, log_context)
    log.info(
        "hitl-router worker: agents=%s group=%s config_hash=%s",
        sorted(chosen),
        group_id(config, sorted(chosen)),
        config.config_hash,
    )
    return execute(app, config.worker, loglevel, log_context)


def execute(
    app: faust.App,
    worker_config: WorkerConfig,
    loglevel: str = "info",
    log_context: json_logs.LogContext | None = None,
) -> int:
    """Run ``app`` in a Faust worker until it stops; returns the process exit code (a
    crash is 1, however Faust ended)."""
    # Every batch allocates ~70 container objects per prediction that die with the batch;
    # with the default thresholds the cyclic GC runs every 700 allocations and keeps
    # re-walking the long-lived app. Freeze what exists now, collect young objects rarely.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    allocator.keep_freed_memory()  # and keep the memory batches free for the next ones
    threading.excepthook = _thread_excepthook
    worker = _QuietWorker(app, loglevel=loglevel)
    worker.shutdown_timeout_s = worker_config.shutdown_timeout_s
    worker.log_context = log_context
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    if app.crashed and code == 0:  # a crash is a failure, however Faust ended
        code = 1
    return code
