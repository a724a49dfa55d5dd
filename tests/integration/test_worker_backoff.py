"""Automatic backoff (worker/shaper.h): a destination that answers
`421 4.7.28` once it has taken N messages in a minute makes every worker of
the cluster slow down within seconds (its backoff record in Redis,
ms:backoff), nothing bounces, everything is delivered once the destination
recovers, and the climb back shows in the metrics; `mailstream-ctl dest
list` shows the backoff and `dest resume` ends it.

Counts, not timings: the assertions bound how many messages arrive while
the group is throttled, with a wide margin for a loaded machine.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import mslocal
from test_worker_delivery import (KCAT, envelope, fake_smtp, message, metric,  # noqa: F401
                                  new_qid, produce, wait_events)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")

GMAIL_421 = ("421 4.7.28 [192.0.2.10] Gmail has detected an unusual rate of unsolicited mail "
             "originating from your IP address. To protect our users from spam, mail sent from "
             "your IP address has been temporarily rate limited.")


class PerMinuteQuota:
    """The destination's script: the first `n` messages of every minute get
    250, the others 421 4.7.28, until `recovered` is set (then all 250).
    Every end of data is timed, to count the attempts in a window."""

    def __init__(self, n: int):
        self.n = n
        self.recovered = False
        self.accepted: list = []
        self.attempts: list = []
        self.refused = 0
        self.lock = threading.Lock()

    def __call__(self, _count: int) -> str:
        now = time.monotonic()
        with self.lock:
            self.attempts.append(now)
            recent = [t for t in self.accepted if now - t < 60]
            if self.recovered or len(recent) < self.n:
                self.accepted.append(now)
                return "250 2.0.0 Ok: queued"
            self.refused += 1
            return GMAIL_421

    def attempts_between(self, a: float, b: float) -> int:
        with self.lock:
            return sum(1 for t in self.attempts if a <= t < b)


def shaping_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "shaping.yaml"
    p.write_text(text)
    return str(p)


def ctl(cl, *args: str) -> str:
    """mailstream-ctl against cl's Redis and Kafka; its output, as text."""
    env = dict(os.environ, MAILSTREAM_REDIS_PORT=str(cl.redis.port),
               MAILSTREAM_KAFKA_BROKERS=cl.kafka.bootstrap)
    r = subprocess.run([str(mslocal.build_dir() / "mailstream-ctl"), *args],
                       capture_output=True, text=True, timeout=60, env=env)
    return r.stdout + r.stderr


def wait_group_settled(cl, quiet: float = 3.0, timeout: float = 90.0) -> None:
    """Until every worker holds partitions and no assignment has changed for
    `quiet` seconds: records held in memory (waiting for a throttled turn)
    when a rebalance moves their partition are delivered by both workers
    (at least once), which is not what these tests are about."""
    def lines():
        return [ln for wk in cl.workers for ln in wk.log.read_text(errors="replace").splitlines()
                if "event=kafka_assigned" in ln or "event=kafka_revoked" in ln]
    state = {"n": -1, "since": time.monotonic()}

    def settled():
        ls = lines()
        if len(ls) != state["n"]:
            state["n"], state["since"] = len(ls), time.monotonic()
            return False
        holds = all(any("event=kafka_assigned partitions=" in ln
                        and "partitions=0 " not in ln for ln in
                        wk.log.read_text(errors="replace").splitlines()) for wk in cl.workers)
        return holds and time.monotonic() - state["since"] >= quiet
    mslocal.wait_until(settled, timeout, "the consumer group settled", interval=0.5)


def gauge(wk, group: str = "default") -> float:
    return metric(wk, f'mailstream_worker_group_backoff_factor_percent{{group="{group}"}}')


def test_421_slows_both_workers_then_ramps_back(cluster_factory, fake_smtp, tmp_path):
    quota = PerMinuteQuota(5)
    srv = fake_smtp(data_reply=quota)
    # 20 messages a second and 4 connections, cut to a tenth (2 a second, 1
    # connection) for 3 s after each 421 4.7.28, then back over 6 s.
    path = shaping_file(tmp_path, """
default: {rate: 20, connections: 4}
backoff:
  - name: gmail-rate
    code: 421
    enhanced: "4.7.28"
    action: throttle
    factor: 0.1
    for: 3s
    ramp: 6s
""")
    cl = cluster_factory(frontends=0, workers=2, worker_extra={"delivery": {
        "relay_host": srv.address, "retry_min_ms": 200, "retry_max_ms": 1000,
        "shaping_file": path, "bounce_rules_file": str(Path("etc/bounce-rules.yaml").resolve())}})
    wait_group_settled(cl)
    qs = [new_qid() for _ in range(40)]
    produce(cl, [(q, envelope(q, [f"r{i}@gmail.example"], message(q)))
                 for i, q in enumerate(qs)])

    # The first refusal writes the group's backoff record to Redis ...
    mslocal.wait_until(lambda: quota.refused > 0, 60, "a 421 from the destination",
                       interval=0.05)
    t_refused = time.monotonic()
    key = srv.address
    mslocal.wait_until(lambda: mslocal.redis_command(cl.redis.port, "HEXISTS", "ms:backoff", key)
                       == b":1\r\n", 10, "the backoff record in Redis", interval=0.1)
    # ... and both workers throttle within seconds (each reads it every second).
    for wk in cl.workers:
        mslocal.wait_until(lambda wk=wk: gauge(wk) == 10, 5, f"{wk.name} throttled to 10%",
                           interval=0.1)
    t_both = time.monotonic()
    assert t_both - t_refused < 5
    # Throttled to 2 messages a second cluster-wide, where unthrottled 3 s
    # would let up to 60 through. What is asserted is "slowed down": under
    # half of that, because turns already granted and transfers already
    # under way when the record landed still finish, and on a loaded machine
    # (a full suite beside it: 23 seen) they bunch up; not a rate.
    a0 = [metric(wk, 'mailstream_worker_group_attempts_total{group="default"}')
          for wk in cl.workers]
    time.sleep(3)
    arrived = quota.attempts_between(t_both, t_both + 3)
    assert arrived < 30, f"{arrived} attempts in 3 s while throttled to 2/s"
    for wk, before in zip(cl.workers, a0):
        after = metric(wk, 'mailstream_worker_group_attempts_total{group="default"}')
        assert after - before < 30, f"{wk.name}: {after - before} sessions while throttled"
    # The operator sees it.
    listing = ctl(cl, "dest", "list")
    assert key in listing and "throttle" in listing and "gmail-rate" in listing

    # The destination recovers: the backoff ends and the factor climbs back
    # through the ramp, visible in the metrics.
    quota.recovered = True
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.add(gauge(cl.workers[0]))
        if 100 in seen and any(10 < v < 100 for v in seen):
            break
        time.sleep(0.2)
    assert 100 in seen and any(10 < v < 100 for v in seen), sorted(seen)

    # Everything delivered exactly once, nothing bounced; the deferrals
    # were classified as rate limits.
    evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") in qs
                                        and x["outcome"] == "delivered") >= 40, timeout=180)
    mine = [e for e in evs if e.get("qid") in qs]
    assert not [e for e in mine if e["outcome"] == "bounced"]
    assert sorted({e["qid"] for e in mine if e["outcome"] == "delivered"}) == sorted(qs)
    assert len(srv.delivered) == 40
    deferred = [e for e in mine if e["outcome"] == "deferred"]
    assert deferred and all(e["category"] == "rate_limit" for e in deferred)
    assert all(e["category"] == "none" for e in mine if e["outcome"] == "delivered")
    total = sum(metric(wk, 'mailstream_worker_group_throttles_total{group="default"}')
                for wk in cl.workers)
    assert total >= 1
    assert sum(metric(wk, 'mailstream_worker_group_deferred_total{group="default",'
                          'category="rate_limit"}') for wk in cl.workers) == len(deferred)
    assert sum(metric(wk, 'mailstream_worker_group_delivered_total{group="default"}')
               for wk in cl.workers) == 40
    log = "".join(wk.log.read_text(errors="replace") for wk in cl.workers)
    assert "event=backoff " in log and "rule=gmail-rate" in log


def test_suspension_and_resume(cluster_factory, fake_smtp, tmp_path):
    """A suspend rule stops every session to the group (its mail deferred
    with 4.4.5, no bounce); `dest resume` ends it at once."""
    quota = PerMinuteQuota(1)
    srv = fake_smtp(data_reply=quota)
    path = shaping_file(tmp_path, """
backoff:
  - {name: stop, enhanced: "4.7.28", action: suspend, for: 1h, ramp: 2s}
""")
    cl = cluster_factory(frontends=0, workers=1, worker_extra={"delivery": {
        "relay_host": srv.address, "retry_min_ms": 200, "retry_max_ms": 1000,
        "shaping_file": path}})
    qs = [new_qid() for _ in range(4)]
    produce(cl, [(q, envelope(q, [f"s{i}@example.net"], message(q))) for i, q in enumerate(qs)])
    wk = cl.workers[0]
    mslocal.wait_until(lambda: gauge(wk) == 0, 60, "the group suspended", interval=0.1)
    evs = wait_events(cl, lambda e: any(x.get("dsn") == "4.4.5" and "suspended by backoff"
                                        in x.get("reply", "") for x in e), timeout=60)
    attempts = len(quota.attempts)
    time.sleep(2)
    assert len(quota.attempts) == attempts  # no session while suspended
    assert "suspend" in ctl(cl, "dest", "list")
    quota.recovered = True
    out = ctl(cl, "dest", "resume", srv.address)
    assert "resumed" in out, out
    evs = wait_events(cl, lambda e: sum(1 for x in e if x.get("qid") in qs
                                        and x["outcome"] == "delivered") >= 4, timeout=120)
    assert not [e for e in evs if e.get("qid") in qs and e["outcome"] == "bounced"]
    assert mslocal.redis_command(cl.redis.port, "HEXISTS", "ms:backoff",
                                 srv.address) == b":0\r\n"
    assert metric(wk, 'mailstream_worker_group_suspensions_total{group="default"}') >= 1
