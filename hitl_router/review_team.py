"""A simulated review team, for the demo and the tests: it reads the eval sample, the
review queues and the QA queue, and answers each item with a label on the labels topic.

Annotators know the true class (the simulator puts it in each prediction's ``label``)
and get it wrong with probability ``error_rate`` (a uniformly drawn other class). A
share ``double_rate`` of eval and review items is labelled by a second annotator too;
every QA item gets a second look from a QA annotator. Review labels carry a correction
reason from the taxonomy: ``model_correct`` when the model's top class was right, else
one of the others.

>>> import random
>>> team = ReviewTeam(error_rate=0.0, seed=1)
>>> item = {"id": "p-1", "model": "m", "queue": "uncertain", "prediction": {
...     "probs": [0.3, 0.7], "classes": ["cat", "dog"], "label": "cat"}}
>>> [(d["label"], d["source"], d["correction"]["reason"]) for d in team.answer(item, "review")]
[('cat', 'review', 'ambiguous_input')]
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from hitl_router.router.config import DEFAULT_REASONS, Config

ANNOTATORS = ("ann-1", "ann-2", "ann-3")
QA_ANNOTATOR = "qa-lead"


class ReviewTeam:
    def __init__(
        self,
        error_rate: float = 0.05,
        double_rate: float = 0.1,
        seed: int = 0,
        reasons: Sequence[str] = DEFAULT_REASONS,
    ) -> None:
        self.error_rate = error_rate
        self.double_rate = double_rate
        self.rng = random.Random(seed)
        self.reasons = list(reasons)

    def answer(self, item: dict[str, Any], source: str) -> list[dict[str, Any]]:
        """The label(s) for one item of the eval sample (``source="eval"``), a review queue
        (``"review"``) or the QA queue (``"qa"``: a second review label)."""
        pred = item.get("prediction")
        if isinstance(pred, dict):
            probs, classes, truth = pred["probs"], pred.get("classes"), pred.get("label")
        else:  # a QA item carries the probabilities, not the prediction
            probs, classes, truth = item["probs"], item.get("classes"), item.get("truth")
        names = list(classes) if classes else [str(k) for k in range(len(probs))]
        if truth is None or str(truth) not in names:
            return []
        if source == "qa":
            return [self._label(item, names, str(truth), probs, QA_ANNOTATOR, "review")]
        first = self.rng.choice(ANNOTATORS)
        out = [self._label(item, names, str(truth), probs, first, source)]
        if self.rng.random() < self.double_rate:
            second = self.rng.choice([a for a in ANNOTATORS if a != first])
            out.append(self._label(item, names, str(truth), probs, second, source))
        return out

    def _label(
        self,
        item: dict[str, Any],
        names: list[str],
        truth: str,
        probs: Sequence[float],
        annotator: str,
        source: str,
    ) -> dict[str, Any]:
        answer = truth
        if self.rng.random() < self.error_rate:
            answer = self.rng.choice([n for n in names if n != truth] or names)
        doc: dict[str, Any] = {
            "id": item["id"],
            "label": answer,
            "annotator": annotator,
            "source": source,
        }
        if source == "review":
            top = names[max(range(len(probs)), key=probs.__getitem__)]
            others = [r for r in self.reasons if r != "model_correct"] or self.reasons
            reason = "model_correct" if top == answer else self.rng.choice(others)
            doc["queue"] = item.get("queue")
            doc["correction"] = {"reason": reason}
        return doc


class ReviewTeamThread(threading.Thread):
    """Runs a :class:`ReviewTeam` against Kafka: consumes the eval, review and QA topics
    from their ends (or beginnings), produces labels keyed by id."""

    def __init__(
        self,
        config: Config,
        team: ReviewTeam,
        *,
        from_beginning: bool = False,
        id_prefix: str = "",
    ) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, KafkaProducer

        self.config = config
        self.team = team
        self.id_prefix = id_prefix
        self._halt = threading.Event()
        self.sent: Counter[str] = Counter()
        #: the true class of each item seen (a QA item does not carry the prediction: a
        #: real reviewer looks the input up by id)
        self.truth: dict[str, str] = {}
        t = config.topics
        self.sources = {t.eval: "eval", t.qa: "qa", **{q: "review" for q in config.review_topics()}}
        self.consumer = KafkaConsumer(
            bootstrap_servers=config.kafka.bootstrap_servers,
            auto_offset_reset="earliest" if from_beginning else "latest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.consumer.subscribe(list(self.sources))
        while not self.consumer.assignment():
            self.consumer.poll(timeout_ms=200)
        if not from_beginning:
            self.consumer.seek_to_end()
            for tp in self.consumer.assignment():
                self.consumer.position(tp)
        self.producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, linger_ms=5)

    def run(self) -> None:
        while not self._halt.is_set():
            for records in self.consumer.poll(timeout_ms=200).values():
                for r in records:
                    item = orjson.loads(r.value)
                    if not str(item.get("id", "")).startswith(self.id_prefix):
                        continue
                    source = self.sources[r.topic]
                    pred = item.get("prediction")
                    if isinstance(pred, dict) and "label" in pred:
                        self.truth[item["id"]] = str(pred["label"])
                    elif source == "qa":
                        item["truth"] = self.truth.get(item["id"])
                    for doc in self.team.answer(item, source):
                        self.producer.send(
                            self.config.topics.labels,
                            key=doc["id"].encode(),
                            value=orjson.dumps(doc),
                        )
                        self.sent[source] += 1

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.producer.flush()
        self.producer.close()
        self.consumer.close()
