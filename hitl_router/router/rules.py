"""Trigger rules: the SPEC's rule grammar, compiled once, evaluated over a batch.

Grammar (YAML mappings, nestable)::

    <score>_below: 0.7          # score < 0.7      (scores: see uncertainty.SCORE_NAMES)
    <score>_above: 0.3          # score > 0.3
    <score>_below: {target_rate: 0.05, window: 10000}   # a live threshold (target_rate.py)
    flags_any: [pii, user_report]
    flags_all: [pii, user_report]
    model_in: [digits, fraud@3] # a bare name matches every version
    any: [<rule>, ...]
    all: [<rule>, ...]
    not: <rule>

A mapping with several keys means all of them. A score a prediction does not
have (``ensemble_kl`` without an ``ensemble``) is NaN, and a comparison with
NaN is false; ``not`` of it is true.

>>> import numpy as np
>>> rule = parse_rule({"any": [{"max_prob_below": 0.7}, {"flags_any": ["pii"]}]}, "when")
>>> ctx = BatchContext(scores={"max_prob": np.array([0.9, 0.5, 0.95])},
...                    flags=[(), (), ("pii",)], models=["m", "m", "m"])
>>> values = evaluate(rule, ctx, {})
>>> values.tolist()
[False, True, True]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hitl_router.errors import ConfigError
from hitl_router.router.target_rate import TargetRate, parse_target_rate
from hitl_router.router.uncertainty import SCORE_NAMES

_NEGATED_OP = {"<": ">=", ">": "<=", "any_of": "none_of", "all_of": "not_all_of", "in": "not_in"}


@dataclass(frozen=True)
class Leaf:
    """One predicate. ``rule`` is its grammar key (``not:`` prefixed when negated)."""

    key: str
    metric: str
    base_op: str
    threshold: float | tuple[str, ...] | TargetRate
    negated: bool = False

    @property
    def op(self) -> str:
        return _NEGATED_OP[self.base_op] if self.negated else self.base_op

    @property
    def rule(self) -> str:
        return f"not:{self.key}" if self.negated else self.key


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class AllOf:
    children: tuple[Node, ...]


Node = Leaf | AnyOf | AllOf


@dataclass
class BatchContext:
    """What rules look at: score arrays (n,), per-item flags and model names."""

    scores: Mapping[str, np.ndarray]
    flags: Sequence[Sequence[str]]
    models: Sequence[str]
    #: the threshold in force for this batch of each target-rate leaf
    live: Mapping[TargetRate, float] = field(default_factory=dict)
    _model_cache: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)


def parse_rule(obj: Any, key: str) -> Node:
    """Parse a rule mapping into a tree with negations pushed to the leaves."""
    return _parse(obj, key, negate=False)


def _parse(obj: Any, key: str, negate: bool) -> Node:
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(key, f"expected a non-empty mapping of rule keys, got {obj!r}")
    nodes = [_parse_item(str(k), v, f"{key}.{k}", negate) for k, v in obj.items()]
    if len(nodes) == 1:
        return nodes[0]
    # several keys mean all of them; not(all) = any(not)
    return AnyOf(tuple(nodes)) if negate else AllOf(tuple(nodes))


def _parse_item(name: str, value: Any, key: str, negate: bool) -> Node:
    if name in ("any", "all"):
        if not isinstance(value, list) or not value:
            raise ConfigError(key, f"'{name}' takes a non-empty list of rules")
        children = tuple(_parse(v, f"{key}[{i}]", negate) for i, v in enumerate(value))
        is_any = (name == "any") != negate
        return AnyOf(children) if is_any else AllOf(children)
    if name == "not":
        return _parse(value, key, not negate)
    if name in ("flags_any", "flags_all", "model_in"):
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise ConfigError(key, f"'{name}' takes a non-empty list of non-empty strings")
        op = {"flags_any": "any_of", "flags_all": "all_of", "model_in": "in"}[name]
        metric = "model" if name == "model_in" else "flags"
        return Leaf(name, metric, op, tuple(value), negate)
    for suffix, op in (("_below", "<"), ("_above", ">")):
        if name.endswith(suffix):
            score = name[: -len(suffix)]
            if score not in SCORE_NAMES:
                raise ConfigError(
                    key, f"unknown score '{score}'; scores are {', '.join(SCORE_NAMES)}"
                )
            if isinstance(value, Mapping):
                return Leaf(name, score, op, parse_target_rate(value, key, op == ">"), negate)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(
                    key, f"threshold must be a number or {{target_rate: r}}, got {value!r}"
                )
            if not np.isfinite(value):
                raise ConfigError(key, "threshold must be finite")
            return Leaf(name, score, op, float(value), negate)
    raise ConfigError(
        key,
        f"unknown rule key '{name}'; expected <score>_below, <score>_above, flags_any, "
        "flags_all, model_in, any, all or not",
    )


def leaves(node: Node) -> list[Leaf]:
    """The leaves of ``node``, depth first."""
    if isinstance(node, Leaf):
        return [node]
    return [leaf for child in node.children for leaf in leaves(child)]


def evaluate(node: Node, ctx: BatchContext, memo: dict[int, np.ndarray]) -> np.ndarray:
    """Boolean array (n,): where ``node`` holds. Every node's value lands in ``memo``
    (keyed by ``id(node)``) so reasons can be traced afterwards."""
    if isinstance(node, Leaf):
        value = _leaf(node, ctx)
    else:
        parts = [evaluate(child, ctx, memo) for child in node.children]
        reduce = np.logical_or if isinstance(node, AnyOf) else np.logical_and
        value = reduce.reduce(parts) if len(parts) > 1 else parts[0]
    memo[id(node)] = value
    return value


def fired_leaves(node: Node, row: int, memo: Mapping[int, np.ndarray]) -> list[Leaf]:
    """The leaves that made ``node`` hold at ``row`` (``node`` must hold there)."""
    if isinstance(node, Leaf):
        return [node]
    out: list[Leaf] = []
    for child in node.children:
        if memo[id(child)][row]:
            out.extend(fired_leaves(child, row, memo))
    return out


def _leaf(leaf: Leaf, ctx: BatchContext) -> np.ndarray:
    n = len(ctx.models)
    if leaf.metric == "flags":
        wanted = set(leaf.threshold)  # type: ignore[arg-type]
        base = np.zeros(n, dtype=bool)
        for i, flags in enumerate(ctx.flags):
            if flags:
                hit = wanted.intersection(flags)
                base[i] = bool(hit) if leaf.base_op == "any_of" else len(hit) == len(wanted)
    elif leaf.metric == "model":
        base = _model_in(leaf.threshold, ctx)  # type: ignore[arg-type]
    else:
        values = ctx.scores.get(leaf.metric)
        threshold = leaf.threshold
        if isinstance(threshold, TargetRate):
            threshold = ctx.live.get(threshold, float("nan"))
        if values is None:
            base = np.zeros(n, dtype=bool)
        elif leaf.base_op == "<":
            base = values < threshold
        else:
            base = values > threshold
    return ~base if leaf.negated else base


def _model_in(names: tuple[str, ...], ctx: BatchContext) -> np.ndarray:
    cached = ctx._model_cache.get(names)
    if cached is not None:
        return cached
    exact = set(names)
    bare = {n for n in names if "@" not in n}
    verdict: dict[str, bool] = {}
    out = np.empty(len(ctx.models), dtype=bool)
    for i, model in enumerate(ctx.models):
        hit = verdict.get(model)
        if hit is None:
            hit = verdict[model] = model in exact or model.split("@", 1)[0] in bare
        out[i] = hit
    ctx._model_cache[names] = out
    return out
