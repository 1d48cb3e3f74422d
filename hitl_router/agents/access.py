"""Before Faust starts, with ``kafka.security`` set: log in once, and check the ACLs the
worker needs (the sizes and partitions: :mod:`hitl_router.agents.preflight`).

Faust's clients retry a refused login or a denied topic without end (or die deep inside
a task); checked here first, each gives one clear :class:`KafkaAuthError` (exit 1):

- :func:`authenticate` opens one connection with aiokafka, the client the worker uses,
  and reports a failed SASL login or TLS handshake as it is;
- :func:`check_access` asks the broker (Metadata with the topics' authorized operations,
  KIP-430) whether the principal may READ the predictions topic and WRITE each topic
  its agents publish to, and whether it may use its consumer group.

Both run only when ``kafka.security`` is set (not PLAINTEXT). What they cannot see: a
topic that does not exist yet (its ACLs are checked when created), and an ACL removed
while the worker runs (the producer's error stops the worker then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from hitl_router.agents.app import BATCH_AGENTS, group_id
from hitl_router.agents.connection import describe, kafka_python_kwargs, ssl_context
from hitl_router.agents.label_join import JOIN_TABLE
from hitl_router.agents.label_windows import WINDOW_TABLE
from hitl_router.agents.routed_table import ROUTED_TABLE
from hitl_router.errors import ConfigError, KafkaAuthError, KafkaSetupError
from hitl_router.router.config import Config, KafkaConfig

log = logging.getLogger(__name__)

TOPIC_AUTHORIZATION_FAILED = 29
UNKNOWN_TOPIC_OR_PARTITION = 3


def authenticate(kafka: KafkaConfig, timeout_s: float = 15.0) -> None:
    """Connect and log in to the first bootstrap server that answers (PLAINTEXT: no-op)."""
    sec = kafka.security
    if sec.protocol == "PLAINTEXT":
        return
    failures = []
    for server in [s.strip() for s in kafka.bootstrap_servers.split(",") if s.strip()]:
        host, _, port = server.rpartition(":")
        loop = asyncio.new_event_loop()  # private: Faust's loop is not touched
        try:
            loop.run_until_complete(asyncio.wait_for(_login(kafka, host, int(port)), timeout_s))
            return
        except ConfigError:
            raise  # a missing password or CA file: exit 2, naming the key
        except Exception as exc:
            failures.append(_login_failure(kafka, server, exc))
        finally:
            loop.close()
    auth = [f for f in failures if isinstance(f, KafkaAuthError)]
    if auth:
        raise auth[0]
    raise KafkaSetupError(
        f"no Kafka broker reachable at {kafka.bootstrap_servers} ({describe(sec)}): "
        + "; ".join(str(f) for f in failures)
    )


async def _login(kafka: KafkaConfig, host: str, port: int) -> None:
    from aiokafka.conn import create_conn

    sec = kafka.security
    sasl = {}
    if sec.sasl:
        sasl = {
            "sasl_mechanism": sec.sasl_mechanism,
            "sasl_plain_username": sec.username,
            "sasl_plain_password": sec.password(),
        }
    conn = await create_conn(
        host,
        port,
        client_id="hitl-router-preflight",
        ssl_context=ssl_context(sec),
        security_protocol=sec.protocol,
        **sasl,
    )
    conn.close()


def _login_failure(kafka: KafkaConfig, server: str, exc: Exception) -> Exception:
    from aiokafka.errors import AuthenticationFailedError, SaslAuthenticationFailed

    sec = kafka.security
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError):
        detail = str(exc).split(": ", 1)[-1]
        return KafkaAuthError(
            f"Kafka authentication failed for user '{sec.username}' (SASL {sec.sasl_mechanism})"
            f" at {server}: {detail}"
        )
    import ssl

    if isinstance(exc, ssl.SSLError):
        return KafkaAuthError(
            f"TLS handshake with {server} failed: {exc.reason or exc} "
            "(kafka.security.ca_file must hold the CA that signed the broker's certificate; "
            "check_hostname needs the broker's name in it)"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return KafkaSetupError(f"{server}: no answer (is it a {sec.protocol} listener?)")
    return KafkaSetupError(f"{server}: {exc}")


def written_topics(config: Config, agents: Iterable[str]) -> list[str]:
    """The topics ``agents`` publish to."""
    out: list[str] = []
    t = config.topics
    if "router" in agents:
        out += [t.deadletter, *config.review_topics(), t.decisions]
        out += [t.accepted] if t.accepted else []
    if "sampler" in agents:
        out += [t.eval, t.decisions]
    if "drift" in agents:
        out.append(t.drift_reports)
    if "labels" in agents:
        # labels not keyed by id are re-sent to the labels topic, keyed by id
        out += [t.labels_deadletter, t.qa, t.joined, t.calibration, t.labels]
    return list(dict.fromkeys(out))


def read_topics(config: Config, agents: Iterable[str]) -> list[str]:
    """The topics ``agents`` read."""
    t = config.topics
    out = [t.predictions] if any(a in BATCH_AGENTS for a in agents) else []
    if "router" in agents or "labels" in agents:
        out.append(t.calibration)  # both follow the temperatures
    if "labels" in agents:
        out += [t.decisions, t.labels, t.joined]
    return list(dict.fromkeys(out))


def check_access(config: Config, agents: Iterable[str], timeout_s: float = 15.0) -> None:
    """Raise :class:`KafkaAuthError` listing every operation the principal is denied:
    READ on what ``agents`` read, WRITE on what they publish, READ on their consumer
    group, and what Faust's own topics need (PLAINTEXT: no-op)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    sec = config.kafka.security
    if sec.protocol == "PLAINTEXT":
        return
    agents = sorted(agents)
    group = group_id(config, agents)
    needs: dict[str, tuple[str, ...]] = {t: ("READ",) for t in read_topics(config, agents)}
    for t in written_topics(config, agents):
        needs[t] = ("READ", "WRITE") if t in needs else ("WRITE",)
    # Faust creates (every start, also when it exists) and reads its leader topic, and
    # the labels agents' table changelogs, which it also writes
    needs[f"{group}-__assignor-__leader"] = ("CREATE", "READ")
    if "labels" in agents:
        for table in (JOIN_TABLE, WINDOW_TABLE):
            needs[f"{group}-{table}-changelog"] = ("CREATE", "READ", "WRITE")
    if config.dedup is not None and "router" in agents:
        needs[f"{group}-{ROUTED_TABLE}-changelog"] = ("CREATE", "READ", "WRITE")
    ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=config.kafka.bootstrap_servers.split(","),
            client_id="hitl-router-preflight",
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
            **kafka_python_kwargs(sec),
        )
    except KafkaError as exc:
        raise KafkaSetupError(f"cannot connect to {config.kafka.bootstrap_servers}: {exc}") from exc
    try:
        denied = _denied_topics(admin, needs) + _denied_group(admin, group, timeout_s)
    except KafkaError as exc:
        where = config.kafka.bootstrap_servers
        raise KafkaSetupError(f"cannot check access at {where}: {exc}") from exc
    finally:
        admin.close()
    if denied:
        who = f"user '{sec.username}'" if sec.sasl else "this client"
        raise KafkaAuthError(
            f"Kafka at {config.kafka.bootstrap_servers} denies {who} ({describe(sec)}): "
            + "; ".join(denied)
        )
    log.info("Kafka access checked (%s): %d topics, group %s", describe(sec), len(needs), group)


def _denied_topics(admin: object, needs: dict[str, tuple[str, ...]]) -> list[str]:
    out = []
    for topic in admin.describe_topics(list(needs)):  # type: ignore[attr-defined]
        name = topic["name"]
        ops = needs.get(name)
        if ops is None:
            continue
        if topic["error_code"] == TOPIC_AUTHORIZATION_FAILED:
            out.append(f"not authorized to {' and '.join(ops)} topic '{name}' (nor to DESCRIBE it)")
        elif topic["error_code"] == UNKNOWN_TOPIC_OR_PARTITION:
            if "CREATE" not in ops:  # one the worker creates is checked when it does
                out.append(f"topic '{name}' does not exist (kafka.create_topics is false)")
        elif topic.get("authorized_operations") is not None:
            missing = [op for op in ops if op not in topic["authorized_operations"]]
            if missing:
                out.append(f"not authorized to {' and '.join(missing)} topic '{name}'")
    return out


def _denied_group(admin: object, group: str, timeout_s: float) -> list[str]:
    """FindCoordinator needs DESCRIBE on the group, which READ implies; a new group's
    other operations cannot be asked for (the broker describes only existing groups)."""
    from kafka.errors import GroupAuthorizationFailedError, KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = admin.describe_groups(  # type: ignore[attr-defined]
                [group], include_authorized_operations=True
            ).get(group, {})
            ops = found.get("authorized_operations")
            return (
                [] if ops is None or "READ" in ops else [f"not authorized to READ group '{group}'"]
            )
        except GroupAuthorizationFailedError:
            return [f"not authorized to READ group '{group}' (the consumer group)"]
        except KafkaError as exc:  # e.g. the offsets topic is still being created
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
