"""``label_studio``: the Label Studio bridge's section of the config.

Where Label Studio is, where its API token is (an environment variable or a file, never
the token itself: a config can be printed, hashed and committed), which queues become
which projects, and how often annotations are polled. The token is read only when the
bridge starts (:meth:`LabelStudioConfig.token`); ``check-config`` works without it.

>>> ls = parse_label_studio({"url": "http://ls:8080", "projects": {"uncertain": "Digits"}})
>>> ls.title_of("uncertain"), ls.title_of("flagged"), ls.eval_project
('Digits', 'hitl-router review: flagged', 'hitl-router eval (blind)')
>>> parse_label_studio({"token": "abc"})
Traceback (most recent call last):
...
hitl_router.errors.ConfigError: label_studio.token: a token is never written in the \
config; name where it is with token_env (an environment variable) or token_file
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hitl_router.errors import ConfigError

KEY = "label_studio"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class LabelStudioConfig:
    """The bridge's settings; holds no secret (only where to read it)."""

    #: Label Studio's base URL
    url: str = "http://localhost:8080"
    #: the environment variable holding the API token (legacy token or personal access
    #: token; the SDK tells them apart)
    token_env: str | None = "LABEL_STUDIO_API_KEY"
    #: or a file holding it (one trailing newline is ignored); wins over token_env
    token_file: str | None = None
    #: the queues bridged (None: every configured queue)
    queues: tuple[str, ...] | None = None
    #: queue name → project title (default: ``title_prefix`` + queue name)
    projects: Mapping[str, str] = field(default_factory=dict)
    title_prefix: str = "hitl-router review: "
    #: bridge the eval sample too, into a project of its own
    eval: bool = True
    eval_project: str = "hitl-router eval (blind)"
    #: eval items without the model's prediction (anchoring would bias the one unbiased
    #: sample); false shows it, as for review items
    blind_eval: bool = True
    #: seconds between two polls of each project for new and updated annotations
    poll_interval_s: float = 5.0
    #: each poll asks again for tasks updated this long before the newest seen: the
    #: server's clock orders commits only roughly (annotations already sent are skipped)
    poll_overlap_s: float = 2.0
    #: tasks per import request
    import_batch: int = 200
    #: seconds of the first retry after Label Studio failed; doubled up to retry_max_s
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    #: seconds one HTTP request may take
    request_timeout_s: float = 30.0
    #: compacted topic where the bridge keeps each project's poll position
    state_topic: str = "hitl.labelstudio.state"
    #: the bridge's consumer group (its committed offsets on the review topics)
    group_id: str = "hitl-router-label-studio"
    #: the bridge's own /metrics
    metrics_port: int = 9111

    def title_of(self, queue: str) -> str:
        return self.projects.get(queue) or f"{self.title_prefix}{queue}"

    def token_source(self) -> str:
        """Where the token comes from, for messages (never the token)."""
        if self.token_file:
            return f"file {self.token_file}"
        return f"environment variable {self.token_env}"

    def token(self) -> str:
        """The API token, read now. Raises :class:`ConfigError` naming the key when it is
        missing, empty or unreadable; the message never contains the token."""
        if self.token_file:
            path = Path(self.token_file).expanduser()
            try:
                value = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    f"{KEY}.token_file", f"cannot read token file {path}: {reason}"
                ) from None
            value = value.strip()
            if not value:
                raise ConfigError(f"{KEY}.token_file", f"token file {path} is empty")
            return value
        if not self.token_env:
            raise ConfigError(f"{KEY}.token_env", "no token: set token_env or token_file")
        value = os.environ.get(self.token_env, "").strip()
        if not value:
            raise ConfigError(
                f"{KEY}.token_env", f"environment variable {self.token_env} is not set or empty"
            )
        return value

    def describe(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["projects"] = dict(self.projects)
        out["queues"] = list(self.queues) if self.queues is not None else None
        return out


def parse_label_studio(value: Any, key: str = KEY) -> LabelStudioConfig:
    """Validate the ``label_studio`` mapping."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    if "token" in value:
        raise ConfigError(
            f"{key}.token",
            "a token is never written in the config; name where it is with token_env "
            "(an environment variable) or token_file",
        )
    kinds = {f.name: f.type for f in fields(LabelStudioConfig)}
    unknown = sorted(set(value) - set(kinds))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown key; allowed: {', '.join(kinds)}")
    values: dict[str, Any] = {}
    for name, item in value.items():
        where = f"{key}.{name}"
        kind = str(kinds[name])
        if name == "projects":
            values[name] = _projects(item, where)
        elif name == "queues":
            values[name] = None if item is None else _names(item, where)
        elif kind == "bool":
            if not isinstance(item, bool):
                raise ConfigError(where, f"expected true or false, got {item!r}")
            values[name] = item
        elif kind == "float":
            if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                raise ConfigError(where, f"expected a positive number, got {item!r}")
            values[name] = float(item)
        elif kind == "int":
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                raise ConfigError(where, f"expected a positive integer, got {item!r}")
            values[name] = item
        elif item is None and "None" in kind:
            values[name] = None
        elif not isinstance(item, str) or not item:
            raise ConfigError(where, f"expected a non-empty string, got {item!r}")
        else:
            values[name] = item
    ls = LabelStudioConfig(**values)
    _check(ls, key)
    return ls


def _check(ls: LabelStudioConfig, key: str) -> None:
    url = urllib.parse.urlsplit(ls.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{key}.url", f"expected an http(s) URL, got {ls.url!r}")
    if ls.token_env is not None and not _ENV_NAME.match(ls.token_env):
        raise ConfigError(f"{key}.token_env", f"not an environment variable name: {ls.token_env!r}")
    if not _TOPIC.match(ls.state_topic):
        raise ConfigError(f"{key}.state_topic", f"'{ls.state_topic}' is not a legal topic name")
    if ls.retry_max_s < ls.retry_initial_s:
        raise ConfigError(f"{key}.retry_max_s", "must be at least retry_initial_s")
    if not 1 <= ls.metrics_port <= 65535:
        raise ConfigError(f"{key}.metrics_port", f"must be 1 to 65535, got {ls.metrics_port}")
    titles = [ls.title_of(q) for q in ls.projects] + ([ls.eval_project] if ls.eval else [])
    if len(set(titles)) < len(titles):
        raise ConfigError(f"{key}.projects", "two queues (or a queue and eval) share a title")


def _projects(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping of queue name to title, got {value!r}")
    for queue, title in value.items():
        if not isinstance(queue, str) or not isinstance(title, str) or not title.strip():
            raise ConfigError(f"{key}.{queue}", f"expected a non-empty title, got {title!r}")
    return dict(value)


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, f"expected a list of queue names, got {value!r}")
    return tuple(value)


def check_queues(ls: LabelStudioConfig, queues: list[str], key: str = KEY) -> None:
    """Every queue the section names must be a configured queue."""
    for name in [*(ls.queues or ()), *ls.projects]:
        if name not in queues:
            raise ConfigError(
                f"{key}.queues" if name in (ls.queues or ()) else f"{key}.projects.{name}",
                f"no queue named {name!r}; configured: {', '.join(queues) or 'none'}",
            )
