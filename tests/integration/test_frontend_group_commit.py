"""Group commit (frontend/fe_commit.h) against a real broker: a record waits
for a session that is in the middle of its transaction, at most [kafka]
linger_ms; a lone record leaves at once; with group_commit = no nothing is
held.  What is asserted is why each batch left (the frontend's counters),
never how long it took.
"""
from __future__ import annotations

from conftest import smtp_port
from test_frontend_metrics import sample
from test_frontend_smtp import QUEUED, code, hello

BODY = b"Subject: gc\r\n\r\nhello\r\n"


def send_one(c) -> None:
    assert code(c.cmd(b"MAIL FROM:<a@example.org>")) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
    assert c.cmd(b"DATA").startswith(b"354 ")
    c.send(BODY + b".\r\n")
    assert QUEUED.match(c.reply())


def commits(node, reason: str) -> float:
    return sample(node.metrics_text(), "mailstream_smtp_group_commits_total",
                  f'reason="{reason}"')


def test_record_waits_for_a_session_in_its_transaction(cluster_factory):
    # One loop, so both sessions share one group commit; A's signs of life
    # count for a second, B's record may wait 300 ms.
    cl = cluster_factory(frontends=1, workers=0, frontend_extra={
        "node": {"threads": "1"},
        "kafka": {"linger_ms": "300", "group_commit_window_us": "1000000"}})
    node = cl.frontends[0]
    port = smtp_port(cl)

    a = hello(port)
    assert code(a.cmd(b"MAIL FROM:<a@example.org>")) == b"250 2.1.0"
    b = hello(port)
    assert code(b.cmd(b"MAIL FROM:<b@example.org>")) == b"250 2.1.0"
    assert code(b.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
    assert b.cmd(b"DATA").startswith(b"354 ")
    b.send(BODY)
    # A is in its transaction and has just been heard from ...
    assert code(a.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
    # ... so B's record is held for it, until linger_ms.
    b.send(b".\r\n")
    assert QUEUED.match(b.reply())
    assert commits(node, "linger") == 1
    assert commits(node, "ready") == 0

    # B's 250 makes it a member again (its client may send MAIL next); it
    # leaves.  A's record then has nobody to wait for: it leaves at once.
    assert code(b.cmd(b"QUIT")) == b"221 2.0.0"
    assert a.cmd(b"DATA").startswith(b"354 ")
    a.send(BODY + b".\r\n")
    assert QUEUED.match(a.reply())
    text = node.metrics_text()
    assert sample(text, "mailstream_smtp_group_commits_total", 'reason="ready"') == 1
    assert sample(text, "mailstream_smtp_group_commits_total", 'reason="linger"') == 1
    assert sample(text, "mailstream_smtp_group_commit_records_total") == 2
    assert sample(text, "mailstream_smtp_messages_total", 'result="queued"') == 2
    a.cmd(b"QUIT")


def test_lone_sender_is_never_held(cluster_factory):
    # A long linger_ms changes nothing for one session sending in turn.
    cl = cluster_factory(frontends=1, workers=0, frontend_extra={
        "kafka": {"linger_ms": "1000"}})
    node = cl.frontends[0]
    c = hello(smtp_port(cl))
    for _ in range(5):
        send_one(c)
    text = node.metrics_text()
    assert sample(text, "mailstream_smtp_group_commits_total", 'reason="ready"') == 5
    assert sample(text, "mailstream_smtp_group_commits_total", 'reason="linger"') == 0
    assert sample(text, "mailstream_smtp_group_commit_records_total") == 5
    c.cmd(b"QUIT")


def test_group_commit_off(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0, frontend_extra={
        "kafka": {"group_commit": "no"}})
    node = cl.frontends[0]
    c = hello(smtp_port(cl))
    send_one(c)
    assert sample(node.metrics_text(), "mailstream_smtp_group_commit_records_total") == 0
    c.cmd(b"QUIT")
