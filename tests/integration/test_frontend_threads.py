"""[node] threads: one libuv loop per thread, each with its own SO_REUSEPORT
listeners, sessions, Kafka producer and Redis client, in one process.

With threads = 2 many concurrent sessions are spread over both loops (the
loop is visible in the session id: loop i numbers its ids from i << 48), every
message is queued and reaches the sink, max_connections_per_ip holds for the
whole process (not per loop), and SIGTERM drains every loop and exits 0.
threads = 1 is the single loop of before.  Nothing here depends on timing.
"""

from __future__ import annotations

import re
import signal
import threading

import pytest

from conftest import smtp_port
from test_frontend_smtp import QUEUED, Client, code, hello

LOOP_SHIFT = 48
SID = re.compile(r"\bsid=(\d+)\b")


def node_cluster(cluster_factory, threads: int, workers: int = 1, smtp=None):
    extra = {"node": {"threads": threads}, "smtp": dict(smtp or {})}
    return cluster_factory(frontends=1, workers=workers, frontend_extra=extra)


def send_one(port: int, i: int, results: dict) -> None:
    c = hello(port)
    assert code(c.cmd(b"MAIL FROM:<s%d@sender.example>" % i)) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<u%d@mailstream.test>" % i)) == b"250 2.1.5"
    assert c.cmd(b"DATA").startswith(b"354 ")
    c.send(b"Subject: threads %d\r\n\r\nbody %d\r\n.\r\n" % (i, i))
    m = QUEUED.match(c.reply())
    assert m, i
    results[i] = m.group(1)
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"
    c.close()


def loops_seen(log_text: str) -> set:
    return {int(s) >> LOOP_SHIFT for s in SID.findall(log_text)}


def exit_code(node) -> int | None:
    p = node.proc
    node.stop()
    return p.popen.returncode if p and p.popen else None


@pytest.mark.timeout(300)
def test_two_threads_queue_and_deliver_concurrent_sessions(cluster_factory):
    cl = node_cluster(cluster_factory, 2)
    port = smtp_port(cl)
    n = 40
    results: dict = {}
    errors: list = []

    def run(i: int) -> None:
        try:
            send_one(port, i, results)
        except BaseException as e:  # reported below, with the index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == n and len(set(results.values())) == n
    msgs = cl.sink.wait_for(n, timeout=120)
    subjects = {re.search(rb"Subject: threads (\d+)", m.data).group(1) for m in msgs}
    assert subjects == {b"%d" % i for i in range(n)}
    for qid in results.values():
        assert any(b" id " + qid + b"\r\n" in m.data for m in msgs), qid
    node = cl.frontends[0]
    text = node.metrics_text()
    assert re.search(r'^mailstream_smtp_messages_total\{result="queued"\} 40$', text, re.M)
    # Both loops took sessions (SO_REUSEPORT spreads 40 connections).
    assert loops_seen(node.log.read_text()) == {0, 1}
    assert exit_code(node) == 0


@pytest.mark.timeout(300)
def test_two_threads_per_ip_limit_is_process_wide(cluster_factory):
    limit = 4
    cl = node_cluster(cluster_factory, 2, workers=0, smtp={"max_connections_per_ip": limit})
    port = smtp_port(cl)
    held = [hello(port) for _ in range(limit)]
    # Per loop, a second loop would admit up to `limit` more; process-wide,
    # every further connection is refused whichever loop accepts it.
    for _ in range(24):
        c = Client(port)
        assert code(c.reply()) == b"421 4.7.0"
        assert c.closed()
        c.close()
    node = cl.frontends[0]
    assert re.search(r'^mailstream_smtp_limit_hits_total\{limit="max_connections_per_ip"\} 24$',
                     node.metrics_text(), re.M)
    assert loops_seen(node.log.read_text()) == {0, 1}
    for c in held:
        assert code(c.cmd(b"NOOP")) == b"250 2.0.0"


@pytest.mark.timeout(300)
def test_two_threads_sigterm_drains_every_loop(cluster_factory):
    cl = node_cluster(cluster_factory, 2, workers=0)
    port = smtp_port(cl)
    results: dict = {}
    send_one(port, 0, results)  # a finished transaction before the signal
    idle = [hello(port) for _ in range(12)]
    node = cl.frontends[0]
    p = node.proc
    node.send_signal(signal.SIGTERM)
    # Every loop drains: idle sessions on both get 421 4.3.2 and are closed.
    for c in idle:
        assert code(c.reply()) == b"421 4.3.2"
        assert c.closed()
    p.popen.wait(60)
    assert p.popen.returncode == 0
    log = node.log.read_text()
    assert "event=loop_drained loop=0" in log and "event=loop_drained loop=1" in log
    assert "event=drained" in log and "event=exit" in log


@pytest.mark.timeout(300)
def test_one_thread(cluster_factory):
    cl = node_cluster(cluster_factory, 1, smtp={"max_connections_per_ip": 2})
    port = smtp_port(cl)
    results: dict = {}
    for i in range(5):
        send_one(port, i, results)
    msgs = cl.sink.wait_for(5, timeout=120)
    assert len(msgs) == 5
    a, b = hello(port), hello(port)
    c = Client(port)
    assert code(c.reply()) == b"421 4.7.0"
    assert c.closed()
    node = cl.frontends[0]
    assert loops_seen(node.log.read_text()) == {0}
    assert "threads=1" in node.log.read_text()
    node_proc = node.proc
    node.stop()
    assert code(a.reply()) == b"421 4.3.2" and code(b.reply()) == b"421 4.3.2"
    assert node_proc.popen.returncode == 0
