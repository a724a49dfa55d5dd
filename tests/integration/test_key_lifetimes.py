"""Every Redis key the cluster writes has a TTL or an owner that deletes it
(issue 25; lib/io/ms_keys.h "Lifetimes", docs/reliability.md "What Redis
holds and for how long").

The allowlist is the Lifetimes table of lib/io/ms_keys.h itself: a key
without a TTL must match an `owned` row there, every key must match some
row, and every MS_KEY_* the header defines must have one. The workload, on
a Redis of the test's own so that no other test's keys are walked:
messages through a frontend with rate limits, a recipient list and the
suppression check; a worker with destination leases and a rate, a relay
that defers some recipients once and bounces others (suppression, bounce
counters); deferred mail held, released and deleted with mailstream-ctl;
destinations suspended and resumed; suppressions added with and without
--for; stale members seeded in the deferred-queue index. Then Redis is
walked with SCAN, and the owners are checked to have deleted what they own
(retry state, listing lines and control records of finished messages, the
stale index members, a resumed suspension, a removed suppression).

Not exercised here: ms:mtasts: (needs an HTTPS policy host;
test_outbound_mta_sts.py) and ms:delivered: beyond its TTL (the duplicate
fencing's own tests say how long it lives).
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

import mslocal
from conftest import smtp_port
from test_ctl_queue import ctl
from test_frontend_smtp import code, hello
from test_worker_delivery import KCAT, fake_smtp, wait_events  # noqa: F401

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")

KEYS_H = mslocal.REPO / "lib" / "io" / "ms_keys.h"
ROW = re.compile(r"^ \*   (ms:\S+)\s+(ttl|owned)\s+(.*)$")


def lifetime_table(path: Path = KEYS_H) -> Dict[str, str]:
    """The Lifetimes table of ms_keys.h: key (or prefix) -> ttl | owned."""
    text = path.read_text()
    start = text.index(" * Lifetimes.")
    block = text[start:text.index("*/", start)]
    return {m.group(1): m.group(2) for m in map(ROW.match, block.splitlines()) if m}


def defined_keys(path: Path = KEYS_H) -> List[str]:
    return re.findall(r'^#define MS_KEY_\w+\s+"([^"]+)"', path.read_text(), re.M)


def row_of(key: str, table: Dict[str, str]) -> Optional[str]:
    """The row a key falls under: its exact name, or the longest prefix row
    (those ending in ':')."""
    if key in table:
        return key
    prefixes = [k for k in table if k.endswith(":") and key.startswith(k)]
    return max(prefixes, key=len) if prefixes else None


def violations(keys: List[Tuple[str, int]], table: Dict[str, str]) -> List[str]:
    """keys: (name, TTL as Redis answers it: -1 none, -2 gone). What breaks
    the rule: a key no row names, or one without a TTL whose row is not
    `owned`."""
    bad = []
    for k, ttl in keys:
        row = row_of(k, table)
        if row is None:
            bad.append(f"{k}: no row in ms_keys.h's Lifetimes table")
        elif ttl == -1 and table[row] != "owned":
            bad.append(f"{k}: no TTL, and {row} is not owned by anyone who deletes it")
    return bad


class Resp:
    """A minimal RESP client on one connection (pipelined commands)."""

    def __init__(self, port: int):
        self.s = socket.create_connection((mslocal.HOST, port), timeout=30)
        self.f = self.s.makefile("rb")

    def close(self) -> None:
        self.f.close()
        self.s.close()

    def send(self, *cmds: Tuple[str, ...]) -> list:
        out = b""
        for args in cmds:
            out += b"*%d\r\n" % len(args)
            for a in args:
                b = str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(b), b)
        self.s.sendall(out)
        return [self.read() for _ in cmds]

    def read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise AssertionError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise AssertionError(f"redis: unexpected reply {line!r}")

    def call(self, *args: str):
        return self.send(tuple(args))[0]

    def walk(self) -> List[Tuple[str, int]]:
        """Every key with its TTL, by SCAN (never KEYS)."""
        keys, cursor = [], "0"
        while True:
            cursor, batch = self.call("SCAN", cursor, "COUNT", "500")
            keys += batch
            if cursor == "0":
                break
        ttls = self.send(*[("TTL", k) for k in keys]) if keys else []
        return sorted(set(zip(keys, ttls)))


def test_table_covers_every_key_and_catches_a_new_one():
    """No cluster: the table and the rule themselves. A key nobody
    documented, or one without a TTL under a `ttl` row, is caught."""
    table = lifetime_table()
    assert set(defined_keys()) == set(table), "ms_keys.h: a key without a row, or a stale row"
    assert violations([("ms:retry:Q1:a@b", 300), ("ms:rcpts:example.com", -1)], table) == []
    assert violations([("ms:retry:Q1:a@b", -1)], table)          # ttl row, no TTL
    assert violations([("ms:somethingnew:x", 60)], table)        # no row at all
    assert row_of("ms:retryq:dest:mx.example", table) == "ms:retryq:dest:"
    assert row_of("ms:retryq", table) == "ms:retryq"
    assert row_of("ms:retryqx", table) is None


class Relay:
    """The destination's RCPT replies, by the local part's first word:
    defer (451 on the first try), bounce (550 5.1.1), stuck (451 until
    .open), anything else 250."""

    def __init__(self):
        self.open = False

    def __call__(self, rcpt: str, n: int) -> str:
        local = rcpt.split("@")[0]
        if local.startswith("defer"):
            return "451 4.3.0 try again" if n == 1 else "250 2.1.5 Ok"
        if local.startswith("bounce"):
            return "550 5.1.1 <%s>: User unknown" % rcpt
        if local.startswith("stuck") and not self.open:
            return "451 4.3.0 not now"
        return "250 2.1.5 Ok"


def submit(port: int, rcpts: List[str], subject: str) -> str:
    """One message through the frontend; its queue id."""
    c = hello(port)
    assert code(c.cmd(b"MAIL FROM:<sender@example.org>")) == b"250 2.1.0"
    for r in rcpts:
        assert code(c.cmd(b"RCPT TO:<" + r.encode() + b">")) == b"250 2.1.5", r
    assert c.cmd(b"DATA").startswith(b"354")
    reply = c.cmd(b"Subject: " + subject.encode() + b"\r\n\r\nhello\r\n.")
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    c.cmd(b"QUIT")
    return reply.split()[-1].decode()


@pytest.fixture
def own_redis(tmp_path):
    sup = mslocal.Supervisor(tmp_path / "redis")
    r = mslocal.Redis(sup, mslocal.free_port())
    r.start()
    yield r
    sup.stop_all()


@pytest.mark.timeout(300)
def test_every_key_has_a_ttl_or_an_owner(cluster_factory, fake_smtp, own_redis):  # noqa: F811
    relay = Relay()
    srv = fake_smtp(rcpt_reply=relay)
    dest = srv.address
    max_age_s = 86400
    cl = cluster_factory(
        frontends=1, workers=1, redis=own_redis,
        accepted_domains=("mailstream.test", "listed.test"),
        frontend_extra={"smtp": {"refuse_suppressed": "yes", "recipient_lists": "listed.test"},
                        "ratelimit": {"connections_per_ip": "10000/1h",
                                      "messages_per_domain": "10000/1h",
                                      "recipients_per_client": "10000/1h"}},
        worker_extra={"delivery": {"relay_host": dest, "retry_min_ms": 1000,
                                   "retry_max_ms": 2000, "dest_concurrency": 4,
                                   "dest_rate": 200},
                      "retry": {"max_age_s": max_age_s}})
    r = Resp(own_redis.port)
    tag = uuid.uuid4().hex[:6]
    try:
        # Members the index can no longer need (accepted before the retry
        # horizon), as a worker that died between two writes leaves them.
        old = int((time.time() - max_age_s - 2 * 86400) * 1e6)
        r.send(("ZADD", "ms:retryq", old, "TSTALE"),
               ("ZADD", f"ms:retryq:dest:{dest}", old, "TSTALE"),
               ("ZADD", "ms:retryq:dests", old, "stale.example"))

        # Operators' lists (owned) and transient control records.
        ctl(cl, "recipients", "add", f"listed-{tag}@listed.test")
        ctl(cl, "suppress", "add", f"kept-{tag}@example.net", "--reason", "asked")
        ctl(cl, "suppress", "add", f"brief-{tag}@example.net", "--for", "1h")
        ctl(cl, "suppress", "add", f"gone-{tag}@example.net")
        ctl(cl, "suppress", "remove", f"gone-{tag}@example.net")
        ctl(cl, "dest", "suspend", "paused.example", "--reason", "test")
        ctl(cl, "dest", "suspend", "kept.example", "--reason", "left suspended")
        ctl(cl, "dest", "resume", "paused.example")

        port = smtp_port(cl)
        delivered = [submit(port, [f"plain{i}-{tag}@mailstream.test"], f"plain {i}")
                     for i in range(5)]
        delivered.append(submit(port, [f"listed-{tag}@listed.test"], "listed"))
        deferred = [submit(port, [f"defer{i}-{tag}@mailstream.test",
                                  f"plainx{i}-{tag}@mailstream.test"], f"defer {i}")
                    for i in range(3)]
        bounced = submit(port, [f"bounce-{tag}@mailstream.test"], "bounce")
        held = submit(port, [f"stuck1-{tag}@mailstream.test"], "held")
        doomed = submit(port, [f"stuck2-{tag}@mailstream.test"], "doomed")

        def listed() -> set:
            return {m["qid"] for m in ctl(cl, "queue", "list")}

        mslocal.wait_until(lambda: {held, doomed} <= listed(), 60, "the stuck ones deferred",
                           interval=0.5)
        assert ctl(cl, "queue", "hold", held, "--reason", "look")["applied"] == 1
        assert r.call("TTL", f"ms:ctl:{held}") > 0
        # Mid-run, with mail deferred and held: the index, the retry state.
        during = r.walk()
        table = lifetime_table()
        assert not violations(during, table), "\n".join(violations(during, table))
        assert ctl(cl, "queue", "delete", doomed)["applied"] == 1
        relay.open = True
        assert ctl(cl, "queue", "release", held)["applied"] == 1

        done = set(delivered + deferred + [held])

        def settled(evs: List[dict]) -> bool:
            got = {e["qid"] for e in evs if e.get("outcome") == "delivered"}
            bad = {e["qid"] for e in evs if e.get("outcome") == "bounced"}
            return done <= got and bounced in bad and doomed in bad | {
                e["qid"] for e in evs if "deleted by the operator" in e.get("reply", "")}

        wait_events(cl, settled, timeout=120)
        mslocal.wait_until(lambda: not listed(), 60, "the deferred queue empty", interval=0.5)
        time.sleep(2)  # the workers' last fire-and-forget writes

        keys = r.walk()
        names = [k for k, _ in keys]
        assert not violations(keys, table), "\n".join(violations(keys, table))

        # The workload reached the kinds of keys it is meant to. Leases and
        # destination buckets live milliseconds here (a lease set is empty,
        # so gone, once its lease is given back; a bucket of dest_rate 200
        # expires after 5 ms): seen only by luck, checked when seen.
        seen = {row_of(k, table) for k, _ in during + keys}
        for row in ("ms:rl:", "ms:suppress:", "ms:bounces:", "ms:rcpts:", "ms:suspend",
                    "ms:ctlgen", "ms:retry:", "ms:retryq", "ms:retryq:dest:",
                    "ms:retryq:dests", "ms:qinfo:", "ms:ctl:"):
            assert row in seen, (row, sorted(seen, key=str))

        # Owners deleted what they own.
        for q in done | {doomed, bounced}:
            left = [k for k in names if q in k and not k.startswith("ms:delivered:")]
            assert not left, (q, left)
            assert r.call("ZSCORE", "ms:retryq", q) is None
        assert r.call("ZSCORE", "ms:retryq", "TSTALE") is None
        assert r.call("ZSCORE", f"ms:retryq:dest:{dest}", "TSTALE") is None
        assert r.call("ZSCORE", "ms:retryq:dests", "stale.example") is None
        assert r.call("HKEYS", "ms:suspend") == ["kept.example"]
        assert f"ms:suppress:gone-{tag}@example.net" not in names
        # Suppressions: the worker's carry their TTL, the operator's without
        # --for are the only ones without one.
        assert r.call("TTL", f"ms:suppress:bounce-{tag}@mailstream.test") > 0
        assert r.call("TTL", f"ms:suppress:brief-{tag}@example.net") > 0
        for k, ttl in keys:
            if k.startswith("ms:suppress:") and ttl == -1:
                assert r.call("GET", k).startswith("source="), k
    finally:
        r.close()
        mslocal.redis_command(own_redis.port, "HDEL", "ms:suspend", "kept.example")
