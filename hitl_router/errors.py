"""The one error root of hitl-router and its few subclasses.

Each subclass also inherits the builtin a caller would expect, so
``except ValueError`` keeps working for config mistakes.
"""

from __future__ import annotations


class RouterError(Exception):
    """Root of every error hitl-router raises on purpose."""


class ConfigError(RouterError, ValueError):
    """A configuration value is missing, unknown or ill-typed.

    ``key`` is the dotted path of the offending key (``queues[1].when``).
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class KafkaSetupError(RouterError, RuntimeError):
    """The local Kafka broker cannot be fetched, started or reached."""


class PrometheusError(RouterError, RuntimeError):
    """The local Prometheus or promtool cannot be fetched, started, reached, or failed."""


class PrometheusQueryError(PrometheusError):
    """Prometheus answered ``"status": "error"``; ``error_type`` is e.g. ``bad_data``."""

    def __init__(self, path: str, error_type: str, error: str) -> None:
        self.error_type = error_type
        self.error = error
        super().__init__(f"Prometheus {path}: {error_type}: {error}")


class InputError(RouterError, ValueError):
    """A command-line input (file, option) cannot be used."""


class DeliveryError(RouterError, RuntimeError):
    """Outputs were refused by the broker or not acknowledged in time: the worker stops
    with nothing of their batch acked."""


class KafkaAuthError(RouterError, RuntimeError):
    """Kafka refused the worker: authentication failed, or an ACL denies an operation it
    needs (the message names the user, or the resource and the operation)."""


class LabelStudioError(RouterError, RuntimeError):
    """Label Studio cannot be installed, started or reached, or it refused a request.

    ``kind`` is what went wrong, as the bridge's ``hitl_bridge_errors_total{kind}``
    counts it: ``unreachable`` (no answer), ``unauthorized`` (the token was refused),
    ``refused`` (another 4xx/5xx answer) or ``setup`` (the local server)."""

    def __init__(self, message: str, kind: str = "setup") -> None:
        self.kind = kind
        super().__init__(message)
