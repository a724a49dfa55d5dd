"""The frontend's SMTP behaviour as raw byte dialogues (STYLE.md 17).

A frontend (and, where delivery matters, a worker) runs against the real
Kafka broker from conftest.py.  Every test speaks bytes on a socket, so
malformed input -- overlong lines, bare LF/CR, NUL, SMTP smuggling -- is
sent exactly as written.  No timing is asserted.
"""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from conftest import smtp_port

QID = rb"[0-9A-Z]{21}"
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as (" + QID + rb")\r\n$")


class Client:
    """A raw SMTP client: send bytes, read whole (multi-line) replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", sock: socket.socket | None = None):
        self.s = sock or socket.create_connection((host, port), timeout=60)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        ln, self.buf = self.buf.split(b"\n", 1)
        return ln + b"\n"

    def reply(self) -> bytes:
        out = b""
        while True:
            ln = self.line()
            out += ln
            if ln[3:4] != b"-":
                return out

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True when the server closed the connection (after what was read)."""
        try:
            self.s.settimeout(30)
            return self.s.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.s.close()


def code(reply: bytes) -> bytes:
    return reply[:9]  # "250 2.1.0"


@pytest.fixture
def fe(cluster_factory):
    """One frontend, no worker: we look at what the frontend answers."""
    return cluster_factory(frontends=1, workers=0)


def hello(port: int, name: bytes = b"client.example") -> Client:
    c = Client(port)
    assert c.reply().startswith(b"220 ")
    r = c.cmd(b"EHLO " + name)
    assert r.startswith(b"250-")
    return c


def test_ehlo_advertises_extensions(fe):
    c = Client(smtp_port(fe))
    banner = c.reply()
    assert re.match(rb"^220 localhost ESMTP", banner)
    r = c.cmd(b"EHLO client.example")
    lines = r.split(b"\r\n")[:-1]
    assert lines[-1].startswith(b"250 ")
    assert all(ln.startswith(b"250-") for ln in lines[:-1])
    kw = {ln[4:].split(b" ")[0] for ln in lines[1:]}
    for ext in (b"PIPELINING", b"SIZE", b"8BITMIME", b"SMTPUTF8", b"DSN",
                b"ENHANCEDSTATUSCODES", b"STARTTLS"):
        assert ext in kw, r
    assert b"AUTH" not in kw  # only over TLS
    assert b"250-SIZE 26214400\r\n" in r
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"
    assert c.closed()


def test_helo_and_basic_commands(fe):
    c = Client(smtp_port(fe))
    c.reply()
    assert c.cmd(b"HELO client.example") == b"250 localhost\r\n"
    assert code(c.cmd(b"NOOP")) == b"250 2.0.0"
    assert code(c.cmd(b"NOOP whatever")) == b"250 2.0.0"
    assert code(c.cmd(b"VRFY postmaster")) == b"252 2.5.0"
    assert c.cmd(b"HELP").startswith(b"214 2.0.0")
    assert code(c.cmd(b"RSET")) == b"250 2.0.0"
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"


def test_error_codes(fe):
    c = Client(smtp_port(fe))
    c.reply()
    # Sequence: nothing before HELO/EHLO.
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"503 5.5.1"
    assert code(c.cmd(b"EHLO")) == b"501 5.5.4"
    c.cmd(b"EHLO client.example")
    assert code(c.cmd(b"FROB")) == b"500 5.5.1"
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test>")) == b"503 5.5.1"
    assert code(c.cmd(b"DATA")) == b"503 5.5.1"
    assert code(c.cmd(b"MAIL FROM:a@b.example")) == b"501 5.5.4"
    assert code(c.cmd(b"MAIL FROM:<a b@b.example>")) == b"501 5.1.7"
    assert code(c.cmd(b"MAIL FROM:<a@b.example> FOO=BAR")) == b"555 5.5.4"
    c.cmd(b"QUIT")
    # A fresh session: max_errors (10) would end this one.
    c = hello(smtp_port(fe))
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"503 5.5.1"
    assert code(c.cmd(b"RCPT TO:<u@@mailstream.test>")) == b"501 5.1.3"
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test> NOTIFY=SOMETIMES")) == b"501 5.5.4"
    # No recipient yet: DATA is refused.
    assert code(c.cmd(b"DATA")) == b"554 5.5.1"
    assert code(c.cmd(b"RSET")) == b"250 2.0.0"
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"


def test_relay_policy(fe):
    c = hello(smtp_port(fe))
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
    assert code(c.cmd(b"RCPT TO:<U@MAILSTREAM.TEST>")) == b"250 2.1.5"
    assert code(c.cmd(b"RCPT TO:<postmaster>")) == b"250 2.1.5"
    assert c.cmd(b"RCPT TO:<u@elsewhere.example>") == b"550 5.7.1 Relay not permitted\r\n"
    assert code(c.cmd(b"RCPT TO:<u@[127.0.0.1]>")) == b"550 5.7.1"
    c.cmd(b"QUIT")


def test_trusted_network_may_relay(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0, trusted_networks=["127.0.0.0/8"])
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    assert code(c.cmd(b"RCPT TO:<u@elsewhere.example>")) == b"250 2.1.5"
    c.cmd(b"QUIT")


def test_pipelined_transaction_is_queued(fe):
    c = Client(smtp_port(fe))
    c.reply()
    c.send(b"EHLO client.example\r\n"
           b"MAIL FROM:<a@b.example> SIZE=60 BODY=8BITMIME\r\n"
           b"RCPT TO:<u@mailstream.test>\r\n"
           b"RCPT TO:<nobody@elsewhere.example>\r\n"
           b"RCPT TO:<v@mailstream.test>\r\n"
           b"DATA\r\n"
           b"Subject: pipelined\r\n\r\n..dot-stuffed line\r\nbody\r\n.\r\n"
           b"MAIL FROM:<>\r\n"
           b"RCPT TO:<w@mailstream.test>\r\n"
           b"DATA\r\n"
           b"Subject: second\r\n\r\nx\r\n.\r\n"
           b"QUIT\r\n")
    assert c.reply().startswith(b"250-")
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    assert code(c.reply()) == b"550 5.7.1"
    assert code(c.reply()) == b"250 2.1.5"
    assert c.reply().startswith(b"354")
    first = c.reply()
    assert QUEUED.match(first), first
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    assert c.reply().startswith(b"354")
    second = c.reply()
    assert QUEUED.match(second), second
    assert QUEUED.match(first).group(1) != QUEUED.match(second).group(1)
    assert code(c.reply()) == b"221 2.0.0"
    assert c.closed()


def test_pipelining_after_failed_recipients(fe):
    c = hello(smtp_port(fe))
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nNOOP\r\n")
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"550 5.7.1"
    assert code(c.reply()) == b"554 5.5.1"
    # DATA was refused, so the next line is a command, not message text.
    assert code(c.reply()) == b"250 2.0.0"
    c.cmd(b"QUIT")


def test_size_limits(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0, max_message_size=2048)
    c = hello(smtp_port(cl))
    assert b"250-SIZE 2048\r\n" in c.cmd(b"EHLO again.example")
    assert c.cmd(b"MAIL FROM:<a@b.example> SIZE=4096").startswith(b"552 5.3.4")
    assert code(c.cmd(b"MAIL FROM:<a@b.example> SIZE=100")) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
    assert c.cmd(b"DATA").startswith(b"354")
    # Lied about SIZE: the real size counts, the message is not truncated.
    c.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100 + b".\r\n")
    assert code(c.reply()) == b"552 5.3.4"
    # The session goes on.
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
    assert QUEUED.match(c.reply())
    c.cmd(b"QUIT")


def test_command_line_too_long(fe):
    c = hello(smtp_port(fe))
    assert code(c.cmd(b"NOOP " + b"x" * 600)) == b"500 5.5.2"
    # 510 octets plus CRLF is the limit and still fine.
    assert code(c.cmd(b"NOOP " + b"x" * 505)) == b"250 2.0.0"
    assert code(c.cmd(b"NOOP")) == b"250 2.0.0"
    c.cmd(b"QUIT")


def test_text_line_too_long_rejects_message(fe):
    c = hello(smtp_port(fe))
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\nmore\r\n.\r\n")
    assert code(c.reply()) == b"500 5.5.2"
    assert code(c.cmd(b"NOOP")) == b"250 2.0.0"
    c.cmd(b"QUIT")


def test_recipient_limit(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0,
                         frontend_extra={"smtp": {"max_recipients": 3}})
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    for i in range(3):
        assert code(c.cmd(b"RCPT TO:<u%d@mailstream.test>" % i)) == b"250 2.1.5"
    assert c.cmd(b"RCPT TO:<u9@mailstream.test>") == b"452 4.5.3 Too many recipients\r\n"
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: three\r\n\r\nx\r\n.\r\n")
    assert QUEUED.match(c.reply())
    c.cmd(b"QUIT")


def test_too_many_errors_disconnects(fe):
    c = hello(smtp_port(fe))
    replies = [c.cmd(b"BOGUS") for _ in range(9)]
    assert all(code(r) == b"500 5.5.1" for r in replies)
    c.send(b"BOGUS\r\n")
    assert code(c.reply()) == b"500 5.5.1"
    assert code(c.reply()) == b"421 4.7.0"
    assert c.closed()


SMUGGLING = [
    (b"lf-dot-lf", b"\n.\n"),
    (b"cr-dot-cr", b"\r.\r"),
    (b"crlf-dot-lf", b"\r\n.\n"),
    (b"lf-dot-crlf", b"\n.\r\n"),
    (b"cr-dot-crlf", b"\r.\r\n"),
    (b"crlf-dot-cr", b"\r\n.\r"),
]


@pytest.mark.parametrize("name,end", SMUGGLING, ids=[n.decode() for n, _ in SMUGGLING])
def test_smtp_smuggling_is_rejected(fe, name, end):
    """A fake end of data followed by a smuggled transaction: the whole thing
    is one message, rejected for its bare CR/LF; nothing is queued and the
    smuggled commands are never executed."""
    c = hello(smtp_port(fe))
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: outer\r\n\r\nhello" + end +
           b"MAIL FROM:<admin@mailstream.test>\r\nRCPT TO:<victim@mailstream.test>\r\n"
           b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
    r = c.reply()
    assert r.startswith(b"554 5.6.0"), r
    # Exactly one reply: the smuggled commands were message text.
    assert code(c.cmd(b"NOOP")) == b"250 2.0.0"
    c.cmd(b"QUIT")


@pytest.mark.parametrize("body,why", [
    (b"a\x00b\r\n", b"NUL"),
    (b"bare\nlf\r\n", b"bare LF"),
    (b"bare\rcr\r\n", b"bare CR"),
])
def test_bad_octets_reject_message(fe, body, why):
    c = hello(smtp_port(fe))
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    c.cmd(b"DATA")
    c.send(b"Subject: x\r\n\r\n" + body + b".\r\n")
    r = c.reply()
    assert r.startswith(b"554 5.6.0") and why in r, r
    c.cmd(b"QUIT")


def test_nul_and_bare_cr_in_commands(fe):
    c = hello(smtp_port(fe))
    assert code(c.cmd(b"NOOP\x00")) == b"501 5.5.2"
    assert code(c.cmd(b"MAIL FROM:<a@b.example>\rRCPT TO:<x@y>")) == b"501 5.5.2"
    # A bare LF ends a command line (tolerated, as most MTAs do).
    c.send(b"NOOP\n")
    assert code(c.reply()) == b"250 2.0.0"
    c.cmd(b"QUIT")


def test_smtputf8(fe):
    c = hello(smtp_port(fe))
    assert code(c.cmd("MAIL FROM:<jörg@b.example>".encode())) == b"553 5.6.7"
    assert code(c.cmd("MAIL FROM:<jörg@b.example> SMTPUTF8".encode())) == b"250 2.1.0"
    assert code(c.cmd("RCPT TO:<müller@mailstream.test>".encode())) == b"250 2.1.5"
    c.cmd(b"DATA")
    c.send("Subject: grüße\r\n\r\nß\r\n.\r\n".encode())
    assert QUEUED.match(c.reply())
    c.cmd(b"QUIT")


def test_envelope_in_kafka_carries_dsn_and_received(fe):
    """The record on the queue topic: key = queue id, value = envelope with
    the DSN parameters and the message with our Received header first."""
    c = hello(smtp_port(fe))
    assert code(c.cmd(b"MAIL FROM:<a@b.example> RET=HDRS ENVID=env+2Bid42")) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test> NOTIFY=SUCCESS,FAILURE "
                      b"ORCPT=rfc822;orig+40x.example")) == b"250 2.1.5"
    c.cmd(b"DATA")
    c.send(b"Subject: dsn\r\n\r\nbody\r\n.\r\n")
    m = QUEUED.match(c.reply())
    assert m
    qid = m.group(1)
    c.cmd(b"QUIT")
    out = subprocess.run(
        ["kcat", "-C", "-b", fe.kafka.bootstrap, "-t", fe.spec.topic, "-o", "beginning", "-e",
         "-q", "-f", "%k\n%s\n--END--\n"],
        capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rec = [r for r in out.stdout.split(b"--END--\n") if r.startswith(qid + b"\n")]
    assert len(rec) == 1
    value = rec[0]
    assert b"env+id42" in value
    assert b"rfc822;orig@x.example" in value
    assert b"Received: from client.example ([127.0.0.1])\r\n\tby localhost (Mailstream) with " \
           b"ESMTP id " + qid + b"\r\n\tfor <u@mailstream.test>; " in value
    assert b"Subject: dsn\r\n\r\nbody\r\n" in value


def test_metrics_count_results(fe):
    node = fe.frontends[0]
    c = hello(smtp_port(fe))
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    c.cmd(b"DATA")
    c.send(b"x\nbare\r\n.\r\n")
    assert code(c.reply()) == b"554 5.6.0"
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    c.cmd(b"DATA")
    c.send(b"ok\r\n.\r\n")
    assert QUEUED.match(c.reply())
    c.cmd(b"QUIT")
    text = node.metrics_text()
    assert re.search(r'^mailstream_smtp_messages_total\{result="queued"\} 1$', text, re.M), text
    assert re.search(r'^mailstream_smtp_messages_total\{result="rejected"\} 1$', text, re.M)
    assert re.search(r'^mailstream_smtp_commands_total\{verb="MAIL"\} 2$', text, re.M)
    assert re.search(r'^mailstream_smtp_connections_total\{listener="mx",tls="no"\} 1$',
                     text, re.M)
    assert "mailstream_smtp_queue_latency_seconds_bucket" in text


def test_delivered_with_received_header(cluster):
    """Through the worker to the sink: our Received header first, then the
    message byte for byte."""
    c = hello(smtp_port(cluster))
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    c.cmd(b"DATA")
    body = b"Subject: through\r\n\r\n..leading dot\r\nline\r\n"
    c.send(body + b".\r\n")
    m = QUEUED.match(c.reply())
    assert m
    c.cmd(b"QUIT")
    [msg] = cluster.sink.wait_for(1, timeout=60)
    assert msg.data.startswith(b"Received: from client.example ([127.0.0.1])\r\n")
    assert b" id " + m.group(1) + b"\r\n" in msg.data
    assert msg.data.endswith(b"Subject: through\r\n\r\n.leading dot\r\nline\r\n")


def test_sigterm_drains(fe):
    """SIGTERM: idle sessions get 421 4.3.2, the process exits 0."""
    node = fe.frontends[0]
    idle = hello(smtp_port(fe))
    node.stop()
    assert code(idle.reply()) == b"421 4.3.2"
    assert idle.closed()
    assert not node.alive()
    assert "event=drained" in node.log.read_text()


def test_greeting_timeout(cluster_factory):
    """An idle client before HELO is cut off with 421 4.4.2 (timeouts are
    configurable; we only check the reply, not when it comes)."""
    cl = cluster_factory(frontends=1, workers=0,
                         frontend_extra={"smtp": {"greeting_timeout": 1}})
    c = Client(smtp_port(cl))
    assert c.reply().startswith(b"220 ")
    assert code(c.reply()) == b"421 4.4.2"
    assert c.closed()


def test_two_frontends_share_the_port(cluster_factory):
    """SO_REUSEPORT: both processes listen on the same address and the
    kernel spreads connections over them."""
    cl = cluster_factory(frontends=2, workers=0)
    port = smtp_port(cl)
    for _ in range(24):
        c = Client(port)
        assert c.reply().startswith(b"220 ")
        assert code(c.cmd(b"QUIT")) == b"221 2.0.0"
        c.close()
    counts = []
    for node in cl.frontends:
        m = re.search(r'^mailstream_smtp_connections_total\{listener="mx",tls="no"\} (\d+)$',
                      node.metrics_text(), re.M)
        counts.append(int(m.group(1)) if m else 0)
    assert sum(counts) == 24
    assert all(n > 0 for n in counts), counts


@pytest.mark.parametrize("rcpt", [
    b"<u%evil.example@mailstream.test>",
    b"<evil.example!u@mailstream.test>",
    b'<"u@evil.example"@mailstream.test>',
    b"<@mailstream.test:u@evil.example>",
    b"<u@[127.0.0.1]>",
    b"<u@[IPv6:::1]>",
])
def test_relay_tricks_refused(fe, rcpt):
    """%-hacks, !-paths, quoted addresses, source routes and address
    literals never relay for an unauthenticated, untrusted client."""
    c = hello(smtp_port(fe))
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    r = c.cmd(b"RCPT TO:" + rcpt)
    assert code(r) == b"550 5.7.1", r
    c.cmd(b"QUIT")
