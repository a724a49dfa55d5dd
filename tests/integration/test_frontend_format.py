"""Message format checks at the end of DATA and BDAT (frontend/fe_header.h).

Each refusal and each fix is tried through DATA and through BDAT (raw byte
dialogues: no stock client speaks BDAT), and with smtplib and swaks through
DATA.  Refusals must carry their enhanced code, be counted in
mailstream_frontend_format_refused_total{rule} and logged with the queue
id; the session goes on after each.  The fields a submission gets (Date,
Message-ID) are read back from the Kafka record with kcat.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess

import pytest

import mslocal
from conftest import smtp_port
from test_frontend_bdat import kafka_record
from test_frontend_metrics import sample
from test_frontend_smtp import QUEUED, Client, code, hello
from test_frontend_tls_auth import client_ctx, plain, starttls

USER = mslocal.DEMO_USER
PASSWORD = mslocal.DEMO_PASSWORD
RULES = "mailstream_frontend_format_refused_total"


@pytest.fixture
def fe(cluster_factory):
    return cluster_factory(frontends=1, workers=0)


@pytest.fixture(params=["data", "bdat"])
def via(request):
    return request.param


def transfer(c: Client, via: str, msg: bytes, mail_from: bytes = b"a@b.example",
             params: bytes = b"", rcpt: bytes = b"u@mailstream.test") -> bytes:
    """One transaction; the final reply.  BDAT cuts the message in two
    chunks inside its first field, so the header parser sees it in pieces."""
    c.send(b"MAIL FROM:<%s>%s\r\nRCPT TO:<%s>\r\n" % (mail_from, params, rcpt))
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    if via == "data":
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(msg + b".\r\n")
        return c.reply()
    a, b = msg[:7], msg[7:]
    c.send(b"BDAT %d\r\n%s" % (len(a), a))
    assert code(c.reply()) == b"250 2.0.0"
    c.send(b"BDAT %d LAST\r\n%s" % (len(b), b))
    return c.reply()


def submission(fe) -> Client:
    t = starttls(hello(smtp_port(fe, "submission")))
    t.cmd(b"EHLO client.example")
    assert code(t.cmd(b"AUTH PLAIN " + plain())) == b"235 2.7.0"
    return t


def refused(fe, rule: str) -> float:
    return sample(fe.frontends[0].metrics_text(), RULES, f'rule="{rule}"')


GOOD = b"From: Joe <joe@b.example>\r\nTo: <u@mailstream.test>\r\nSubject: ok\r\n\r\nbody\r\n"


def test_mx_refusals(fe, via):
    c = hello(smtp_port(fe))
    cases = [
        (b"From: a@b.example\r\nFrom: c@d.example\r\nSubject: x\r\n\r\nhi\r\n",
         b"550 5.6.0", "from_duplicate"),
        (b"From: a@b.example\r\nSubject: x\r\nSubject: y\r\n\r\nhi\r\n",
         b"550 5.6.0", "field_duplicate"),
        (b"From: Joe Doe joe@b.example\r\n\r\nhi\r\n", b"550 5.1.7", "address_syntax"),
        (b"From: a@b.example\r\nReply-To: <x@\r\n\r\nhi\r\n", b"550 5.1.7", "address_syntax"),
        (b"From: a@b.example\r\nnot a field\r\nFrom: c@d.example\r\n\r\nhi\r\n",
         b"554 5.6.0", "header_syntax"),
    ]
    for msg, want, rule in cases:
        before = refused(fe, rule)
        r = transfer(c, via, msg)
        assert code(r) == want, (msg, r)
        assert refused(fe, rule) == before + 1
        if rule == "field_duplicate":
            assert b"Subject" in r
    # The session goes on, and a good message passes.
    m = QUEUED.match(transfer(c, via, GOOD))
    assert m, "good message refused"
    assert GOOD in kafka_record(fe, m.group(1))
    c.cmd(b"QUIT")
    log = fe.frontends[0].log.read_text()
    assert re.search(r"event=rejected qid=[0-9A-Z]{21} sid=\d+ .* rule=from_duplicate", log), log
    assert "rule=field_duplicate field=Subject" in log


def test_mx_defaults_let_through(fe, via):
    """On MX, by default (as Postfix does): no From, 8-bit header without
    SMTPUTF8, 8-bit body without 8BITMIME; nothing is added."""
    c = hello(smtp_port(fe))
    for msg in (b"Subject: no from\r\n\r\nhi\r\n",
                b"From: a@b.example\r\nSubject: caf\xc3\xa9\r\n\r\nhi\r\n",
                b"From: a@b.example\r\nSubject: x\r\n\r\ncaf\xc3\xa9\r\n",
                b"no header at all\r\n"):
        m = QUEUED.match(transfer(c, via, msg))
        assert m, msg
        rec = kafka_record(fe, m.group(1))
        assert re.search(rb"\r\n\tfor <u@mailstream\.test>; [^\r]+\r\n" + re.escape(msg), rec)
        assert b"\r\nDate: " not in rec and b"Message-ID: <" + m.group(1) not in rec
    c.cmd(b"QUIT")


def test_mx_rules_configured(cluster_factory, via):
    fe = cluster_factory(frontends=1, workers=0, frontend_extra={
        "format.mx": {"from_missing": "yes", "eightbit_header": "yes", "eightbit_body": "yes",
                      "from_duplicate": "no"}})
    c = hello(smtp_port(fe))
    assert code(transfer(c, via, b"Subject: no from\r\n\r\nhi\r\n")) == b"550 5.6.0"
    assert code(transfer(c, via, b"From: a@b.example\r\nSubject: caf\xc3\xa9\r\n\r\n")) == \
        b"550 5.6.0"
    assert QUEUED.match(transfer(c, via, b"From: a@b.example\r\nSubject: caf\xc3\xa9\r\n\r\n",
                                 params=b" SMTPUTF8"))
    assert code(transfer(c, via, b"From: a@b.example\r\n\r\ncaf\xc3\xa9\r\n")) == b"550 5.6.0"
    assert QUEUED.match(transfer(c, via, b"From: a@b.example\r\n\r\ncaf\xc3\xa9\r\n",
                                 params=b" BODY=8BITMIME"))
    assert QUEUED.match(transfer(c, via, b"From: a@b.example\r\nFrom: c@d.example\r\n\r\nx\r\n"))
    c.cmd(b"QUIT")
    text = fe.frontends[0].metrics_text()
    assert sample(text, RULES, 'rule="from_missing"') == 1
    assert sample(text, RULES, 'rule="eightbit_header"') == 1
    assert sample(text, RULES, 'rule="eightbit_body"') == 1


def test_header_limits(cluster_factory, via):
    fe = cluster_factory(frontends=1, workers=0, frontend_extra={"smtp": {
        "max_header_size": 2048, "max_header_fields": 20, "max_header_field_length": 1000}})
    c = hello(smtp_port(fe))
    big = b"From: a@b.example\r\n" + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 100)
                                             for i in range(19)) + b"\r\nbody\r\n"
    assert code(transfer(c, via, big)) == b"552 5.3.4"       # 2 KiB and more
    many = b"From: a@b.example\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(20)) + b"\r\n"
    assert code(transfer(c, via, many)) == b"552 5.3.4"      # 21 fields
    long_ = b"From: a@b.example\r\nSubject: " + b"w" * 900 + b"\r\n " + b"w" * 100 + b"\r\n\r\n"
    assert code(transfer(c, via, long_)) == b"552 5.3.4"     # one field, unfolded
    # At the limits: taken whole, nothing cut.
    ok = b"From: a@b.example\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(19)) + b"\r\n"
    m = QUEUED.match(transfer(c, via, ok))
    assert m and ok in kafka_record(fe, m.group(1))
    # A long body is no header.
    m = QUEUED.match(transfer(c, via, b"From: a@b.example\r\n\r\n" + (b"b" * 98 + b"\r\n") * 100))
    assert m
    c.cmd(b"QUIT")
    text = fe.frontends[0].metrics_text()
    for rule in ("header_size", "header_fields", "field_length"):
        assert sample(text, RULES, f'rule="{rule}"') == 1


def test_octets_stay_refused(fe, via):
    c = hello(smtp_port(fe))
    assert code(transfer(c, via, b"From: a@b.example\r\nSubject: a\0b\r\n\r\n")) == b"554 5.6.0"
    assert code(transfer(c, via, b"From: a@b.example\nSubject: x\r\n\r\n")) == b"554 5.6.0"
    c.cmd(b"QUIT")


def test_submission_refusals(fe, via):
    t = submission(fe)
    u = USER.encode()
    assert code(transfer(t, via, b"Subject: no from\r\n\r\nhi\r\n", mail_from=u)) == b"550 5.6.0"
    r = transfer(t, via, b"From: Boss <boss@elsewhere.example>\r\n\r\nhi\r\n", mail_from=u)
    assert code(r) == b"550 5.7.1", r
    # One of several authors not ours is enough.
    r = transfer(t, via, b"From: " + u + b", boss@elsewhere.example\r\nSender: " + u +
                 b"\r\n\r\nhi\r\n", mail_from=u)
    assert code(r) == b"550 5.7.1", r
    assert code(transfer(t, via, b"From: " + u + b"\r\nSubject: caf\xc3\xa9\r\n\r\nhi\r\n",
                         mail_from=u)) == b"550 5.6.0"
    assert code(transfer(t, via, b"From: " + u + b"\r\n\r\ncaf\xc3\xa9\r\n",
                         mail_from=u)) == b"550 5.6.0"
    # Declared: taken.
    assert QUEUED.match(transfer(t, via, b"From: " + u + b"\r\nSubject: caf\xc3\xa9\r\n\r\nhi\r\n",
                                 mail_from=u, params=b" SMTPUTF8"))
    assert QUEUED.match(transfer(t, via, b"From: Demo <" + u + b">\r\n\r\ncaf\xc3\xa9\r\n",
                                 mail_from=u, params=b" BODY=8BITMIME"))
    t.cmd(b"QUIT")
    text = fe.frontends[0].metrics_text()
    assert sample(text, RULES, 'rule="from_missing"') == 1
    assert sample(text, RULES, 'rule="from_owned"') == 2
    assert sample(text, RULES, 'rule="eightbit_header"') == 1
    assert sample(text, RULES, 'rule="eightbit_body"') == 1
    log = fe.frontends[0].log.read_text()
    assert re.search(r"event=rejected qid=[0-9A-Z]{21} sid=\d+ .*rule=from_owned", log), log


def test_submission_fixes(fe, via):
    """RFC 6409 8.2, 8.3: Date and Message-ID added when missing, between our
    Received field and the message, which arrives unchanged."""
    t = submission(fe)
    u = USER.encode()
    msg = b"From: Demo <" + u + b">\r\nTo: <x@elsewhere.example>\r\nSubject: fix\r\n\r\nhi\r\n"
    m = QUEUED.match(transfer(t, via, msg, mail_from=u, rcpt=b"x@elsewhere.example"))
    assert m
    qid = m.group(1)
    rec = kafka_record(fe, qid)
    added = re.search(rb"\r\n\t(?:for <[^>]*>)?; [^\r]+\r\n"
                      rb"Date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000\r\n"
                      rb"Message-ID: <" + qid + rb"@localhost>\r\n" + re.escape(msg), rec)
    assert added, rec[:800]
    assert rec.count(b"Received: ") == 1
    # Present already: nothing added.
    have = (b"From: " + u + b"\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <mine@mailstream.test>\r\n\r\nhi\r\n")
    m = QUEUED.match(transfer(t, via, have, mail_from=u))
    rec = kafka_record(fe, m.group(1))
    assert re.search(rb"\r\n\t(?:for <[^>]*>)?; [^\r]+\r\n" + re.escape(have), rec), rec[:800]
    # Only the one missing.
    only = b"From: " + u + b"\r\nMessage-ID: <mine2@mailstream.test>\r\n\r\nhi\r\n"
    m = QUEUED.match(transfer(t, via, only, mail_from=u))
    rec = kafka_record(fe, m.group(1))
    assert re.search(rb"\r\nDate: [^\r]+\r\n" + re.escape(only), rec), rec[:800]
    assert b"Message-ID: <" + m.group(1) not in rec
    t.cmd(b"QUIT")


def test_submission_rules_configured(cluster_factory):
    fe = cluster_factory(frontends=1, workers=0, frontend_extra={"format.submission": {
        "from_owned": "no", "add_date": "no", "add_message_id": "no", "from_missing": "no"}})
    t = submission(fe)
    u = USER.encode()
    m = QUEUED.match(transfer(t, "data", b"From: boss@elsewhere.example\r\n\r\nhi\r\n",
                              mail_from=u))
    assert m
    rec = kafka_record(fe, m.group(1))
    assert b"\r\nDate: " not in rec and b"Message-ID:" not in rec
    assert QUEUED.match(transfer(t, "bdat", b"Subject: none\r\n\r\nhi\r\n", mail_from=u))
    t.cmd(b"QUIT")


def test_smtplib(fe):
    """A stock client through DATA: refusals arrive as SMTPDataError with
    their codes; a good submission gets its fields."""
    port = smtp_port(fe, "submission")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.starttls(context=client_ctx())
        s.login(USER, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(USER, ["x@elsewhere.example"], b"Subject: no from\r\n\r\nhi\r\n")
        assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.6.0")
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(USER, ["x@elsewhere.example"],
                       b"From: boss@elsewhere.example\r\n\r\nhi\r\n")
        assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.7.1")
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(USER, ["x@elsewhere.example"],
                       b"From: " + USER.encode() + b"\r\nFrom: " + USER.encode() + b"\r\n\r\n")
        assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.6.0")
        assert s.sendmail(USER, ["x@elsewhere.example"],
                          b"From: " + USER.encode() + b"\r\nSubject: smtplib\r\n\r\nhi\r\n") == {}
    with smtplib.SMTP("127.0.0.1", smtp_port(fe), timeout=60) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@b.example", ["u@mailstream.test"],
                       b"From: a@b.example\r\nFrom: c@d.example\r\n\r\nhi\r\n")
        assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.6.0")
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@b.example", ["u@mailstream.test"], b"From: <a@b.example\r\n\r\nhi\r\n")
        assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.1.7")
        assert s.sendmail("a@b.example", ["u@mailstream.test"], b"Subject: mx\r\n\r\nhi\r\n") == {}


def swaks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["swaks", "--helo", "client.example", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks(fe):
    mx = f"127.0.0.1:{smtp_port(fe)}"
    r = swaks("--server", mx, "--from", "a@b.example", "--to", "u@mailstream.test",
              "--data", "From: a@b.example\nFrom: c@d.example\nSubject: two\n\nhi\n")
    assert r.returncode != 0 and re.search(r"<[~*]\*? +550 5\.6\.0 .*From", r.stdout), r.stdout
    r = swaks("--server", mx, "--from", "a@b.example", "--to", "u@mailstream.test",
              "--data", "From: a@b.example\nSubject: one\nSubject: two\n\nhi\n")
    assert re.search(r"<[~*]\*? +550 5\.6\.0 .*Subject", r.stdout), r.stdout
    sub = f"127.0.0.1:{smtp_port(fe, 'submission')}"
    auth = ["--server", sub, "--tls", "--auth", "PLAIN", "--auth-user", USER,
            "--auth-password", PASSWORD, "--from", USER, "--to", "x@elsewhere.example"]
    r = swaks(*auth, "--data", "From: boss@elsewhere.example\nSubject: not mine\n\nhi\n")
    assert re.search(r"<[~*]\*? +550 5\.7\.1 ", r.stdout), r.stdout
    r = swaks(*auth, "--data", "Subject: no from\n\nhi\n")
    assert re.search(r"<[~*]\*? +550 5\.6\.0 ", r.stdout), r.stdout
    # Without Date and Message-ID: queued, and they are in the record.
    r = swaks(*auth, "--data", f"From: {USER}\nSubject: swaks fix\n\nhi\n")
    m = re.search(r"<~  250 2\.0\.0 Ok: queued as ([0-9A-Z]{21})", r.stdout)
    assert m, r.stdout
    rec = kafka_record(fe, m.group(1).encode())
    assert re.search(rb"\r\nDate: [^\r]+\r\nMessage-ID: <" + m.group(1).encode() +
                     rb"@localhost>\r\nFrom: " + USER.encode(), rec), rec[:800]
