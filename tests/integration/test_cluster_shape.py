"""The production shape on one machine (issue 15, docs/reliability.md).

Each test builds one piece of the shape from cluster/mslocal.py's classes on
free loopback ports, keeps mail flowing through it with a steady sender,
breaks something for real (SIGKILL), and checks that every message the
client got 250 for reached the sink:

  test_three_brokers_survive_a_broker_kill  KafkaCluster(3), replication 3,
      min.insync.replicas 2; the broker leading most queue partitions is
      SIGKILLed mid-stream.                                          (slow)
  test_sentinel_failover_followed            RedisSentinelSet; the primary is
      SIGKILLed mid-stream; the frontend's and the worker's Redis use moves
      to the promoted replica without a restart.                     (slow)
  test_sentinel_forced_failover_followed     SENTINEL FAILOVER with the old
      primary alive: the nodes move to the new one (+switch-master).
  test_ctl_asks_the_sentinels                mailstream-ctl -c with [redis]
      sentinels, after a failover: it writes to the new primary.
  test_balancer_passes_client_address        HAProxy with PROXY v2 in front
      of two frontends: the Received header names the client, not HAProxy;
      only HAProxy's address may send a PROXY header; a frontend killed
      behind it costs no message.
  test_membership_commands                   cluster/local add, kill,
      restart, remove, status and down on a running cluster.

`slow` tests start a KRaft quorum or wait out a Sentinel failover; together
they take about a minute on an idle 2-core machine.
"""

from __future__ import annotations

import dataclasses
import os
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Dict

import pytest

import mslocal
from conftest import REPO, _test_dir

LOCAL = REPO / "cluster" / "local"


class Sender(threading.Thread):
    """Sends numbered messages, each with a unique token in its Subject,
    one connection each, every `interval` seconds, from `source`.  Keeps the
    tokens the server answered 250 for (with the queue id) and counts the
    rest (a 4xx, a refused connection): those the client would retry."""

    def __init__(self, port: int, source: str = mslocal.HOST, interval: float = 0.05):
        super().__init__(daemon=True)
        self.port, self.source, self.interval = port, source, interval
        self.run_id = uuid.uuid4().hex[:8]
        self.accepted: Dict[str, str] = {}  # token -> queue id
        self.refused = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def send_one(self, n: int) -> None:
        token = f"{self.run_id}-{n:06d}"
        msg = (f"From: <s@example.org>\r\nTo: <u@mailstream.test>\r\nSubject: {token}\r\n"
               f"Message-ID: <{token}@example.org>\r\n\r\nbody {token}\r\n")
        try:
            with smtplib.SMTP(mslocal.HOST, self.port, timeout=20,
                              source_address=(self.source, 0)) as s:
                s.ehlo("client.example.org")
                s.mail("s@example.org")
                s.rcpt("u@mailstream.test")
                code, reply = s.data(msg.encode())
        except (OSError, smtplib.SMTPException):
            code, reply = 0, b""
        with self._lock:
            if code == 250:
                m = re.search(rb"queued as (\S+)", reply)
                self.accepted[token] = m.group(1).decode() if m else ""
            else:
                self.refused += 1

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            n += 1
            self.send_one(n)
            self._halt.wait(self.interval)

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def wait_accepted(self, more: int, timeout: float) -> None:
        target = self.count() + more
        mslocal.wait_until(lambda: self.count() >= target, timeout,
                           f"{more} more messages accepted (have {self.count()}, "
                           f"refused {self.refused})", interval=0.2)

    def stop(self) -> Dict[str, str]:
        self._halt.set()
        self.join(60)
        with self._lock:
            return dict(self.accepted)


def tokens_in(sink: mslocal.Sink) -> Counter:
    out: Counter = Counter()
    for m in sink.messages():
        hit = re.search(rb"^Subject: (\S+)\r$", m.data, re.M)
        if hit:
            out[hit.group(1).decode()] += 1
    return out


def assert_none_lost(sink: mslocal.Sink, accepted: Dict[str, str], timeout: float) -> Counter:
    """Every accepted token reaches the sink within timeout."""
    got: Counter = Counter()

    def all_there() -> bool:
        nonlocal got
        got = tokens_in(sink)
        return all(t in got for t in accepted)
    try:
        mslocal.wait_until(all_there, timeout, "every accepted message at the sink", interval=1)
    except mslocal.MsLocalError:
        lost = sorted(t for t in accepted if t not in got)
        pytest.fail(f"{len(lost)} of {len(accepted)} accepted messages lost: "
                    f"{[(t, accepted[t]) for t in lost[:10]]}")
    return got


def isolated_topics(tag: str, queue_partitions: int) -> Dict[str, int]:
    topics = {f"queue.{tag}": queue_partitions, f"events.{tag}": 3}
    for t in range(1, mslocal.WORKER_RETRY_TIERS + 1):
        topics[f"queue.{tag}.retry.{t}"] = mslocal.RETRY_TIER_PARTITIONS
    return topics


# ---------------------------------------------------------------------------
# Kafka: three brokers, replication 3
# ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(420)
def test_three_brokers_survive_a_broker_kill(request, tmp_path_factory, redis_server):
    sup = mslocal.Supervisor(_test_dir(request, tmp_path_factory, "brokers3"))
    try:
        ports = mslocal.free_ports(6 + 3 + 2)
        kc = mslocal.KafkaCluster(sup, 3, ports[:6])
        assert kc.replication == (3, 2)
        kc.start()
        tag = uuid.uuid4().hex[:8]
        topics = isolated_topics(tag, 6)
        kc.create_topics(topics)
        info = kc.describe_topics([f"queue.{tag}"])[f"queue.{tag}"]
        assert info.replication_factor == 3
        assert info.configs.get("min.insync.replicas") == "2"

        sink = mslocal.Sink(sup, mslocal.free_port())
        sink.start()
        mx, sub, subs = ports[6:9]
        cl = mslocal.Cluster(sup, mslocal.ClusterSpec(
            kafka_brokers=kc.bootstrap, redis_port=redis_server.port, relay_host=sink.address,
            listeners={"mx": (f"{mslocal.HOST}:{mx}", "mx"),
                       "submission": (f"{mslocal.HOST}:{sub}", "submission"),
                       "submissions": (f"{mslocal.HOST}:{subs}", "submissions")},
            frontend_metrics_ports=[ports[9]], worker_metrics_ports=[ports[10]],
            topic=f"queue.{tag}", events_topic=f"events.{tag}", group=f"workers.{tag}"))
        cl.start(timeout=60)

        sender = Sender(mx)
        sender.start()
        sender.wait_accepted(30, 60)
        leaders = Counter(l for l in kc.leaders(f"queue.{tag}").values() if l > 0)
        victim, led = leaders.most_common(1)[0]
        at_kill = sender.count()
        kc.node(victim).kill()
        sender.wait_accepted(40, 120)  # writes go on with 2 of 3 in sync
        accepted = sender.stop()
        got = assert_none_lost(sink, accepted, 150)
        for n in cl.nodes():
            assert n.alive(), f"{n.name} died"
        print(f"\nbrokers=3: kafka-{victim} (leader of {led}/6 queue partitions) SIGKILLed "
              f"after {at_kill} accepted; accepted {len(accepted)}, not accepted "
              f"{sender.refused}, lost 0, delivered twice "
              f"{sum(1 for t in accepted if got[t] > 1)}")
    finally:
        sup.stop_all(timeout=10, order=[n for pre in ("frontend-", "worker-", "sink", "kafka-")
                                        for n in list(sup.procs) if n.startswith(pre)])


# ---------------------------------------------------------------------------
# Redis: primary, replica, three Sentinels
# ---------------------------------------------------------------------------

@pytest.fixture
def sentinel_set(request, tmp_path_factory):
    """A started RedisSentinelSet of its own: primary, replica, three Sentinels."""
    sup = mslocal.Supervisor(_test_dir(request, tmp_path_factory, "sentinel"))
    try:
        ports = mslocal.free_ports(5)
        rs = mslocal.RedisSentinelSet(sup, ports[:2], ports[2:])
        rs.start()
        yield rs
    finally:
        sup.stop_all(timeout=10)


def wait_nodes_on(cl: mslocal.Cluster, port: int, timeout: float = 30) -> None:
    """Every node of cl has logged its connect to the Redis on port."""
    line = f"event=redis_connected host={mslocal.HOST} port={port}"
    mslocal.wait_until(lambda: all(line in n.log.read_text() for n in cl.nodes()), timeout,
                       f"frontend and worker connected to the new primary {port}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sentinel_failover_followed(sentinel_set, cluster_factory):
    rs = sentinel_set
    redis = rs.client_config()
    # A connection limit nobody reaches: the frontend uses Redis for
    # every connection (its buckets), fails open while Redis is away.
    fe = {**redis, "ratelimit": {"connections_per_ip": "1000000/1h",
                                 "redis_failure": "open"}}
    cl = cluster_factory(frontends=1, workers=1, frontend_extra=fe, worker_extra=redis)
    old = rs.primary()
    assert old is rs.servers[0]
    pids = {n.name: n.pid for n in cl.nodes()}

    sender = Sender(cl.listener()[1], source="127.0.0.2")
    sender.start()
    sender.wait_accepted(20, 60)
    at_kill = sender.count()
    t0 = time.monotonic()
    old.sup.kill(old.name)
    new = rs.wait_failover(old, 60)
    t_promoted = time.monotonic() - t0
    wait_nodes_on(cl, new.port)  # no restart: the same processes move
    t_followed = time.monotonic() - t0
    before = set(sender.accepted)
    sender.wait_accepted(30, 90)
    accepted = sender.stop()
    got = assert_none_lost(cl.sink, accepted, 90)
    for n in cl.nodes():
        assert n.alive() and n.pid == pids[n.name], f"{n.name} was restarted or died"
        assert n.ready(), f"{n.name} not ready after the failover"
    print(f"\nsentinel: primary SIGKILLed after {at_kill} accepted; replica promoted after {t_promoted:.1f} s, frontend and worker on it "
          f"after {t_followed:.1f} s; accepted {len(accepted)}, not accepted "
          f"{sender.refused}, lost 0, delivered twice "
          f"{sum(1 for t in accepted if got[t] > 1)}")
    # The worker records what it delivered after the failover on the new
    # primary (a key written there, not replicated from the old one).
    after = {q for t, q in accepted.items() if t not in before}
    keys = mslocal.redis_query(new.port, "KEYS", "ms:delivered:*")
    marked = {k.split(":")[2] for k in keys}  # type: ignore[union-attr]
    assert after & marked, "no delivered marker written to the new primary"
    # The frontend's rate-limit buckets too: a client address first seen
    # after the failover.
    Sender(cl.listener()[1], source="127.0.0.3").send_one(1)
    assert mslocal.redis_query(new.port, "KEYS", "*127.0.0.3*"), \
        "the frontend's buckets are not on the new primary"


def test_sentinel_forced_failover_followed(sentinel_set, cluster_factory):
    """SENTINEL FAILOVER with the old primary alive: the nodes hear
    +switch-master (or are disconnected by the demotion) and move on their
    own; the old primary, now a replica, gets none of their writes."""
    rs = sentinel_set
    redis = rs.client_config()
    fe = {**redis, "ratelimit": {"connections_per_ip": "1000000/1h"}}
    cl = cluster_factory(frontends=1, workers=1, frontend_extra=fe, worker_extra=redis)
    old, new = rs.servers
    pids = {n.name: n.pid for n in cl.nodes()}
    assert mslocal.redis_query(rs.sentinels[0].port, "SENTINEL", "FAILOVER",
                               rs.master_name) == "OK"
    assert rs.wait_failover(old, 30) is new
    wait_nodes_on(cl, new.port)
    sender = Sender(cl.listener()[1], source="127.0.0.4")
    for n in range(1, 6):
        sender.send_one(n)
    assert sender.count() == 5, f"refused {sender.refused}"
    assert_none_lost(cl.sink, sender.accepted, 60)
    for n in cl.nodes():
        assert n.alive() and n.pid == pids[n.name], f"{n.name} was restarted or died"
    marked = {k.split(":")[2] for k in mslocal.redis_query(new.port, "KEYS", "ms:delivered:*")}
    assert set(sender.accepted.values()) <= marked
    assert mslocal.redis_query(new.port, "KEYS", "*127.0.0.4*")


def test_ctl_asks_the_sentinels(sentinel_set, tmp_path):
    """mailstream-ctl -c reads [redis] sentinels as the programs do: after a
    failover it writes to the new primary, not to the [redis] host and port
    (the old primary, now a read-only replica)."""
    rs = sentinel_set
    old, new = rs.servers
    assert mslocal.redis_query(rs.sentinels[0].port, "SENTINEL", "FAILOVER",
                               rs.master_name) == "OK"
    assert rs.wait_failover(old, 30) is new
    ini = tmp_path / "worker.ini"
    ini.write_text(f"[redis]\nhost = {mslocal.HOST}\nport = {old.port}\n"
                   f"sentinels = {rs.sentinels_conf}\nmaster_name = {rs.master_name}\n")
    ctl = mslocal.build_dir() / "mailstream-ctl"
    p = subprocess.run([str(ctl), "-c", str(ini), "suppress", "add", "ctl@example.org"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert mslocal.redis_query(new.port, "KEYS", "ms:suppress:ctl@example.org")


# ---------------------------------------------------------------------------
# HAProxy in front, PROXY v2
# ---------------------------------------------------------------------------

@pytest.mark.skipif(not (os.access("/usr/sbin/haproxy", os.X_OK)), reason="haproxy not installed")
def test_balancer_passes_client_address(cluster_factory):
    cl = cluster_factory(frontends=0, workers=1)
    ports = mslocal.free_ports(3 + 3 * 2 + 2)
    public = {"mx": (f"{mslocal.HOST}:{ports[0]}", "mx"),
              "submission": (f"{mslocal.HOST}:{ports[1]}", "submission"),
              "submissions": (f"{mslocal.HOST}:{ports[2]}", "submissions")}
    bal = mslocal.Balancer.with_ports(cl.sup, public, ports[3:9], ports[9:11])
    bal.start()
    spec = dataclasses.replace(cl.spec, listeners=public, frontends=2, workers=0)
    bc = mslocal.BalancedCluster(cl.sup, spec, bal)
    bc.start()
    # HAProxy marks a frontend up after one good /readyz check.
    time.sleep(2.5)

    sender = Sender(ports[0], source="127.0.0.2")
    for n in range(1, 7):
        sender.send_one(n)
    assert sender.count() == 6, f"refused {sender.refused}"
    # SIGKILL one frontend: connections go to the other (a refused connect
    # is redispatched; the health check takes it out within a second).
    bc.frontends[0].kill()
    for n in range(7, 13):
        sender.send_one(n)
    assert sender.count() == 12, f"refused {sender.refused} after a frontend died"
    got = assert_none_lost(cl.sink, sender.accepted, 60)
    assert set(got) == set(sender.accepted)

    for m in cl.sink.messages():
        ours = re.search(rb"^Received: from [^\r]*\r\n\tby [^\r]*\(Mailstream\)", m.data, re.M)
        assert ours and b"([127.0.0.2])" in ours.group(0), m.data[:300]
        assert mslocal.LB_SOURCE.encode() not in m.data

    # Only the balancer may say who the client is: a PROXY header straight
    # from 127.0.0.1 to a frontend's proxy listener gets no greeting.
    direct = bal.slots[1]["listeners"]["mx"]
    with socket.create_connection((mslocal.HOST, direct), timeout=10) as s:
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 25\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass  # refused: closed, reset, or left without a greeting
    assert not data.startswith(b"220"), data


# ---------------------------------------------------------------------------
# Membership: cluster/local add | kill | restart | remove | status | down
# ---------------------------------------------------------------------------

def local(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCAL), *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=timeout)


def status(state: Path) -> Dict[str, tuple]:
    r = local(state, "status")
    rows = {}
    for line in r.stdout.splitlines():
        name, kind, pid, state_word = line.split()
        rows[name] = (kind, int(pid), state_word)
    return rows


def test_membership_commands(request, cluster_factory):
    cl = cluster_factory(frontends=1, workers=1)
    state = cl.sup.state_dir
    request.addfinalizer(lambda: mslocal.Stack(mslocal.StackOptions(state_dir=state)).down(10))
    mslocal.save_shape(state, cl.spec, None)

    r = local(state, "add", "worker")
    assert r.returncode == 0 and "worker-2 started and ready" in r.stdout, r.stderr
    r = local(state, "add", "frontend")
    assert r.returncode == 0 and "frontend-2 started and ready" in r.stdout, r.stderr
    st = status(state)
    assert st["worker-2"][0::2] == ("worker", "running")
    assert st["frontend-2"][0::2] == ("frontend", "running")
    assert {"frontend-1", "worker-1", "sink"} <= set(st)

    r = local(state, "kill", "worker-2")
    assert r.returncode == 0, r.stderr
    st = status(state)
    assert st["worker-2"][2] == "dead"
    assert local(state, "status").returncode == 1  # something is dead

    old_pid = st["worker-2"][1]
    r = local(state, "restart", "worker-2")
    assert r.returncode == 0, r.stderr
    st = status(state)
    assert st["worker-2"][2] == "running" and st["worker-2"][1] != old_pid

    r = local(state, "remove", "worker-1")
    assert r.returncode == 0, r.stderr
    assert "worker-1" not in status(state)
    assert local(state, "kill", "worker-9").returncode == 1  # unknown name

    # Mail flows through what is left (frontend-1/-2 share the port).
    sender = Sender(cl.listener()[1])
    for n in range(1, 6):
        sender.send_one(n)
    assert sender.count() == 5
    assert_none_lost(cl.sink, sender.accepted, 60)

    # down stops everything recorded, the added nodes included, by pid.
    pids = [pid for _k, pid, _s in status(state).values()]
    r = local(state, "down")
    assert r.returncode == 0, r.stderr
    for pid in pids:
        assert mslocal._proc_starttime(pid) is None, f"pid {pid} still running after down"
    assert local(state, "status").returncode == 1
