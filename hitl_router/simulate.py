"""A stream of predictions from a real scikit-learn model, for ``simulate``, ``demo``, tests and
benchmarks.

Each message is one serialized prediction (see the message contract in the README): the
``digits-committee@1`` model (``hitl_router.model``) classifies held-out 8x8 digit images drawn
with replacement, its five members' probabilities become ``ensemble``, a few input summaries
become ``features``, and the true class is added as ``label`` so offline replay can measure how
many errors the router captured. With ``drift_at=N`` the inputs degrade from the N-th message on
(washed-out, noisy images from mostly ``phone`` devices) *before* the model predicts, so
features, confidences and accuracy drift together. ``malformed_rate`` replaces that fraction of
messages with one of ``MALFORMED_KINDS``.

Generation is vectorised per batch of ``BATCH`` images; serialization uses ``orjson``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from hitl_router.errors import InputError, KafkaSetupError
from hitl_router.router.outputs import id_of
from hitl_router.router.uncertainty import apply_temperature

if TYPE_CHECKING:
    from hitl_router.model import DigitsCommittee

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "predictions"
BATCH = 1000
DECIMALS = 6  # probabilities
FEATURE_DECIMALS = 4

FLAGS = ("pii", "user_report", "detector:blur")
DEVICES = ("scanner-a", "scanner-b", "phone")
DEVICE_WEIGHTS = (0.45, 0.45, 0.10)
DRIFT_DEVICE_WEIGHTS = (0.10, 0.10, 0.80)
# After drift_at: pixels * DRIFT_CONTRAST + N(0, DRIFT_NOISE), clipped to [0, 16]. On the
# held-out split this takes committee accuracy from ~0.97 to ~0.7 and mean top prob from
# ~0.89 to ~0.59.
DRIFT_CONTRAST = 0.6
DRIFT_NOISE = 4.0

MALFORMED_KINDS = (
    "not_json",  # b"not json"
    "bad_utf8",  # b"\xff\xfe"
    "not_object",  # b"[1,2]"
    "missing_probs",  # object without "probs"
    "probs_sum",  # probs summing to 1.5 (all entries still in [0, 1])
    "negative_prob",  # probs with a negative entry (still summing to 1)
    "empty_id",  # "id": ""
    "ensemble_length",  # one ensemble member one class short
    "nan",  # a NaN literal in probs
    "deep_meta",  # meta nested 200 objects deep
)
DEEP_META_DEPTH = 200
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_TOPIC",
    "DEVICES",
    "FLAGS",
    "MALFORMED_KINDS",
    "Simulator",
    "add_parser",
    "features",
    "get_committee",
    "message_key",
    "publish",
    "write_jsonl",
]


def get_committee(seed: int = 0) -> DigitsCommittee:
    """The cached ``DigitsCommittee`` (imported lazily: scikit-learn is slow to import)."""
    from hitl_router.model import get_committee as _get

    return _get(seed)


def __getattr__(name: str) -> Any:  # lazy re-export of the model class
    if name == "DigitsCommittee":
        from hitl_router.model import DigitsCommittee

        return DigitsCommittee
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- features


def _feature_columns(X: np.ndarray) -> dict[str, list]:
    """Input summaries of images ``X`` (n, 64), as python lists (vectorised)."""
    X = np.asarray(X, dtype=np.float64).reshape(-1, 8, 8)
    total = X.sum(axis=(1, 2))
    pos = np.arange(8, dtype=np.float64)
    safe = np.where(total > 0, total, 1.0)
    row_c = np.where(total > 0, X.sum(axis=2) @ pos / safe, 3.5)
    col_c = np.where(total > 0, X.sum(axis=1) @ pos / safe, 3.5)
    return {
        "ink": np.round(total / 64.0, FEATURE_DECIMALS).tolist(),
        "ink_pixels": (X > 0).sum(axis=(1, 2)).tolist(),
        "row_center": np.round(row_c, FEATURE_DECIMALS).tolist(),
        "col_center": np.round(col_c, FEATURE_DECIMALS).tolist(),
    }


def _draw_devices(
    rng: np.random.Generator, n: int, weights: np.ndarray | tuple[float, ...]
) -> list[str]:
    """``n`` device names; ``weights`` is one distribution or one per row, shape (n, 3)."""
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), (n, len(DEVICES)))
    cum = np.cumsum(w, axis=1)
    cum /= cum[:, -1:]
    u = rng.random(n)
    idx = (u[:, None] >= cum[:, :-1]).sum(axis=1)
    return [DEVICES[k] for k in idx.tolist()]


def features(
    X: np.ndarray,
    rng: np.random.Generator | int | None = None,
    device_weights: tuple[float, ...] = DEVICE_WEIGHTS,
) -> list[dict[str, Any]]:
    """Input summaries per image of ``X`` (n, 64), pixels 0..16.

    ``ink`` (mean pixel intensity), ``ink_pixels`` (pixels > 0), ``row_center`` and
    ``col_center`` (intensity centroid, 0..7) and a categorical ``device`` drawn from
    ``DEVICES`` with ``device_weights``. Floats are rounded to 4 decimals.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    cols = _feature_columns(X)
    devices = _draw_devices(rng, len(cols["ink"]), device_weights)
    return [
        {"ink": a, "ink_pixels": b, "row_center": c, "col_center": d, "device": e}
        for a, b, c, d, e in zip(
            cols["ink"],
            cols["ink_pixels"],
            cols["row_center"],
            cols["col_center"],
            devices,
            strict=True,
        )
    ]


def _round_dist(a: np.ndarray, decimals: int = DECIMALS) -> np.ndarray:
    """Round distributions (last axis) to ``decimals`` and keep each summing to 1.

    The rounding residual (at most 5e-6 for 10 classes) goes to each row's largest
    entry, so values stay ``decimals``-place decimals, in [0, 1], and rows sum to 1
    up to float error (~1e-15).
    """
    r = np.round(a, decimals)
    resid = 1.0 - r.sum(axis=-1, keepdims=True)
    top = r.argmax(axis=-1)[..., None]
    np.put_along_axis(r, top, np.take_along_axis(r, top, axis=-1) + resid, axis=-1)
    return np.clip(np.round(r, decimals), 0.0, 1.0)


def degrade(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The drifted version of images ``X``: lower contrast plus strong Gaussian noise."""
    noisy = X * DRIFT_CONTRAST + rng.normal(0.0, DRIFT_NOISE, size=X.shape)
    return np.clip(noisy, 0.0, 16.0)


# ---------------------------------------------------------------- simulator


class Simulator:
    """Serialized predictions of the digits committee, as a Kafka producer would send them.

    ``seed`` fixes everything but ``ts``: the same arguments give the same messages.
    ``flag_rate``: fraction of predictions carrying one upstream flag from ``FLAGS``.
    ``malformed_rate``: fraction of messages replaced by a malformed one (``MALFORMED_KINDS``,
    uniformly). ``drift_at``: message index from which inputs degrade. ``committee``: a model
    to use instead of the cached ``get_committee(0)``.
    """

    def __init__(
        self,
        seed: int = 0,
        flag_rate: float = 0.01,
        malformed_rate: float = 0.0,
        drift_at: int | None = None,
        id_prefix: str = "p",
        *,
        committee: DigitsCommittee | None = None,
        batch: int = BATCH,
        sharpen: float = 1.0,
    ) -> None:
        if not 0.0 <= flag_rate <= 1.0:
            raise ValueError(f"flag_rate must be in [0, 1], got {flag_rate}")
        if not 0.0 <= malformed_rate <= 1.0:
            raise ValueError(f"malformed_rate must be in [0, 1], got {malformed_rate}")
        if drift_at is not None and drift_at < 0:
            raise ValueError(f"drift_at must be >= 0, got {drift_at}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if not 0.0 < sharpen <= 100.0:
            raise ValueError(f"sharpen must be in (0, 100], got {sharpen}")
        #: the published probabilities are softmax(log p / sharpen): below 1 the model is
        #: over-confident (what temperature scaling must undo with T = 1 / sharpen)
        self.sharpen = float(sharpen)
        self.batch = batch
        self.seed = seed
        self.flag_rate = float(flag_rate)
        self.malformed_rate = float(malformed_rate)
        self.drift_at = drift_at
        self.id_prefix = id_prefix
        self.committee = committee if committee is not None else get_committee(0)
        X, y = self.committee.holdout
        self._X = np.asarray(X, dtype=np.float64)
        self._y = np.asarray(y)
        self._classes = list(self.committee.classes)
        self._model = self.committee.name

    # -- core: one batch of records plus which positions are malformed (kind index or -1)
    def _batch(
        self, rng: np.random.Generator, start: int, n: int
    ) -> tuple[list[dict[str, Any]], list[int]]:
        idx = rng.integers(0, len(self._X), size=n)
        flag_u = rng.random(n)
        flag_pick = rng.integers(0, len(FLAGS), size=n)
        bad_u = rng.random(n)
        bad_kind = rng.integers(0, len(MALFORMED_KINDS), size=n)
        X = self._X[idx]
        if self.drift_at is not None and start + n > self.drift_at:
            drifted = np.arange(start, start + n) >= self.drift_at
            X[drifted] = degrade(X[drifted], rng)
            dev_w = np.where(drifted[:, None], DRIFT_DEVICE_WEIGHTS, DEVICE_WEIGHTS)
        else:
            dev_w = np.asarray(DEVICE_WEIGHTS)
        devices = _draw_devices(rng, n, dev_w)
        probs, members = self.committee.predict_batch(X)
        if self.sharpen != 1.0:
            probs = apply_temperature(probs, self.sharpen)
            members = apply_temperature(members, self.sharpen)
        # numpy rows go straight into the dicts: orjson serializes them (OPT_SERIALIZE_NUMPY)
        # byte-for-byte like lists of floats, without creating ~60 float objects per message
        probs_r = _round_dist(probs)
        ens_r = _round_dist(members.transpose(1, 0, 2))
        cols = _feature_columns(X)
        labels = [self._classes[k] for k in self._y[idx].tolist()]
        flagged = (flag_u < self.flag_rate).tolist()
        picks = flag_pick.tolist()
        kinds = np.where(bad_u < self.malformed_rate, bad_kind, -1).tolist()
        model, classes, prefix = self._model, self._classes, self.id_prefix
        records = []
        for k in range(n):
            rec: dict[str, Any] = {
                "id": f"{prefix}-{start + k:08d}",
                "model": model,
                "probs": probs_r[k],
                "classes": classes,
                "ensemble": ens_r[k],
            }
            if flagged[k]:
                rec["flags"] = [FLAGS[picks[k]]]
            rec["features"] = {
                "ink": cols["ink"][k],
                "ink_pixels": cols["ink_pixels"][k],
                "row_center": cols["row_center"][k],
                "col_center": cols["col_center"][k],
                "device": devices[k],
            }
            rec["label"] = labels[k]
            records.append(rec)
        return records, kinds

    def _batches(self, count: int | None) -> Iterator[tuple[int, list[dict], list[int]]]:
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        rng = np.random.default_rng(self.seed)
        start = 0
        while count is None or start < count:
            n = self.batch if count is None else min(self.batch, count - start)
            records, kinds = self._batch(rng, start, n)
            yield start, records, kinds
            start += n

    def _malformed(self, kind: str, i: int, rec: dict[str, Any]) -> bytes:
        bad_id = f"{self.id_prefix}-bad-{i:08d}"
        if kind == "not_json":
            return b"not json"
        if kind == "bad_utf8":
            return b"\xff\xfe"
        if kind == "not_object":
            return b"[1,2]"
        if kind == "nan":
            return b'{"id":"%s","model":"m","probs":[NaN,1]}' % bad_id.encode()
        rec["id"] = bad_id
        rec["ts"] = time.time()
        rec["probs"] = probs = rec["probs"].tolist()
        rec["ensemble"] = rec["ensemble"].tolist()
        if kind == "missing_probs":
            del rec["probs"]
        elif kind == "probs_sum":
            lo = min(range(len(probs)), key=probs.__getitem__)
            probs[lo] = round(probs[lo] + 0.5, DECIMALS)
        elif kind == "negative_prob":
            order = sorted(range(len(probs)), key=probs.__getitem__)
            probs[order[0]] = round(probs[order[0]] - 0.1, DECIMALS)
            probs[order[1]] = round(probs[order[1]] + 0.1, DECIMALS)
        elif kind == "empty_id":
            rec["id"] = ""
        elif kind == "ensemble_length":
            rec["ensemble"][0] = rec["ensemble"][0][:-1]
        elif kind == "deep_meta":
            meta = b'{"d":' * DEEP_META_DEPTH + b"0" + b"}" * DEEP_META_DEPTH
            return orjson.dumps(rec)[:-1] + b',"meta":' + meta + b"}"
        else:  # pragma: no cover - MALFORMED_KINDS and this function agree
            raise AssertionError(kind)
        return orjson.dumps(rec)

    def tagged_messages(self, count: int | None) -> Iterator[tuple[str | None, bytes]]:
        """``(kind, message)`` pairs: ``kind`` is None for a valid prediction, else the
        ``MALFORMED_KINDS`` entry it was replaced by. ``count=None`` never ends."""
        dumps, now = orjson.dumps, time.time
        for start, records, kinds in self._batches(count):
            for k, rec in enumerate(records):
                kind = kinds[k]
                if kind < 0:
                    rec["ts"] = now()
                    yield None, dumps(rec, option=_NUMPY)
                else:
                    name = MALFORMED_KINDS[kind]
                    yield name, self._malformed(name, start + k, rec)

    def messages(self, count: int | None) -> Iterator[bytes]:
        """``count`` serialized messages (orjson bytes, no newlines); None = endless."""
        return (msg for _kind, msg in self.tagged_messages(count))

    def records(self, count: int | None) -> Iterator[dict[str, Any]]:
        """The valid predictions among the first ``count`` positions, as dicts.

        Positions that ``messages`` would replace by a malformed message are skipped.
        """
        now = time.time
        for _start, records, kinds in self._batches(count):
            for rec, kind in zip(records, kinds, strict=True):
                if kind < 0:
                    rec["probs"] = rec["probs"].tolist()
                    rec["ensemble"] = rec["ensemble"].tolist()
                    rec["ts"] = now()
                    yield rec


def write_jsonl(path: str | os.PathLike[str], count: int, **kw: Any) -> int:
    """Write ``count`` messages of ``Simulator(**kw)`` to ``path``, one per line.

    Returns the number of lines written.
    """
    return _write_lines(path, Simulator(**kw).messages(count))


def _write_lines(path: str | os.PathLike[str], messages: Iterable[bytes]) -> int:
    n = 0
    with open(path, "wb", buffering=1 << 20) as fh:
        for msg in messages:
            if b"\n" in msg or b"\r" in msg:  # pragma: no cover - orjson never emits these
                raise AssertionError("message contains a raw newline")
            fh.write(msg)
            fh.write(b"\n")
            n += 1
    return n


# ---------------------------------------------------------------- Kafka


def message_key(msg: bytes) -> bytes | None:
    """The Kafka key for a message: its ``id`` as bytes, or None if it has none.

    Fast path for messages that start with ``{"id":"...`` (as ``Simulator`` writes them);
    otherwise the message is parsed.
    """
    if msg.startswith(b'{"id":"'):
        end = msg.find(b'"', 7)
        if end > 7 and b"\\" not in msg[7:end]:
            return msg[7:end]
        if end == 7:
            return None
    pid = id_of(msg)
    return pid.encode() if pid is not None else None


def _kafka_unreachable(exc: BaseException, bootstrap: str) -> KafkaSetupError:
    return KafkaSetupError(f"cannot reach Kafka at {bootstrap}: {exc}")


def publish(
    bootstrap: str,
    topic: str,
    messages: Iterable[bytes],
    rate: float = 0.0,
    keys: Callable[[bytes], bytes | None] | None = message_key,
    *,
    stop: threading.Event | None = None,
    producer: Any = None,
    bootstrap_timeout_ms: int = 10_000,
) -> int:
    """Send ``messages`` to ``topic``; return how many the broker acknowledged.

    ``rate``: messages per second (0 = as fast as possible), paced in small chunks
    (about 200 wake-ups per second at most). ``keys(msg)`` gives each message's key
    (default: its id; None = unkeyed). ``stop``: an event that ends the run early (for the
    demo's thread). ``producer``: an existing producer to use (not closed here); by default
    a ``KafkaProducer`` is created and closed. Flushes before returning.

    Raises ``InputError`` for a negative rate and ``KafkaSetupError`` when the broker
    cannot be reached.
    """
    if rate < 0 or rate != rate:
        raise InputError(f"rate must be >= 0 messages/s, got {rate}")
    from kafka import errors as kafka_errors

    # kafka-python 3.x reports an unreachable bootstrap as KafkaTimeoutError ("Unable to
    # bootstrap from ..."); older releases raised NoBrokersAvailable. Any KafkaError while
    # connecting means the broker cannot be used.
    unreachable: tuple[type[BaseException], ...] = (kafka_errors.KafkaError,)
    if hasattr(kafka_errors, "NoBrokersAvailable"):  # pragma: no cover - kafka-python < 3
        unreachable += (kafka_errors.NoBrokersAvailable,)
    own = producer is None
    if own:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                linger_ms=5,
                batch_size=256 * 1024,
                compression_type=None,
                bootstrap_timeout_ms=bootstrap_timeout_ms,
            )
        except unreachable as exc:
            raise _kafka_unreachable(exc, bootstrap) from exc
        except ValueError as exc:  # e.g. "host:port:x"
            raise InputError(f"bad bootstrap servers {bootstrap!r}: {exc}") from exc

    failed = 0
    first_error: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        nonlocal failed
        failed += 1
        if not first_error:
            first_error.append(exc)

    chunk = 1 if rate <= 0 else max(1, min(1000, int(rate / 200)))
    sent = 0
    it = iter(messages)
    t0 = time.perf_counter()
    try:
        while True:
            if stop is not None and stop.is_set():
                break
            if rate > 0 and sent % chunk == 0:
                delay = t0 + sent / rate - time.perf_counter()
                if delay > 0:
                    if stop is not None:
                        if stop.wait(delay):
                            break
                    else:
                        time.sleep(delay)
            try:
                msg = next(it)
            except StopIteration:
                break
            try:
                fut = producer.send(topic, value=msg, key=keys(msg) if keys else None)
            except kafka_errors.KafkaTimeoutError as exc:  # no metadata within max_block_ms
                raise KafkaSetupError(
                    f"Kafka at {bootstrap} gave no metadata for topic {topic!r} "
                    f"(does it exist?): {exc}"
                ) from exc
            fut.add_errback(on_error)
            sent += 1
        producer.flush()
    finally:
        if own:
            producer.close()
    if failed:
        log.warning(
            "%d of %d messages to %s were not delivered (first error: %s)",
            failed,
            sent,
            topic,
            first_error[0] if first_error else "?",
        )
    return sent - failed


# ---------------------------------------------------------------- CLI


def batch_for_rate(rate: float) -> int:
    """Generation batch for a paced stream: small enough that ``ts`` (stamped when a
    batch is generated) is at most ~50 ms older than the send."""
    return BATCH if rate <= 0 else max(1, min(BATCH, int(rate / 20)))


def _check_options(args: argparse.Namespace) -> None:
    if args.count < 0:
        raise InputError(f"--count must be >= 0, got {args.count}")
    if not args.rate >= 0:
        raise InputError(f"--rate must be >= 0 messages/s, got {args.rate}")
    if not 0.0 <= args.flag_rate <= 1.0:
        raise InputError(f"--flag-rate must be in [0, 1], got {args.flag_rate}")
    if not 0.0 <= args.malformed_rate <= 1.0:
        raise InputError(f"--malformed-rate must be in [0, 1], got {args.malformed_rate}")
    if args.drift_at is not None and args.drift_at < 0:
        raise InputError(f"--drift-at must be >= 0, got {args.drift_at}")
    if not args.id_prefix:
        raise InputError("--id-prefix must not be empty")
    if not 0.0 < args.sharpen <= 100.0:
        raise InputError(f"--sharpen must be in (0, 100], got {args.sharpen}")


def run_simulate(args: argparse.Namespace) -> int:
    """The ``simulate`` command: publish (or write with ``--out``) simulated predictions."""
    _check_options(args)
    sim = Simulator(
        seed=args.seed,
        flag_rate=args.flag_rate,
        malformed_rate=args.malformed_rate,
        drift_at=args.drift_at,
        id_prefix=args.id_prefix,
        batch=batch_for_rate(args.rate),
        sharpen=args.sharpen,
    )
    t0 = time.perf_counter()
    if args.out:
        out = Path(args.out)
        try:
            n = _write_lines(out, sim.messages(args.count))
        except OSError as exc:
            raise InputError(f"cannot write {out}: {exc}") from exc
        dt = time.perf_counter() - t0
        print(f"wrote {n} messages to {out} in {dt:.2f} s ({n / max(dt, 1e-9):,.0f} msg/s)")
        return 0
    n = publish(args.bootstrap, args.topic, sim.messages(args.count), rate=args.rate)
    dt = time.perf_counter() - t0
    print(
        f"sent {n} messages to {args.topic} at {args.bootstrap} in {dt:.2f} s "
        f"({n / max(dt, 1e-9):,.0f} msg/s)"
    )
    if n < args.count:
        print(f"{args.count - n} messages were not delivered", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``simulate`` command on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "simulate",
        help="publish predictions of a real scikit-learn model to Kafka",
        description=(
            "Publish predictions of a digits classifier committee (scikit-learn, trained at "
            "start-up in about a second) to a Kafka topic, or write them to a JSONL file."
        ),
    )
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("HITL_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="Kafka bootstrap servers (default: $HITL_BOOTSTRAP or %(default)s)",
    )
    p.add_argument("--topic", default=DEFAULT_TOPIC, help="topic (default: %(default)s)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="messages per second, 0 = as fast as possible (default: %(default)s)",
    )
    p.add_argument(
        "--count", type=int, default=10_000, help="messages to send (default: %(default)s)"
    )
    p.add_argument(
        "--drift-at",
        type=int,
        default=None,
        metavar="N",
        help="degrade the inputs from the N-th message on (default: no drift)",
    )
    p.add_argument(
        "--flag-rate",
        type=float,
        default=0.01,
        help="fraction of predictions with an upstream flag (default: %(default)s)",
    )
    p.add_argument(
        "--malformed-rate",
        type=float,
        default=0.0,
        help="fraction of messages replaced by malformed ones (default: %(default)s)",
    )
    p.add_argument(
        "--sharpen",
        type=float,
        default=1.0,
        metavar="T",
        help="publish softmax(log p / T): T < 1 makes the model over-confident "
        "(default: %(default)s, the model as trained)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--id-prefix", default="p", help="prediction id prefix (default: %(default)s)")
    p.add_argument(
        "--out",
        metavar="FILE.jsonl",
        default=None,
        help="write the messages to this JSONL file instead of publishing them",
    )
    p.set_defaults(handler=run_simulate)
    return p
