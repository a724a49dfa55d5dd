"""The first end-to-end path: swaks / smtplib -> frontend -> Kafka -> worker -> sink.

Issue 2's "done when": the body arrives byte-identical (plus our Received
header carrying the queue id), Kafka down means 451 and recovery after it is
back, a worker killed with SIGKILL mid-stream loses nothing, and the
operations endpoints answer and count messages.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import kill_worker, smtp_port

QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-Z]{21})", re.M)


def smtp_dialogue(port: int, lines: list[bytes], data: bytes | None = None) -> list[bytes]:
    """Send commands one by one (and raw DATA content), return every reply."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    f = s.makefile("rb")

    def reply() -> bytes:
        out = b""
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError(f"closed after {out!r}")
            out += line
            if line[3:4] == b" ":
                return out

    replies = [reply()]
    for ln in lines:
        s.sendall(ln + b"\r\n")
        replies.append(reply())
        if ln == b"DATA" and data is not None and replies[-1].startswith(b"354"):
            s.sendall(data)
            replies.append(reply())
    s.sendall(b"QUIT\r\n")
    try:
        replies.append(reply())
    except ConnectionError:
        pass
    s.close()
    return replies


def dot_stuff(msg: bytes) -> bytes:
    out = b"".join((b"." + ln if ln.startswith(b".") else ln) for ln in msg.splitlines(True))
    return out + b".\r\n"


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """Our Received header (with its continuation lines) and the rest."""
    assert data.startswith(b"Received: "), data[:200]
    lines = data.split(b"\r\n")
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\r\n".join(lines[:i]) + b"\r\n", b"\r\n".join(lines[i:])


TRICKY = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: user@mailstream.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= tracer\r\n"
    b"Message-ID: <tracer-1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b".\tdot and tab\r\n"
    b"trailing space   \r\n"
    b"\r\n"
    b"\r\n"
    + "8-bit: café, Grüße, 日本語\r\n".encode()
    + b"x" * 998 + b"\r\n"
    b"last line\r\n"
)


def test_delivery_byte_identical(cluster):
    port = smtp_port(cluster)
    replies = smtp_dialogue(port, [b"EHLO client.example.org",
                                   b"MAIL FROM:<sender@example.org> BODY=8BITMIME",
                                   b"RCPT TO:<user@mailstream.test>",
                                   b"DATA"], dot_stuff(TRICKY))
    assert replies[0].startswith(b"220 ")
    m = QUEUED.search(replies[5])
    assert m, replies
    qid = m.group(1).decode()
    [msg] = cluster.sink.wait_for(1, timeout=60)
    received, rest = split_received(msg.data)
    assert rest == TRICKY
    assert qid in received.decode()
    assert msg.envelope["mail_from"] == "sender@example.org"
    assert msg.envelope["rcpts"] == ["user@mailstream.test"]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (make deps)")
def test_swaks_delivery(cluster):
    port = smtp_port(cluster)
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "a@example.org",
                        "--to", "user@mailstream.test", "--header", "Subject: swaks tracer",
                        "--body", "hello from swaks"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    qid = re.search(r"<[-~]  250 2\.0\.0 Ok: queued as ([0-9A-Z]{21})", r.stdout).group(1)
    [msg] = cluster.sink.wait_for(1, timeout=60)
    assert b"Subject: swaks tracer" in msg.data
    assert b"hello from swaks" in msg.data
    assert qid.encode() in split_received(msg.data)[0]


def send_one(port: int, n: int, rcpt: str = "user@mailstream.test") -> None:
    body = (f"From: a@example.org\r\nTo: {rcpt}\r\nMessage-ID: <m{n}@example.org>\r\n"
            f"Subject: message {n}\r\n\r\nbody {n}\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail("a@example.org", [rcpt], body)


def message_ids(msgs) -> list[str]:
    out = []
    for m in msgs:
        hit = re.search(rb"^Message-ID: <([^>]+)>", m.data, re.M)
        if hit:
            out.append(hit.group(1).decode())
    return out


def test_kafka_down_gives_451_then_recovers(cluster, kafka_control):
    port = smtp_port(cluster)
    send_one(port, 0)
    cluster.sink.wait_for(1, timeout=60)

    kafka_control.stop()
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            send_one(port, 1)
        assert e.value.smtp_code == 451
        assert e.value.smtp_error.startswith(b"4.3.0")
    finally:
        kafka_control.start()

    # Once the broker is back, mail is accepted and delivered again.
    deadline = time.monotonic() + 90
    while True:
        try:
            send_one(port, 2)
            break
        except smtplib.SMTPDataError as err:
            assert err.smtp_code == 451
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    msgs = cluster.sink.wait_for(2, timeout=90)
    ids = message_ids(msgs)
    assert "m2@example.org" in ids
    assert "m1@example.org" not in ids  # refused with 451: the client keeps it


def test_worker_sigkill_loses_nothing(cluster_factory):
    total = 300
    cl = cluster_factory(frontends=1, workers=2)
    port = smtp_port(cl)
    sent: list[int] = []
    errors: list[BaseException] = []

    def sender():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                for n in range(total):
                    s.sendmail("a@example.org", ["user@mailstream.test"],
                               f"Message-ID: <k{n}@example.org>\r\nSubject: {n}\r\n\r\n{n}\r\n")
                    sent.append(n)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=sender)
    t.start()
    cl.sink.wait_for(40, timeout=120)
    kill_worker(cl, 0)
    assert not cl.workers[0].alive()
    t.join(timeout=300)
    assert not errors, errors
    assert len(sent) == total
    msgs = cl.sink.wait_for(total, timeout=180)
    deadline = time.monotonic() + 180
    while True:
        ids = set(message_ids(cl.sink.messages()))
        want = {f"k{n}@example.org" for n in range(total)}
        if want <= ids or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert want - ids == set(), f"lost {len(want - ids)} of {total}"
    assert len(msgs) >= total


def metric_samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out


def test_operations_endpoints_count_messages(cluster):
    fe, wk = cluster.frontends[0], cluster.workers[0]
    for node in (fe, wk):
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(node.url(path), timeout=5) as r:
                assert r.status == 200
        with urllib.request.urlopen(node.url("/metrics"), timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            assert b"# TYPE " in r.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(fe.url("/nope"), timeout=5)
    assert e.value.code == 404

    for n in range(3):
        send_one(smtp_port(cluster), n)
    cluster.sink.wait_for(3, timeout=60)
    time.sleep(0.5)  # the worker counts right after the remote 250

    queued = metric_samples(fe.metrics_text(), "mailstream_smtp_messages_total")
    assert sum(v for k, v in queued.items() if 'result="queued"' in k) == 3, queued
    delivered = metric_samples(wk.metrics_text(), "mailstream_worker_deliveries_total")
    assert sum(v for k, v in delivered.items() if 'outcome="delivered"' in k) == 3, delivered


def test_maximum_size_message_end_to_end(cluster):
    """A message of exactly the advertised SIZE goes through the frontend,
    Kafka (record limits set consistently) and the worker to the sink."""
    port = smtp_port(cluster)
    size = cluster.spec.max_message_size
    head = (b"From: a@example.org\r\nTo: user@mailstream.test\r\n"
            b"Message-ID: <max-size@example.org>\r\nSubject: max size\r\n\r\n")
    line = b"0123456789" * 9 + b"abcdefgh\r\n"           # 100 octets
    body = line * ((size - len(head)) // len(line))
    msg = head + body + b"x" * (size - len(head) - len(body) - 2) + b"\r\n"
    assert len(msg) == size
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.ehlo()
        assert s.has_extn("size") and int(s.esmtp_features["size"]) == size
        s.sendmail("a@example.org", ["user@mailstream.test"], msg)  # smtplib sends SIZE=
    [got] = cluster.sink.wait_for(1, timeout=180)
    assert split_received(got.data)[1] == msg

    # One octet more is refused with 552 5.3.4, never truncated.
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        with pytest.raises(smtplib.SMTPException) as e:
            s.sendmail("a@example.org", ["user@mailstream.test"], msg + b"y")
        assert b"5.3.4" in str(e.value).encode() or "552" in str(e.value)
