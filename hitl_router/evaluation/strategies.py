"""The strategies ``evaluate-loop`` compares, each one a router config.

- ``config``: the queues of the config under test, as ``decide_batch`` runs them (rules,
  target rates, budgets, diversity caps, dedup, temperatures). Its eval sample is turned
  off: the loop's held-out set plays that part, and an eval draw would only remove
  items from routing.
- ``random``: the eval sampler's uniform draw (``(salt, id)`` hashed), at a rate that
  spends the budget: the baseline every other strategy must beat.
- one per single score (``max_prob``, ``margin``, ``entropy``, ``ensemble_kl``): a queue
  whose rule is a target rate on that score, at the same rate as ``random``, so each
  spends the same budget over the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hitl_router.router.config import Config, EvalSampleConfig, parse_config
from hitl_router.router.decision import EVAL, REVIEW

#: each single score and the rule that routes its uncertain end
SINGLE_SCORES = {
    "max_prob": "max_prob_below",
    "margin": "margin_below",
    "entropy": "entropy_above",
    "ensemble_kl": "ensemble_kl_above",
}
CONFIG, RANDOM = "config", "random"
NAMES = (CONFIG, RANDOM, *SINGLE_SCORES)


@dataclass(frozen=True)
class Strategy:
    name: str
    config: Config
    #: the fate that buys a label: ``EVAL`` for the random draw, ``REVIEW`` otherwise
    buys: int


def strategies(config: Config, rate: float, window: int, salt: str) -> list[Strategy]:
    """The strategies in ``NAMES`` order; ``rate``: the share of the stream the random
    draw and the single scores take; ``window``: their target rates' window."""
    off = replace(config.eval_sample, rate=0.0)
    out = [
        Strategy(CONFIG, replace(config, eval_sample=off), REVIEW),
        Strategy(
            RANDOM,
            replace(config, queues=(), eval_sample=EvalSampleConfig(rate, salt), dedup=None),
            EVAL,
        ),
    ]
    for score, rule in SINGLE_SCORES.items():
        target = {rule: {"target_rate": rate, "window": window}}
        queues = parse_config({"queues": [{"name": score, "when": target}]}).queues
        out.append(
            Strategy(score, replace(config, queues=queues, eval_sample=off, dedup=None), REVIEW)
        )
    return out
