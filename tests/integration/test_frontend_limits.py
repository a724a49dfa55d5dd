"""Rate limits in Redis, the suppression list at RCPT, and the named local
limits, against the real Redis from conftest.py.

Each cluster has its own bucket prefix ([ratelimit] key_prefix, set by
mslocal per topic), so tests never share buckets.  Limits are set with long
periods (1h) so that no refill happens during a test: nothing depends on
timing.
"""

from __future__ import annotations

import re
import uuid

import pytest

import mslocal
from conftest import smtp_port
from test_frontend_smtp import Client, code, hello
from test_frontend_tls_auth import PASSWORD, USER, plain, starttls


def limited(cluster_factory, ratelimit=None, smtp=None, redis_port=None, **kw):
    extra = {"ratelimit": dict(ratelimit or {}), "smtp": dict(smtp or {})}
    if redis_port is not None:
        extra["redis"] = {"port": redis_port}
    return cluster_factory(frontends=1, workers=0, frontend_extra=extra, **kw)


def metric(node, name: str, labels: str = "") -> int:
    pat = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\d+)$"
    m = re.search("^" + pat, node.metrics_text(), re.M)
    return int(m.group(1)) if m else 0


def test_connections_per_ip(cluster_factory):
    cl = limited(cluster_factory, ratelimit={"connections_per_ip": "3/1h"})
    port = smtp_port(cl)
    for _ in range(3):
        c = Client(port)
        assert c.reply().startswith(b"220 ")
        c.cmd(b"QUIT")
    c = Client(port)
    assert code(c.reply()) == b"421 4.7.0"
    assert c.closed()
    assert metric(cl.frontends[0], "mailstream_smtp_limit_hits_total",
                  'limit="connections_per_ip"') == 1


def test_messages_per_domain_and_recipients(cluster_factory):
    cl = limited(cluster_factory, ratelimit={"messages_per_domain": "2/1h",
                                             "recipients_per_client": "3/1h"})
    c = hello(smtp_port(cl))
    for _ in range(2):
        assert code(c.cmd(b"MAIL FROM:<a@Sender.example>")) == b"250 2.1.0"
        assert code(c.cmd(b"RSET")) == b"250 2.0.0"
    # The domain is compared without case: a third message is over.
    r = c.cmd(b"MAIL FROM:<b@sender.EXAMPLE>")
    assert code(r) == b"451 4.7.1" and b"messages_per_domain" in r
    # Another domain has its own bucket; recipients have theirs.
    assert code(c.cmd(b"MAIL FROM:<a@other.example>")) == b"250 2.1.0"
    for i in range(3):
        assert code(c.cmd(b"RCPT TO:<u%d@mailstream.test>" % i)) == b"250 2.1.5"
    assert code(c.cmd(b"RCPT TO:<u9@mailstream.test>")) == b"451 4.7.1"
    # Pipelined: replies stay in order across the waits for Redis.
    c.send(b"RSET\r\nMAIL FROM:<x@third.example>\r\nRCPT TO:<v@mailstream.test>\r\nNOOP\r\n")
    assert [code(c.reply()) for _ in range(4)] == [b"250 2.0.0", b"250 2.1.0", b"451 4.7.1",
                                                   b"250 2.0.0"]
    c.cmd(b"QUIT")


def test_messages_per_user(cluster_factory):
    cl = limited(cluster_factory, ratelimit={"messages_per_user": "1/1h"})
    c = hello(smtp_port(cl))
    c = starttls(c)
    c.cmd(b"EHLO client.example")
    assert code(c.cmd(b"AUTH PLAIN " + plain())) == b"235 2.7.0"
    assert code(c.cmd(b"MAIL FROM:<" + USER.encode() + b">")) == b"250 2.1.0"
    c.cmd(b"RSET")
    r = c.cmd(b"MAIL FROM:<" + USER.encode() + b">")
    assert code(r) == b"451 4.7.1" and b"messages_per_user" in r


def test_auth_failures_per_ip(cluster_factory):
    cl = limited(cluster_factory, ratelimit={"auth_failures_per_ip": "2/1h"})
    c = starttls(hello(smtp_port(cl)))
    c.cmd(b"EHLO client.example")
    for _ in range(2):
        assert code(c.cmd(b"AUTH PLAIN " + plain(password="wrong"))) == b"535 5.7.8"
    # Over the limit, even the right password is not checked.
    assert code(c.cmd(b"AUTH PLAIN " + plain())) == b"454 4.7.0"
    c.cmd(b"QUIT")
    assert metric(cl.frontends[0], "mailstream_smtp_limit_hits_total",
                  'limit="auth_failures_per_ip"') == 1


def test_auth_failures_per_user(cluster_factory):
    cl = limited(cluster_factory, ratelimit={"auth_failures_per_ip": "0",
                                             "auth_failures_per_user": "1/1h"})
    c = starttls(hello(smtp_port(cl)))
    c.cmd(b"EHLO client.example")
    assert code(c.cmd(b"AUTH PLAIN " + plain(password="wrong"))) == b"535 5.7.8"
    assert code(c.cmd(b"AUTH PLAIN " + plain())) == b"454 4.7.0"
    # Another user is not locked out by the first one's failures.
    assert code(c.cmd(b"AUTH PLAIN " + plain(user="nobody@mailstream.test"))) == b"535 5.7.8"


def test_suppressed_recipient_refused(cluster_factory):
    cl = limited(cluster_factory, smtp={"refuse_suppressed": "yes"})
    gone = f"gone-{uuid.uuid4().hex[:8]}@mailstream.test"
    # The worker's key: ms:suppress:<lower-cased address> (worker/delivery.c).
    mslocal.redis_command(cl.redis.port, "SET", f"ms:suppress:{gone}", "5.1.1 550 gone",
                          "EX", "600")
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    r = c.cmd(b"RCPT TO:<" + gone.upper().encode() + b">")
    assert code(r) == b"550 5.1.1", r
    assert code(c.cmd(b"RCPT TO:<fine@mailstream.test>")) == b"250 2.1.5"
    c.cmd(b"QUIT")
    assert metric(cl.frontends[0], "mailstream_smtp_suppressed_recipients_total") == 1


def test_suppression_off_by_default(cluster_factory):
    cl = limited(cluster_factory)
    gone = f"gone-{uuid.uuid4().hex[:8]}@mailstream.test"
    mslocal.redis_command(cl.redis.port, "SET", f"ms:suppress:{gone}", "x", "EX", "600")
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    assert code(c.cmd(b"RCPT TO:<" + gone.encode() + b">")) == b"250 2.1.5"


def test_script_reloaded_after_flush(cluster_factory):
    """Redis forgot the script (SCRIPT FLUSH): the frontend's Redis client
    loads it again and resends the check, so the limit still counts."""
    cl = limited(cluster_factory, ratelimit={"recipients_per_client": "3/1h"})
    c = hello(smtp_port(cl))
    c.cmd(b"MAIL FROM:<a@b.example>")
    assert code(c.cmd(b"RCPT TO:<a@mailstream.test>")) == b"250 2.1.5"
    assert code(c.cmd(b"RCPT TO:<b@mailstream.test>")) == b"250 2.1.5"
    assert mslocal.redis_command(cl.redis.port, "SCRIPT", "FLUSH").startswith(b"+OK")
    assert code(c.cmd(b"RCPT TO:<c@mailstream.test>")) == b"250 2.1.5"
    assert code(c.cmd(b"RCPT TO:<d@mailstream.test>")) == b"451 4.7.1"
    assert metric(cl.frontends[0], "mailstream_smtp_ratelimit_redis_failures_total",
                  'action="allowed"') == 0


def test_redis_down_fails_open(cluster_factory):
    dead = mslocal.free_port()
    cl = limited(cluster_factory, ratelimit={"connections_per_ip": "1/1h",
                                             "recipients_per_client": "1/1h"},
                 smtp={"refuse_suppressed": "yes"}, redis_port=dead)
    for _ in range(2):
        c = hello(smtp_port(cl))
        c.cmd(b"MAIL FROM:<a@b.example>")
        assert code(c.cmd(b"RCPT TO:<a@mailstream.test>")) == b"250 2.1.5"
        assert code(c.cmd(b"RCPT TO:<b@mailstream.test>")) == b"250 2.1.5"
        c.cmd(b"QUIT")
    assert metric(cl.frontends[0], "mailstream_smtp_ratelimit_redis_failures_total",
                  'action="allowed"') >= 6


def test_redis_down_fails_closed(cluster_factory):
    dead = mslocal.free_port()
    cl = limited(cluster_factory, ratelimit={"connections_per_ip": "5/1h",
                                             "redis_failure": "closed"},
                 redis_port=dead, start=False)
    node = cl.add_frontend(wait=False)
    mslocal.wait_until(lambda: mslocal.port_open(*cl.listener("mx")), 30, "frontend port",
                       node.alive, log_path=node.log)
    assert not node.ready()  # Redis is needed to take mail, and it is down
    c = Client(smtp_port(cl))
    assert code(c.reply()) == b"421 4.3.0"
    assert c.closed()


def test_connection_limits(cluster_factory):
    cl = limited(cluster_factory, smtp={"max_connections_per_ip": 2, "max_commands": 12})
    port = smtp_port(cl)
    a, b = hello(port), hello(port)
    c = Client(port)
    assert code(c.reply()) == b"421 4.7.0"
    assert c.closed()
    b.cmd(b"QUIT")
    b.close()
    # A slot is free again (the close is seen by the server at some point).
    mslocal.wait_until(lambda: _banner(port), 30, "a free connection slot")
    # max_commands: the 13th command of a session ends it.
    for _ in range(11):  # EHLO was the first
        assert code(a.cmd(b"NOOP")) == b"250 2.0.0"
    assert code(a.cmd(b"NOOP")) == b"421 4.7.0"
    assert a.closed()
    text = cl.frontends[0].metrics_text()
    assert 'mailstream_smtp_limit_hits_total{limit="max_connections_per_ip"}' in text
    assert re.search(r'^mailstream_smtp_limit_hits_total\{limit="max_commands"\} 1$', text, re.M)


def _banner(port: int) -> bool:
    c = Client(port)
    try:
        return c.reply().startswith(b"220 ")
    finally:
        c.close()
