"""BDAT / CHUNKING (RFC 3030) as raw byte dialogues against a frontend.

Chunks are pipelined exactly as written; message octets that look like
commands must never be taken as commands.  The last reply to BDAT LAST
comes only after Kafka acknowledged the record, which we read back with
kcat.  No timing is asserted.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import smtp_port
from test_frontend_smtp import QUEUED, Client, code, hello


@pytest.fixture
def fe(cluster_factory):
    return cluster_factory(frontends=1, workers=0)


def kafka_record(cl, qid: bytes) -> bytes:
    out = subprocess.run(
        ["kcat", "-C", "-b", cl.kafka.bootstrap, "-t", cl.spec.topic, "-o", "beginning", "-e",
         "-q", "-f", "%k\n%s\n--END--\n"],
        capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rec = [r for r in out.stdout.split(b"--END--\n") if r.startswith(qid + b"\n")]
    assert len(rec) == 1
    return rec[0]


def bdat(c: Client, data: bytes, last: bool = False) -> bytes:
    """One BDAT command with its chunk; the reply."""
    c.send(b"BDAT %d%s\r\n%s" % (len(data), b" LAST" if last else b"", data))
    return c.reply()


def test_ehlo_advertises_chunking(fe):
    c = hello(smtp_port(fe))
    r = c.cmd(b"EHLO again.example")
    assert b"250-CHUNKING\r\n" in r
    assert b"250-BINARYMIME\r\n" in r
    c.cmd(b"QUIT")


def test_pipelined_chunks_are_queued(fe):
    """MAIL, RCPT and three chunks in one write; the chunk octets hold what
    would be commands and a DATA terminator, taken as message octets."""
    c = hello(smtp_port(fe))
    body1 = b"Subject: chunks\r\n\r\nQUIT\r\n.\r\n"
    body2 = b"RSET\r\n..dot\r"
    body3 = b"\nend\r\n"
    c.send(b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\nRCPT TO:<u@mailstream.test>\r\n"
           b"BDAT %d\r\n%s" % (len(body1), body1) +
           b"BDAT %d\r\n%s" % (len(body2), body2) +
           b"BDAT %d LAST\r\n%s" % (len(body3), body3) + b"NOOP\r\n")
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    assert c.reply() == b"250 2.0.0 %d octets received\r\n" % len(body1)
    assert c.reply() == b"250 2.0.0 %d octets received\r\n" % len(body2)
    m = QUEUED.match(c.reply())
    assert m
    assert code(c.reply()) == b"250 2.0.0"  # the NOOP, after the queued reply
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"
    value = kafka_record(fe, m.group(1))
    assert body1 + body2 + body3 in value


def test_bdat_0_last(fe):
    c = hello(smtp_port(fe))
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    assert bdat(c, b"Subject: z\r\n") == b"250 2.0.0 12 octets received\r\n"
    m = QUEUED.match(c.cmd(b"BDAT 0 LAST"))
    assert m
    assert b"Subject: z\r\n" in kafka_record(fe, m.group(1))
    # An empty message in a single BDAT 0 LAST is a message too.
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    assert QUEUED.match(c.cmd(b"BDAT 0 LAST"))
    c.cmd(b"QUIT")


def test_oversize_across_chunks(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0, max_message_size=4096)
    c = hello(smtp_port(cl))
    chunk = (b"x" * 98 + b"\r\n") * 30  # 3000 octets
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@mailstream.test>\r\n"
           b"BDAT 3000\r\n" + chunk + b"BDAT 3000 LAST\r\n" + chunk + b"NOOP\r\n")
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    assert c.reply() == b"250 2.0.0 3000 octets received\r\n"
    assert code(c.reply()) == b"552 5.3.4"
    assert code(c.reply()) == b"250 2.0.0"  # the chunk was skipped, not read as commands
    # A chunk announced past the limit is refused too, and the session goes on.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@mailstream.test>\r\n"
           b"BDAT 5000 LAST\r\n" + b"y" * 5000 + b"NOOP\r\n")
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    assert code(c.reply()) == b"552 5.3.4"
    assert code(c.reply()) == b"250 2.0.0"
    c.cmd(b"QUIT")


def test_bad_syntax_and_order(fe):
    c = hello(smtp_port(fe))
    # A readable size: 501, the chunk is skipped.
    c.send(b"BDAT 6 FIRST\r\nQUIT\r\nNOOP\r\n")
    assert code(c.reply()) == b"501 5.5.4"
    assert code(c.reply()) == b"250 2.0.0"
    # No MAIL yet: 503, the chunk is skipped.
    c.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert code(c.reply()) == b"503 5.5.1"
    assert code(c.reply()) == b"250 2.0.0"
    # DATA after BDAT, RCPT after BDAT.
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    assert code(bdat(c, b"ab\r\n")) == b"250 2.0.0"
    assert code(c.cmd(b"DATA")) == b"503 5.5.1"
    assert code(c.cmd(b"RCPT TO:<v@mailstream.test>")) == b"503 5.5.1"
    assert code(c.cmd(b"RSET")) == b"250 2.0.0"
    # BDAT after DATA in the same transaction (DATA refused: no recipient).
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@elsewhere.example>")
    assert code(c.cmd(b"DATA")) == b"554 5.5.1"
    assert code(bdat(c, b"ab\r\n", last=True)) == b"503 5.5.1"
    assert code(c.cmd(b"RSET")) == b"250 2.0.0"
    # BINARYMIME needs BDAT.
    c.cmd(b"MAIL FROM:<a@b.example> BODY=BINARYMIME")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    assert code(c.cmd(b"DATA")) == b"503 5.5.1"
    c.cmd(b"RSET")
    # No size at all: the stream can not be framed; 501, then 421 and close.
    c.send(b"BDAT lots\r\n")
    assert code(c.reply()) == b"501 5.5.4"
    assert code(c.reply()) == b"421 4.5.0"
    assert c.closed()


@pytest.mark.parametrize("chunk,why", [
    (b"a\nb\r\n", b"bare LF"),
    (b"a\rb\r\n", b"bare CR"),
    (b"a\x00b\r\n", b"NUL"),
    (b"a\r\n.\nMAIL FROM:<x@y.example>\n", b"bare LF"),
])
def test_text_body_checks_apply(fe, chunk, why):
    """BODY=7BIT/8BITMIME: the DATA checks hold, so nothing a next hop's
    DATA could misread reaches Kafka."""
    c = hello(smtp_port(fe))
    c.cmd(b"MAIL FROM:<a@b.example> BODY=8BITMIME")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    r = bdat(c, chunk, last=True)
    assert code(r) == b"554 5.6.0" and why in r, r
    assert code(c.cmd(b"NOOP")) == b"250 2.0.0"
    c.cmd(b"QUIT")


def test_binarymime_is_carried(fe):
    c = hello(smtp_port(fe))
    c.cmd(b"MAIL FROM:<a@b.example> BODY=BINARYMIME")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    blob = b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\n\r\xff"
    m = QUEUED.match(bdat(c, blob, last=True))
    assert m
    assert blob in kafka_record(fe, m.group(1))
    c.cmd(b"QUIT")
