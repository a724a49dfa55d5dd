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

import random
import threading
import time

import pytest

import mslocal
from test_worker_delivery import envelope, message, new_qid, produce

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
    results = []
    try:
        for _ in range(ROUNDS):
            w = cl.add_worker(wait=False)
            # Its SIGTERM handler is installed before it logs event=started
            # (earlier, SIGTERM kills it outright: nothing to drain yet). Its
            # consumers are joining their groups by then: stopped while those
            # are still settling, before, during or just after their first
            # assignment.
            mslocal.wait_until(lambda: "event=started" in w.log.read_text(errors="replace"),
                               60, f"{w.name} started", interval=0.05, log_path=w.log)
            time.sleep(rng.uniform(0.2, 2.5))
            proc = w.proc
            w.stop(timeout=60)
            rc = proc.popen.wait(timeout=5)
            text = w.log.read_text(errors="replace")
            results.append((w.name, rc, "Assertion" in text,
                            text.count("event=kafka_destroy_skipped")))
    finally:
        stop_producing.set()
        t.join(30)
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
