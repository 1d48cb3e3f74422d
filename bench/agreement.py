"""Do a contender's outputs give every input the router's fate?

The reference is ``hitl-router replay``'s path (``decide_batch`` in batches of
``replay.BATCH``) over the prefilled messages with the benchmark's plain router config:
each id's fate, with the queue for review items (``review-<queue>``); a dead letter is
keyed by the payload's id when it has a usable one (as the router keys it), else counted
unkeyed. A contender's fates are read from its outputs: the topic each key was written to.
Its decision records (what the label loop joins labels with) are checked too: one for
every eval and review item, none for any other input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

#: mismatches listed in the results (all are counted)
EXAMPLES = 10


@dataclass
class Fates:
    """Each keyed input's fate label, and how many dead letters had no key."""

    by_key: dict[bytes, str] = field(default_factory=dict)
    unkeyed: Counter[str] = field(default_factory=Counter)
    #: keys written to more than one fate's topic
    conflicts: dict[bytes, set[str]] = field(default_factory=dict)

    def add(self, label: str, key: bytes | None) -> None:
        if key is None:
            self.unkeyed[label] += 1
            return
        prev = self.by_key.setdefault(key, label)
        if prev != label:
            self.conflicts.setdefault(key, {prev}).add(label)


def reference(messages: Sequence[bytes], config: Mapping[str, Any]) -> Fates:
    """The fates replay gives ``messages`` under ``config`` (a router config dict)."""
    from hitl_router.replay import BATCH
    from hitl_router.router.config import parse_config
    from hitl_router.router.decision import Policy, decide_batch
    from hitl_router.router.outputs import id_of

    policy = Policy(parse_config(dict(config)))
    out = Fates()
    for start in range(0, len(messages), BATCH):
        chunk = messages[start : start + BATCH]
        batch = decide_batch(chunk, policy)
        for i in range(batch.n):
            doc = batch.docs[i]
            if doc is None:
                pid = id_of(chunk[i], policy.config.limits.max_message_bytes)
                out.add("deadletter", pid.encode() if pid is not None else None)
                continue
            fate = batch.fate_name(i)
            label = {"pass": "accepted", "review": f"review-{batch.queue_name(i)}"}.get(fate, fate)
            out.add(label, doc["id"].encode())
    return out


def router_labels(config: Mapping[str, Any]) -> dict[str, str]:
    """Output topic → fate label of a router with ``config``."""
    t = config["topics"]
    labels = {t["eval"]: "eval", t["accepted"]: "accepted", t["deadletter"]: "deadletter"}
    labels.update({q["topic"]: f"review-{q['name']}" for q in config["queues"]})
    return labels


def recorded_ids(ref: Fates) -> set[bytes]:
    """The ids the router writes a decision record for: its eval and review items."""
    return {k for k, label in ref.by_key.items() if label == "eval" or label.startswith("review-")}


def compare_records(ref: Fates, keys: Set[bytes], total: int, unkeyed: int) -> dict[str, Any]:
    """A contender's decision records (their distinct ``keys``, ``total`` records, of which
    ``unkeyed`` had no key) against the ids that get one: ``ok`` when they are the same."""
    want = recorded_ids(ref)
    missing, extra = want - keys, keys - want
    return {
        "expected": len(want),
        "records": total,
        "duplicates": total - len(keys) - unkeyed,
        "missing": len(missing),
        "extra": len(extra) + unkeyed,
        "missing_examples": [k.decode(errors="replace") for k in sorted(missing)[:EXAMPLES]],
        "extra_examples": [k.decode(errors="replace") for k in sorted(extra)[:EXAMPLES]],
        "ok": not missing and not extra and not unkeyed,
    }


def compare(ref: Fates, got: Fates, records: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every keyed input with the same fate (and queue), the same keyed dead letters and
    as many unkeyed ones, no key in two fates' topics, and with ``records``
    (:func:`compare_records`) a decision record for exactly the eval and review items:
    ``ok``; else what differs."""
    differ = [k for k, label in ref.by_key.items() if got.by_key.get(k, label) != label]
    missing = [k for k in ref.by_key if k not in got.by_key]
    extra = [k for k in got.by_key if k not in ref.by_key]
    dead_ref = {k for k, label in ref.by_key.items() if label == "deadletter"}
    dead_got = {k for k, label in got.by_key.items() if label == "deadletter"}
    examples = [
        {"id": k.decode(errors="replace"), "router": ref.by_key[k], "contender": got.by_key[k]}
        for k in differ[:EXAMPLES]
    ]
    res = {
        "checked": len(ref.by_key) + sum(ref.unkeyed.values()),
        "same": len(ref.by_key) - len(differ) - len(missing),
        "differ": len(differ),
        "missing": len(missing),
        "extra": len(extra),
        "conflicts": len(got.conflicts),
        "deadletters": len(dead_ref) + ref.unkeyed["deadletter"],
        "deadletter_ids_equal": dead_ref == dead_got,
        "unkeyed": {"router": dict(ref.unkeyed), "contender": dict(got.unkeyed)},
        "by_fate": dict(sorted(Counter(got.by_key.values()).items())),
        "examples": examples,
        "missing_examples": [k.decode(errors="replace") for k in missing[:EXAMPLES]],
        "extra_examples": [k.decode(errors="replace") for k in extra[:EXAMPLES]],
    }
    res["ok"] = (
        not differ
        and not missing
        and not extra
        and not got.conflicts
        and dead_ref == dead_got
        and ref.unkeyed == got.unkeyed
    )
    if records is not None:
        res["records"] = dict(records)
        res["ok"] = res["ok"] and records["ok"]
    return res


def summary(res: Mapping[str, Any] | None) -> str:
    """The table's cell: how many ids got the router's fate."""
    if not res:
        return "—"
    if res.get("error"):
        return "not checked"
    if res["ok"]:
        return f"all {res['checked']:,} agree"
    wrong = res["differ"] + res["missing"] + res["extra"] + res["conflicts"]
    dead = "" if res["deadletter_ids_equal"] else ", dead letters differ"
    records = res.get("records")
    if records is not None and not records["ok"]:
        dead += f", decision records: {records['missing']:,} missing, {records['extra']:,} extra"
    return f"**{wrong:,} MISMATCH{'ES' if wrong != 1 else ''}**{dead}"
