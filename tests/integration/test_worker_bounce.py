"""Worker outcomes that must survive restarts: durable retries (retry tier
topics + per-recipient state in Redis), RFC 3464 DSNs sent back through the
queue, the backscatter rules, expiry, and the suppression list.

Destinations are the scripted FakeSMTP of test_worker_delivery (as the relay
host, so DSNs come back to the same server and can be parsed). No test
asserts timings.
"""

from __future__ import annotations

import email
import email.policy
import time
from typing import List

import pytest

import mslocal
from test_worker_delivery import (DIRECTION_INBOUND, DIRECTION_OUTBOUND, KCAT,  # noqa: F401
                                  NOTIFY_FAILURE, NOTIFY_NEVER, RET_HDRS, envelope, message,
                                  fake_smtp, metric, new_qid, produce, wait_events, wait_log)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")


def relay_cluster(cluster_factory, relay: str, **delivery):
    d = {"relay_host": relay, "retry_min_ms": 200, "retry_max_ms": 1000, **delivery}
    return cluster_factory(frontends=0, workers=1, worker_extra={"delivery": d})


def redis_hgetall(port: int, key: str) -> dict:
    raw = mslocal.redis_command(port, "HGETALL", key).decode()
    lines = raw.split("\r\n")
    vals = [lines[i + 1] for i in range(1, len(lines) - 1, 2) if lines[i].startswith("$")]
    return dict(zip(vals[0::2], vals[1::2]))


def dsns(srv) -> List[tuple]:
    """Transactions with the null sender."""
    return [d for d in srv.delivered if d[0] == ""]


def test_deferred_survives_worker_restart(cluster_factory, fake_smtp):
    """451 then 250, with the only worker stopped between the attempts: the
    retry record in Kafka brings the message back to a new worker, which
    delivers it as attempt 2."""
    srv = fake_smtp(rcpt_reply=lambda r, n: "451 4.7.1 Greylisted, come back later" if n == 1
                    else "250 2.1.5 Ok")
    cl = relay_cluster(cluster_factory, srv.address, retry_min_ms=2000, retry_max_ms=4000)
    q = new_qid()
    rcpt = "grey@example.net"
    produce(cl, [(q, envelope(q, [rcpt], message(q)))])
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "deferred" for x in e))
    w = cl.workers[0]
    proc = w.proc
    w.stop(timeout=60)
    assert proc.popen.wait(timeout=5) == 0
    log = w.log.read_text()
    assert f"event=retry_scheduled qid={q} attempt=1 pending=1 tier=1" in log

    # The retry state is in Redis while no worker runs.
    state = redis_hgetall(cl.redis.port, f"ms:retry:{q}:{rcpt}")
    assert state["attempts"] == "1" and "451 4.7.1" in state["last_reply"]
    assert int(state["next_attempt_us"]) > int(state["first_seen_us"]) > 0
    # ... and the message is in the retry queue the metrics are read from.
    assert mslocal.redis_command(cl.redis.port, "ZSCORE", "ms:retryq", q).startswith(b"$")

    cl.add_worker()
    evs = wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered"
                                        for x in e), timeout=120)
    mine = [e for e in evs if e.get("qid") == q]
    assert [(e["outcome"], e["attempt"]) for e in mine] == [("deferred", 1), ("delivered", 2)]
    assert len(srv.delivered) == 1 and srv.delivered[0][1] == [rcpt]
    assert srv.delivered[0][2] == message(q)
    # Done: the retry state goes.
    mslocal.wait_until(lambda: mslocal.redis_command(cl.redis.port, "EXISTS",
                                                     f"ms:retry:{q}:{rcpt}") == b":0\r\n",
                       30, "retry state removed")
    mslocal.wait_until(lambda: mslocal.redis_command(cl.redis.port, "ZSCORE", "ms:retryq", q)
                       == b"$-1\r\n", 30, "retry queue entry removed")
    assert metric(cl.workers[1], "mailstream_worker_attempts_total") == 1


def test_550_sends_dsn_that_parses(cluster_factory, fake_smtp):
    srv = fake_smtp(rcpt_reply=lambda r, n: "550 5.1.1 <%s>: Recipient address rejected: User "
                    "unknown" % r if r.startswith("nobody") else "250 2.1.5 Ok")
    cl = relay_cluster(cluster_factory, srv.address)
    q = new_qid()
    nobody = f"nobody.{q.lower()}@example.net"  # unique: hard bounces are suppressed
    produce(cl, [(q, envelope(q, [nobody, "someone@example.net"], message(q),
                              direction=DIRECTION_OUTBOUND, ret=RET_HDRS, envid="ENV-" + q,
                              orcpt={nobody: "rfc822;" + nobody.upper()}))])
    mslocal.wait_until(lambda: len(dsns(srv)) >= 1, 90, "a DSN at the destination",
                       interval=0.5)
    (mail_from, rcpts, data) = dsns(srv)[0]
    assert rcpts == ["sender@example.org"]

    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<sender@example.org>" or msg["To"] == "sender@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                     "text/rfc822-headers"]
    status = parts[1].get_payload()  # per-message block, then one per recipient
    assert status[0]["Reporting-MTA"] == "dns; localhost"
    assert status[0]["Original-Envelope-Id"] == "ENV-" + q
    assert status[0]["Arrival-Date"]
    assert len(status) == 2  # only the bounced recipient
    r = status[1]
    assert r["Final-Recipient"] == "rfc822; " + nobody
    assert r["Original-Recipient"] == "rfc822;" + nobody.upper()
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Remote-MTA"] == "dns; 127.0.0.1"
    assert r["Diagnostic-Code"].startswith(f"smtp; 550 5.1.1 <{nobody}>")
    # RET=HDRS: the headers only.
    returned = parts[2].get_content()
    assert f"Subject: {q}" in returned and "Hello." not in returned

    # The other recipient was delivered; the DSN is an event of its own.
    orig = [d for d in srv.delivered if d[0] == "sender@example.org"]
    assert [d[1] for d in orig] == [["someone@example.net"]]
    log = wait_log(cl.workers[0], "event=dsn ")
    assert f"event=dsn qid={q}" in log
    assert metric(cl.workers[0], "mailstream_worker_dsn_total") == 1
    # The DSN itself has the null sender and NOTIFY=NEVER: it is never bounced.
    evs = wait_events(cl, lambda e: any(x.get("rcpt") == "sender@example.org" for x in e))
    assert [x["outcome"] for x in evs if x.get("rcpt") == "sender@example.org"] == ["delivered"]


def test_no_dsn_for_inbound_never_or_null_sender(cluster_factory, fake_smtp):
    srv = fake_smtp(rcpt_reply=lambda r, n: "550 5.1.1 User unknown" if r.startswith("gone")
                    else "250 2.1.5 Ok")
    cl = relay_cluster(cluster_factory, srv.address)
    q1, q2, q3, q4 = (new_qid() for _ in range(4))
    g = [f"gone{i}.{q1.lower()}@example.net" for i in range(5)]  # unique per run
    produce(cl, [
        (q1, envelope(q1, [g[1]], message(q1), direction=DIRECTION_INBOUND)),
        (q2, envelope(q2, [g[2]], message(q2), direction=DIRECTION_OUTBOUND,
                      notify={g[2]: NOTIFY_NEVER})),
        (q3, envelope(q3, [g[3]], message(q3), sender="",
                      direction=DIRECTION_OUTBOUND)),
        # A control that does get one, so "no DSN" is not just "not yet".
        (q4, envelope(q4, [g[4]], message(q4), direction=DIRECTION_OUTBOUND,
                      notify={g[4]: NOTIFY_FAILURE})),
    ])
    mslocal.wait_until(lambda: len(dsns(srv)) >= 1, 90, "the control DSN", interval=0.5)
    log = wait_log(cl.workers[0], f"event=dsn_skipped qid={q3}")
    # Inbound, and no policy stage ran: nothing says the sender is genuine.
    assert f"event=dsn_skipped qid={q1} reason=not_evaluated direction=inbound" in log
    assert f"event=dsn_skipped qid={q2} reason=notify" in log
    assert f"event=dsn_skipped qid={q3} reason=null_sender" in log
    wait_events(cl, lambda e: any(x.get("rcpt") == "sender@example.org" for x in e))
    assert len(dsns(srv)) == 1 and g[4].encode() in dsns(srv)[0][2]


def test_hard_bounce_suppresses_recipient(cluster_factory, fake_smtp):
    srv = fake_smtp(rcpt_reply=lambda r, n: "550 5.1.1 User unknown" if r.startswith("dead")
                    else "250 2.1.5 Ok")
    cl = relay_cluster(cluster_factory, srv.address)
    rcpt = f"dead.{new_qid().lower()}@example.net"
    q1, q2 = new_qid(), new_qid()
    produce(cl, [(q1, envelope(q1, [rcpt], message(q1)))])
    wait_events(cl, lambda e: any(x.get("qid") == q1 for x in e))
    mslocal.wait_until(lambda: mslocal.redis_command(
        cl.redis.port, "EXISTS", f"ms:suppress:{rcpt}") == b":1\r\n", 30, "suppression entry")
    ttl = int(mslocal.redis_command(cl.redis.port, "TTL", f"ms:suppress:{rcpt}")[1:])
    assert ttl > 0
    produce(cl, [(q2, envelope(q2, [rcpt], message(q2)))])
    evs = wait_events(cl, lambda e: any(x.get("qid") == q2 for x in e))
    (e,) = [x for x in evs if x.get("qid") == q2]
    assert e["outcome"] == "bounced" and e["relay"] == "suppressed"
    assert srv.rcpt_counts[rcpt] == 1  # no second connection for it
    # Both bounces count for the sender's domain (shared Redis: at least 2).
    n = mslocal.redis_command(cl.redis.port, "HGET", "ms:bounces:example.org", "bad_mailbox")
    assert int(n.split(b"\r\n")[1]) >= 2
    assert metric(cl.workers[0], "mailstream_worker_suppressed_total") == 1


def test_expired_message_bounces_with_dsn(cluster_factory):
    """A destination that refuses connections, and a message older than
    [retry] max_age_s: bounced with 4.4.7 and a DSN produced."""
    dead = f"{mslocal.HOST}:{mslocal.free_port()}"
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": dead, "retry_min_ms": 200, "retry_max_ms": 1000},
        "retry": {"max_age_s": 2}})
    q = new_qid()
    produce(cl, [(q, envelope(q, ["far@example.net"], message(q),
                              direction=DIRECTION_OUTBOUND))])
    evs = wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "bounced"
                                        for x in e), timeout=90)
    mine = [e for e in evs if e.get("qid") == q]
    assert mine[-1]["dsn"] == "4.4.7" and "expired" in mine[-1]["reply"]
    assert all(e["outcome"] == "deferred" for e in mine[:-1]) and len(mine) >= 2
    log = wait_log(cl.workers[0], f"event=dsn qid={q}")
    assert "to=sender@example.org" in log


def test_silent_destination_is_deferred_not_stuck(cluster_factory):
    """A server that accepts the connection and never says a word: each
    attempt times out waiting for the banner (deferred, 4.4.2) and the
    message keeps being retried: it is not stuck in flight."""
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind((mslocal.HOST, 0))
    lsock.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        lsock.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(lsock.accept()[0])
            except OSError:
                continue
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        cl = relay_cluster(cluster_factory, f"{mslocal.HOST}:{lsock.getsockname()[1]}",
                           reply_timeout_ms=1000)
        q = new_qid()
        produce(cl, [(q, envelope(q, ["quiet@example.net"], message(q)))])
        evs = wait_events(cl, lambda e: len([x for x in e if x.get("qid") == q]) >= 2,
                          timeout=90)
        mine = [e for e in evs if e.get("qid") == q]
        assert [e["attempt"] for e in mine[:2]] == [1, 2]
        assert all(e["outcome"] == "deferred" and e["dsn"] == "4.4.2" for e in mine)
        assert "timeout" in mine[0]["reply"] and mine[0]["class"] == "network"
        assert len(held) >= 2
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        lsock.close()


@pytest.mark.timeout(420)
def test_two_workers_one_killed_repeatedly(cluster_factory, record_property):
    """Two workers under load; one of them is SIGKILLed three times (and
    replaced each time). Every message reaches the sink; duplicates are
    counted and reported (the delivered markers keep them near zero)."""
    cl = cluster_factory(frontends=0, workers=2, sink_args=["-w", "1"],
                         worker_extra={"delivery": {"max_in_flight": 16}})
    n = 300
    qids = [new_qid() for _ in range(n)]
    produce(cl, [(None, envelope(q, [f"k.{q}@example.net"], message(q))) for q in qids])

    def subjects() -> List[bytes]:
        out = []
        for m in cl.sink.messages():
            for line in m.data.split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    out.append(line[9:])
        return out

    victim = 0
    for kill in range(3):
        base = len(cl.sink.messages())
        mslocal.wait_until(lambda: len(cl.sink.messages()) >= min(n, base + 40), 120,
                           f"progress before kill {kill + 1}", interval=0.2)
        if len(set(subjects())) >= n:
            break
        cl.workers[victim].kill()
        cl.add_worker()
        victim = len(cl.workers) - 1
    mslocal.wait_until(lambda: set(subjects()) >= {q.encode() for q in qids}, 300,
                       f"all {n} messages in the sink", interval=1.0)
    got = subjects()
    dups = len(got) - len(set(got))
    record_property("duplicates", dups)
    print(f"two workers, {kill + 1} kills: {n} messages, {dups} duplicate deliveries")
    assert dups <= n // 50, f"{dups} duplicates"


def _status_groups(data: bytes):
    msg = email.message_from_bytes(data, policy=email.policy.default)
    parts = list(msg.iter_parts())
    return msg, parts, parts[1].get_payload()


def test_delay_warning_sent_once(cluster_factory, fake_smtp):
    """[retry] delay_warning_s: a recipient still deferred after that long
    gets one RFC 3464 "delayed" DSN, carried as sent through the retry
    records (each retry is a fresh record, so only the envelope remembers);
    a recipient whose NOTIFY lacks DELAY gets none. The destination keeps
    deferring until the warning has arrived and two more attempts were made,
    and the worker is replaced in between, so "once" is checked across
    retries and a restart, not assumed."""
    seen = {}

    def rcpt_reply(r, n):
        if not r.startswith("slow"):
            return "250 2.1.5 Ok"
        warned = any(d[0] == "" and b"Action: delayed" in d[2] for d in srv.delivered)
        if not warned:
            return "451 4.4.1 Mailbox busy, try later"
        seen.setdefault(r, n)
        return "451 4.4.1 Still busy" if n < seen[r] + 2 else "250 2.1.5 Ok"

    srv = fake_smtp(rcpt_reply=rcpt_reply)
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv.address, "retry_min_ms": 200, "retry_max_ms": 1000},
        "retry": {"delay_warning_s": 1}})
    q = new_qid()
    slow, quiet = f"slow.{q.lower()}@example.net", f"slowquiet.{q.lower()}@example.net"
    produce(cl, [(q, envelope(q, [slow, quiet], message(q), direction=DIRECTION_OUTBOUND,
                              notify={quiet: NOTIFY_FAILURE}))])
    # Once the warning is out, the worker is replaced: what remains of the
    # message is in the retry tier topics, and the new worker must know
    # from the record alone that the warning was sent.
    mslocal.wait_until(lambda: len(dsns(srv)) >= 1, 90, "the delay warning", interval=0.5)
    cl.workers[0].stop(timeout=60)
    cl.add_worker()
    evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") == q
                                        and x["outcome"] == "delivered") == 2, timeout=120)
    mine = [e for e in evs if e.get("qid") == q and e["rcpt"] == slow]
    assert [e["outcome"] for e in mine][-1] == "delivered"
    assert sum(1 for e in mine if e["outcome"] == "deferred") >= 3

    # Exactly one DSN, a delay warning for `slow` only.
    mslocal.wait_until(lambda: len(dsns(srv)) >= 1, 30, "the delay warning", interval=0.5)
    time.sleep(1)
    assert len(dsns(srv)) == 1, [d[2][:200] for d in dsns(srv)]
    (_, rcpts, data) = dsns(srv)[0]
    assert rcpts == ["sender@example.org"]
    msg, parts, status = _status_groups(data)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert len(status) == 2
    r = status[1]
    assert r["Final-Recipient"] == "rfc822; " + slow
    assert r["Action"] == "delayed"
    assert r["Status"] == "4.4.1"
    assert r["Will-Retry-Until"]
    assert r["Diagnostic-Code"].startswith("smtp; 451 4.4.1")
    # A delay warning returns the headers only (no RET=FULL asked for).
    assert parts[2].get_content_type() == "text/rfc822-headers"
    # The first worker sent it; the second one, which made the last
    # attempts, did not send it again.
    assert metric(cl.workers[1], "mailstream_worker_delay_warnings_total") == 0
    assert f"event=dsn qid={q} " not in cl.workers[1].log.read_text()
    log = cl.workers[0].log.read_text()
    assert f"event=dsn qid={q} " in log and "delayed=1" in log


def test_delay_warning_off_by_default(cluster_factory, fake_smtp):
    """delay_warning_s 0 (the default): deferrals and a final delivery, no
    DSN at all."""
    srv = fake_smtp(rcpt_reply=lambda r, n: "451 4.4.1 Busy" if r.startswith("late") and n <= 3
                    else "250 2.1.5 Ok")
    cl = relay_cluster(cluster_factory, srv.address)
    q = new_qid()
    rcpt = f"late.{q.lower()}@example.net"
    produce(cl, [(q, envelope(q, [rcpt], message(q), direction=DIRECTION_OUTBOUND))])
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e),
                timeout=120)
    time.sleep(1)
    assert dsns(srv) == []
    assert metric(cl.workers[0], "mailstream_worker_delay_warnings_total") == 0


# ---- the backscatter rule for inbound mail (DESIGN.md) ----

@pytest.fixture
def spf_dns(tmp_path_factory):
    from dns_zone import Nsd
    tmp = tmp_path_factory.mktemp("bounce-dns")
    sup = mslocal.Supervisor(tmp)
    nsd = Nsd(sup, mslocal.free_port(), {"mstest": [
        'pass TXT "v=spf1 ip4:127.0.0.1 -all"',
        'forged TXT "v=spf1 ip4:192.0.2.1 -all"',
    ]})
    nsd.start()
    yield nsd
    sup.stop_all()


def test_inbound_dsn_only_when_spf_passed(cluster_factory, fake_smtp, spf_dns):
    """Inbound mail that bounces: the sender whose domain's SPF passes for
    the client gets a DSN; one whose SPF fails (a forged sender) gets none,
    logged and counted. The policy stage's results come from a real NSD."""
    srv = fake_smtp(rcpt_reply=lambda r, n: "550 5.1.1 User unknown" if r.startswith("gone")
                    else "250 2.1.5 Ok")
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv.address, "retry_min_ms": 200, "retry_max_ms": 1000},
        "dns": {"upstream": spf_dns.upstream, "timeout_ms": 5000},
        "policy": {"inbound": "yes", "authserv_id": "mx.mailstream.test"}})
    q1, q2 = new_qid(), new_qid()
    g1, g2 = f"gone1.{q1.lower()}@example.net", f"gone2.{q2.lower()}@example.net"
    produce(cl, [
        (q1, envelope(q1, [g1], message(q1), sender="bounce@pass.mstest",
                      direction=DIRECTION_INBOUND, client_ip="127.0.0.1", helo="mx.pass.mstest")),
        (q2, envelope(q2, [g2], message(q2), sender="victim@forged.mstest",
                      direction=DIRECTION_INBOUND, client_ip="127.0.0.1",
                      helo="mx.forged.mstest")),
    ])
    log = wait_log(cl.workers[0], f"event=dsn_skipped qid={q2}", timeout=90)
    assert (f"event=dsn_skipped qid={q2} reason=unauthenticated direction=inbound "
            "spf_mailfrom=no dkim_aligned=none") in log
    mslocal.wait_until(lambda: len(dsns(srv)) >= 1, 90, "the DSN for the SPF pass",
                       interval=0.5)
    wait_events(cl, lambda e: any(x.get("rcpt") == "bounce@pass.mstest" for x in e))
    assert [d[1] for d in dsns(srv)] == [["bounce@pass.mstest"]]
    assert g1.encode() in dsns(srv)[0][2]
    assert metric(cl.workers[0], 'mailstream_worker_dsn_suppressed_total'
                                 '{reason="unauthenticated"}') == 1
    assert metric(cl.workers[0], "mailstream_worker_dsn_total") == 1
    assert not any(d[1] == ["victim@forged.mstest"] for d in srv.delivered)
