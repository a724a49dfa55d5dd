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
import struct
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


class Stall:
    """Replies for the scripted destination that hold the first RCPT of
    each address (rcpt) or the first end of data (data) until release is
    set; `reached` counts the holds."""

    def __init__(self, data_holds: int = 1):
        self.reached = threading.Semaphore(0)
        self.release = threading.Event()
        self.data_holds = data_holds  # how many ends of data are held

    def _hold(self) -> None:
        self.reached.release()
        self.release.wait(240)

    def rcpt(self, addr: str, n: int) -> str:
        if n == 1:
            self._hold()
        return "250 2.1.5 Ok"

    def data(self, n: int) -> str:
        if n <= self.data_holds:
            self._hold()
        return "250 2.0.0 Ok: queued"

    def wait(self, what: str, count: int = 1) -> None:
        for _ in range(count):
            assert self.reached.acquire(timeout=60), f"the message never reached {what}"


def send_one(cl) -> str:
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    return q


def holder_and_other(cl) -> tuple:
    old = holder(cl)
    return old, [w for w in cl.workers if w is not old][0]


def two_workers_one_held(cluster_factory, fake_smtp, at: str) -> tuple:
    """Two workers, one message held by the destination at `at` ("rcpt" or
    "data"): (stall, destination, cluster, qid, holder, the other)."""
    stall = Stall()
    srv = fake_smtp(**{f"{at}_reply": getattr(stall, at)})
    cl = worker_cluster(cluster_factory, srv.address, workers=2, fence_lease_ms=LEASE_MS)
    q = send_one(cl)
    stall.wait(at)
    return (stall, srv, cl, q) + holder_and_other(cl)


def one_worker_many_held(cluster_factory, fake_smtp, at: str, n: int) -> tuple:
    """One worker, n messages (one recipient each) all held by the
    destination at `at`: (stall, destination, cluster, the worker, qids)."""
    stall = Stall(data_holds=n)
    srv = fake_smtp(**{f"{at}_reply": getattr(stall, at)})
    cl = worker_cluster(cluster_factory, srv.address, workers=1, fence_lease_ms=LEASE_MS)
    qids = [new_qid() for _ in range(n)]
    produce(cl, [(q, envelope(q, [f"r.{q}@example.net"], message(q))) for q in qids])
    stall.wait(at, n)
    return stall, srv, cl, cl.workers[0], qids


def test_sigstopped_worker_does_not_send_data(cluster_factory, fake_smtp):
    """(a) A worker frozen (SIGSTOP) past the session timeout while its
    destination stalls after RCPT: the other worker takes the partition, waits
    out the lease and delivers; the frozen one, thawed, finds its lease gone
    and sends no DATA.  The destination gets the message once."""
    stall, srv, cl, q, old, new = two_workers_one_held(cluster_factory, fake_smtp, "rcpt")
    old.send_signal(signal.SIGSTOP)
    try:
        # Session timeout (10 s), the rebalance, the lease lapsing, delivery.
        mslocal.wait_until(lambda: srv.data_count >= 1, 120, "delivery by the other worker",
                           log_path=new.log)
        assert subjects(srv) == [q]
        stall.release.set()  # the stalled RCPT is answered while the old worker sleeps
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
    stall = Stall()
    srv = fake_smtp(rcpt_reply=stall.rcpt)
    cl = worker_cluster(cluster_factory, srv.address, fence_lease_ms=LEASE_MS)
    w = cl.workers[0]
    q = send_one(cl)
    stall.wait("RCPT")
    key = f"ms:fence:{q}"
    assert mslocal.redis_command(redis_server.port, "EXISTS", key) == b":1\r\n"
    mslocal.redis_command(redis_server.port, "HSET", key, "who", "another-worker",
                          "exp", "99999999999999")
    stall.release.set()
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


def test_held_lease_looked_at_again_soon(cluster_factory, fake_smtp, redis_server):
    """A lease another holder has is looked at again after 250 ms, then
    twice as long each round (worker/fence.h, wk_fence_held_wait_ms), not
    only when it lapses: a holder finishing a message whose partition moved
    gives it back within moments, and the new owner then delivers at once.
    Here the lease runs 10 minutes; the worker must deliver long before."""
    srv = fake_smtp()
    cl = worker_cluster(cluster_factory, srv.address, fence_lease_ms=600000)
    w = cl.workers[0]
    q = new_qid()
    key = f"ms:fence:{q}"
    mslocal.redis_command(redis_server.port, "HSET", key, "who", "another-worker",
                          "exp", "99999999999999", "data", "0")
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    waits = f"event=lease_wait qid={q} reason=held"
    mslocal.wait_until(lambda: w.log.read_text(errors="replace").count(waits) >= 3, 60,
                       "three rounds that find the lease held", log_path=w.log)
    log = w.log.read_text(errors="replace")
    assert f"{waits} wait_ms=250" in log and f"{waits} wait_ms=500" in log, log[-2000:]
    assert srv.data_count == 0
    assert metric(w, "mailstream_worker_fence_waits_total") == 1  # one postponed attempt
    mslocal.redis_command(redis_server.port, "DEL", key)  # the other holder is done
    mslocal.wait_until(lambda: srv.data_count >= 1, 60, "delivery soon after",
                       log_path=w.log)
    time.sleep(1)
    assert srv.data_count == 1 and subjects(srv) == [q]


class FreezableProxy:
    """A TCP proxy to Redis that can stop passing bytes (a partition between
    one worker and Redis that TCP does not notice), or only Redis's replies
    (`replies_held`: commands run, their answers wait)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.frozen = threading.Event()
        self.replies_held = threading.Event()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((mslocal.HOST, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.closed = False
        self.down = False
        self.conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if self.down:
                c.close()
                continue
            u = socket.create_connection((mslocal.HOST, self.target))
            self.conns += [c, u]
            for a, b, replies in ((c, u, False), (u, c, True)):
                threading.Thread(target=self._pump, args=(a, b, replies), daemon=True).start()

    def _held(self, replies: bool) -> bool:
        return not self.closed and (self.frozen.is_set() or
                                    (replies and self.replies_held.is_set()))

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        while True:
            while self._held(replies):
                time.sleep(0.05)
            try:
                data = src.recv(65536)
                if not data:
                    break
                while self._held(replies):
                    time.sleep(0.05)  # held, not lost: TCP would hold it too
                if self.down:
                    break  # cut: what was on its way is lost
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Reset every connection and refuse new ones until mend(): Redis
        gone (its primary killed), not slow, so writes in flight are lost."""
        self.down = True
        for c in list(self.conns):
            try:
                # shutdown wakes the pump blocked in recv (close would not).
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def mend(self) -> None:
        self.down = False

    def close(self) -> None:
        self.closed = True
        self.lsock.close()


def one_worker_behind_proxy(cluster_factory, fake_smtp, redis_server, at: str) -> tuple:
    """One worker that reaches Redis through a FreezableProxy, its destination
    held at `at` ("rcpt" or "data"): (proxy, stall, destination, cluster,
    the worker).  The caller closes the proxy."""
    proxy = FreezableProxy(redis_server.port)
    stall = Stall()
    srv = fake_smtp(**{f"{at}_reply": getattr(stall, at)})
    try:
        cl = cluster_factory(frontends=0, workers=1, worker_extra={
            "delivery": {"retry_min_ms": 200, "retry_max_ms": 1000, "relay_host": srv.address,
                         "fence_lease_ms": LEASE_MS},
            "redis": {"port": proxy.port}})
    except BaseException:
        proxy.close()
        raise
    return proxy, stall, srv, cl, cl.workers[0]


def test_unanswered_take_gives_its_lease_back(cluster_factory, fake_smtp, redis_server):
    """Redis runs the take but its answer is late (held here): the worker
    gives the round up after WK_REDIS_TIMEOUT_MS and, since the take may have
    got the lease under that round's token, gives it back, so the next round
    (a new token, a third of the lease later) takes it instead of finding it
    held, by itself, for the rest of the lease.  The same release covers a
    message abandoned while its take is unanswered (its partition revoked in
    MSG_CHECK)."""
    proxy = FreezableProxy(redis_server.port)
    srv = fake_smtp()
    try:
        cl = cluster_factory(frontends=0, workers=1, worker_extra={
            "delivery": {"retry_min_ms": 200, "retry_max_ms": 1000, "relay_host": srv.address,
                         "fence_lease_ms": 15000},
            "redis": {"port": proxy.port}})
        w = cl.workers[0]
        proxy.replies_held.set()
        q = new_qid()
        key = f"ms:fence:{q}"
        produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
        mslocal.wait_until(lambda: mslocal.redis_command(
            redis_server.port, "EXISTS", key) == b":1\r\n", 60, "the take ran in Redis",
            log_path=w.log)
        mslocal.wait_until(lambda: f"event=redis_timeout qid={q}" in
                           w.log.read_text(errors="replace"), 60, "the round given up",
                           log_path=w.log)
        proxy.replies_held.clear()
        mslocal.wait_until(lambda: srv.data_count >= 1, 60, "delivery in the next rounds",
                           log_path=w.log)
        time.sleep(1)
        assert srv.data_count == 1 and subjects(srv) == [q]
        assert f"event=lease_wait qid={q} reason=held" not in w.log.read_text(errors="replace")
    finally:
        proxy.close()


def test_redis_unreachable_at_the_check_means_no_data(cluster_factory, fake_smtp,
                                                      redis_server):
    """(b) Redis stops answering one worker between RCPT and DATA: the check
    cannot pass, so the worker says QUIT without DATA; once Redis answers
    again the message is delivered, once."""
    proxy, stall, srv, cl, w = one_worker_behind_proxy(cluster_factory, fake_smtp, redis_server,
                                                       "rcpt")
    try:
        q = new_qid()
        produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
        stall.wait("RCPT")
        proxy.frozen.set()
        stall.release.set()
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


def test_marker_lost_with_redis_is_written_again(cluster_factory, fake_smtp, redis_server):
    """(e) Redis goes away (its primary killed) while the destination has the
    "." but has not answered: the 250 arrives, and the delivered marker and
    the lease's release cannot be written.  The worker knows the outcome, so
    it writes the marker again once Redis is back, before it lets the record
    go; a replay of the record (a rebalance before the offset commit) then
    finds the marker, and the destination gets the message once.  (The long
    chaos run's 103 "unavoidable" duplicates at a Sentinel failover were
    this: the marker dropped, a later record of the message counted as
    unavoidable.)"""
    proxy, stall, srv, cl, w = one_worker_behind_proxy(cluster_factory, fake_smtp, redis_server,
                                                       "data")
    try:
        q = new_qid()
        env = envelope(q, ["a@example.net"], message(q))
        produce(cl, [(q, env)])
        stall.wait("the end of data")
        proxy.cut()
        stall.release.set()
        mslocal.wait_until(lambda: f"event=redis_failed qid={q}" in w.log.read_text(
            errors="replace"), 60, "the marker write failing", log_path=w.log)
        time.sleep(1)
        proxy.mend()
        key = f"ms:delivered:{q}:a@example.net"
        mslocal.wait_until(lambda: mslocal.redis_command(redis_server.port, "EXISTS", key)
                           == b":1\r\n", 30, "the marker written once Redis is back",
                           log_path=w.log)
        produce(cl, [(q, env)])  # the record replayed
        mslocal.wait_until(lambda: "reason=already_delivered" in w.log.read_text(
            errors="replace"), 60, "the replay skipped", log_path=w.log)
        time.sleep(LEASE_MS / 1000 + 2)
        assert srv.data_count == 1 and subjects(srv) == [q]
        assert "event=duplicate_risk" not in w.log.read_text(errors="replace")
    finally:
        proxy.mend()
        proxy.close()


def test_revoke_abandons_in_flight_work(cluster_factory, fake_smtp):
    """(c) Messages in flight (stalled after RCPT) when a second worker joins:
    the first abandons those of the partitions it gives up before it gives
    them up, the newcomer delivers them, the first delivers the rest; every
    message arrives once."""
    n = 12
    stall, srv, cl, first, qids = one_worker_many_held(cluster_factory, fake_smtp, "rcpt", n)
    second = cl.add_worker()
    mslocal.wait_until(lambda: "event=partitions_revoked" in first.log.read_text(
        errors="replace"), 60, "a revoke on the first worker", log_path=first.log)
    # The newcomer delivers what was taken from the first worker.
    mslocal.wait_until(lambda: srv.data_count >= 1, 90, "deliveries by the newcomer",
                       log_path=second.log)
    stall.release.set()
    mslocal.wait_until(lambda: len(subjects(srv)) >= n, 120, f"all {n} messages")
    time.sleep(3)
    got = subjects(srv)
    assert sorted(got) == sorted(qids), f"duplicates or losses: {got}"
    log = first.log.read_text(errors="replace")
    revokes = [line for line in log.splitlines() if "event=partitions_revoked" in line]
    assert any("abandoned=0" not in line for line in revokes), revokes
    print("revokes on the first worker:", *revokes, sep="\n  ")


def test_revoke_lets_data_in_flight_finish(cluster_factory, fake_smtp):
    """(c, mid-DATA) Twelve messages whose "." the destination has but not
    yet answered when a second worker joins: the first cannot take them
    back, so it finishes them (counted finishing) and records them, while
    their leases keep the newcomer from sending them again.  Each arrives
    once."""
    n = 12
    stall, srv, cl, first, qids = one_worker_many_held(cluster_factory, fake_smtp, "data", n)
    cl.add_worker()
    mslocal.wait_until(lambda: "event=partitions_revoked topic=queue" in first.log.read_text(
        errors="replace"), 60, "a revoke on the first worker", log_path=first.log)
    time.sleep(LEASE_MS / 1000 * 2)  # the newcomer would have taken a lapsed lease by now
    assert srv.data_count == n
    stall.release.set()
    mslocal.wait_until(lambda: len(subjects(srv)) >= n, 60, f"all {n} messages")
    time.sleep(LEASE_MS / 1000 + 3)
    assert srv.data_count == n and sorted(subjects(srv)) == sorted(qids)
    revokes = [line for line in first.log.read_text(errors="replace").splitlines()
               if "event=partitions_revoked topic=queue" in line]
    assert any("finishing=0" not in line for line in revokes), revokes
    print("revokes on the first worker:", *revokes, sep="\n  ")


def test_unavoidable_duplicate_is_counted(cluster_factory, fake_smtp):
    """(d) The one duplicate fencing cannot prevent: the destination has the
    whole message (the "." arrived) but the worker is killed before it can
    record the outcome.  The other worker delivers again after the lease
    lapses, and counts it as unavoidable."""
    stall, srv, cl, q, old, new = two_workers_one_held(cluster_factory, fake_smtp, "data")
    old.kill()
    mslocal.wait_until(lambda: srv.data_count >= 2, 120, "redelivery by the other worker",
                       log_path=new.log)
    stall.release.set()
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
    q = send_one(cl)
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
    q = send_one(cl)
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
        # gen and data are written by the HSET beside them, not HINCRBY.
        assert per.get("hincrby", 0) <= 0.1
    else:
        assert per.get("evalsha", 0) == 0
        assert 0.9 <= per.get("mget", 0) <= 1.1
