"""[delivery] dest_rate: a cluster-wide message rate per destination, kept
as a token bucket in Redis (lib/io/ms_bucket.h). Messages over the rate
wait in memory for their turn; past [delivery] dest_rate_max_wait_ms they
are deferred (4.4.5) to a retry tier instead.

No test asserts timings: they assert counts, metrics, events and the
bucket in Redis.
"""

from __future__ import annotations

import pytest

import mslocal
from test_worker_bounce import redis_hgetall
from test_worker_delivery import (DIRECTION_OUTBOUND, KCAT, envelope, fake_smtp,  # noqa: F401
                                  message, metric, new_qid, produce, wait_events)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own (the shared one must not be stopped, and
    its command statistics count every test's commands)."""
    sup = mslocal.Supervisor(tmp_path)
    redis = mslocal.Redis(sup, mslocal.free_port())
    redis.start()
    yield redis
    sup.stop_all()


def test_dest_rate_messages_wait_their_turn(cluster_factory, fake_smtp):
    """Four messages at once for one destination at one message per two
    seconds: the first goes, the others wait in memory (no deferral, no
    retry record) and all are delivered, each exactly once, on attempt 1."""
    srv = fake_smtp()
    cl = cluster_factory(frontends=0, workers=1, worker_extra={"delivery": {
        "relay_host": srv.address, "dest_rate": "0.5", "dest_rate_max_wait_ms": 600000}})
    qs = [new_qid() for _ in range(4)]
    key = f"ms:rate:{srv.address}"
    produce(cl, [(q, envelope(q, [f"r{i}@example.net"], message(q),
                              direction=DIRECTION_OUTBOUND)) for i, q in enumerate(qs)])
    # While they are paced, the bucket is in Redis under the destination's
    # name (the relay host): {tok, ts}, expiring one period after its last use.
    mslocal.wait_until(lambda: set(redis_hgetall(cl.redis.port, key)) == {"tok", "ts"}, 60,
                       "the destination's bucket in Redis", interval=0.1)
    evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") in qs) >= 4, timeout=120)
    mine = [e for e in evs if e.get("qid") in qs]
    assert sorted((e["outcome"], e["attempt"]) for e in mine) == [("delivered", 1)] * 4
    assert len(srv.delivered) == 4
    wk = cl.workers[0]
    # Produced together, they cannot all have found a token in a bucket
    # that holds one: at least three waited.
    assert metric(wk, "mailstream_worker_dest_rate_waits_total") >= 3
    assert metric(wk, "mailstream_worker_dest_rate_deferred_total") == 0
    assert metric(wk, "mailstream_worker_dest_rate_unchecked_total") == 0
    assert metric(wk, "mailstream_worker_retry_records_total") == 0


def test_dest_rate_long_wait_defers(cluster_factory, fake_smtp):
    """With dest_rate_max_wait_ms 0 a message whose destination has no token
    is deferred at once with 4.4.5 (to a retry tier), and delivered later."""
    srv = fake_smtp()
    cl = cluster_factory(frontends=0, workers=1, worker_extra={"delivery": {
        "relay_host": srv.address, "dest_rate": "0.25", "dest_rate_max_wait_ms": 0,
        "retry_min_ms": 500, "retry_max_ms": 2000}})
    qs = [new_qid(), new_qid()]
    produce(cl, [(q, envelope(q, [f"d{i}@example.net"], message(q),
                              direction=DIRECTION_OUTBOUND)) for i, q in enumerate(qs)])
    evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") in qs
                                        and x["outcome"] == "delivered") == 2, timeout=120)
    mine = [e for e in evs if e.get("qid") in qs]
    deferred = [e for e in mine if e["outcome"] == "deferred"]
    assert deferred and all(e["dsn"] == "4.4.5" and "dest_rate" in e["reply"] for e in deferred)
    # Each message delivered once; at least one went through a retry tier.
    assert len(srv.delivered) == 2
    wk = cl.workers[0]
    assert metric(wk, "mailstream_worker_dest_rate_deferred_total") >= 1
    assert metric(wk, "mailstream_worker_retry_records_total") >= 1


def test_dest_rate_fails_open_without_redis(cluster_factory, fake_smtp, own_redis):
    """The worker's own Redis goes away: messages are delivered without the
    rate check (like leases, at least once beats never), and counted.  Only
    without duplicate fencing (fence_lease_ms 0): with it, no Redis means no
    attempt at all (test_worker_fencing.py)."""
    srv = fake_smtp()
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "redis": {"port": own_redis.port},
        "delivery": {"relay_host": srv.address, "dest_rate": "0.1",
                     "dest_rate_max_wait_ms": 0, "retry_min_ms": 200,
                     "retry_max_ms": 1000, "fence_lease_ms": 0}})
    own_redis.stop()
    qs = [new_qid() for _ in range(3)]
    produce(cl, [(q, envelope(q, [f"o{i}@example.net"], message(q),
                              direction=DIRECTION_OUTBOUND)) for i, q in enumerate(qs)])
    evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") in qs
                                        and x["outcome"] == "delivered") == 3, timeout=120)
    # With the bucket reachable, one message per 10 s and no waiting
    # would have deferred two of them (4.4.5): none was.
    mine = [e for e in evs if e.get("qid") in qs]
    assert [e["outcome"] for e in mine] == ["delivered"] * 3
    wk = cl.workers[0]
    assert metric(wk, "mailstream_worker_dest_rate_unchecked_total") == 3
    assert metric(wk, "mailstream_worker_dest_rate_deferred_total") == 0


def test_scripts_run_by_digest_and_reloaded_after_flush(cluster_factory, fake_smtp, own_redis):
    """The worker's Lua scripts (the bucket and the lease, lib/io/ms_script.h)
    are loaded when it connects and run by digest: Redis never sees EVAL.
    After SCRIPT FLUSH (Redis forgets them, the connection stays) the next
    run loads each script again and is sent once more, so the rate and the
    lease still apply and nothing fails open."""
    srv = fake_smtp()
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "redis": {"port": own_redis.port},
        "delivery": {"relay_host": srv.address, "dest_rate": "1000",
                     "dest_concurrency": 2, "retry_min_ms": 200, "retry_max_ms": 1000}})
    qs = [new_qid(), new_qid()]
    for i, q in enumerate(qs):
        if i == 1:
            assert mslocal.redis_command(own_redis.port, "SCRIPT", "FLUSH").startswith(b"+OK")
        produce(cl, [(q, envelope(q, [f"s{i}@example.net"], message(q),
                                  direction=DIRECTION_OUTBOUND))])
        wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered"
                                      for x in e), timeout=60)
    assert len(srv.delivered) == 2
    wk = cl.workers[0]
    assert metric(wk, "mailstream_worker_dest_rate_unchecked_total") == 0
    assert metric(wk, "mailstream_worker_redis_errors_total") == 0
    log = wk.log.read_text()
    assert "event=redis_script_reload script=bucket" in log
    assert "event=redis_script_reload script=lease" in log
    stats = mslocal.redis_command(own_redis.port, "INFO", "commandstats").decode()
    calls = {line.split(":")[0]: int(line.split("calls=")[1].split(",")[0])
             for line in stats.splitlines() if line.startswith("cmdstat_")}
    assert "cmdstat_eval" not in calls
    # Two messages, each one rate check and one lease, and the two runs
    # after the flush sent again.
    assert calls.get("cmdstat_evalsha", 0) >= 6
    # Both scripts at connect, each again after the flush (Redis 7 counts
    # SCRIPT LOAD apart from the other subcommands).
    assert calls.get("cmdstat_script|load", calls.get("cmdstat_script", 0)) >= 4


def test_dest_rate_wait_ends_on_drain(cluster_factory, fake_smtp):
    """SIGTERM while a message sleeps until its destination's turn: it is
    deferred to a retry tier (not left waiting, not lost), and a new worker
    delivers it; each message reaches the destination once."""
    srv = fake_smtp()
    cl = cluster_factory(frontends=0, workers=1, worker_extra={"delivery": {
        "relay_host": srv.address, "dest_rate": "0.05", "dest_rate_max_wait_ms": 600000,
        "retry_min_ms": 200, "retry_max_ms": 1000}})
    qs = [new_qid(), new_qid()]
    produce(cl, [(q, envelope(q, [f"t{i}@example.net"], message(q),
                              direction=DIRECTION_OUTBOUND)) for i, q in enumerate(qs)])
    wk = cl.workers[0]
    mslocal.wait_until(lambda: len(srv.delivered) == 1 and
                       metric(wk, "mailstream_worker_dest_rate_waits_total") == 1, 60,
                       "one delivered, one waiting for its turn", interval=0.2)
    proc = wk.proc
    wk.stop(timeout=60)
    assert proc.popen.wait(timeout=5) == 0
    log = wk.log.read_text()
    assert "event=dest_rate_deferred" in log and "draining=1" in log
    assert "event=abandoned" not in log
    cl.add_worker()
    wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") in qs
                                  and x["outcome"] == "delivered") == 2, timeout=120)
    assert sorted(d[1][0] for d in srv.delivered) == ["t0@example.net", "t1@example.net"]
