"""mailstream-worker end to end: Kafka `queue` records in, SMTP out.

Envelopes are encoded here (proto/envelope.proto, by hand: the standard
library has no protobuf) and produced with kcat, so these tests exercise the
worker without depending on the frontend. Destinations are either Postfix's
smtp-sink (the cluster fixture's sink) or a small scripted SMTP server in this
file that can answer 451 / 550 as a test needs.

No test asserts timings: waits are "until it happens", bounded by timeouts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import select
import signal
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

import mslocal

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")


# ---------------------------------------------------------------------------
# Envelopes (proto/envelope.proto, wire format by hand)
# ---------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_varint(num: int, v: int) -> bytes:
    return _varint(num << 3) + _varint(v)


def _field_bytes(num: int, v: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(v)) + v


def new_qid() -> str:
    return "T" + uuid.uuid4().hex[:20].upper()


# Envelope enums (proto/envelope.proto).
DIRECTION_INBOUND, DIRECTION_OUTBOUND = 1, 2
RET_FULL, RET_HDRS = 1, 2
NOTIFY_SUCCESS, NOTIFY_FAILURE, NOTIFY_DELAY, NOTIFY_NEVER = 1, 2, 4, 8


def envelope(qid: str, rcpts: List[str], message: bytes, sender: str = "sender@example.org",
             version: int = 1, body_8bit: bool = False, direction: int = 0, ret: int = 0,
             envid: str = "", notify: Optional[Dict[str, int]] = None,
             orcpt: Optional[Dict[str, str]] = None, client_ip: str = "",
             helo: str = "", requiretls: bool = False) -> bytes:
    """notify / orcpt: per recipient address (RFC 3461 NOTIFY bits, ORCPT
    "rfc822;addr"); direction, ret: the enums above (0: unspecified);
    client_ip / helo: the SMTP client as the frontend records it (the
    worker's inbound policy stage checks SPF with them); requiretls: MAIL
    FROM had RFC 8689 REQUIRETLS."""
    mail_from = _field_bytes(1, sender.encode())
    if body_8bit:
        mail_from += _field_varint(2, 2)  # BODY_8BITMIME
    if ret:
        mail_from += _field_varint(5, ret)
    if envid:
        mail_from += _field_bytes(6, envid.encode())
    if requiretls:
        mail_from += _field_varint(7, 1)
    out = _field_varint(1, version)
    out += _field_bytes(2, qid.encode())
    out += _field_varint(3, int(time.time() * 1e6))
    out += _field_bytes(4, b"test")
    if client_ip or helo:
        out += _field_bytes(5, _field_bytes(1, client_ip.encode()) + _field_bytes(3, helo.encode()))
    out += _field_bytes(6, mail_from)
    for r in rcpts:
        rec = _field_bytes(1, r.encode())
        if notify and r in notify:
            rec += _field_varint(2, notify[r])
        if orcpt and r in orcpt:
            rec += _field_bytes(3, orcpt[r].encode())
        out += _field_bytes(7, rec)
    if direction:
        out += _field_varint(8, direction)
    out += _field_bytes(10, message)
    return out


def message(qid: str, extra: bytes = b"") -> bytes:
    return (b"Received: from test by test; Mon, 24 Nov 2026 05:00:00 +0000\r\n"
            b"From: sender@example.org\r\nTo: rcpt@example.net\r\n"
            b"Subject: " + qid.encode() + b"\r\n\r\nHello.\r\n" + extra)


def message_subject(data: bytes):
    """The Subject of one delivered message (message() puts the qid there),
    read from its header section only; None when it has none."""
    end = data.find(b"\r\n\r\n")
    for line in data[:end if end >= 0 else len(data)].split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line[9:].decode()
    return None


def sink_subjects(cl) -> list:
    """The Subject of every message in the cluster's sink, one per copy
    delivered (duplicates show as repeats)."""
    return [q for q in (message_subject(m.data) for m in cl.sink.messages()) if q is not None]


# ---------------------------------------------------------------------------
# Kafka through kcat
# ---------------------------------------------------------------------------

def produce(cl, records: List[tuple]) -> None:
    """records: (key or None, value bytes). One kcat call per key group."""
    with tempfile.TemporaryDirectory() as d:
        keyed, unkeyed = [], []
        for i, (key, value) in enumerate(records):
            p = Path(d) / f"r{i}"
            p.write_bytes(value)
            (keyed if key else unkeyed).append((key, str(p)))
        calls = [[KCAT, "-k", k, f] for k, f in keyed]
        if unkeyed:
            calls.append([KCAT] + [f for _, f in unkeyed])
        for argv in calls:
            argv[1:1] = ["-b", cl.kafka.bootstrap, "-P", "-t", cl.spec.topic,
                         "-X", "enable.idempotence=true", "-X", "acks=all",
                         "-X", f"message.max.bytes={mslocal.MAX_RECORD_BYTES}"]
            r = subprocess.run(argv, capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr.decode()


def events(cl) -> List[dict]:
    r = subprocess.run([KCAT, "-b", cl.kafka.bootstrap, "-C", "-t", cl.spec.events_topic,
                        "-o", "beginning", "-e", "-q", "-f", "%s\n"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(line) for line in r.stdout.decode().splitlines() if line.strip()]


def wait_events(cl, pred: Callable[[List[dict]], bool], timeout: float = 60) -> List[dict]:
    deadline = time.monotonic() + timeout
    while True:
        evs = events(cl)
        if pred(evs):
            return evs
        if time.monotonic() > deadline:
            raise AssertionError(f"events not as expected after {timeout}s: {evs}")
        time.sleep(0.5)


def wait_log(node, text: str, timeout: float = 60) -> str:
    mslocal.wait_until(lambda: text in node.log.read_text(errors="replace"), timeout,
                       f"{text!r} in {node.log}", log_path=node.log)
    return node.log.read_text(errors="replace")


def metric(node, series: str) -> float:
    """The value of one series, e.g. 'name{label="x"}'; 0 if absent."""
    for line in node.metrics_text().splitlines():
        if line.split(" ", 1)[0] == series:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------
# A scripted SMTP destination
# ---------------------------------------------------------------------------

class FakeSMTP:
    """Answers like a small ESMTP server. `rcpt_reply(rcpt, n)` gives the
    reply to the n-th RCPT TO for that address (n from 1); `data_reply(n)`
    the reply to the end of the n-th message. Completed transactions are kept
    in .delivered as (mail_from, [rcpts], data)."""

    def __init__(self, rcpt_reply: Optional[Callable[[str, int], str]] = None,
                 data_reply: Optional[Callable[[int], str]] = None,
                 host: str = mslocal.HOST, port: int = 0, tls=None, pipelining: bool = False,
                 extensions: tuple = (), tls_extensions: tuple = ()):
        # tls: an ssl.SSLContext (server side): STARTTLS is offered and done.
        self.tls = tls
        # EHLO keywords offered as well (e.g. "DSN"); tls_extensions only
        # once TLS is up (RFC 8689 §2: REQUIRETLS).
        self.extensions, self.tls_extensions = tuple(extensions), tuple(tls_extensions)
        # pipelining: PIPELINING is offered, and for each MAIL the server
        # notes whether the next command had already arrived before it
        # answered (the client did not wait: RFC 2920).
        self.pipelining = pipelining
        self.mail_pipelined: List[bool] = []
        # Transactions in progress (MAIL to the reply at the end of data),
        # and the most seen at once.
        self.in_tx = 0
        self.max_in_tx = 0
        self.sessions = 0           # connections accepted
        self.hangup_after_data = False  # close silently after each message
        self.hangup_on_rset = False     # close silently when RSET arrives
        # pipelining: for each RSET, whether MAIL had already arrived with it
        self.rset_pipelined: List[bool] = []
        self.tls_sessions: List[str] = []  # TLS version of each STARTTLS
        self.rcpt_reply = rcpt_reply or (lambda r, n: "250 2.1.5 Ok")
        self.data_reply = data_reply or (lambda n: "250 2.0.0 Ok: queued")
        self.rcpt_counts: Dict[str, int] = {}
        self.data_count = 0
        self.delivered: List[tuple] = []
        self.commands: List[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                fake._session(self.rfile, self.wfile, self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.host = host
        self.server = Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile, wfile, sock=None) -> None:
        def say(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        with self.lock:
            self.sessions += 1
        say("220 fake.test ESMTP")
        mail, rcpts = None, []
        while True:
            raw = rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            with self.lock:
                self.commands.append(line)
            if verb == "EHLO":
                say("250-fake.test")
                say("250-SIZE 10000000")
                say("250-8BITMIME")
                if self.tls is not None and not isinstance(sock, ssl.SSLSocket):
                    say("250-STARTTLS")
                if self.pipelining:
                    say("250-PIPELINING")
                for kw in self.extensions + (self.tls_extensions
                                             if isinstance(sock, ssl.SSLSocket) else ()):
                    say("250-" + kw)
                say("250 ENHANCEDSTATUSCODES")
            elif verb == "STARTTLS" and self.tls is not None:
                say("220 2.0.0 Ready to start TLS")
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                with self.lock:
                    self.tls_sessions.append(sock.version() or "")
                rfile, wfile = sock.makefile("rb"), sock.makefile("wb")
                mail, rcpts = None, []
            elif verb == "MAIL":
                mail, rcpts = line[10:].split(">")[0].lstrip("<"), []
                with self.lock:
                    self.in_tx += 1
                    self.max_in_tx = max(self.max_in_tx, self.in_tx)
                if self.pipelining and sock is not None and not isinstance(sock, ssl.SSLSocket):
                    with self.lock:
                        self.mail_pipelined.append(self._ahead(rfile, sock))
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = line[8:].split(">")[0].lstrip("<")
                with self.lock:
                    n = self.rcpt_counts[addr] = self.rcpt_counts.get(addr, 0) + 1
                reply = self.rcpt_reply(addr, n)
                if reply.startswith("2"):
                    rcpts.append(addr)
                say(reply)
            elif verb == "DATA" and not rcpts:
                say("554 5.5.1 Error: no valid recipients")
            elif verb == "DATA":
                say("354 End data with <CR><LF>.<CR><LF>")
                data = bytearray()
                while True:
                    raw = rfile.readline()
                    if not raw:
                        return
                    if raw == b".\r\n":
                        break
                    data += raw[1:] if raw.startswith(b".") else raw
                with self.lock:
                    self.data_count += 1
                    n = self.data_count
                reply = self.data_reply(n)
                with self.lock:
                    if reply.startswith("2"):
                        self.delivered.append((mail, list(rcpts), bytes(data)))
                    self.in_tx -= 1  # before the reply: the client may go on at once
                say(reply)
                if self.hangup_after_data:
                    return
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                return
            elif verb == "RSET":
                if self.hangup_on_rset:
                    return
                if self.pipelining and sock is not None and not isinstance(sock, ssl.SSLSocket):
                    with self.lock:
                        self.rset_pipelined.append(self._ahead(rfile, sock))
                mail, rcpts = None, []
                say("250 2.0.0 Ok")
            else:
                say("502 5.5.2 Error: command not recognized")

    @staticmethod
    def _ahead(rfile, sock) -> bool:
        """Whether the client's next command is already here (it did not
        wait for this reply), after giving it up to a second to arrive."""
        select.select([sock], [], [], 1.0)
        sock.setblocking(False)
        try:
            return bool(rfile.peek(1))
        except (BlockingIOError, OSError):
            return False
        finally:
            sock.setblocking(True)


@pytest.fixture
def fake_smtp():
    servers: List[FakeSMTP] = []

    def make(**kw) -> FakeSMTP:
        s = FakeSMTP(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def worker_cluster(cluster_factory, relay: Optional[str] = None, workers: int = 1, **delivery):
    """Workers only (no frontend); fast retries so tests do not wait long."""
    d = {"retry_min_ms": 200, "retry_max_ms": 1000, **delivery}
    if relay:
        d["relay_host"] = relay
    return cluster_factory(frontends=0, workers=workers, worker_extra={"delivery": d})


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

def test_worker_delivers_to_sink_with_dot_stuffing(cluster_factory):
    cl = worker_cluster(cluster_factory)
    tricky = b".leading dot\r\n..two\r\n.\r\nlast line without dot\r\n"
    qids = [new_qid() for _ in range(5)]
    produce(cl, [(q, envelope(q, [f"a.{q}@example.net", f"b.{q}@example.net"],
                              message(q, tricky))) for q in qids])
    msgs = cl.sink.wait_for(5, timeout=60)
    by_subject = {}
    for m in msgs:
        for q in qids:
            if f"Subject: {q}".encode() in m.data:
                by_subject[q] = m
    assert set(by_subject) == set(qids)
    for q, m in by_subject.items():
        assert m.data == message(q, tricky)
        assert sorted(m.envelope["rcpts"]) == [f"a.{q}@example.net", f"b.{q}@example.net"]
        assert m.envelope["mail_from"] == "sender@example.org"

    evs = wait_events(cl, lambda e: sum(x.get("outcome") == "delivered" for x in e) >= 10)
    delivered = [e for e in evs if e.get("outcome") == "delivered"]
    assert {e["qid"] for e in delivered} == set(qids)
    for e in delivered:
        assert e["code"] == 250 and e["dsn"].startswith("2.") and e["relay"] == cl.sink.address
        assert e["attempt"] == 1 and e["ts"].endswith("Z")

    w = cl.workers[0]
    log = w.log.read_text()
    assert log.count("event=delivery ") >= 10 and "outcome=delivered" in log
    assert metric(w, 'mailstream_worker_deliveries_total{outcome="delivered"}') >= 10
    assert metric(w, "mailstream_worker_attempts_total") >= 5
    assert metric(w, "mailstream_worker_delivery_latency_seconds_count") >= 10
    # Markers were set for every delivered recipient.
    for q in qids:
        key = f"ms:delivered:{q}:a.{q}@example.net"
        assert mslocal.redis_command(cl.redis.port, "EXISTS", key) == b":1\r\n"


def test_worker_retries_451_then_delivers(cluster_factory, fake_smtp):
    srv = fake_smtp(rcpt_reply=lambda r, n: "451 4.7.1 Try again later" if n == 1
                    else "250 2.1.5 Ok")
    cl = worker_cluster(cluster_factory, srv.address)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["greylisted@example.net"], message(q), body_8bit=True))])

    evs = wait_events(cl, lambda e: any(x.get("outcome") == "delivered" for x in e))
    mine = [e for e in evs if e.get("qid") == q]
    assert [e["outcome"] for e in mine] == ["deferred", "delivered"]
    assert mine[0]["code"] == 451 and mine[0]["dsn"] == "4.7.1"
    assert "Try again later" in mine[0]["reply"]
    assert mine[1]["attempt"] == 2
    assert len(srv.delivered) == 1 and srv.delivered[0][1] == ["greylisted@example.net"]
    # The server advertised SIZE and 8BITMIME: both parameters are used.
    mails = [c for c in srv.commands if c.startswith("MAIL FROM:")]
    assert mails[-1] == f"MAIL FROM:<sender@example.org> SIZE={len(message(q))} BODY=8BITMIME"
    log = wait_log(cl.workers[0], "outcome=delivered")
    assert "outcome=deferred" in log and "event=retry_scheduled" in log


def test_worker_550_bounces_and_other_recipient_delivered(cluster_factory, fake_smtp):
    srv = fake_smtp(rcpt_reply=lambda r, n: "550 5.1.1 <%s>: User unknown" % r
                    if r.startswith("nobody") else "250 2.1.5 Ok")
    cl = worker_cluster(cluster_factory, srv.address)
    q = new_qid()
    nobody = f"nobody.{q.lower()}@example.net"  # unique: hard bounces are suppressed
    produce(cl, [(q, envelope(q, [nobody, "someone@example.net"], message(q)))])

    evs = wait_events(cl, lambda e: len([x for x in e if x.get("qid") == q]) >= 2)
    by_rcpt = {e["rcpt"]: e for e in evs if e.get("qid") == q}
    assert by_rcpt[nobody]["outcome"] == "bounced"
    assert by_rcpt[nobody]["code"] == 550
    assert by_rcpt[nobody]["dsn"] == "5.1.1"
    assert "User unknown" in by_rcpt[nobody]["reply"]
    assert by_rcpt["someone@example.net"]["outcome"] == "delivered"
    log = wait_log(cl.workers[0], "outcome=bounced")
    assert f'rcpt="{nobody}"' in log and "code=550 dsn=5.1.1" in log
    assert srv.delivered == [("sender@example.org", ["someone@example.net"], message(q))]
    # The bounce is final: no second attempt for that recipient.
    time.sleep(1.5)
    assert srv.rcpt_counts[nobody] == 1


def test_worker_data_451_then_250(cluster_factory, fake_smtp):
    """A temporary failure at the end of DATA defers every accepted recipient."""
    srv = fake_smtp(data_reply=lambda n: "451 4.3.0 Queue trouble" if n == 1
                    else "250 2.0.0 Ok: queued")
    cl = worker_cluster(cluster_factory, srv.address)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["x@example.net", "y@example.net"], message(q)))])
    evs = wait_events(cl, lambda e: sum(x.get("outcome") == "delivered" for x in e) >= 2)
    outcomes = sorted((e["rcpt"], e["attempt"], e["outcome"]) for e in evs if e.get("qid") == q)
    assert outcomes == [("x@example.net", 1, "deferred"), ("x@example.net", 2, "delivered"),
                        ("y@example.net", 1, "deferred"), ("y@example.net", 2, "delivered")]
    assert len(srv.delivered) == 1


def test_worker_skips_recipients_with_delivered_marker(cluster_factory, fake_smtp):
    srv = fake_smtp()
    cl = worker_cluster(cluster_factory, srv.address)
    q = new_qid()
    mslocal.redis_command(cl.redis.port, "SET", f"ms:delivered:{q}:done@example.net", "test",
                          "EX", "600")
    produce(cl, [(q, envelope(q, ["done@example.net", "todo@example.net"], message(q)))])
    wait_events(cl, lambda e: any(x.get("qid") == q for x in e))
    log = wait_log(cl.workers[0], "reason=already_delivered")
    assert 'rcpt="done@example.net" reason=already_delivered' in log
    assert [d[1] for d in srv.delivered] == [["todo@example.net"]]
    assert "done@example.net" not in srv.rcpt_counts


def test_worker_survives_malformed_records(cluster_factory):
    cl = worker_cluster(cluster_factory)
    q = new_qid()
    produce(cl, [("garbage", b"\xff\xfe not a protobuf \x00\x01"),
                 ("future", envelope(new_qid(), ["a@example.net"], b"x\r\n", version=99)),
                 (q, envelope(q, ["a@example.net"], message(q)))])
    cl.sink.wait_for(1, timeout=60)
    w = cl.workers[0]
    log = wait_log(w, "unknown envelope version")
    assert log.count("event=malformed_record") == 2 and "level=error" in log
    assert w.alive()
    assert metric(w, "mailstream_worker_malformed_records_total") == 2
    evs = wait_events(cl, lambda e: sum(x.get("event") == "malformed" for x in e) >= 2)
    assert {e.get("key") for e in evs if e.get("event") == "malformed"} == {"garbage", "future"}


def test_worker_sigterm_drains_and_exits_zero(cluster_factory):
    cl = worker_cluster(cluster_factory)
    qids = [new_qid() for _ in range(10)]
    produce(cl, [(None, envelope(q, ["a@example.net"], message(q))) for q in qids])
    cl.sink.wait_for(10, timeout=60)
    w = cl.workers[0]
    proc = w.proc
    w.stop(timeout=30)
    assert proc.popen.wait(timeout=5) == 0
    log = w.log.read_text()
    assert "event=draining" in log and "event=stopped" in log


@pytest.mark.timeout(300)
def test_worker_sigkill_mid_stream_loses_nothing(cluster_factory):
    """SIGKILL a worker while it delivers; a replacement must get every
    message to the sink (duplicates allowed: at least once)."""
    # A slow sink (1 s before each DATA reply) and few messages in flight keep
    # the worker busy long enough to be killed in the middle.
    cl = cluster_factory(frontends=0, workers=1, sink_args=["-w", "1"],
                         worker_extra={"delivery": {"max_in_flight": 4}})
    n = 60
    qids = [new_qid() for _ in range(n)]
    produce(cl, [(None, envelope(q, [f"r.{q}@example.net"], message(q))) for q in qids])
    mslocal.wait_until(lambda: len(cl.sink.messages()) >= 5, 60, "first deliveries")
    cl.workers[0].kill()
    at_kill = len(cl.sink.messages())
    assert at_kill < n, "the worker finished before it was killed: nothing tested"
    # The replacement joins the same group; the dead member's partitions come
    # back after its session times out.
    cl.add_worker()

    mslocal.wait_until(lambda: set(sink_subjects(cl)) >= set(qids), 240,
                       f"all {n} messages in the sink", interval=1.0)


def test_worker_connection_refused_is_deferred(cluster_factory):
    port = mslocal.free_port()
    cl = worker_cluster(cluster_factory, f"{mslocal.HOST}:{port}")
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    evs = wait_events(cl, lambda e: len([x for x in e if x.get("qid") == q]) >= 2)
    mine = [e for e in evs if e.get("qid") == q]
    assert all(e["outcome"] == "deferred" and e["code"] == 0 and e["dsn"] == "4.4.1"
               for e in mine)
    assert "connect to" in mine[0]["reply"]
    # Still in flight (not done): readiness and liveness unaffected.
    assert cl.workers[0].alive()


def test_worker_delivers_when_redis_is_down(cluster_factory):
    """Without duplicate fencing ([delivery] fence_lease_ms = 0) markers are
    an optimisation: without Redis, mail still goes out (at least once).
    With fencing, see test_worker_fencing.py: it waits for Redis."""
    cl = cluster_factory(frontends=0, workers=1,
                         worker_extra={"redis": {"port": mslocal.free_port()},
                                       "delivery": {"fence_lease_ms": 0}})
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
    cl.sink.wait_for(1, timeout=60)
    w = cl.workers[0]
    log = wait_log(w, "outcome=delivered")
    assert "event=redis_failed" in log
    assert metric(w, "mailstream_worker_redis_errors_total") >= 1


@pytest.mark.timeout(300)
def test_worker_sigterm_mid_stream_then_restart_loses_nothing(cluster_factory):
    """SIGTERM while messages are in flight: the worker finishes or abandons
    them, exits 0, and a new worker delivers whatever is left."""
    cl = cluster_factory(frontends=0, workers=1, sink_args=["-w", "1"],
                         worker_extra={"delivery": {"max_in_flight": 4}})
    n = 30
    qids = [new_qid() for _ in range(n)]
    produce(cl, [(None, envelope(q, [f"r.{q}@example.net"], message(q))) for q in qids])
    mslocal.wait_until(lambda: len(cl.sink.messages()) >= 3, 60, "first deliveries")
    w = cl.workers[0]
    proc = w.proc
    w.stop(timeout=60)
    assert proc.popen.wait(timeout=5) == 0
    assert len(cl.sink.messages()) < n, "the worker finished before SIGTERM: nothing tested"
    cl.add_worker()

    mslocal.wait_until(lambda: set(sink_subjects(cl)) >= set(qids), 240,
                       f"all {n} messages in the sink", interval=1.0)


def test_worker_events_pending_do_not_hold_delivery_slots(cluster_factory, kafka_control):
    """A message whose deliveries are done and that waits only for its event
    records to be acknowledged gives its delivery slot back (delivery.c,
    msg_park); its offset still waits for them.  The broker is frozen
    (SIGSTOP) while the first two of four messages are with the sink (it
    waits a second at DATA), so their events cannot be acknowledged: with
    max_in_flight = 2 the other two are delivered all the same, before any
    event has been given up on (the Kafka glue purges stalled records only
    after message.timeout.ms + 2 s), which slots held by events could not
    do.  Once the broker runs again everything is done and a stop is clean."""
    cl = cluster_factory(frontends=0, workers=0, sink_args=["-w", "1"],
                         worker_extra={"delivery": {"max_in_flight": 2}})
    qids = [new_qid() for _ in range(4)]
    # One key, so one partition; and the worker starts after all four are
    # in it, so its first fetch of that partition brings them all: none is
    # left for the frozen broker to hand out.
    produce(cl, [("parking", envelope(q, [f"p.{q}@example.net"], message(q))) for q in qids])
    cl.add_worker()
    w = cl.workers[0]
    mslocal.wait_until(lambda: metric(w, "mailstream_worker_in_flight") == 2, 60,
                       "two messages with the sink")
    broker = kafka_control.sup.procs[kafka_control.name].pid
    os.kill(broker, signal.SIGSTOP)
    try:
        cl.sink.wait_for(4, timeout=60)
        assert metric(w, "mailstream_worker_event_errors_total") == 0
    finally:
        os.kill(broker, signal.SIGCONT)
    assert metric(w, 'mailstream_worker_deliveries_total{outcome="delivered"}') == 4
    mslocal.wait_until(lambda: metric(w, "mailstream_worker_in_flight") == 0, 60,
                       "nothing in flight")
    proc = w.proc
    w.stop(timeout=60)
    assert proc.popen.wait(timeout=5) == 0


def test_worker_large_message(cluster_factory):
    """A message of many data blocks (WK_SMTP_DATA_BLOCK) arrives intact."""
    cl = worker_cluster(cluster_factory)
    q = new_qid()
    line = b"." + b"x" * 97 + b"\r\n"  # every line needs stuffing
    big = message(q, line * (12 * 1024 * 1024 // len(line)))
    produce(cl, [(q, envelope(q, ["big@example.net"], big))])
    msgs = cl.sink.wait_for(1, timeout=120)
    assert len(msgs[0].data) == len(big) and msgs[0].data == big


def test_worker_pipelines_when_offered(cluster_factory, fake_smtp):
    """RFC 2920: MAIL, RCPTs and DATA go together; per-recipient replies
    still land on the right recipients."""
    srv = fake_smtp(pipelining=True, rcpt_reply=lambda r, n: "550 5.1.1 No such user"
                    if r.startswith("bad") else "250 2.1.5 Ok")
    plain = fake_smtp()
    cl = worker_cluster(cluster_factory, srv.address)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@example.net", "bad@example.net", "c@example.net"],
                              message(q)))])
    evs = wait_events(cl, lambda e: len([x for x in e if x.get("qid") == q]) >= 3)
    by = {e["rcpt"]: e["outcome"] for e in evs if e.get("qid") == q}
    assert by == {"a@example.net": "delivered", "bad@example.net": "bounced",
                  "c@example.net": "delivered"}
    assert srv.mail_pipelined == [True]
    assert srv.delivered == [("sender@example.org", ["a@example.net", "c@example.net"],
                              message(q))]

    # All recipients refused: the pipelined DATA is refused too, or ended empty.
    q2 = new_qid()
    produce(cl, [(q2, envelope(q2, ["bad1@example.net", "bad2@example.net"], message(q2)))])
    evs = wait_events(cl, lambda e: len([x for x in e if x.get("qid") == q2]) >= 2)
    assert {e["outcome"] for e in evs if e.get("qid") == q2} == {"bounced"}
    assert len(srv.delivered) == 1
    # Without PIPELINING the client waits for each reply.
    cl2 = worker_cluster(cluster_factory, plain.address)
    q3 = new_qid()
    produce(cl2, [(q3, envelope(q3, ["a@example.net"], message(q3)))])
    wait_events(cl2, lambda e: any(x.get("qid") == q3 for x in e))
    assert plain.mail_pipelined == [] and len(plain.delivered) == 1


def test_worker_destination_concurrency_lease(cluster_factory, fake_smtp):
    """[delivery] dest_concurrency = 1: a slow destination never sees two
    transactions at once, though five messages are in flight; the leases
    are gone afterwards."""
    srv = fake_smtp(data_reply=lambda n: (time.sleep(0.3), "250 2.0.0 Ok: queued")[1])
    cl = worker_cluster(cluster_factory, srv.address, dest_concurrency=1)
    qids = [new_qid() for _ in range(5)]
    produce(cl, [(q, envelope(q, [f"r.{q}@example.net"], message(q))) for q in qids])
    wait_events(cl, lambda e: sum(x.get("outcome") == "delivered" for x in e) >= 5, timeout=120)
    assert len(srv.delivered) == 5 and srv.max_in_tx == 1
    assert metric(cl.workers[0], "mailstream_worker_lease_waits_total") >= 1
    mslocal.wait_until(lambda: mslocal.redis_command(
        cl.redis.port, "ZCARD", f"ms:lease:{srv.address}") == b":0\r\n", 30, "leases released")


def test_worker_reuses_connections(cluster_factory, fake_smtp):
    """A connection parked after a message carries the next one (RSET
    first); one the server closed meanwhile is not used."""
    srv = fake_smtp()
    cl = worker_cluster(cluster_factory, srv.address, connection_cache_ms=60000)
    q1, q2 = new_qid(), new_qid()
    produce(cl, [(q1, envelope(q1, ["a@example.net"], message(q1)))])
    wait_events(cl, lambda e: any(x.get("qid") == q1 for x in e))
    produce(cl, [(q2, envelope(q2, ["b@example.net"], message(q2)))])
    wait_events(cl, lambda e: any(x.get("qid") == q2 and x["outcome"] == "delivered" for x in e))
    assert srv.sessions == 1 and len(srv.delivered) == 2
    verbs = [c.split(" ")[0].split(":")[0] for c in srv.commands]
    assert verbs.count("EHLO") == 1 and verbs.count("RSET") == 1 and "QUIT" not in verbs

    # The server hangs up after each message: every message gets a fresh
    # connection, none fails.
    srv2 = fake_smtp()
    srv2.hangup_after_data = True
    cl2 = worker_cluster(cluster_factory, srv2.address, connection_cache_ms=60000)
    q3, q4 = new_qid(), new_qid()
    produce(cl2, [(q3, envelope(q3, ["c@example.net"], message(q3)))])
    wait_events(cl2, lambda e: any(x.get("qid") == q3 for x in e))
    produce(cl2, [(q4, envelope(q4, ["d@example.net"], message(q4)))])
    evs = wait_events(cl2, lambda e: any(x.get("qid") == q4 for x in e))
    assert [x["outcome"] for x in evs if x.get("qid") in (q3, q4)] == ["delivered", "delivered"]
    assert srv2.sessions == 2


def test_worker_reuse_pipelines_rset(cluster_factory, fake_smtp):
    """RFC 2920: on a reused connection to a PIPELINING server, RSET leads
    the group (RSET, MAIL, RCPT, DATA in one go: no extra round trip). A
    server that drops the parked connection on RSET, before any reply, costs
    a fresh connection, not the message."""
    srv = fake_smtp(pipelining=True)
    cl = worker_cluster(cluster_factory, srv.address, connection_cache_ms=60000)
    q1, q2 = new_qid(), new_qid()
    produce(cl, [(q1, envelope(q1, ["a@example.net"], message(q1)))])
    wait_events(cl, lambda e: any(x.get("qid") == q1 for x in e))
    produce(cl, [(q2, envelope(q2, ["b@example.net", "c@example.net"], message(q2)))])
    wait_events(cl, lambda e: sum(x.get("qid") == q2 and x["outcome"] == "delivered"
                                  for x in e) == 2)
    assert srv.sessions == 1 and srv.rset_pipelined == [True]
    assert srv.mail_pipelined == [True, True]
    verbs = [c.split(" ")[0].split(":")[0] for c in srv.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "RCPT", "DATA"]
    assert [d[1] for d in srv.delivered] == [["a@example.net"], ["b@example.net", "c@example.net"]]

    srv2 = fake_smtp(pipelining=True)
    srv2.hangup_on_rset = True
    cl2 = worker_cluster(cluster_factory, srv2.address, connection_cache_ms=60000)
    q3, q4 = new_qid(), new_qid()
    produce(cl2, [(q3, envelope(q3, ["d@example.net"], message(q3)))])
    wait_events(cl2, lambda e: any(x.get("qid") == q3 for x in e))
    produce(cl2, [(q4, envelope(q4, ["e@example.net"], message(q4)))])
    evs = wait_events(cl2, lambda e: any(x.get("qid") == q4 for x in e))
    assert [x["outcome"] for x in evs if x.get("qid") in (q3, q4)] == ["delivered", "delivered"]
    assert [x.get("attempt") for x in evs if x.get("qid") == q4] == [1]
    assert srv2.sessions == 2 and len(srv2.delivered) == 2


def test_connections_gauge_by_destination(cluster_factory, fake_smtp):
    """mailstream_worker_dest_connections{dest=...}: a session open to the
    relay host counts under its name while it lasts, and no longer after."""
    release = threading.Event()

    def slow_data(n: int) -> str:
        release.wait(60)
        return "250 2.0.0 Ok: queued"

    srv = fake_smtp(data_reply=slow_data)
    cl = worker_cluster(cluster_factory, relay=srv.address)
    w = cl.workers[0]
    series = f'mailstream_worker_dest_connections{{dest="{srv.address}"}}'
    q = new_qid()
    produce(cl, [(q, envelope(q, [f"g.{q}@example.net"], message(q)))])
    try:
        mslocal.wait_until(lambda: metric(w, series) == 1, 60, "a session counted for the relay",
                           interval=0.2)
        assert metric(w, "mailstream_worker_connections") == 1
        assert metric(w, 'mailstream_worker_dest_connections{dest="other"}') == 0
    finally:
        release.set()
    wait_events(cl, lambda e: any(x.get("qid") == q and x["outcome"] == "delivered" for x in e))
    mslocal.wait_until(lambda: metric(w, series) == 0, 30, "the session no longer counted",
                       interval=0.2)
    assert metric(w, "mailstream_worker_connections") == 0
