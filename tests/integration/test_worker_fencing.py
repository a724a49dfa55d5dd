"""Duplicate fencing (issue 15, "Nothing twice"; docs/reliability.md).

Two workers share a consumer group, real Kafka and Redis; the destination is
the scripted SMTP server of test_worker_delivery.py, told to stall at the
right moment.  Each test makes one worker lose a message it is delivering -
frozen past the group's session timeout, cut off from Redis at the check
before DATA, its partition revoked, killed after the destination accepted -
and counts what the destination received.  [delivery] fence_lease_ms is the
smallest allowed, so a lapsed lease costs seconds, not the default 15.

No test asserts timings: waits are "until it happens", bounded by timeouts.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import List, Optional

import pytest

import mslocal
from test_worker_delivery import (KCAT, envelope, fake_smtp, message, metric,  # noqa: F401
                                  new_qid, produce, wait_events, worker_cluster)

pytestmark = [pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`"),
              pytest.mark.timeout(300)]

LEASE_MS = 3000          # WK_FENCE_LEASE_MIN_MS
UNAVOIDABLE = 'mailstream_worker_duplicate_risk_total{kind="unavoidable"}'


def data_commands(srv) -> int:
    return sum(1 for c in srv.commands if c.upper() == "DATA")


def holder(cl) -> mslocal.Node:
    """The worker with an SMTP session open (the one holding the message)."""
    found: List[mslocal.Node] = []

    def look() -> bool:
        found[:] = [w for w in cl.workers
                    if w.alive() and metric(w, "mailstream_worker_connections") >= 1]
        return len(found) == 1
    mslocal.wait_until(look, 30, "one worker with a session open")
    return found[0]


def subjects(srv) -> List[str]:
    out = []
    for _, _, data in srv.delivered:
        for line in data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode())
    return out


def test_sigstopped_worker_does_not_send_data(cluster_factory, fake_smtp):
    """(a) A worker frozen (SIGSTOP) past the session timeout while its
    destination stalls after RCPT: the other worker takes the partition, waits
    out the lease and delivers; the frozen one, thawed, finds its lease gone
    and sends no DATA.  The destination gets the message once."""
    at_rcpt, release = threading.Event(), threading.Event()

    def rcpt(addr: str, n: int) -> str:
        if n == 1:
            at_rcpt.set()
            release.wait(240)
        return "250 2.1.5 Ok"

    srv = fake_smtp(rcpt_reply=rcpt)
    cl = worker_cluster(cluster_factory, srv.address, workers=2, fence_lease_ms=LEASE_MS)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    assert at_rcpt.wait(60), "the message never reached RCPT"
    old = holder(cl)
    new = [w for w in cl.workers if w is not old][0]
    old.send_signal(signal.SIGSTOP)
    try:
        # Session timeout (10 s), the rebalance, the lease lapsing, delivery.
        mslocal.wait_until(lambda: srv.data_count >= 1, 120, "delivery by the other worker",
                           log_path=new.log)
        assert subjects(srv) == [q]
        release.set()  # the stalled RCPT is answered while the old worker sleeps
    finally:
        old.send_signal(signal.SIGCONT)
    mslocal.wait_until(lambda: any(s in old.log.read_text(errors="replace") for s in (
        f"event=fenced qid={q}", "event=partitions_revoked")), 60,
        "the thawed worker gives the message up", log_path=old.log)
    time.sleep(3)  # anything it would still send has had time to arrive
    assert srv.data_count == 1 and data_commands(srv) == 1, srv.commands
    assert subjects(srv) == [q]
    log = old.log.read_text(errors="replace")
    print(f"thawed worker: fenced at the check={f'event=fenced qid={q}' in log}, "
          f"revoked first={'event=partitions_revoked' in log}")


def test_lease_taken_over_before_data(cluster_factory, fake_smtp, redis_server):
    """(a, at the check itself) Another holder takes the lease while the
    worker waits for its RCPT replies (written here as another worker's
    script would): the check before DATA fails, the worker says QUIT without
    DATA and looks again later; once the other holder is gone it delivers,
    once."""
    at_rcpt, release = threading.Event(), threading.Event()

    def rcpt(addr: str, n: int) -> str:
        if n == 1:
            at_rcpt.set()
            release.wait(240)
        return "250 2.1.5 Ok"

    srv = fake_smtp(rcpt_reply=rcpt)
    cl = worker_cluster(cluster_factory, srv.address, fence_lease_ms=LEASE_MS)
    w = cl.workers[0]
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    assert at_rcpt.wait(60), "the message never reached RCPT"
    key = f"ms:fence:{q}"
    assert mslocal.redis_command(redis_server.port, "EXISTS", key) == b":1\r\n"
    mslocal.redis_command(redis_server.port, "HSET", key, "who", "another-worker",
                          "exp", "99999999999999")
    release.set()
    mslocal.wait_until(lambda: f"event=fenced qid={q}" in w.log.read_text(errors="replace"),
                       60, "the check failed", log_path=w.log)
    assert "reason=lost" in w.log.read_text(errors="replace")
    mslocal.wait_until(lambda: "QUIT" in srv.commands, 30, "QUIT after the failed check")
    assert data_commands(srv) == 0, srv.commands
    assert metric(w, 'mailstream_worker_fenced_total{reason="lost"}') == 1
    # The other holder never gives it back: the worker keeps waiting.
    mslocal.wait_until(lambda: metric(w, "mailstream_worker_fence_waits_total") >= 1, 60,
                       "the next round waits for the lease", log_path=w.log)
    assert srv.data_count == 0
    mslocal.redis_command(redis_server.port, "DEL", key)  # the other holder is done
    mslocal.wait_until(lambda: srv.data_count >= 1, 60, "delivery after it", log_path=w.log)
    time.sleep(2)
    assert srv.data_count == 1 and subjects(srv) == [q]


class FreezableProxy:
    """A TCP proxy to Redis that can stop passing bytes (a partition between
    one worker and Redis that TCP does not notice)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.frozen = threading.Event()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((mslocal.HOST, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            u = socket.create_connection((mslocal.HOST, self.target))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            while self.frozen.is_set() and not self.closed:
                time.sleep(0.05)
            try:
                data = src.recv(65536)
                if not data:
                    break
                while self.frozen.is_set() and not self.closed:
                    time.sleep(0.05)  # held, not lost: TCP would hold it too
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.lsock.close()


def test_redis_unreachable_at_the_check_means_no_data(cluster_factory, fake_smtp,
                                                      redis_server):
    """(b) Redis stops answering one worker between RCPT and DATA: the check
    cannot pass, so the worker says QUIT without DATA; once Redis answers
    again the message is delivered, once."""
    proxy = FreezableProxy(redis_server.port)
    at_rcpt, release = threading.Event(), threading.Event()

    def rcpt(addr: str, n: int) -> str:
        if n == 1:
            at_rcpt.set()
            release.wait(240)
        return "250 2.1.5 Ok"

    srv = fake_smtp(rcpt_reply=rcpt)
    try:
        cl = cluster_factory(frontends=0, workers=1, worker_extra={
            "delivery": {"retry_min_ms": 200, "retry_max_ms": 1000, "relay_host": srv.address,
                         "fence_lease_ms": LEASE_MS},
            "redis": {"port": proxy.port}})
        w = cl.workers[0]
        q = new_qid()
        produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
        assert at_rcpt.wait(60), "the message never reached RCPT"
        proxy.frozen.set()
        release.set()
        mslocal.wait_until(lambda: f"event=fenced qid={q}" in w.log.read_text(errors="replace"),
                           60, "the check given up", log_path=w.log)
        log = w.log.read_text(errors="replace")
        assert "reason=unavailable" in log
        mslocal.wait_until(lambda: "QUIT" in srv.commands, 30, "QUIT after the failed check")
        assert srv.data_count == 0 and data_commands(srv) == 0, srv.commands
        assert metric(w, 'mailstream_worker_fenced_total{reason="unavailable"}') >= 1
        proxy.frozen.clear()
        mslocal.wait_until(lambda: srv.data_count >= 1, 120, "delivery once Redis answers",
                           log_path=w.log)
        time.sleep(2)
        assert srv.data_count == 1 and subjects(srv) == [q]
    finally:
        proxy.frozen.clear()
        proxy.close()


def test_revoke_abandons_in_flight_work(cluster_factory, fake_smtp):
    """(c) Messages in flight (stalled after RCPT) when a second worker joins:
    the first abandons those of the partitions it gives up before it gives
    them up, the newcomer delivers them, the first delivers the rest; every
    message arrives once."""
    n = 12
    stalled = threading.Semaphore(0)
    release = threading.Event()

    def rcpt(addr: str, k: int) -> str:
        if k == 1:
            stalled.release()
            release.wait(240)
        return "250 2.1.5 Ok"

    srv = fake_smtp(rcpt_reply=rcpt)
    cl = worker_cluster(cluster_factory, srv.address, workers=1, fence_lease_ms=LEASE_MS)
    first = cl.workers[0]
    qids = [new_qid() for _ in range(n)]
    produce(cl, [(q, envelope(q, [f"r.{q}@example.net"], message(q))) for q in qids])
    for _ in range(n):
        assert stalled.acquire(timeout=60), "not every message reached RCPT"
    second = cl.add_worker()
    mslocal.wait_until(lambda: "event=partitions_revoked" in first.log.read_text(
        errors="replace"), 60, "a revoke on the first worker", log_path=first.log)
    # The newcomer delivers what was taken from the first worker.
    mslocal.wait_until(lambda: srv.data_count >= 1, 90, "deliveries by the newcomer",
                       log_path=second.log)
    release.set()
    mslocal.wait_until(lambda: len(subjects(srv)) >= n, 120, f"all {n} messages")
    time.sleep(3)
    got = subjects(srv)
    assert sorted(got) == sorted(qids), f"duplicates or losses: {got}"
    log = first.log.read_text(errors="replace")
    revokes = [line for line in log.splitlines() if "event=partitions_revoked" in line]
    assert any("abandoned=0" not in line for line in revokes), revokes
    print("revokes on the first worker:", *revokes, sep="\n  ")


def test_unavoidable_duplicate_is_counted(cluster_factory, fake_smtp):
    """(d) The one duplicate fencing cannot prevent: the destination has the
    whole message (the "." arrived) but the worker is killed before it can
    record the outcome.  The other worker delivers again after the lease
    lapses, and counts it as unavoidable."""
    accepted, release = threading.Event(), threading.Event()

    def data(k: int) -> str:
        if k == 1:
            accepted.set()
            release.wait(240)
        return "250 2.0.0 Ok: queued"

    srv = fake_smtp(data_reply=data)
    cl = worker_cluster(cluster_factory, srv.address, workers=2, fence_lease_ms=LEASE_MS)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    assert accepted.wait(60), "the message never reached the end of data"
    old = holder(cl)
    new = [w for w in cl.workers if w is not old][0]
    old.kill()
    mslocal.wait_until(lambda: srv.data_count >= 2, 120, "redelivery by the other worker",
                       log_path=new.log)
    release.set()
    assert metric(new, UNAVOIDABLE) == 1
    log = new.log.read_text(errors="replace")
    assert f"event=duplicate_risk kind=unavoidable qid={q}" in log
    time.sleep(2)
    assert srv.data_count == 2


def test_marker_ttl_follows_config(cluster_factory, fake_smtp, redis_server):
    """[delivery] delivered_ttl_s sets the delivered markers' lifetime, and a
    delivered message leaves no lease behind."""
    srv = fake_smtp()
    cl = worker_cluster(cluster_factory, srv.address, delivered_ttl_s=1234)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e))

    def ttl() -> Optional[int]:
        r = mslocal.redis_command(redis_server.port, "TTL", f"ms:delivered:{q}:a@example.net")
        return int(r[1:].strip()) if r.startswith(b":") else None
    mslocal.wait_until(lambda: (ttl() or -1) > 0, 30, "the marker written")
    assert 1200 <= ttl() <= 1234
    assert mslocal.redis_command(redis_server.port, "EXISTS", f"ms:fence:{q}") == b":0\r\n"


def test_no_redis_no_attempt(cluster_factory, fake_smtp):
    """With fencing on (the default) a worker that cannot reach Redis takes
    no lease and makes no attempt: the record waits in memory (Kafka keeps
    it) instead of risking a duplicate."""
    srv = fake_smtp()
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv.address, "fence_lease_ms": LEASE_MS},
        "redis": {"port": mslocal.free_port()}})
    w = cl.workers[0]
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    mslocal.wait_until(lambda: w.log.read_text(errors="replace").count(
        f"event=lease_wait qid={q} reason=unavailable") >= 2, 60, "two rounds without Redis",
        log_path=w.log)
    assert srv.sessions == 0 and srv.data_count == 0


def _commandstats(port: int) -> dict:
    raw = mslocal.redis_command(port, "INFO", "commandstats").decode()
    out = {}
    for line in raw.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            out[name] = int(rest.split("calls=")[1].split(",")[0])
    return out


# What a delivery sends (and what its scripts run): the rest (PING, the
# queue control's poll, the retry statistics) does not grow with the mail.
DELIVERY_COMMANDS = ("evalsha", "mget", "set", "get", "del", "hset", "hmget", "hincrby",
                     "pexpire", "time", "expire")


@pytest.mark.parametrize("lease_ms", [0, 15000])
def test_redis_commands_per_recipient(cluster_factory, redis_server, lease_ms):
    """Redis commands per delivered recipient, without and with fencing
    (INFO commandstats; docs/reliability.md has the figures): with fencing
    three round trips per message to a quick destination (take with the
    marker read, the check, the markers with the lease given back; no
    renewal: the attempt is shorter than a third of the lease)."""
    n = 40
    cl = worker_cluster(cluster_factory, fence_lease_ms=lease_ms, connection_cache_ms=60000)
    warm = new_qid()
    produce(cl, [(warm, envelope(warm, ["w@example.net"], message(warm)))])
    cl.sink.wait_for(1, timeout=60)
    time.sleep(1)
    mslocal.redis_command(redis_server.port, "CONFIG", "RESETSTAT")
    qids = [new_qid() for _ in range(n)]
    produce(cl, [(q, envelope(q, [f"r.{q}@example.net"], message(q))) for q in qids])
    cl.sink.wait_for(n + 1, timeout=120)
    time.sleep(1)
    stats = _commandstats(redis_server.port)
    per = {c: stats.get(c, 0) / n for c in DELIVERY_COMMANDS if stats.get(c, 0)}
    print(f"\nfence_lease_ms={lease_ms}: per delivered recipient: "
          + ", ".join(f"{c} {v:.2f}" for c, v in sorted(per.items())))
    if lease_ms:
        assert 2.9 <= per.get("evalsha", 0) <= 3.2
        assert per.get("set", 0) <= 1.1  # the marker, inside the done script
    else:
        assert per.get("evalsha", 0) == 0
        assert 0.9 <= per.get("mget", 0) <= 1.1
