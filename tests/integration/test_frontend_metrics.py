"""The frontend's /metrics after a few dialogues: every family the issue
names moves (connections by listener and TLS, transactions, replies by code
class, AUTH results, rate-limit hits, bytes, message sizes, the end of
DATA -> 250 latency, Kafka errors).  Counts, never timings.
"""

from __future__ import annotations

import re
import socket
import uuid

from conftest import smtp_port
from test_frontend_smtp import QUEUED, Client, code, hello
from test_frontend_tls_auth import client_ctx, plain, starttls


def sample(text: str, name: str, labels: str = "") -> float:
    pat = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    m = re.search("^" + pat, text, re.M)
    assert m, f"{name}{{{labels}}} missing"
    return float(m.group(1))


def test_metrics_move_after_dialogues(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0,
                         frontend_extra={"ratelimit": {
                             "connections_per_ip": "3/1h",
                             "key_prefix": f"ms:rl:{uuid.uuid4().hex}:"}})
    node = cl.frontends[0]
    # Plain MX: one queued message by DATA, one by BDAT, one rejected.
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    c.cmd(b"DATA")
    c.send(b"Subject: m\r\n\r\n" + (b"x" * 98 + b"\r\n") * 50 + b".\r\n")
    assert QUEUED.match(c.reply())
    c.cmd(b"MAIL FROM:<a@b.example>")
    c.cmd(b"RCPT TO:<u@mailstream.test>")
    c.send(b"BDAT 4 LAST\r\nhi\r\n")
    assert QUEUED.match(c.reply())
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test>")) == b"503 5.5.1"
    c.cmd(b"QUIT")
    # Submission with STARTTLS: one failed AUTH, one good one.
    c = hello(smtp_port(cl, "submission"))
    t = starttls(c)
    t.cmd(b"EHLO client.example")
    assert code(t.cmd(b"AUTH PLAIN " + plain(password="wrong"))) == b"535 5.7.8"
    assert code(t.cmd(b"AUTH PLAIN " + plain())) == b"235 2.7.0"
    t.cmd(b"QUIT")
    # Implicit TLS.
    tls = client_ctx().wrap_socket(
        socket.create_connection(cl.listener("submissions"), timeout=60),
        server_hostname="localhost")
    s = Client(0, sock=tls)
    assert s.reply().startswith(b"220 ")
    s.cmd(b"QUIT")
    # The fourth connection from 127.0.0.1 within the hour is over the limit.
    x = Client(smtp_port(cl))
    assert code(x.reply()) == b"421 4.7.0"

    text = node.metrics_text()
    assert sample(text, "mailstream_smtp_connections_total", 'listener="mx",tls="no"') == 2
    assert sample(text, "mailstream_smtp_connections_total",
                  'listener="submission",tls="no"') == 1
    assert sample(text, "mailstream_smtp_connections_total",
                  'listener="submissions",tls="yes"') == 1
    assert sample(text, "mailstream_smtp_starttls_total", 'listener="submission"') == 1
    assert sample(text, "mailstream_smtp_transactions_total") == 2
    assert sample(text, "mailstream_smtp_messages_total", 'result="queued"') == 2
    assert sample(text, "mailstream_smtp_replies_total", 'class="2xx"') >= 10
    assert sample(text, "mailstream_smtp_replies_total", 'class="3xx"') == 1  # 354
    assert sample(text, "mailstream_smtp_replies_total", 'class="4xx"') == 1  # 421
    assert sample(text, "mailstream_smtp_replies_total", 'class="5xx"') == 2  # 503, 535
    assert sample(text, "mailstream_smtp_auth_total", 'result="ok"') == 1
    assert sample(text, "mailstream_smtp_auth_total", 'result="failed"') == 1
    assert sample(text, "mailstream_smtp_limit_hits_total", 'limit="connections_per_ip"') == 1
    assert sample(text, "mailstream_smtp_received_bytes_total") > 5000
    assert sample(text, "mailstream_smtp_sent_bytes_total") > 0
    assert sample(text, "mailstream_smtp_message_size_bytes_count") == 2
    assert sample(text, "mailstream_smtp_message_size_bytes_bucket", 'le="1024"') == 1
    assert sample(text, "mailstream_smtp_message_size_bytes_bucket", 'le="16384"') == 2
    assert sample(text, "mailstream_smtp_queue_latency_seconds_count") == 2
    assert sample(text, "mailstream_smtp_kafka_errors_total", 'stage="produce"') == 0
    assert sample(text, "mailstream_smtp_kafka_errors_total", 'stage="report"') == 0
