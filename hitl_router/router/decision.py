"""The one decision path: raw messages in, a fate per message out.

Both the live agents and ``replay`` call :func:`decide_batch`. Order of work
per batch: validate → draw the eval sample (before any rule) → calibrate →
score → evaluate rules (first matching queue wins) on what is left.

>>> from hitl_router.router.config import parse_config
>>> policy = Policy(parse_config({"eval_sample": {"rate": 0.0},
...     "queues": [{"name": "uncertain", "when": {"max_prob_below": 0.7}}]}))
>>> d = decide_batch([b'{"id":"a","model":"m","probs":[0.6,0.4]}',
...                   b'{"id":"b","model":"m","probs":[0.9,0.1]}', b'{}'], policy)
>>> [d.fate_name(i) for i in range(3)], d.queue_name(0)
(['review', 'pass', 'deadletter'], 'uncertain')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from hitl_router.router.config import Config, QueueConfig
from hitl_router.router.eval_sampler import EvalSampler
from hitl_router.router.rules import BatchContext, Leaf, evaluate, fired_leaves
from hitl_router.router.temperatures import TemperatureBook
from hitl_router.router.uncertainty import (
    SCORE_NAMES,
    apply_temperature,
    ensemble_scores,
    scores,
)
from hitl_router.router.validation import ErrorInfo, ParsedBatch, parse_batch

DEADLETTER, EVAL, REVIEW, PASS = 0, 1, 2, 3
FATES = ("deadletter", "eval", "review", "pass")


class Policy:
    """A config made ready to decide: the sampler, the compiled rules and the temperatures
    in use (the config's, updated live by accepted fits)."""

    def __init__(self, config: Config, temperatures: TemperatureBook | None = None) -> None:
        self.config = config
        self.sampler = EvalSampler(config.eval_sample.rate, config.eval_sample.salt)
        self.queues: tuple[QueueConfig, ...] = config.queues
        self.temperatures = temperatures or TemperatureBook(config.calibration)


@dataclass
class BatchDecisions:
    """Columnar result of one batch; row ``i`` is input message ``i``."""

    policy: Policy
    docs: list[dict[str, Any] | None]
    errors: dict[int, ErrorInfo]
    fate: np.ndarray  # int8 codes, see FATES
    queue: np.ndarray  # int16: index into policy.queues, -1 if none
    scores: dict[str, np.ndarray]  # float64 (n,), NaN where absent
    temperature: np.ndarray  # float64 (n,)
    matched: np.ndarray  # bool (Q, n): which queues' rules hold
    memo: dict[int, np.ndarray]  # node values, for tracing reasons
    raws: Sequence[bytes | None]  # the messages as received
    _fired: dict[tuple[int, int], list[Leaf]] = field(default_factory=dict, init=False)

    @property
    def n(self) -> int:
        return len(self.docs)

    def fate_name(self, i: int) -> str:
        return FATES[self.fate[i]]

    def queue_name(self, i: int) -> str | None:
        q = int(self.queue[i])
        return self.policy.queues[q].name if q >= 0 else None

    def rows(self, fate: int) -> list[int]:
        """The rows with this fate (Python ints: they index lists)."""
        return np.flatnonzero(self.fate == fate).tolist()  # type: ignore[no-any-return]

    @cached_property
    def score_rows(self) -> tuple[list[str], list[list[float]], list[bool]]:
        """Score names, each row's scores as Python floats, and whether a row has them
        all (no NaN): converted once per batch."""
        names = list(self.scores)
        if not names:
            return names, [[] for _ in range(self.n)], [True] * self.n
        table = np.column_stack([self.scores[k] for k in names])
        return names, table.tolist(), (~np.isnan(table)).all(axis=1).tolist()

    @cached_property
    def temperatures(self) -> list[float]:
        """Each row's temperature, as Python floats."""
        return self.temperature.tolist()  # type: ignore[no-any-return]

    def temperature_of(self, i: int) -> float:
        """Row ``i``'s temperature, as a Python float."""
        return self.temperatures[i]

    def score_dict(self, i: int) -> dict[str, float]:
        """The scores a prediction has (ensemble scores only with an ensemble)."""
        names, rows, complete = self.score_rows
        if complete[i]:
            return dict(zip(names, rows[i], strict=True))
        return {k: v for k, v in zip(names, rows[i], strict=True) if v == v}  # not NaN

    def fired(self, q: int, i: int) -> list[Leaf]:
        """The leaves that made queue ``q``'s rule hold at row ``i`` (which it must);
        traced once, shared by the reasons of outputs and the rule metrics."""
        leaves = self._fired.get((q, i))
        if leaves is None:
            leaves = self._fired[q, i] = fired_leaves(self.policy.queues[q].when, i, self.memo)
        return leaves

    def reasons(self, i: int) -> list[dict[str, Any]]:
        """Every rule result that fired for row ``i``, over all matching queues."""
        out: list[dict[str, Any]] = []
        for q, queue in enumerate(self.policy.queues):
            if not self.matched[q, i]:
                continue
            for leaf in self.fired(q, i):
                out.append(
                    {
                        "queue": queue.name,
                        "rule": leaf.rule,
                        "metric": leaf.metric,
                        "value": self._leaf_value(leaf.metric, leaf.threshold, i),
                        "op": leaf.op,
                        "threshold": (
                            list(leaf.threshold)
                            if isinstance(leaf.threshold, tuple)
                            else leaf.threshold
                        ),
                    }
                )
        return out

    def _leaf_value(self, metric: str, threshold: Any, i: int) -> Any:
        doc = self.docs[i]
        assert doc is not None
        if metric == "flags":
            return [f for f in doc.get("flags") or () if f in threshold]
        if metric == "model":
            return doc["model"]
        v = float(self.scores[metric][i])
        return None if np.isnan(v) else v


def decide_batch(raws: Sequence[bytes], policy: Policy, *, rules: bool = True) -> BatchDecisions:
    """Decide the fate of every message in ``raws``.

    With ``rules=False`` only validation and the eval draw are done (what the
    sampler agent needs); rows not drawn are then marked ``PASS``.
    """
    return decide_parsed(parse_batch(raws, policy.config.limits), policy, rules=rules)


def decide_parsed(parsed: ParsedBatch, policy: Policy, *, rules: bool = True) -> BatchDecisions:
    """:func:`decide_batch` for a batch already validated by ``parse_batch`` (so agents
    sharing a batch parse it once)."""
    n = parsed.n
    fate = np.full(n, DEADLETTER, dtype=np.int8)
    queue = np.full(n, -1, dtype=np.int16)
    all_scores = {name: np.full(n, np.nan) for name in SCORE_NAMES}
    temperature = np.ones(n)
    valid = np.array([d is not None for d in parsed.docs], dtype=bool)
    ids = [d["id"] if d is not None else "" for d in parsed.docs]
    sampled = np.zeros(n, dtype=bool)
    if valid.any():
        sampled[valid] = policy.sampler.draw([ids[i] for i in np.flatnonzero(valid)])
    fate[valid] = PASS
    fate[sampled] = EVAL
    q_count = len(policy.queues)
    matched = np.zeros((q_count, n), dtype=bool)
    memo: dict[int, np.ndarray] = {}
    if rules:
        models = [d["model"] if d is not None else "" for d in parsed.docs]
        temperature_of = _TemperatureLookup(policy.temperatures)
        for group in parsed.groups:
            t = temperature_of(models, group.rows)
            temperature[group.rows] = t
            calibrated = _calibrate(group.probs, t)
            for name, values in scores(calibrated).items():
                all_scores[name][group.rows] = values
            if group.members is not None:
                members = _calibrate(group.members, t)
                for name, values in ensemble_scores(members).items():
                    all_scores[name][group.rows] = values
        if q_count:
            ctx = BatchContext(
                scores=all_scores,
                flags=[(d.get("flags") or ()) if d is not None else () for d in parsed.docs],
                models=models,
            )
            for q, qc in enumerate(policy.queues):
                matched[q] = evaluate(qc.when, ctx, memo)
            matched &= valid & ~sampled
            any_match = matched.any(axis=0)
            queue[any_match] = matched[:, any_match].argmax(axis=0)
            fate[any_match] = REVIEW
    return BatchDecisions(
        policy,
        parsed.docs,
        parsed.errors,
        fate,
        queue,
        all_scores,
        temperature,
        matched,
        memo,
        parsed.raws,
    )


class _TemperatureLookup:
    """Each row's temperature, looked up once per model name in a batch."""

    def __init__(self, book: TemperatureBook) -> None:
        self.book = book
        self.known: dict[str, float] = {}

    def __call__(self, models: list[str], rows: np.ndarray) -> np.ndarray:
        if self.book.empty:
            return np.ones(len(rows))
        known, lookup = self.known, self.book.temperature
        names = [models[i] for i in rows.tolist()]
        for name in set(names).difference(known):
            known[name] = lookup(name)
        return np.array([known[name] for name in names])


def _calibrate(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    if np.all(t == 1.0):
        return p
    shape = (-1,) + (1,) * (p.ndim - 1)
    return apply_temperature(p, np.asarray(t).reshape(shape))


def merge_batches(policy: Policy, parts: Sequence[BatchDecisions]) -> BatchDecisions:
    """Concatenate batches decided separately (same policy) into one, in order."""
    docs: list[dict[str, Any] | None] = []
    errors: dict[int, ErrorInfo] = {}
    for part in parts:
        errors.update({len(docs) + i: e for i, e in part.errors.items()})
        docs.extend(part.docs)
    keys = {k for part in parts for k in part.memo}
    memo = {
        k: np.concatenate([p.memo.get(k, np.zeros(p.n, dtype=bool)) for p in parts]) for k in keys
    }
    q_count = len(policy.queues)
    return BatchDecisions(
        policy,
        docs,
        errors,
        np.concatenate([p.fate for p in parts]) if parts else np.zeros(0, np.int8),
        np.concatenate([p.queue for p in parts]) if parts else np.zeros(0, np.int16),
        {
            k: np.concatenate([p.scores[k] for p in parts]) if parts else np.zeros(0)
            for k in SCORE_NAMES
        },
        np.concatenate([p.temperature for p in parts]) if parts else np.zeros(0),
        np.concatenate([p.matched for p in parts], axis=1)
        if parts
        else np.zeros((q_count, 0), bool),
        memo,
        [raw for p in parts for raw in p.raws],
    )


def poisoned(policy: Policy, raw: bytes | None, exc: BaseException) -> BatchDecisions:
    """A one-row batch dead-lettering ``raw`` because deciding it raised ``exc``."""
    return BatchDecisions(
        policy,
        [None],
        {0: ErrorInfo("internal_error", f"router failed on this message: {exc!r}")},
        np.array([DEADLETTER], np.int8),
        np.array([-1], np.int16),
        {k: np.array([np.nan]) for k in SCORE_NAMES},
        np.ones(1),
        np.zeros((len(policy.queues), 1), bool),
        {},
        [raw],
    )
