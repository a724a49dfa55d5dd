"""Destination groups and the shaping file (worker/shaper.h): two recipient
domains whose MX is one host share its limits (one lease set, one bucket,
under the MX set's name); a group of the shaping file matched by MX suffix;
the rules read again on SIGHUP, a broken file keeping the old ones.

MX routing through NSD on loopback (dns_zone.py); no test asserts timings.
"""

from __future__ import annotations

import signal
import time

import pytest

import mslocal
from dns_zone import free_port_on, module_nsd
from test_worker_backoff import GMAIL_421, wait_group_settled
from test_worker_routing import servers  # noqa: F401 (a fixture)
from test_worker_delivery import (KCAT, FakeSMTP, envelope, message, metric, new_qid,  # noqa: F401
                                  produce, wait_events, wait_log)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")

ZONES = {
    # Two customer domains hosted on one MX, and a third on a provider's
    # MX host that a group names by suffix.
    "one.mstest": ["@ MX 10 mx.shared.mstest."],
    "two.mstest": ["@ MX 10 mx.shared.mstest."],
    "three.mstest": ["@ MX 10 in1.bigmail.mstest."],
    "shared.mstest": ["mx A 127.0.0.9"],
    "bigmail.mstest": ["in1 A 127.0.0.10"],
}

nsd = module_nsd(ZONES)


@pytest.fixture
def port():
    return free_port_on(["127.0.0.9", "127.0.0.10"])


def mx_cluster(cluster_factory, nsd, port, shaping: str, workers: int = 1):
    return cluster_factory(frontends=0, workers=workers, worker_extra={
        "delivery": {"relay_host": "", "smtp_port": port, "retry_min_ms": 200,
                     "retry_max_ms": 1000, "connect_timeout_ms": 5000,
                     "shaping_file": shaping},
        "dns": {"upstream": nsd.upstream, "timeout_ms": 5000}})


def slow(seconds: float):
    def reply(_n: int) -> str:
        time.sleep(seconds)
        return "250 2.0.0 Ok: queued"
    return reply


def test_two_domains_one_mx_share_limits(cluster_factory, nsd, port, servers, tmp_path):
    """One connection for the MX set, whichever domain: the server never sees
    two transactions at once although both domains have mail waiting; the
    lease set and the bucket are the MX set's, not the domains'."""
    srv = servers("127.0.0.9", port, data_reply=slow(0.3))
    shaping = tmp_path / "shaping.yaml"
    shaping.write_text("default: {connections: 1, rate: 50}\n")
    cl = mx_cluster(cluster_factory, nsd, port, str(shaping), workers=2)
    wait_group_settled(cl)
    qs = [new_qid() for _ in range(8)]
    produce(cl, [(q, envelope(q, [f"u{i}@{'one' if i % 2 else 'two'}.mstest"], message(q)))
                 for i, q in enumerate(qs)])
    key = "mx:mx.shared.mstest"
    seen_lease = []

    def done():
        if mslocal.redis_command(cl.redis.port, "EXISTS", f"ms:lease:{key}") == b":1\r\n":
            seen_lease.append(True)
        return len(srv.delivered) >= 8
    mslocal.wait_until(done, 120, "8 messages delivered", interval=0.1)
    assert srv.max_in_tx == 1
    assert seen_lease, "no lease set under the MX set's name"
    for d in ("one.mstest", "two.mstest"):
        assert mslocal.redis_command(cl.redis.port, "EXISTS", f"ms:lease:{d}") == b":0\r\n"
        assert mslocal.redis_command(cl.redis.port, "EXISTS", f"ms:rate:{d}") == b":0\r\n"
    evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") in qs
                                        and x["outcome"] == "delivered") >= 8)
    assert {e["outcome"] for e in evs if e.get("qid") in qs} == {"delivered"}
    assert sum(metric(wk, 'mailstream_worker_group_delivered_total{group="default"}')
               for wk in cl.workers) == 8


def test_group_by_mx_suffix_and_sighup_reload(cluster_factory, nsd, port, servers, tmp_path):
    """A group named by MX suffix gets its own limits and metrics; a backoff
    rule added to the file takes effect on SIGHUP; a broken file is refused
    and the rules in force stay."""
    refusing = {"on": False}
    srv = servers("127.0.0.10", port,
                  data_reply=lambda n: GMAIL_421 if refusing["on"] else "250 2.0.0 Ok")
    shaping = tmp_path / "shaping.yaml"
    shaping.write_text("groups:\n  - {name: bigmail, mx: ['*.bigmail.mstest'], connections: 2}\n")
    cl = mx_cluster(cluster_factory, nsd, port, str(shaping))
    wk = cl.workers[0]
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@three.mstest"], message(q)))])
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e))
    assert metric(wk, 'mailstream_worker_group_delivered_total{group="bigmail"}') == 1
    assert metric(wk, 'mailstream_worker_group_connections_limit{group="bigmail"}') == 2

    # No backoff rule yet: a 421 4.7.28 is only a deferral.
    refusing["on"] = True
    q2 = new_qid()
    produce(cl, [(q2, envelope(q2, ["b@three.mstest"], message(q2)))])
    wait_events(cl, lambda e: any(x.get("qid") == q2 and x["outcome"] == "deferred" for x in e))
    assert mslocal.redis_command(cl.redis.port, "HEXISTS", "ms:backoff", "bigmail") == b":0\r\n"

    # A broken file: refused, logged, the old rules stay.
    shaping.write_text("groups: [{name: bigmail}]\n")
    wk.send_signal(signal.SIGHUP)
    wait_log(wk, "event=shaping_reload_failed")
    assert metric(wk, "mailstream_worker_shaping_reload_failures_total") == 1

    # The rule arrives with SIGHUP: the next 421 backs the group off.
    shaping.write_text(
        "groups:\n  - {name: bigmail, mx: ['*.bigmail.mstest'], connections: 2}\n"
        "backoff:\n  - {name: slow-down, group: bigmail, enhanced: '4.7.28',"
        " action: throttle, factor: 0.5, for: 1h}\n")
    wk.send_signal(signal.SIGHUP)
    wait_log(wk, "event=shaping_reloaded")
    mslocal.wait_until(lambda: mslocal.redis_command(cl.redis.port, "HEXISTS", "ms:backoff",
                                                     "bigmail") == b":1\r\n",
                       60, "the bigmail group backed off", interval=0.2)
    mslocal.wait_until(
        lambda: metric(wk, 'mailstream_worker_group_backoff_factor_percent{group="bigmail"}')
        == 50, 10, "factor 50% for bigmail", interval=0.2)
    refusing["on"] = False
    wait_events(cl, lambda e: any(x.get("qid") == q2 and x["outcome"] == "delivered" for x in e),
                timeout=120)
    # Throttled to half of 2 connections: still 1.
    assert metric(wk, 'mailstream_worker_group_connections_limit{group="bigmail"}') == 1


def test_recipients_per_message_and_retry_schedule(cluster_factory, tmp_path):
    """recipients_per_message splits one destination's recipients over
    several transactions of one attempt; a group's retry schedule decides
    when its deferred mail comes back ([delivery] retry_min_ms is 200 ms
    here, the file says an hour)."""
    srv = FakeSMTP(rcpt_reply=lambda r, n: "450 4.2.0 try later" if r.startswith("later")
                   else "250 2.1.5 Ok")
    try:
        shaping = tmp_path / "shaping.yaml"
        shaping.write_text("default: {recipients_per_message: 2, retry_min: 1h, retry_max: 2h}\n")
        cl = cluster_factory(frontends=0, workers=1, worker_extra={"delivery": {
            "relay_host": srv.address, "retry_min_ms": 200, "retry_max_ms": 1000,
            "shaping_file": str(shaping)}})
        q = new_qid()
        rcpts = [f"r{i}@example.net" for i in range(5)]
        produce(cl, [(q, envelope(q, rcpts, message(q)))])
        evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") == q) >= 5)
        assert sorted(e["rcpt"] for e in evs if e.get("qid") == q) == rcpts
        assert {(e["outcome"], e["attempt"]) for e in evs if e.get("qid") == q} == {
            ("delivered", 1)}
        # Three transactions of 2, 2 and 1 recipients, each delivered once.
        assert sorted(len(r) for _, r, _ in srv.delivered) == [1, 2, 2]
        assert sorted(a for _, r, _ in srv.delivered for a in r) == rcpts

        q2 = new_qid()
        produce(cl, [(q2, envelope(q2, ["later@example.net"], message(q2)))])
        log = wait_log(cl.workers[0], f"event=retry_scheduled qid={q2}")
        line = [ln for ln in log.splitlines() if f"event=retry_scheduled qid={q2}" in ln][0]
        delay = int(line.split("delay_ms=")[1].split()[0])
        # Equal jitter: between half and all of the group's first delay.
        assert 30 * 60 * 1000 <= delay <= 60 * 60 * 1000, line
    finally:
        srv.close()


def test_group_tls_policy(cluster_factory, nsd, port, servers, tmp_path):
    """A group's `tls` applies where [tls] policy_map says nothing: encrypt
    for a server that offers no STARTTLS defers (category tls), where the
    default policy `may` would have delivered in plaintext."""
    srv = servers("127.0.0.10", port)
    shaping = tmp_path / "shaping.yaml"
    shaping.write_text("groups:\n  - {name: bigmail, mx: ['*.bigmail.mstest'], tls: encrypt}\n")
    cl = mx_cluster(cluster_factory, nsd, port, str(shaping))
    q = new_qid()
    produce(cl, [(q, envelope(q, ["c@three.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: any(x.get("qid") == q for x in e))
    (e,) = [x for x in evs if x.get("qid") == q][:1]
    assert e["outcome"] == "deferred" and e["category"] == "tls", e
    assert srv.delivered == []
    # Without the group's policy, the same server takes the mail.
    shaping.write_text("groups:\n  - {name: bigmail, mx: ['*.bigmail.mstest']}\n")
    cl.workers[0].send_signal(signal.SIGHUP)
    wait_log(cl.workers[0], "event=shaping_reloaded")
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e),
                timeout=120)
    assert len(srv.delivered) == 1
