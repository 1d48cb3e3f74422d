"""Where a profiled worker's time went: py-spy's raw (collapsed) stacks, by stage.

``python -m bench.run --py-spy`` runs the router contender under ``py-spy record -f raw``
and summarises the samples here. Shares are of *active* samples: a thread waiting in
``select`` is idle, and the start-up imports are left out. The first stage whose frame
appears in a stack takes the sample, so list nested stages before their callers.

>>> raw = [
...     "<module> (cli.py:1);_find_and_load (<frozen>:1) 5",
...     "<module> (cli.py:1);route (app.py:1);parse_batch (validation.py:1) 6",
...     "<module> (cli.py:1);route (app.py:1);router_outputs (outputs.py:1) 3",
...     "<module> (cli.py:1);run (base_events.py:1);EpollSelector.select (selectors.py:1) 9",
...     "Thread._bootstrap (threading.py:1);_fetch_records (aiokafka.py:1) 1",
... ]
>>> summarize(raw)["stages"]
{'main: parse': 0.6, 'main: outputs': 0.3, 'consumer thread': 0.1}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

#: (stage, frame-name fragments): the first match in a stack takes the sample
STAGES = (
    ("parse", ("parse_batch",)),
    ("decide", ("decide_parsed",)),
    ("outputs", ("router_outputs", "eval_outputs")),
    ("metrics", ("observe_router", "observe_sampler", "metrics_handler")),
    ("publish", ("BatchPublisher", "RdkafkaPublisher.deliver")),
    ("producer sender", ("Sender.",)),
    ("fetch loop", ("_drain_messages", "BatchingConsumer._fetch")),
    ("settle and ack", ("_settle",)),
    ("agents, other", ("_batch_agent",)),
)
IDLE = ("select",)  # leaf frames of a thread waiting for I/O
STARTUP = ("_find_and_load",)


def summarize(lines: Iterable[str]) -> dict[str, Any]:
    """Shares of active samples per stage (main thread) and for the consumer thread."""
    counts: Counter[str] = Counter()
    idle = startup = 0
    for line in lines:
        stack, _, n_text = line.rstrip().rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        n = int(n_text)
        frames = stack.split(";")
        if any(f in frames[-1] for f in IDLE):
            idle += n
        elif any(f in stack for f in STARTUP):
            startup += n
        elif "Thread._bootstrap" in frames[0]:
            # librdkafka's delivery reports are served by a thread of their own
            thread = "consumer thread"  # Faust's aiokafka consumer
            if "RdkafkaPublisher._poll" in stack:
                thread = "delivery reports thread"
            elif "RdkafkaReader." in stack:
                thread = "librdkafka reader thread"
            counts[thread] += n
        else:
            stage = next((s for s, keys in STAGES if any(k in stack for k in keys)), "other")
            counts[f"main: {stage}"] += n
    active = sum(counts.values())
    return {
        "active_samples": active,
        "idle_samples": idle,
        "startup_samples": startup,
        "stages": {k: round(v / active, 3) for k, v in counts.most_common()} if active else {},
    }
