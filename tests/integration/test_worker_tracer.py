"""The tracer path end to end: SMTP client -> frontend -> Kafka -> worker ->
destination, with the queue id from the frontend's 250 reply followed into
the worker's log line and `events` record (STYLE.md 8: ids that travel).

Needs both binaries; skipped when the frontend is not built.
"""

from __future__ import annotations

import os
import re
import smtplib

import pytest

import mslocal
from conftest import smtp_port
from test_worker_delivery import KCAT, FakeSMTP, wait_events

pytestmark = [
    pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`"),
    pytest.mark.skipif(not os.access(mslocal.build_dir() / "mailstream-frontend", os.X_OK),
                       reason="mailstream-frontend not built"),
]

QUEUED = re.compile(r"queued as ([0-9A-Z]{21})")


def send(port: int, rcpts, body: bytes) -> str:
    with smtplib.SMTP(mslocal.HOST, port, timeout=60) as s:
        s.ehlo("client.example")
        s.mail("sender@example.org")
        for r in rcpts:
            code, _ = s.rcpt(r)
            assert code == 250, (r, code)
        code, reply = s.data(body)
        assert code == 250, reply
        m = QUEUED.search(reply.decode())
        assert m, reply
        return m.group(1)


def test_worker_tracer_frontend_to_sink(cluster_factory):
    cl = cluster_factory(frontends=1, workers=1)
    body = (b"From: sender@example.org\r\nTo: a@mailstream.test\r\nSubject: tracer\r\n\r\n"
            b"line one\r\n.dot line\r\n")
    qid = send(smtp_port(cl), ["a@mailstream.test", "b@mailstream.test"], body)
    msgs = cl.sink.wait_for(1, timeout=60)
    assert sorted(msgs[0].envelope["rcpts"]) == ["a@mailstream.test", "b@mailstream.test"]
    assert msgs[0].data.endswith(b"line one\r\n.dot line\r\n")  # dot-stuffing round trip
    evs = wait_events(cl, lambda e: sum(x.get("qid") == qid and x.get("outcome") == "delivered"
                                        for x in e) >= 2)
    assert {e["rcpt"] for e in evs if e.get("qid") == qid} == {"a@mailstream.test",
                                                               "b@mailstream.test"}
    log = cl.workers[0].log.read_text()
    assert f"event=delivery qid={qid} " in log


def test_worker_tracer_retry_and_bounce_through_frontend(cluster_factory):
    srv = FakeSMTP(rcpt_reply=lambda r, n: "550 5.1.1 No such user" if r.startswith("gone")
                   else "451 4.7.1 Greylisted" if n == 1 else "250 2.1.5 Ok")
    try:
        cl = cluster_factory(frontends=1, workers=1, worker_extra={
            "delivery": {"relay_host": srv.address, "retry_min_ms": 200, "retry_max_ms": 1000}})
        qid = send(smtp_port(cl), ["gone@mailstream.test", "grey@mailstream.test"],
                   b"Subject: t\r\n\r\nx\r\n")
        evs = wait_events(cl, lambda e: any(x.get("qid") == qid and x.get("outcome") ==
                                            "delivered" for x in e))
        mine = sorted((e["rcpt"], e["attempt"], e["outcome"]) for e in evs
                      if e.get("qid") == qid)
        assert mine == [("gone@mailstream.test", 1, "bounced"),
                        ("grey@mailstream.test", 1, "deferred"),
                        ("grey@mailstream.test", 2, "delivered")]
        assert [d[1] for d in srv.delivered] == [["grey@mailstream.test"]]
    finally:
        srv.close()
