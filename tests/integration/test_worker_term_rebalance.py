"""A worker stopped (SIGTERM) while its consumer group is still rebalancing
exits 0, and the mail goes on to the others (issue 15: the chaos suite's
worker churn).

librdkafka before 2.2.1 aborts in rd_kafka_destroy() when a consumer joined
its group (cooperative-sticky) but no SyncGroup ever completed: the
assignor's state is still NULL and its destroy asserts it
(`rdkafka_sticky_assignor.c: rd_kafka_sticky_assignor_state_destroy:
Assertion 'assignor_state' failed`, librdkafka #4312). A worker has one
consumer per queue topic and retry tier, each in its own group, so one
stopped a second or two after it started, while those groups rebalance
around it, often has such a consumer; the worker then died of SIGABRT after
draining (lib/io/ms_kafka.c, ms_consumer_free, now leaves that handle to the
process's exit).
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import mslocal
from test_worker_delivery import KCAT, envelope, message, new_qid, produce

ROUNDS = 12         # workers added and stopped again
BATCH = 15          # messages produced per round (and at the start)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_worker_sigterm_during_rebalance_exits_zero(cluster_factory):
    cl = cluster_factory(frontends=0, workers=1,
                         worker_extra={"delivery": {"max_in_flight": 8}})
    rng = random.Random(15)
    qids: list = []
    stop_producing = threading.Event()

    def producer() -> None:
        while not stop_producing.is_set():
            batch = [new_qid() for _ in range(BATCH)]
            produce(cl, [(None, envelope(q, [f"t.{q}@example.net"], message(q)))
                         for q in batch])
            qids.extend(batch)
            stop_producing.wait(1.0)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    try:
        # Its SIGTERM handler is installed before it logs event=started
        # (earlier, SIGTERM kills it outright: nothing to drain yet). Its
        # consumers are joining their groups by then: stopped while those
        # are still settling, before, during or just after their first
        # assignment.
        results = _add_and_stop(cl, ROUNDS, "event=started", rng, 0.2, 2.5)
    finally:
        stop_producing.set()
        t.join(30)
    _assert_clean_exits_and_delivered(cl, results, qids)


def _add_and_stop(cl, rounds: int, ready: str, rng, lo: float, hi: float) -> list:
    """Add a worker, wait for `ready` in its log, SIGTERM it lo..hi seconds
    later; `rounds` times. Returns (name, exit status, aborted, destroys
    skipped) per worker."""
    results = []
    for _ in range(rounds):
        w = cl.add_worker(wait=False)
        mslocal.wait_until(lambda: ready in w.log.read_text(errors="replace"),
                           60, f"{w.name}: {ready}", interval=0.05, log_path=w.log)
        time.sleep(rng.uniform(lo, hi))
        proc = w.proc
        w.stop(timeout=60)
        rc = proc.popen.wait(timeout=5)
        text = w.log.read_text(errors="replace")
        # librdkafka's "Assertion '...' failed" and "*** ...: assert: ... ***"
        results.append((w.name, rc, "assert" in text.lower(),
                        text.count("event=kafka_destroy_skipped")))
    return results


def _assert_clean_exits_and_delivered(cl, results: list, qids: list) -> None:
    print(results)
    bad = [r for r in results if r[1] != 0 or r[2]]
    assert not bad, f"workers that did not exit 0 on SIGTERM (name, rc, aborted, skipped): {bad}"

    def delivered() -> set:
        # message() puts the queue id in the Subject field.
        return {m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                for m in cl.sink.messages() if b"Subject: " in m.data}

    want = set(qids)
    mslocal.wait_until(lambda: delivered() >= want, 240, f"all {len(want)} messages in the sink",
                       interval=1.0)


FIREHOSE_BATCH = 20     # records per kcat call in the firehose test
FIREHOSE_PAUSE_S = 0.05 # between kcat calls: a few hundred records a second
FIREHOSE_ROUNDS = 10


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_worker_sigterm_while_fetching_exits_zero(cluster_factory):
    """Stopped while records keep arriving, a worker exits 0.

    The consumer close forwards the group's queue, where fetched records
    wait, to the queue the close is served from. Served with
    rd_kafka_queue_poll_callback(), a record fetched after the worker's last
    poll hit librdkafka's `rd_kafka_q_serve: assert: res !=
    RD_KAFKA_OP_RES_PASS` and the drained worker died of SIGABRT (the CI of
    stop 28: a retry record produced during the drain). Here a producer
    keeps the retry tiers' topics busy while workers are stopped one after
    another, so records are in flight towards each closing consumer.
    """
    cl = cluster_factory(frontends=0, workers=1)
    rng = random.Random(28)
    qids: list = []
    stop_producing = threading.Event()
    # A worker closes its consumers one after another, the queue topic's
    # first (worker/main.c): each close holds the loop, so the consumers
    # closed later (the retry tiers') collect what is fetched meanwhile.
    topics = [f"{cl.spec.topic}.retry.{n}" for n in range(1, mslocal.WORKER_RETRY_TIERS + 1)]

    def producer() -> None:
        n = 0
        while not stop_producing.is_set():
            batch = [new_qid() for _ in range(FIREHOSE_BATCH)]
            with tempfile.TemporaryDirectory() as d:
                files = []
                for q in batch:
                    f = Path(d) / q
                    f.write_bytes(envelope(q, [f"t.{q}@example.net"], message(q)))
                    files.append(str(f))
                r = subprocess.run([KCAT, "-b", cl.kafka.bootstrap, "-P",
                                    "-t", topics[n % len(topics)], "-X", "acks=all"] + files,
                                   capture_output=True, timeout=60)
                assert r.returncode == 0, r.stderr.decode()
            n += 1
            qids.extend(batch)
            stop_producing.wait(FIREHOSE_PAUSE_S)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    try:
        results = _add_and_stop(cl, FIREHOSE_ROUNDS, "event=kafka_assigned", rng, 0.3, 1.5)
    finally:
        stop_producing.set()
        t.join(30)
    _assert_clean_exits_and_delivered(cl, results, qids)


PROBE = mslocal.build_dir() / "tests" / "kafka_close_probe"


@pytest.mark.timeout(120)
def test_close_with_assignment_queued_survives_the_group_ending(kafka_broker):
    """A consumer closed while its group's assignment waits unserved in its
    queue (a worker's later consumers, when SIGTERM comes during their
    groups' rebalance: the loop is held by the earlier consumers' closes).
    The close serves the assignment (librdkafka turns it into an unassign),
    the group leaves and ends, and the revocation the close queued is served
    after that: rd_kafka_rebalance_protocol() is then NULL, and strcmp() on
    it was a worker's SIGSEGV at shutdown (CI, 2026-12-06, twice). The probe
    (tests/kafka_close_probe.c, kafka_close_delay.c) holds the thread 1.5 s
    after the assign call, as a loaded machine may, so the group has ended
    before the revocation. A group that has not synced by the time the probe
    closes (a slow first coordinator lookup) leaves the state unbuilt: the
    probe then runs again, waiting longer."""
    assert PROBE.exists(), f"{PROBE} missing (make integration builds it)"
    for wait_ms in (4000, 8000, 16000):
        topic = f"probe.{new_qid().lower()}"
        kafka_broker.create_topics({topic: 2})
        r = subprocess.run([str(PROBE), kafka_broker.bootstrap, f"g.{topic}", topic, str(wait_ms)],
                           env={**os.environ, "KAFKA_CLOSE_PROBE_DELAY_MS": "1500"},
                           capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, f"probe exited {r.returncode}:\n{r.stderr}"
        assert r.stderr.splitlines()[-1].endswith("kafka_close_probe: freed"), r.stderr
        if "event=kafka_assigned" in r.stderr:
            break
    lines = r.stderr.splitlines()
    assigned = [i for i, l in enumerate(lines) if "event=kafka_assigned partitions=2" in l]
    gone = [i for i, l in enumerate(lines)
            if "event=kafka_revoked partitions=2" in l and "reason=group_closed" in l]
    # The path under test ran: the assignment was served during the close,
    # its revocation after the group had ended.
    assert assigned and gone and assigned[0] < gone[0], r.stderr
