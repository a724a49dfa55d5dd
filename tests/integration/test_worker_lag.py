"""The worker's consumer lag metric (issue 14, docs/architecture.md
"Operations"): mailstream_worker_consumer_lag{topic,partition}, from
librdkafka's statistics every 5 s, is what an autoscaler (KEDA) reads.

Messages are accepted while no worker runs; then a worker starts whose relay
never answers, so every record stays in flight and none is done: the sum of
its lag over the queue topic's partitions must be the number of messages.
Once the relay answers (a second worker, after the first is stopped), the
lag goes back to 0.
"""

from __future__ import annotations

import re
import smtplib
import socket
import time
from email.message import EmailMessage

import mslocal

N = 5


def _lag(node, topic: str) -> dict:
    pat = re.compile(r'^mailstream_worker_consumer_lag\{topic="%s",partition="(\d+)"\} (\d+)$'
                     % re.escape(topic), re.M)
    return {int(p): int(v) for p, v in pat.findall(node.metrics_text())}


def _wait_lag(node, topic: str, total: int, timeout: float = 40) -> dict:
    deadline = time.monotonic() + timeout
    lag: dict = {}
    while time.monotonic() < deadline:
        lag = _lag(node, topic)
        if lag and sum(lag.values()) == total:
            return lag
        time.sleep(0.5)
    raise AssertionError(f"{node.name}: lag {lag}, want a total of {total}")


def test_lag_counts_records_not_done(cluster_factory):
    # A relay that takes connections (the kernel's backlog) and never says
    # a word: each delivery waits for its banner.
    silent = socket.socket()
    silent.bind((mslocal.HOST, 0))
    silent.listen(64)
    try:
        cl = cluster_factory(
            start=False,
            worker_extra={"delivery": {"relay_host": "%s:%d" % silent.getsockname(),
                                       "reply_timeout_ms": 120000,
                                       "connect_timeout_ms": 120000}})
        cl.add_frontend()
        host, port = cl.listener("mx")
        for i in range(N):
            msg = EmailMessage()
            msg["From"] = "a@example.org"
            msg["To"] = f"r{i}@mailstream.test"
            msg["Subject"] = f"lag {i}"
            msg.set_content("waiting\n")
            with smtplib.SMTP(host, port, timeout=30) as s:
                s.send_message(msg)
        wk = cl.add_worker()
        lag = _wait_lag(wk, cl.spec.topic, N)
        assert set(lag) == set(range(mslocal.DEFAULT_TOPICS["queue"])), lag
    finally:
        silent.close()
    # The next worker reaches the sink: everything is done, the lag is 0.
    wk.kill()
    cl.spec.worker_extra = {"delivery": {"relay_host": cl.sink.address}}
    wk2 = cl.add_worker()
    cl.sink.wait_for(N, timeout=90)
    _wait_lag(wk2, cl.spec.topic, 0)
