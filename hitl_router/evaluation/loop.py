"""One seed of the closed loop: every strategy on the same stream, seed set and annotators.

Per strategy, the stream is cut in batches of ``Settings.batch`` predictions. For each
batch the current committee predicts, the predictions are serialized as producers send
them and decided by ``decide_batch`` under the strategy's ``Policy``; the items the
strategy buys (review, or eval for ``random``) are answered by the simulated annotators,
in stream order, up to the next checkpoint. Every ``rounds`` labels the committee is
refitted on the seed set plus the labels bought, and measured on the held-out set.

Everything a strategy could differ on by luck is shared within a seed: the held-out
split, the seed set, the stream order and its drift, the flags, each item's annotator
answer and each refit's bootstrap draws. The comparison is paired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from hitl_router.evaluation.strategies import Strategy, strategies
from hitl_router.evaluation.tasks import Task, load_task
from hitl_router.model import Committee
from hitl_router.router import calibration as cal
from hitl_router.router.config import Config
from hitl_router.router.decision import Policy, decide_batch
from hitl_router.router.diversity import ClassMix
from hitl_router.simulate import FLAGS

MODEL = "evaluate-loop"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the stream's first ts
#: the random draw and the single scores take the budget's share of the stream times this,
#: so that they finish their budget before the stream ends
HEADROOM = 1.25
#: the selected items whose predicted classes measure a strategy's concentration
CONCENTRATION_WINDOW = 100


@dataclass(frozen=True)
class Settings:
    task: str = "digits"
    budget: int = 300
    rounds: int = 25
    seeds: int = 5
    seed_size: int = 30
    drift_at: int | None = None
    label_error: float = 0.0
    members: int = 5
    batch: int = 20
    window: int = 100
    rate: float = 10.0  # predictions per second of ts: what per-minute budgets see
    flag_rate: float = 0.01

    def grid(self) -> list[int]:
        """Labels bought at each checkpoint: 0, R, 2R, ..., budget."""
        points = list(range(0, self.budget, self.rounds))
        return [*points, self.budget]


@dataclass
class Checkpoint:
    labels: int  # labels bought so far (the seed set not counted)
    stream_pos: int  # predictions of the stream seen so far
    accuracy: float
    ece: float
    recall: list[float | None]
    wrong_labels: int  # labels bought that the annotators got wrong
    #: held-out items this model gets right and the seed model got wrong, and the reverse
    gained: int
    lost: int
    selected_entropy: float  # class entropy of the last items bought (nats)
    stream_entropy: float  # class entropy of the stream the strategy saw

    def as_dict(self) -> dict[str, Any]:
        return {k: _num(v) for k, v in self.__dict__.items()}


@dataclass
class StrategyRun:
    name: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: labels bought per queue (``random`` for the random draw)
    spent: dict[str, int] = field(default_factory=dict)
    #: rows of the task's dataset bought, in order
    bought_rows: list[int] = field(default_factory=list)
    refits: int = 0


class _Stream:
    """One seed's stream: inputs after drift, flags, ts, annotators' answers."""

    def __init__(self, task: Task, settings: Settings, seed: int) -> None:
        rng = np.random.default_rng([seed, 2])
        pool = rng.permutation(task.pool_rows)
        self.seed_rows = pool[: settings.seed_size]
        self.rows = pool[settings.seed_size :]
        n = len(self.rows)
        self.X = task.X[self.rows].copy()
        self.hold_X = task.X[task.holdout_rows].copy()
        self.hold_y = task.y[task.holdout_rows]
        at = settings.drift_at
        if at is not None and at < n:
            self.X[at:] = task.degrade(self.X[at:], rng)
            # the held-out set looks like the stream: the drifted share of it, drifted
            hit = rng.random(len(self.hold_X)) < (n - at) / n
            self.hold_X[hit] = task.degrade(self.hold_X[hit], rng)
        self.ts = T0 + np.arange(n) / settings.rate
        flagged = rng.random(n) < settings.flag_rate
        which = rng.integers(0, len(FLAGS), size=n)
        self.flags = [[FLAGS[w]] if f else None for f, w in zip(flagged, which, strict=True)]
        # each item's answer, fixed before any strategy asks: wrong with a probability
        # that grows with the item's difficulty and averages label_error over the pool
        d = task.difficulty[pool]
        p_wrong = np.clip(settings.label_error * d / max(float(d.mean()), 1e-9), 0.0, 1.0)
        wrong = rng.random(len(pool)) < p_wrong
        other = (task.y[pool] + rng.integers(1, task.k, size=len(pool))) % task.k
        answers = np.where(wrong, other, task.y[pool])
        self.seed_answers = answers[: settings.seed_size]
        self.answers = answers[settings.seed_size :]
        self.wrong = wrong[settings.seed_size :]
        self.ids = [f"s{seed}-{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)


def run_seed(config: Config, settings: Settings, seed: int) -> dict[str, Any]:
    """Every strategy on seed ``seed``: their checkpoints, spending and bought rows."""
    task = load_task(settings.task, seed)
    stream = _Stream(task, settings, seed)
    rate = min(1.0, HEADROOM * settings.budget / len(stream))
    runs = [
        _run(s, task, stream, settings, seed)
        for s in strategies(config, rate, settings.window, f"evaluate-loop-{seed}")
    ]
    return {
        "seed": seed,
        "holdout_rows": task.holdout_rows.tolist(),
        "seed_rows": stream.seed_rows.tolist(),
        "stream": len(stream),
        "rate": rate,
        "strategies": {
            r.name: {
                "checkpoints": [c.as_dict() for c in r.checkpoints],
                "spent": r.spent,
                "bought_rows": r.bought_rows,
                "refits": r.refits,
            }
            for r in runs
        },
    }


def _fit(
    task: Task,
    X: np.ndarray,
    y: np.ndarray,
    settings: Settings,
    seed: int,
    n: int,
) -> Committee:
    rng = np.random.default_rng([seed, 3, n])  # the same draws for every strategy
    return Committee.fit(X, y, task.k, rng, settings.members, scale=task.scale)


def _run(strategy: Strategy, task: Task, stream: _Stream, settings: Settings, seed: int) -> Any:
    run = StrategyRun(strategy.name)
    policy = Policy(strategy.config)
    X_seed, y_seed = task.X[stream.seed_rows], stream.seed_answers
    committee = _fit(task, X_seed, y_seed, settings, seed, 0)
    stream_mix, bought_mix = ClassMix(), ClassMix(CONCENTRATION_WINDOW)
    bought: list[int] = []  # stream positions
    grid = settings.grid()[1:]
    first: list[np.ndarray] = []  # the seed model's hits on the held-out set

    def checkpoint(pos: int, n: int) -> None:
        """Measure the committee fitted on the first ``n`` labels bought."""
        probs, _ = committee.predict_batch(stream.hold_X)
        hits = probs.argmax(axis=1) == stream.hold_y
        if not first:
            first.append(hits)
        run.checkpoints.append(
            Checkpoint(
                labels=n,
                stream_pos=pos,
                accuracy=cal.accuracy(probs, stream.hold_y),
                ece=cal.ece(probs, stream.hold_y),
                recall=cal.recall_per_class(probs, stream.hold_y, task.k),
                wrong_labels=int(stream.wrong[bought[:n]].sum()),
                gained=int((hits & ~first[0]).sum()),
                lost=int((first[0] & ~hits).sum()),
                selected_entropy=bought_mix.entropy(),
                stream_entropy=stream_mix.entropy(),
            )
        )

    checkpoint(0, 0)
    pos = 0
    while pos < len(stream) and len(bought) < settings.budget:
        end = min(pos + settings.batch, len(stream))
        probs, members = committee.predict_batch(stream.X[pos:end])
        decided = decide_batch(_messages(stream, pos, probs, members), policy)
        pred = probs.argmax(axis=1)
        stream_mix.add(pred)
        take = decided.rows(strategy.buys)[: settings.budget - len(bought)]
        for i in take:
            queue = decided.queue_name(i) or strategy.name
            run.spent[queue] = run.spent.get(queue, 0) + 1
        bought_mix.add(pred[take])
        bought.extend(pos + i for i in take)
        pos = end
        # labels bought past a checkpoint were chosen by the model in use: they count
        # towards the next round, as a review team's backlog would
        while grid and (len(bought) >= grid[0] or pos == len(stream)):
            n = min(grid.pop(0), len(bought))
            if n == run.checkpoints[-1].labels:
                break
            rows = np.asarray(bought[:n], dtype=np.int64)
            committee = _fit(
                task,
                np.concatenate([X_seed, stream.X[rows]]),
                np.concatenate([y_seed, stream.answers[rows]]),
                settings,
                seed,
                n,
            )
            run.refits += 1
            checkpoint(pos, n)
    run.bought_rows = stream.rows[bought].tolist()
    return run


def _messages(stream: _Stream, start: int, probs: np.ndarray, members: np.ndarray) -> list[bytes]:
    """The batch's predictions, serialized as a producer would publish them."""
    out = []
    for j in range(len(probs)):
        i = start + j
        doc: dict[str, Any] = {
            "id": stream.ids[i],
            "model": MODEL,
            "probs": probs[j],
            "ensemble": np.ascontiguousarray(members[:, j, :]),
            "ts": float(stream.ts[i]),
        }
        if stream.flags[i]:
            doc["flags"] = stream.flags[i]
        out.append(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def _num(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_num(x) for x in v]
    return v
