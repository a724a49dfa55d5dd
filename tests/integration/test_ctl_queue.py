"""mailstream-ctl against a running cluster: the queue (list, shape, show,
retry, hold, release, bounce, delete), destination suspension on a
two-worker cluster, and suppressions added by the CLI (docs/operations.md).

The destination is test_worker_delivery's FakeSMTP as the relay host: it
answers 451 until the test lets it recover. Retries are slow
(retry_min_ms 60 s) unless a test wants them, so what moves a message is
the CLI, not its retry tier. No test asserts timings beyond "within the
wait".
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import time
import uuid
from typing import List

import pytest

import mslocal
from conftest import smtp_port
from test_frontend_smtp import code, hello
from test_worker_delivery import (DIRECTION_OUTBOUND, KCAT, envelope, fake_smtp,  # noqa: F401
                                  message, new_qid, produce, wait_events, wait_log)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")

CTL = os.path.join(os.environ.get("MAILSTREAM_BUILD_DIR", "build"), "mailstream-ctl")


def ctl(cl, *args: str, expect: int = 0):
    """Run mailstream-ctl --json against cl; its parsed output."""
    return ctl_env(cl, {}, *args, expect=expect)


def ctl_env(cl, extra_env: dict, *args: str, expect: int = 0):
    """The same with more environment (the worker's settings)."""
    env = dict(os.environ, MAILSTREAM_REDIS_PORT=str(cl.redis.port),
               MAILSTREAM_KAFKA_BROKERS=cl.kafka.bootstrap, **extra_env)
    r = subprocess.run([CTL, "--json", *args], capture_output=True, timeout=60, env=env)
    assert r.returncode == expect, (args, r.returncode, r.stdout, r.stderr)
    out = r.stdout.decode().strip()
    return json.loads(out) if out else None


class Recovering:
    """RCPT replies: 451 until .ok is set."""

    def __init__(self):
        self.ok = False

    def __call__(self, rcpt: str, n: int) -> str:
        return "250 2.1.5 Ok" if self.ok else "451 4.3.0 try again later"


def deferred_cluster(cluster_factory, fake_smtp, workers: int = 1, **delivery):
    rec = Recovering()
    srv = fake_smtp(rcpt_reply=rec)
    d = {"relay_host": srv.address, "retry_min_ms": 60000, "retry_max_ms": 120000, **delivery}
    cl = cluster_factory(frontends=0, workers=workers, worker_extra={"delivery": d})
    return cl, srv, rec


def defer_one(cl, srv, rcpt: str = None, **env_kw):
    """Produce one message and wait until the queue lists it."""
    q = new_qid()
    rcpt = rcpt or f"user.{q.lower()}@example.net"
    produce(cl, [(q, envelope(q, [rcpt], message(q), **env_kw))])
    mslocal.wait_until(lambda: any(m["qid"] == q for m in ctl(cl, "queue", "list")), 60,
                       f"{q} listed as deferred", interval=0.5)
    return q, rcpt


def outcomes(cl, q: str) -> List[str]:
    return [e["outcome"] for e in wait_events(cl, lambda e: True) if e.get("qid") == q]


def test_list_shape_show_then_retry_delivers(cluster_factory, fake_smtp):
    cl, srv, rec = deferred_cluster(cluster_factory, fake_smtp)
    q, rcpt = defer_one(cl, srv)

    listed = [m for m in ctl(cl, "queue", "list", "--dest", srv.address) if m["qid"] == q]
    assert len(listed) == 1
    m = listed[0]
    assert m["state"] == "deferred" and m["attempts"] == 1
    assert m["sender"] == "sender@example.org" and m["recipients"] == [rcpt]
    assert m["destinations"] == [srv.address] and "451 4.3.0" in m["last_reply"]
    # Filters: another sender, or a younger age, leave it out.
    assert not [x for x in ctl(cl, "queue", "list", "--sender", "nobody@") if x["qid"] == q]
    assert not [x for x in ctl(cl, "queue", "list", "--older-than", "1h") if x["qid"] == q]
    assert [x for x in ctl(cl, "queue", "list", "--rcpt", rcpt.upper()) if x["qid"] == q]

    shape = ctl(cl, "queue", "shape")
    row = [d for d in shape["destinations"] if d["destination"] == srv.address]
    assert row and row[0]["total"] == 1 and row[0]["counts"][0] == 1  # younger than 5 min

    st = ctl(cl, "status")
    assert st["redis"]["ok"] and st["deferred"]["messages"] >= 1
    assert st["deferred"]["oldest_age_s"] >= 0

    shown = ctl(cl, "queue", "show", q)
    assert shown["qid"] == q and shown["recipients"][0]["address"] == rcpt
    assert shown["recipients"][0]["attempts"] == "1"
    # --message: the message itself, read back from the Kafka record the
    # listing line names (topic/partition/offset).
    full = ctl(cl, "queue", "show", q, "--message")
    assert full["record"].count("/") >= 2
    assert f"Subject: {q}\r\n" in full["message"] and full["message"].endswith("Hello.\r\n")
    ctl(cl, "queue", "show", new_qid(), "--message", expect=4)
    ctl(cl, "queue", "show", new_qid(), expect=4)
    ctl(cl, "queue", "show", "not-a-queue-id", expect=2)

    # The destination recovers; retry makes it due now (its tier would wait
    # a minute).
    rec.ok = True
    assert ctl(cl, "queue", "retry", q)["applied"] == 1
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e),
                timeout=30)
    assert [d[1] for d in srv.delivered] == [[rcpt]]
    mslocal.wait_until(lambda: not [x for x in ctl(cl, "queue", "list") if x["qid"] == q], 30,
                       "delivered message gone from the list")
    assert mslocal.redis_command(cl.redis.port, "EXISTS", f"ms:qinfo:{q}") == b":0\r\n"


def test_hold_keeps_it_past_due_and_release_lets_it_go(cluster_factory, fake_smtp):
    cl, srv, rec = deferred_cluster(cluster_factory, fake_smtp, retry_min_ms=2000,
                                    retry_max_ms=3000)
    q, rcpt = defer_one(cl, srv)
    assert ctl(cl, "queue", "hold", q, "--reason", "looks like spam")["applied"] == 1
    wait_log(cl.workers[0], f"event=queue_control qid={q} action=hold", timeout=30)
    tries = srv.rcpt_counts.get(rcpt, 0)
    time.sleep(8)  # well past its 2-3 s retry
    assert srv.rcpt_counts.get(rcpt, 0) == tries
    held = [m for m in ctl(cl, "queue", "list") if m["qid"] == q]
    assert held and held[0]["state"] == "held"

    rec.ok = True
    assert ctl(cl, "queue", "release", q)["applied"] == 1
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e),
                timeout=30)
    # Releasing what is not held changes nothing.
    assert ctl(cl, "queue", "release", q, expect=4)["applied"] == 0


def test_bounce_sends_a_dsn_that_parses(cluster_factory, fake_smtp):
    cl, srv, rec = deferred_cluster(cluster_factory, fake_smtp)
    q, rcpt = defer_one(cl, srv, direction=DIRECTION_OUTBOUND)
    rec.ok = True  # the DSN itself must get through
    assert ctl(cl, "queue", "bounce", q, "--reason", "operator test")["applied"] == 1
    mslocal.wait_until(lambda: any(d[0] == "" for d in srv.delivered), 60, "a DSN", interval=0.5)
    (_, to, data) = [d for d in srv.delivered if d[0] == ""][0]
    assert to == ["sender@example.org"]
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    status = [p for p in msg.iter_parts() if p.get_content_type() == "message/delivery-status"]
    per_rcpt = status[0].get_payload()[1]
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.0.0"
    assert "operator test" in per_rcpt["Diagnostic-Code"]
    assert "bounced" in outcomes(cl, q)
    # The original never reached the destination.
    assert not [d for d in srv.delivered if d[1] == [rcpt]]


def test_delete_drops_it_with_an_event_and_no_dsn(cluster_factory, fake_smtp):
    cl, srv, rec = deferred_cluster(cluster_factory, fake_smtp)
    q, rcpt = defer_one(cl, srv, direction=DIRECTION_OUTBOUND)
    rec.ok = True
    assert ctl(cl, "queue", "delete", q)["applied"] == 1
    evs = wait_events(cl, lambda e: any(x.get("qid") == q and "deleted by the operator"
                                        in x.get("reply", "") for x in e), timeout=30)
    mslocal.wait_until(lambda: not [x for x in ctl(cl, "queue", "list") if x["qid"] == q], 30,
                       "deleted message gone from the list")
    time.sleep(3)
    assert not srv.delivered  # neither the message nor a DSN
    assert any(e.get("qid") == q for e in evs)
    # Gone: a second delete names it as unknown.
    assert ctl(cl, "queue", "delete", q, expect=4)["not_found"] == [q]


def test_suspend_stops_every_worker_and_resume_delivers(cluster_factory, fake_smtp):
    rec = Recovering()
    rec.ok = True
    srv = fake_smtp(rcpt_reply=rec)
    cl = cluster_factory(frontends=0, workers=2, worker_extra={"delivery": {
        "relay_host": srv.address, "retry_min_ms": 60000, "retry_max_ms": 120000}})
    try:
        ctl(cl, "dest", "suspend", srv.address, "--reason", "blocking us")
        # (other tests' destinations may share this Redis: test_worker_shaping's)
        assert [d["destination"] for d in ctl(cl, "dest", "list")
                if d["destination"] == srv.address] == [srv.address]
        time.sleep(2)  # every worker polls each second
        qs = [new_qid() for _ in range(6)]
        produce(cl, [(q, envelope(q, [f"u{i}@example.net"], message(q)))
                     for i, q in enumerate(qs)])
        mslocal.wait_until(lambda: {m["qid"] for m in ctl(cl, "queue", "list", "--dest",
                                                           srv.address)} >= set(qs), 60,
                           "all deferred while suspended", interval=0.5)
        assert srv.sessions == 0  # no connection reached the destination
        # Deferred without counting an attempt.
        assert all(m["attempts"] == 0 for m in ctl(cl, "queue", "list") if m["qid"] in qs)
        logs = "".join(w.log.read_text() for w in cl.workers)
        assert "event=dest_suspended_deferred" in logs

        res = ctl(cl, "dest", "resume", srv.address)
        assert res["messages_due"] == len(qs)
        mslocal.wait_until(lambda: len(srv.delivered) == len(qs), 60, "all delivered",
                           interval=0.5)
        ctl(cl, "dest", "resume", srv.address, expect=4)
    finally:
        mslocal.redis_command(cl.redis.port, "HDEL", "ms:suspend", srv.address)


def test_suspend_for_expires_by_itself(cluster_factory, fake_smtp):
    cl, srv, rec = deferred_cluster(cluster_factory, fake_smtp)
    rec.ok = True
    ctl(cl, "dest", "suspend", srv.address, "--for", "4s")
    time.sleep(1.5)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["later@example.net"], message(q)))])
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e),
                timeout=60)
    assert outcomes(cl, q)[0] == "deferred"  # first while suspended
    assert [d for d in ctl(cl, "dest", "list") if d["destination"] == srv.address] == []
    ctl(cl, "dest", "suspend", srv.address, "--for", "soon", expect=2)


def test_cli_suppression_refuses_at_rcpt_and_skips_delivery(cluster_factory, fake_smtp):
    srv = fake_smtp()
    cl = cluster_factory(frontends=1, workers=1,
                         frontend_extra={"smtp": {"refuse_suppressed": "yes"}},
                         worker_extra={"delivery": {"relay_host": srv.address}})
    gone = f"gone-{uuid.uuid4().hex[:8]}@mailstream.test"
    ctl(cl, "suppress", "add", gone.upper(), "--reason", "asked to stop", "--for", "1h")
    entries = [e for e in ctl(cl, "suppress", "list") if e["address"] == gone]
    assert entries and entries[0]["source"] == "ctl" and entries[0]["reason"] == "asked to stop"
    assert 0 < entries[0]["expires_in_s"] <= 3600

    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    assert code(c.cmd(b"RCPT TO:<" + gone.encode() + b">")) == b"550 5.1.1"
    c.cmd(b"QUIT")

    # A message already queued for it is not delivered either.
    q = new_qid()
    produce(cl, [(q, envelope(q, [gone], message(q)))])
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "bounced" for x in e))
    assert not [d for d in srv.delivered if gone in d[1]]

    ctl(cl, "suppress", "remove", gone)
    ctl(cl, "suppress", "remove", gone, expect=4)
    ctl(cl, "suppress", "add", "not an address", expect=2)


def test_suppress_import_is_all_or_nothing(cluster_factory, tmp_path):
    cl = cluster_factory(frontends=0, workers=0)
    tag = uuid.uuid4().hex[:8]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"a-{tag}@example.com\nnot-an-address\n")
    ctl(cl, "suppress", "import", str(bad), expect=2)
    assert not [e for e in ctl(cl, "suppress", "list") if tag in e["address"]]
    good = tmp_path / "good.txt"
    good.write_text(f"# list\na-{tag}@example.com bounced in 2025\nb-{tag}@example.com\n")
    assert ctl(cl, "suppress", "import", str(good))["imported"] == 2
    mine = sorted(e["address"] for e in ctl(cl, "suppress", "list") if tag in e["address"])
    assert mine == [f"a-{tag}@example.com", f"b-{tag}@example.com"]
    # export's lines are import's input.
    env = dict(os.environ, MAILSTREAM_REDIS_PORT=str(cl.redis.port))
    out = subprocess.run([CTL, "suppress", "export"], capture_output=True, env=env, timeout=60)
    lines = [ln for ln in out.stdout.decode().splitlines() if tag in ln]
    assert len(lines) == 2 and all(len(ln.split("\t")) == 4 for ln in lines)
    for a in mine:
        ctl(cl, "suppress", "remove", a)


def test_help_names_every_subcommand_and_bad_input_exits_nonzero(cluster_factory):
    r = subprocess.run([CTL, "--help"], capture_output=True, timeout=10)
    assert r.returncode == 0
    for cmd in ("queue list", "queue shape", "queue show", "queue retry", "queue hold",
                "queue release", "queue bounce", "queue delete", "dest suspend", "dest resume",
                "dest list", "suppress list", "suppress add", "suppress remove",
                "suppress import", "suppress export", "recipients list", "recipients add",
                "recipients remove", "recipients import", "events tail", "status"):
        assert cmd in r.stdout.decode(), cmd
    r = subprocess.run([CTL, "queue", "frobnicate"], capture_output=True, timeout=10)
    assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1
    env = dict(os.environ, MAILSTREAM_REDIS_PORT=str(mslocal.free_port()))
    r = subprocess.run([CTL, "queue", "list"], capture_output=True, timeout=30, env=env)
    assert r.returncode == 3 and len(r.stderr.decode().strip().splitlines()) == 1


def test_events_tail_filters_by_qid_and_rcpt(cluster_factory, fake_smtp):
    cl, srv, rec = deferred_cluster(cluster_factory, fake_smtp)
    q, rcpt = defer_one(cl, srv)
    rec.ok = True
    ctl(cl, "queue", "retry", q)
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e),
                timeout=30)
    env = dict(os.environ, MAILSTREAM_KAFKA_BROKERS=cl.kafka.bootstrap,
               MAILSTREAM_KAFKA_EVENTS_TOPIC=cl.spec.events_topic)

    def tail(*args: str) -> List[str]:
        r = subprocess.run([CTL, "events", "tail", *args], capture_output=True, timeout=60,
                           env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode().splitlines()

    mine = [json.loads(ln) for ln in tail("--qid", q, "--json")]
    assert [(e["outcome"], e["attempt"]) for e in mine] == [("deferred", 1), ("delivered", 2)]
    assert [json.loads(ln)["qid"] for ln in tail("--rcpt", rcpt.upper(), "--json")] == [q, q]
    lines = tail("--qid", q)
    assert len(lines) == 2 and " deferred " in lines[0] and lines[1].split()[1] == q
    assert tail("--qid", new_qid()) == []
    r = subprocess.run([CTL, "events", "tail", "--bogus"], capture_output=True, timeout=10)
    assert r.returncode == 2


def test_frontend_events_read_with_the_workers(cluster_factory):
    """With [kafka] events_topic set on the frontend, one message's whole
    life reads in one place: accepted by the frontend, delivered by the
    worker; a refusal at RCPT is there with its reply."""
    topic = f"events.ctl-{uuid.uuid4().hex[:8]}"
    cl = cluster_factory(frontends=1, workers=1, events_topic=topic,
                         frontend_extra={"smtp": {"refuse_suppressed": "yes"},
                                         "kafka": {"events_topic": topic}})
    gone = f"gone-{uuid.uuid4().hex[:8]}@mailstream.test"
    ctl(cl, "suppress", "add", gone)
    c = hello(smtp_port(cl))
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<" + gone.encode() + b">")) == b"550 5.1.1"
    assert code(c.cmd(b"RCPT TO:<ok@mailstream.test>")) == b"250 2.1.5"
    assert c.cmd(b"DATA").startswith(b"354")
    r = c.cmd(b"Subject: events\r\n\r\nhello\r\n.")
    assert r.startswith(b"250 2.0.0 Ok: queued as "), r
    q = r.split()[-1].decode()
    c.cmd(b"QUIT")
    wait_events(cl, lambda e: any(x.get("qid") == q and x.get("outcome") == "delivered"
                                  for x in e), timeout=60)
    env = dict(os.environ, MAILSTREAM_KAFKA_BROKERS=cl.kafka.bootstrap,
               MAILSTREAM_KAFKA_EVENTS_TOPIC=topic)
    out = subprocess.run([CTL, "--json", "events", "tail", "--qid", q], capture_output=True,
                         env=env, timeout=60)
    life = [json.loads(ln) for ln in out.stdout.decode().splitlines()]
    # One key, one partition: in the order it happened.
    assert [e.get("event") or e.get("outcome") for e in life] == ["refused", "accepted",
                                                                  "delivered"]
    assert life[0]["rcpt"] == gone and life[0]["reply"].startswith("550 5.1.1")
    assert life[1]["client"] == "127.0.0.1" and life[1]["size"] > 0
    ctl(cl, "suppress", "remove", gone)


def test_recipient_lists_refuse_unknown_users(cluster_factory, tmp_path):
    """[smtp] recipient_lists: an accepted domain's recipients must be in its
    Redis set (managed by `mailstream-ctl recipients`); others get 550 5.1.1
    at RCPT. Domains not listed are not checked."""
    dom = f"list-{uuid.uuid4().hex[:8]}.test"
    cl = cluster_factory(frontends=1, workers=0, accepted_domains=[dom, "mailstream.test"],
                         trusted_networks=[],
                         frontend_extra={"smtp": {"recipient_lists": dom}})
    ctl(cl, "recipients", "add", f"Known@{dom}")
    f = tmp_path / "users.txt"
    f.write_text(f"# users\nalso@{dom}\n")
    assert ctl(cl, "recipients", "import", str(f))["imported"] == 1
    assert sorted(ctl(cl, "recipients", "list", dom)) == [f"also@{dom}", f"known@{dom}"]
    f.write_text("nope\n")
    ctl(cl, "recipients", "import", str(f), expect=2)

    c = hello(smtp_port(cl))
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    assert code(c.cmd(f"RCPT TO:<known@{dom.upper()}>".encode())) == b"250 2.1.5"
    assert code(c.cmd(f"RCPT TO:<also@{dom}>".encode())) == b"250 2.1.5"
    r = c.cmd(f"RCPT TO:<typo@{dom}>".encode())
    assert code(r) == b"550 5.1.1" and b"User unknown" in r, r
    assert code(c.cmd(b"RCPT TO:<anyone@mailstream.test>")) == b"250 2.1.5"
    c.cmd(b"QUIT")

    ctl(cl, "recipients", "remove", f"known@{dom}")
    ctl(cl, "recipients", "remove", f"known@{dom}", expect=4)
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    assert code(c.cmd(f"RCPT TO:<known@{dom}>".encode())) == b"550 5.1.1"
    c.cmd(b"QUIT")
    mslocal.redis_command(cl.redis.port, "DEL", f"ms:rcpts:{dom}")


def test_recipient_list_unreadable_answers_451(cluster_factory):
    dead = mslocal.free_port()
    cl = cluster_factory(frontends=1, workers=0, trusted_networks=[],
                         frontend_extra={"smtp": {"recipient_lists": "mailstream.test"},
                                         "redis": {"port": dead}})
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    assert code(c.cmd(b"RCPT TO:<who@mailstream.test>"))[:3] == b"451"
    c.cmd(b"QUIT")


def test_status_nodes_group_and_lag(cluster_factory):
    """`status`: every frontend (with Redis) and worker by its heartbeat,
    the workers' consumer group as Kafka knows it, and the group's lag per
    topic (queue and retry tiers); a worker that stops leaves the list."""
    cl = cluster_factory(frontends=1, workers=2,
                         frontend_extra={"smtp": {"refuse_suppressed": "yes"}})
    env = {"MAILSTREAM_KAFKA_GROUP": cl.spec.group, "MAILSTREAM_KAFKA_TOPIC": cl.spec.topic}

    def status():
        return ctl_env(cl, env, "status")

    def roles(st):
        return sorted(n["role"] for n in st["nodes"] if n["node"] in names)

    names = ["fe1", "wk1", "wk2"]  # mslocal's [node] ids
    mslocal.wait_until(lambda: roles(status()) == ["frontend", "worker", "worker"], 30,
                       "every node's heartbeat")
    mslocal.wait_until(lambda: all(n["in_group"] for n in status()["nodes"]
                                   if n["role"] == "worker" and n["node"] in names), 60,
                       "both workers in the consumer group")
    st = status()
    assert st["kafka"]["ok"] and st["kafka"]["group"] == cl.spec.group
    assert len(st["kafka"]["members"]) == 2
    topics = {t["topic"]: t for t in st["kafka"]["lag"]}
    assert topics[cl.spec.topic]["partitions"] > 0 and f"{cl.spec.topic}.retry.1" in topics
    node = st["nodes"][0]
    assert node["version"] and node["up_s"] >= 0 and node["seen_s_ago"] <= 15

    # Mail through: the group catches up (lag 0 on the queue topic).
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@example.org>")
    c.cmd(b"RCPT TO:<b@mailstream.test>")
    c.cmd(b"DATA")
    assert c.cmd(b"Subject: status\r\n\r\nhi\r\n.").startswith(b"250 ")
    c.cmd(b"QUIT")
    cl.sink.wait_for(1, timeout=60)
    mslocal.wait_until(lambda: {t["topic"]: t for t in status()["kafka"]["lag"]}
                       [cl.spec.topic]["lag"] == 0, 60, "lag 0 once delivered")
    assert {t["topic"]: t for t in status()["kafka"]["lag"]}[cl.spec.topic]["end"] >= 1

    # A worker that stops deletes its heartbeat.
    cl.workers[1].stop()
    mslocal.wait_until(lambda: roles(status()) == ["frontend", "worker"], 30,
                       "the stopped worker gone")

    # Kafka unreachable: said, and exit 3.
    env2 = dict(os.environ, MAILSTREAM_REDIS_PORT=str(cl.redis.port),
                MAILSTREAM_KAFKA_BROKERS=f"127.0.0.1:{mslocal.free_port()}")
    r = subprocess.run([CTL, "status"], capture_output=True, timeout=60, env=env2)
    assert r.returncode == 3 and b"kafka:      UNREACHABLE" in r.stdout, r
