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

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from hitl_router.router.budget import BudgetState
from hitl_router.router.config import Config, QueueConfig
from hitl_router.router.dedup import RoutedIds
from hitl_router.router.diversity import ClassMix, DiversityCap
from hitl_router.router.eval_sampler import EvalSampler
from hitl_router.router.priority import priorities
from hitl_router.router.rules import BatchContext, Leaf, evaluate, fired_leaves, leaves
from hitl_router.router.target_rate import SlidingQuantile, TargetRate
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
#: why an item that matched a queue passed: the queue's budget, its diversity cap
BUDGET, DIVERSITY, DUPLICATE = 1, 2, 3
DROP_REASONS = ("", "budget", "diversity", "duplicate")


class Policy:
    """A config made ready to decide: the sampler, the compiled rules and the temperatures
    in use (the config's, updated live by accepted fits)."""

    def __init__(
        self, config: Config, temperatures: TemperatureBook | None = None, partitions: int = 1
    ) -> None:
        self.config = config
        self.sampler = EvalSampler(config.eval_sample.rate, config.eval_sample.salt)
        self.queues: tuple[QueueConfig, ...] = config.queues
        self.temperatures = temperatures or TemperatureBook(config.calibration)
        #: each target-rate leaf with its queue and the window of its score
        self.targets: list[tuple[str, Leaf, TargetRate, SlidingQuantile]] = [
            (q.name, leaf, leaf.threshold, SlidingQuantile(leaf.threshold.window))
            for q in self.queues
            for leaf in leaves(q.when)
            if isinstance(leaf.threshold, TargetRate)
        ]
        #: each budgeted queue's state on this worker (share: set on a rebalance)
        self.budgets: dict[int, BudgetState] = {
            q: BudgetState(qc.budget) for q, qc in enumerate(self.queues) if qc.budget
        }
        #: each capped queue's window of keys on this worker
        self.diversity: dict[int, DiversityCap] = {
            q: DiversityCap(qc.diversity) for q, qc in enumerate(self.queues) if qc.diversity
        }
        #: ids routed to review (dedup), per partition of the predictions topic
        self.routed = RoutedIds(config.dedup, partitions) if config.dedup else None
        #: the predicted-class mix of the stream (what the rules looked at) and of each
        #: queue (what it took), for their entropies
        self.stream_mix = ClassMix()
        self.queue_mix = [ClassMix() for _ in self.queues]

    def set_budget_share(self, share: float) -> None:
        """This worker's share of the group's budgets: partitions held / partitions."""
        for state in self.budgets.values():
            state.share = share

    def live_thresholds(self) -> list[tuple[str, str, float]]:
        """(queue, rule, threshold in force) of every target-rate leaf (NaN before any
        prediction was seen)."""
        return [(queue, leaf.rule, sq.quantile(t.q)) for queue, leaf, t, sq in self.targets]


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
    priority: np.ndarray  # float64 (n,): a review item's priority, NaN for other fates
    #: the threshold each target-rate leaf had for this batch
    live: dict[TargetRate, float] = field(default_factory=dict)
    #: int16 (n,): the queue a row matched and was dropped from (passed), or -1
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    #: int8 (n,): why it was dropped (DROP_REASONS), where ``dropped`` >= 0
    drop_reason: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    #: dedup's changes, for the live table's changelog: (partition, id, time or None)
    routed_changes: list[tuple[int, str, float | None]] = field(default_factory=list)
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
                        "threshold": self._threshold(leaf),
                    }
                )
        return out

    def _threshold(self, leaf: Leaf) -> Any:
        t = leaf.threshold
        if isinstance(t, tuple):
            return list(t)
        if isinstance(t, TargetRate):
            return self.live[t]
        return t

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


def decide_parsed(
    parsed: ParsedBatch,
    policy: Policy,
    *,
    rules: bool = True,
    times: np.ndarray | None = None,
    parts: np.ndarray | None = None,
) -> BatchDecisions:
    """:func:`decide_batch` for a batch already validated by ``parse_batch`` (so agents
    sharing a batch parse it once). ``times``: each row's time for budgets when its
    prediction has no ``ts`` (the agents pass the Kafka timestamps; default: now)."""
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
    priority = np.full(n, np.nan)
    dropped = np.full(n, -1, dtype=np.int16)
    drop_reason = np.zeros(n, dtype=np.int8)
    pred = np.zeros(n, dtype=np.int64)
    routed_changes: list[tuple[int, str, float | None]] = []
    live: dict[TargetRate, float] = {}
    if rules:
        models = [d["model"] if d is not None else "" for d in parsed.docs]
        temperature_of = _TemperatureLookup(policy.temperatures)
        for group in parsed.groups:
            t = temperature_of(models, group.rows)
            temperature[group.rows] = t
            calibrated = _calibrate(group.probs, t)
            pred[group.rows] = group.probs.argmax(axis=1)
            for name, values in scores(calibrated).items():
                all_scores[name][group.rows] = values
            if group.members is not None:
                members = _calibrate(group.members, t)
                for name, values in ensemble_scores(members).items():
                    all_scores[name][group.rows] = values
        if q_count:
            candidates = valid & ~sampled
            for _, leaf, target, window in policy.targets:
                window.update(all_scores[leaf.metric][candidates])
                live[target] = window.quantile(target.q)
            ctx = BatchContext(
                scores=all_scores,
                flags=[(d.get("flags") or ()) if d is not None else () for d in parsed.docs],
                models=models,
                live=live,
            )
            for q, qc in enumerate(policy.queues):
                matched[q] = evaluate(qc.when, ctx, memo)
            matched &= valid & ~sampled
            any_match = matched.any(axis=0)
            queue[any_match] = matched[:, any_match].argmax(axis=0)
            fate[any_match] = REVIEW
            for q, qc in enumerate(policy.queues):
                rows = queue == q
                if rows.any():
                    picked = {k: v[rows] for k, v in all_scores.items()}
                    priority[rows] = priorities(qc.priority, picked, int(rows.sum()))

            def drop(out: Any, reason: int) -> None:
                """Rows that matched a queue and pass: the queue and why recorded."""
                dropped[out], drop_reason[out] = queue[out], reason
                fate[out], queue[out], priority[out] = PASS, -1, np.nan

            at = part = None
            if any_match.any() and (policy.routed is not None or policy.budgets):
                at = _event_times(parsed.docs, times)
                part = parts if parts is not None else np.zeros(n, dtype=np.int64)
            if policy.routed is not None and at is not None and part is not None:
                rows = np.flatnonzero(fate == REVIEW)
                seen = policy.routed.seen([ids[i] for i in rows], at[rows], part[rows])
                first: set[str] = set()
                for j, i in enumerate(rows.tolist()):  # a copy in this batch: the first one
                    seen[j] = seen[j] or ids[i] in first
                    first.add(ids[i])
                drop(rows[seen], DUPLICATE)
            if policy.budgets and at is not None:
                for q, state in policy.budgets.items():
                    rows = np.flatnonzero(queue == q)
                    if rows.size:
                        drop(rows[~state.admit(at[rows], priority[rows])], BUDGET)
            for q, cap in policy.diversity.items():
                rows = np.flatnonzero(queue == q).tolist()
                if rows:
                    docs = [parsed.docs[i] for i in rows]
                    keys = cap.spec.keys(docs, pred[rows].tolist())  # type: ignore[arg-type]
                    drop(
                        [i for i, k in zip(rows, keys, strict=True) if not cap.admit(k)], DIVERSITY
                    )
            if policy.routed is not None and at is not None and part is not None:
                for i in np.flatnonzero(fate == REVIEW).tolist():
                    p = int(part[i])
                    routed_changes.append((p, ids[i], float(at[i])))
                    for gone in policy.routed.record(ids[i], float(at[i]), p):
                        routed_changes.append((p, gone, None))
            policy.stream_mix.add(pred[candidates])
            for q, mix in enumerate(policy.queue_mix):
                taken = queue == q
                if taken.any():
                    mix.add(pred[taken])
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
        priority,
        live,
        dropped,
        drop_reason,
        routed_changes,
    )


def _event_times(docs: Sequence[dict[str, Any] | None], fallback: np.ndarray | None) -> np.ndarray:
    """Each row's ``ts``, else its ``fallback`` time, else now (seconds)."""
    now = time.time()
    out = np.array(
        [d.get("ts") if d is not None and d.get("ts") is not None else np.nan for d in docs],
        dtype=np.float64,
    )
    missing = np.isnan(out)
    if missing.any():
        out[missing] = fallback[missing] if fallback is not None else now
    return out


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
        np.concatenate([p.priority for p in parts]) if parts else np.zeros(0),
        {t: v for p in parts for t, v in p.live.items()},
        np.concatenate([p.dropped for p in parts]) if parts else np.zeros(0, np.int16),
        np.concatenate([p.drop_reason for p in parts]) if parts else np.zeros(0, np.int8),
        [c for p in parts for c in p.routed_changes],
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
        np.array([np.nan]),
        {},
        np.array([-1], np.int16),
        np.zeros(1, np.int8),
    )
