"""Faults an operator meets, on a real local Kafka of this module's own (the broker is
killed and stopped here, so never the session's): nothing is lost and duplicates stay
within what the mechanism allows, one fault at a time.

Each test checks every valid id's fate against ``replay`` (one output per id:
``topics.accepted`` is set) and every dead letter's code at its source offset, counts
duplicates, bounds them (faults.duplicate_bound) and prints a ``FAULT-RESULT {json}``
line: ``pytest tests/integration/test_faults.py -q -s | grep FAULT-RESULT``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import orjson
import pytest

from hitl_router.localkafka.broker import LocalKafka, is_reachable
from hitl_router.simulate import Simulator
from tests.conftest import free_port
from tests.integration.faults import (
    SHUTDOWN_TIMEOUT_S,
    FaultRun,
    HealthPoller,
    create_topic,
    duplicate_bound,
    fault_config,
    log_records,
    report,
    stopped,
    wait_members,
)
from tests.integration.helpers import cli, produce

# ``faults``: ``make test`` runs these alone, after the others (two at a time): their
# duplicate bounds count one commit interval of input, and a busy machine stretches it
pytestmark = [pytest.mark.kafka, pytest.mark.faults]

#: when the fault strikes: this many predictions handed to the producer (of 15,000) and
#: this many decided (the worker has caught up with the stream: mid-stream, steady state)
FAULT_AT = 5000
DECIDED_AT = 4000
#: the contract's defaults for outputs' sizes (limits.*)
DEAD_LETTER_RAW_BYTES = 65536
MAX_OUTPUT_BYTES = 1_000_000
#: predictions per second of the flood (as fast as the test's producer goes)
FLOOD_RATE = 20_000


@pytest.fixture(scope="module")
def fault_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(
        port=free_port(), controller_port=free_port(), run_dir=tmp_path_factory.mktemp("kafka")
    )
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def broker(fault_broker: LocalKafka) -> LocalKafka:
    """The module's broker, up (a test that failed mid-outage may have left it down)."""
    if not is_reachable(fault_broker.bootstrap):
        fault_broker.start(timeout=120)
    return fault_broker


def test_broker_kill_9_and_restart_mid_stream(broker, tmp_path):
    with FaultRun(broker.bootstrap, tmp_path, seed=1) as run:
        worker = run.start_worker().wait_ready()
        run.produce().wait_sent(FAULT_AT)
        worker.wait_deciding(DECIDED_AT)
        mark = worker.log.stat().st_size
        old_pid = broker.pid()
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        killed = time.time()
        time.sleep(2)
        # an unclean death leaves the pid file behind; it must not stop the restart
        assert broker.pid_file.exists() and broker.pid() is None
        assert broker.start(timeout=120)
        back = time.time()
        mark_back = worker.log.stat().st_size
        outcome = run.finish()
        alive = worker.proc.poll() is None
        loud, records, lines = log_records(worker.log, mark, mark_back)
        recover = run.first_output_after(back)
    report(
        "broker kill -9, restarted",
        outcome,
        run.bound,
        recover_s=recover,
        outage_s=back - killed,
        worker_log_warnings_in_outage=loud,
        worker_log_records_in_outage=records,
        worker_log_lines_in_outage=lines,
    )
    assert alive, f"the worker stopped:\n{worker.tail()}"
    outcome.assert_nothing_lost()
    assert outcome.duplicates <= run.bound
    # one clear warning, then rate-limited reminders: not a line per retry
    assert loud <= (back - killed) + 10, f"{loud} warnings/errors logged in the outage"


def test_broker_down_longer_than_delivery_timeout(broker, tmp_path):
    """The broker stops while the worker drains a backlog, so a delivery is always
    pending (a worker with nothing to deliver rides out any outage: test 1): the
    worker exits 1 once the delivery timeout has passed and the shutdown timeout bounds
    its stop; restarted after the broker is back, it loses nothing."""
    delivery_timeout = 5
    outage = 20
    n = 40_000
    with FaultRun(
        broker.bootstrap,
        tmp_path,
        seed=2,
        n=n,
        rate=FLOOD_RATE,
        worker={"delivery_timeout_s": delivery_timeout},
    ) as run:
        run.produce().join_all()  # the backlog, before any worker
        worker = run.start_worker().wait_ready()
        t0 = worker.wait_deciding(4000)
        d0 = worker.predictions()
        t1 = worker.wait_deciding(d0 + 4000)
        drain_rate = (worker.predictions() - d0) / (time.time() - t0)
        mark = worker.log.stat().st_size
        down = time.time()
        broker.stop()
        # a broker stopping cleanly unloads its group coordinator first: commits fail
        # while outputs are still delivered, so what was acked meanwhile is redone too
        stopping_s = time.time() - down
        bound = duplicate_bound(run.cfg, drain_rate * (1 + stopping_s))
        exit_bound = delivery_timeout + SHUTDOWN_TIMEOUT_S + 5
        code = worker.wait_exit(timeout=max(exit_bound - (time.time() - down), 1))
        exited = time.time()
        text = worker.log.read_bytes()[mark:].decode(errors="replace")
        loud, records, lines = log_records(worker.log, mark)
        time.sleep(max(0.0, down + outage - time.time()))
        assert broker.start(timeout=120)
        back = time.time()
        restarted = run.start_worker("w-restarted").wait_ready()  # as a supervisor would
        run.positions = run.producer.join_all()
        outcome = run.finish()
        recover = run.first_output_after(restarted.started_at)
    report(
        "broker down 20 s > delivery timeout 5 s (worker draining a backlog)",
        outcome,
        bound,
        recover_s=recover,
        outage_s=back - down,
        exit_code=code,
        exit_after_s=exited - down,
        broker_stopping_s=stopping_s,
        drain_rate=drain_rate,
        worker_log_warnings_in_outage=loud,
        worker_log_records_in_outage=records,
        worker_log_lines_in_outage=lines,
    )
    assert t1 > t0
    assert code == 1, f"exit {code}:\n{text[-3000:]}"
    assert exited - down <= exit_bound
    assert re.search(r"not delivered", text), text[-3000:]
    # one clear warning, then rate-limited reminders: not a line per retry
    # (warnings and errors: the INFO lines of the stop itself are not outage noise)
    assert loud <= (exited - down) + 10, f"{loud} warnings/errors:\n{text[-3000:]}"
    outcome.assert_nothing_lost()
    assert outcome.duplicates <= bound


def test_worker_sigterm_mid_stream(broker, tmp_path):
    with FaultRun(broker.bootstrap, tmp_path, seed=3) as run:
        worker = run.start_worker().wait_ready()
        run.produce().wait_sent(FAULT_AT)
        worker.wait_deciding(DECIDED_AT)
        sent = worker.signal(signal.SIGTERM)
        code = worker.wait_exit(SHUTDOWN_TIMEOUT_S + 5)
        stopped_after = time.time() - sent
        restarted = run.start_worker("w-restarted")
        outcome = run.finish()
        recover = run.first_output_after(restarted.started_at)
    # a clean stop settles and commits what is in flight; at most that is redone
    worker_cfg = run.cfg["worker"]
    bound = (worker_cfg.get("max_in_flight", 4) + 1) * worker_cfg["batch_size"]
    report(
        "worker SIGTERM, restarted",
        outcome,
        bound,
        recover_s=recover,
        exit_code=code,
        stop_s=stopped_after,
    )
    assert code == 0, worker.tail()
    outcome.assert_nothing_lost()
    assert outcome.duplicates <= bound


def test_worker_kill_9_restarted_with_static_membership(broker, tmp_path):
    with FaultRun(
        broker.bootstrap, tmp_path, seed=4, worker={"group_instance_id": "faults-static-0"}
    ) as run:
        worker = run.start_worker().wait_ready()
        run.produce().wait_sent(FAULT_AT)
        worker.wait_deciding(DECIDED_AT)
        run.wait_steady(worker)  # measured once: 5,914 redone, killed while catching up
        worker.signal(signal.SIGKILL)
        worker.wait_exit(10)
        restarted = run.start_worker("w-restarted")
        outcome = run.finish(timeout=150)
        recover = run.first_output_after(restarted.started_at)
    report("worker kill -9, restarted (static membership)", outcome, run.bound, recover_s=recover)
    outcome.assert_nothing_lost()
    assert outcome.duplicates <= run.bound
    # the restarted member takes its partitions back at once, not after a session timeout
    assert recover is not None and recover < 30, f"first new decision after {recover} s"


def test_worker_frozen_longer_than_its_session(broker, tmp_path):
    """SIGSTOP for 25 s — a long GC pause, a paused VM: past the 10 s session timeout
    (the group drops the worker) but within the 30 s delivery timeout. Resumed, the
    worker rejoins and goes on (same pid); what it had acked but not committed is
    redone."""
    freeze = 25
    with FaultRun(broker.bootstrap, tmp_path, seed=8) as run:
        worker = run.start_worker().wait_ready()
        run.produce().wait_sent(FAULT_AT)
        worker.wait_deciding(DECIDED_AT)
        run.wait_steady(worker)
        with stopped(worker.pid):
            time.sleep(freeze)
        resumed = time.time()
        outcome = run.finish(timeout=150)
        alive = worker.proc.poll() is None
        recover = run.first_output_after(resumed)
    report(f"worker SIGSTOP {freeze} s (> session timeout)", outcome, run.bound, recover_s=recover)
    assert alive, worker.tail()
    outcome.assert_nothing_lost()
    assert outcome.duplicates <= run.bound


def test_one_of_two_workers_killed(broker, tmp_path):
    with FaultRun(broker.bootstrap, tmp_path, seed=5) as run:
        workers = [run.start_worker(), run.start_worker()]
        for w in workers:
            w.wait_ready()
        wait_members(broker.bootstrap, run.cfg["kafka"]["group_id"], 2)
        run.produce().wait_sent(FAULT_AT)
        for w in workers:
            w.wait_deciding(DECIDED_AT // 2)
        killed = workers[0].signal(signal.SIGKILL)
        outcome = run.finish(timeout=150)
        survivor_alive = workers[1].proc.poll() is None
        resume = run.resume_per_partition(killed)
    # the dead worker's partitions: no output for a while after the kill
    stalled = {p: s for p, s in resume.items() if s is None or s > 1.0}
    recover = max((s for s in resume.values() if s is not None), default=None)
    report(
        "one of two workers kill -9 (dynamic membership)",
        outcome,
        run.bound,
        recover_s=recover,
        resume_per_partition_s={p: round(s, 2) if s else s for p, s in resume.items()},
    )
    assert survivor_alive
    outcome.assert_nothing_lost()
    assert outcome.duplicates <= run.bound
    assert stalled, f"no partition stalled at the kill: {resume}"
    assert None not in resume.values(), f"a partition never resumed: {resume}"
    # about the session timeout (10 s), not Faust's default 60 s
    assert recover is not None and recover < 30, f"partitions resumed after {recover} s"


def test_output_topic_deleted_and_recreated(broker, tmp_path):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    # the default: longer than the test keeps the worker frozen for the deletion (a
    # shorter one times out deliveries that were only waiting for the freeze to end)
    delivery_timeout = 30
    with FaultRun(
        broker.bootstrap, tmp_path, seed=6, worker={"delivery_timeout_s": delivery_timeout}
    ) as run:
        accepted = run.topics["accepted"]
        poller = HealthPoller()
        worker = run.start_worker().wait_ready()
        poller.worker = worker
        poller.start()
        run.produce().wait_sent(FAULT_AT)
        worker.wait_deciding(DECIDED_AT)
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        # paused so that the reader has everything written to the topic before it goes
        # (outputs deleted unread would look lost); the worker meets a topic that vanished
        with stopped(worker.pid):
            run.reader.catch_up()
            run.reader.drop_topic(accepted)
            admin.delete_topics([accepted])
            deadline = time.monotonic() + 30
            while accepted in admin.list_topics():
                assert time.monotonic() < deadline, "the topic was not deleted"
                time.sleep(0.2)
            while True:  # the deletion completes in the background
                try:
                    admin.create_topics([NewTopic(accepted, 1, 1)], wait_for_metadata=True)
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the topic was not re-created"
                    time.sleep(0.5)
            run.reader.add_topic(accepted, 1)
        admin.close()
        fault = time.time()
        # supervise: a worker that exits is restarted; it must not crash-loop or hang
        exits: list[tuple[int, float]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                exits.append((worker.proc.returncode, time.time() - fault))
                if len(exits) > 2:
                    break
                worker = run.start_worker(f"w-restart{len(exits)}")
                poller.worker = worker
            if not run.producer.is_alive():
                run.positions = run.producer.join_all()
                if run.reader.covers(run.expected_ids(), run.expected_dead()) == (0, 0):
                    break
            time.sleep(0.2)
        outcome = run.finish(timeout=30)
        poller.stop()
        window = delivery_timeout + 5
        lies = poller.lies(window, run.completed_at or time.time())
        recover = run.first_output_after(fault)
    # outputs queued for the vanished partitions are sent again (at most what is in
    # flight), on top of what a worker that exits redoes
    worker_cfg = run.cfg["worker"]
    bound = run.bound + (worker_cfg.get("max_in_flight", 4) + 1) * worker_cfg["batch_size"]
    report(
        "output topic deleted and re-created (1 partition)",
        outcome,
        bound,
        recover_s=recover,
        worker_exits=exits,
        healthz_lies=len(lies),
    )
    assert len(exits) <= 1, f"crash loop: {exits}\n{worker.tail()}"
    if exits:  # exits 1 promptly, and the restart recovers
        code, after = exits[0]
        assert code == 1 and after <= delivery_timeout + SHUTDOWN_TIMEOUT_S + 10, exits
    outcome.assert_nothing_lost()
    assert outcome.duplicates <= bound
    assert poller.samples and any(s[2] == 200 for s in poller.samples), "no /healthz 200"
    assert not lies, f"/healthz said 200 without decisions for {window} s: {lies[:5]}"


def test_flood_of_invalid_messages(broker, tmp_path):
    n_flood = 50_000
    warm = list(Simulator(seed=70, id_prefix="warm").messages(5000))
    flood = list(Simulator(seed=71, malformed_rate=1.0, id_prefix="flood").messages(n_flood))
    behind = list(Simulator(seed=72, id_prefix="behind").messages(5000))
    with FaultRun(broker.bootstrap, tmp_path, raws=warm + flood + behind, rate=FLOOD_RATE) as run:
        assert sum(r["fate"] == "deadletter" for r in run.expected) == n_flood
        worker = run.start_worker().wait_ready()
        warm_ids = {orjson.loads(r)["id"] for r in warm}
        run.produce()
        assert run.wait_covered(warm_ids, set(), 120)
        rss_warm, cpu_warm = worker.rss_mb(), worker.cpu_s()
        outcome = run.finish(timeout=180)
        rss_end, rss_peak = worker.rss_mb(), worker.rss_mb("VmHWM")
        cpu_s = worker.cpu_s() - cpu_warm
        alive = worker.proc.poll() is None
        line_of = {pos: i for i, pos in enumerate(run.positions)}
        acked_at = run.producer.acked_at
        with run.reader.lock:  # seconds from a message's ack by the broker to its dead letter
            latency = sorted(
                ts / 1000 - acked_at[line_of[pos]]
                for ts, pid, pos in run.reader.seen.timeline
                if pid is None
            )
            dead_times = [ts / 1000 for ts, pid, _ in run.reader.seen.timeline if pid is None]
    span = max(dead_times) - min(dead_times)
    report(
        "flood of 50,000 invalid messages",
        outcome,
        0,
        dead_letters=len(dead_times),
        dead_letters_per_s=n_flood / span,
        latency_p50_s=latency[len(latency) // 2],
        latency_max_s=latency[-1],
        worker_cpu_s=cpu_s,
        worker_cpu_per_message_ms=1000 * cpu_s / (n_flood + len(behind)),
        rss_warm_mb=rss_warm,
        rss_end_mb=rss_end,
        rss_growth_mb=rss_end - rss_warm,
        rss_peak_mb=rss_peak,
    )
    assert alive
    outcome.assert_nothing_lost()
    assert outcome.duplicates == 0  # no fault: nothing is redone
    # the dead-letter path keeps up with the flood: no backlog builds (it would show as a
    # latency growing with every message), and it costs less CPU than a valid prediction
    assert latency[-1] < 5, f"dead letters up to {latency[-1]:.1f} s behind the input"
    assert rss_end - rss_warm < 40, f"RSS grew {rss_end - rss_warm:.0f} MB"


def _big_prediction(pid: str, size: int) -> bytes:
    """A valid prediction of ``size`` bytes that ``max_prob_below: 0.7`` routes to review."""
    doc = {"id": pid, "model": "poison", "probs": [0.5, 0.5], "meta": {"pad": ""}}
    pad = size - len(orjson.dumps(doc))
    doc["meta"]["pad"] = "p" * pad
    raw = orjson.dumps(doc)
    assert len(raw) == size
    return raw


def test_poison_pills_on_a_topic_that_allows_them(broker, tmp_path):
    before = list(Simulator(seed=80, id_prefix="before").messages(1000))
    after = list(Simulator(seed=81, id_prefix="after").messages(1000))
    big = _big_prediction("poison-big", 1_040_000)
    pills = [b"\xff" * 900_000, b"\x01" * 900_000, big]
    codes = ["not_utf8", "not_json", "output_too_large"]
    with FaultRun(
        broker.bootstrap,
        tmp_path,
        raws=before + pills + after,
        predictions_topic_config={"max.message.bytes": "2097152"},
    ) as run:
        first = len(before)
        replayed = run.expected[first : first + 3]
        assert [r["fate"] for r in replayed] == ["deadletter", "deadletter", "review"]
        assert [r.get("error", {}).get("code") for r in replayed[:2]] == codes[:2]
        # valid, but its review item cannot fit an output: dead-lettered by the worker
        run.expected[first + 2] = {"id": None, "fate": "deadletter", "error": {"code": codes[2]}}
        worker = run.start_worker().wait_ready()
        run.positions = produce(broker.bootstrap, run.topics["predictions"], run.raws)
        outcome = run.finish(timeout=120)
        alive = worker.proc.poll() is None
        letters = [run.reader.seen.dead.get(run.positions[first + k], []) for k in range(3)]
    report("poison pills (900 KB not UTF-8, 900 KB not JSON, 1.04 MB review item)", outcome, 0)
    assert alive, worker.tail()
    outcome.assert_nothing_lost()
    for payload, code, got in zip(pills, codes, letters, strict=True):
        assert got, f"no dead letter for {code}"
        letter = got[0]
        assert letter["error"]["code"] == code
        assert letter["raw_size"] == len(payload)
        assert letter["raw_sha256"] == hashlib.sha256(payload).hexdigest()
        assert letter["raw_truncated"] is True
        raw = letter["raw"]
        prefix = base64.b64decode(raw) if letter.get("raw_encoding") == "base64" else raw.encode()
        assert len(prefix) <= DEAD_LETTER_RAW_BYTES and payload.startswith(prefix)
        assert letter["source"]["topic"] == run.topics["predictions"]


def test_output_topic_smaller_than_max_output_bytes_refuses_to_start(broker, tmp_path):
    cfg_path = tmp_path / "config.yaml"
    cfg = fault_config(cfg_path, broker.bootstrap)
    accepted = cfg["topics"]["accepted"]
    create_topic(broker.bootstrap, accepted, 6, {"max.message.bytes": "500000"})
    try:
        res = cli("worker", "-c", str(cfg_path), "--metrics-port", str(free_port()), timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker started despite {accepted}'s max.message.bytes=500000")
    text = (res.stdout + res.stderr).decode(errors="replace")
    numbers = {int(re.sub(r"[,_ ]", "", n)) for n in re.findall(r"\d[\d,_ ]*\d", text)}
    report(
        "output topic max.message.bytes < limits.max_output_bytes",
        None,
        None,
        exit_code=res.returncode,
    )
    assert res.returncode == 2, text[-3000:]
    assert accepted in text and {500_000, MAX_OUTPUT_BYTES} <= numbers, text[-3000:]
