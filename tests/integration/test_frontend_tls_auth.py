"""STARTTLS (RFC 3207), implicit TLS and AUTH (RFC 4954) on the frontend.

Raw dialogues and Python's ssl / smtplib against a running frontend; swaks
for a third-party client.  The cluster fixture provides a self-signed
certificate and the demo account (mslocal.DEMO_USER / DEMO_PASSWORD, allowed
senders: the mailstream.test domain).
"""

from __future__ import annotations

import base64
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

import mslocal
from conftest import smtp_port
from test_frontend_smtp import QUEUED, Client, code, hello

USER = mslocal.DEMO_USER
PASSWORD = mslocal.DEMO_PASSWORD


def client_ctx(**kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def plain(user: str = USER, password: str = PASSWORD) -> bytes:
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())


def starttls(c: Client, ctx: ssl.SSLContext | None = None) -> Client:
    assert code(c.cmd(b"STARTTLS")) == b"220 2.0.0"
    assert c.buf == b""
    tls = (ctx or client_ctx()).wrap_socket(c.s, server_hostname="localhost")
    return Client(0, sock=tls)


@pytest.fixture
def fe(cluster_factory):
    return cluster_factory(frontends=1, workers=0)


def test_starttls_then_ehlo(fe):
    c = hello(smtp_port(fe))
    t = starttls(c)
    assert t.s.version() in ("TLSv1.2", "TLSv1.3")
    r = t.cmd(b"EHLO client.example")
    assert b"250-AUTH PLAIN LOGIN\r\n" in r
    assert b"STARTTLS" not in r
    assert code(t.cmd(b"STARTTLS")) == b"503 5.5.1"
    assert code(t.cmd(b"QUIT")) == b"221 2.0.0"


def test_starttls_needs_ehlo_and_no_transaction(fe):
    c = Client(smtp_port(fe))
    c.reply()
    assert code(c.cmd(b"STARTTLS")) == b"503 5.5.1"
    c.cmd(b"EHLO client.example")
    assert code(c.cmd(b"STARTTLS now")) == b"501 5.5.4"
    c.cmd(b"MAIL FROM:<a@b.example>")
    assert code(c.cmd(b"STARTTLS")) == b"503 5.5.1"
    c.cmd(b"QUIT")


def test_starttls_forgets_pipelined_plaintext(fe):
    """CVE-2011-0411: commands sent in the clear together with STARTTLS must
    not run as if they came over TLS."""
    c = hello(smtp_port(fe))
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@b.example>\r\nRSET\r\n")
    assert code(c.reply()) == b"220 2.0.0"
    tls = client_ctx().wrap_socket(c.s, server_hostname="localhost")
    t = Client(0, sock=tls)
    # The first reply over TLS answers our EHLO: nothing was queued ahead.
    r = t.cmd(b"EHLO client.example")
    assert r.startswith(b"250-localhost"), r
    # And the injected MAIL did not open a transaction.
    assert code(t.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    t.cmd(b"QUIT")


def test_old_tls_versions_refused(fe):
    c = hello(smtp_port(fe))
    assert code(c.cmd(b"STARTTLS")) == b"220 2.0.0"
    ctx = client_ctx()
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        ctx.wrap_socket(c.s, server_hostname="localhost")


def test_auth_needs_tls(fe):
    c = hello(smtp_port(fe))
    assert c.cmd(b"AUTH PLAIN " + plain()).startswith(b"538 5.7.11")
    c.cmd(b"QUIT")


def test_submission_requires_tls_then_auth(fe):
    port = smtp_port(fe, "submission")
    c = hello(port)
    assert c.cmd(b"MAIL FROM:<" + USER.encode() + b">") == \
        b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert c.cmd(b"AUTH PLAIN " + plain()).startswith(b"538 5.7.11")
    t = starttls(c)
    t.cmd(b"EHLO client.example")
    assert t.cmd(b"MAIL FROM:<" + USER.encode() + b">") == b"530 5.7.0 Authentication required\r\n"
    assert code(t.cmd(b"AUTH PLAIN " + plain(password="wrong"))) == b"535 5.7.8"
    assert code(t.cmd(b"AUTH PLAIN " + plain())) == b"235 2.7.0"
    assert code(t.cmd(b"AUTH PLAIN " + plain())) == b"503 5.5.1"
    # Only the senders the password file allows.
    assert code(t.cmd(b"MAIL FROM:<boss@elsewhere.example>")) == b"553 5.7.1"
    assert code(t.cmd(b"MAIL FROM:<other@mailstream.test>")) == b"250 2.1.0"
    # Authenticated: relaying is allowed.
    assert code(t.cmd(b"RCPT TO:<friend@elsewhere.example>")) == b"250 2.1.5"
    assert t.cmd(b"DATA").startswith(b"354")
    t.send(b"From: other@mailstream.test\r\nSubject: relayed\r\n\r\nhi\r\n.\r\n")
    assert QUEUED.match(t.reply())
    t.cmd(b"QUIT")


def test_auth_dialogues(fe):
    c = hello(smtp_port(fe, "submission"))
    t = starttls(c)
    t.cmd(b"EHLO client.example")
    # PLAIN without initial response, then cancelled.
    assert t.cmd(b"AUTH PLAIN") == b"334 \r\n"
    assert code(t.cmd(b"*")) == b"501 5.0.0"
    # Garbage base64.
    assert code(t.cmd(b"AUTH PLAIN !!!!")) == b"501 5.5.2"
    assert code(t.cmd(b"AUTH CRAM-MD5")) == b"504 5.5.4"
    # authzid different from authcid.
    bad = base64.b64encode(b"root\0" + USER.encode() + b"\0" + PASSWORD.encode())
    assert code(t.cmd(b"AUTH PLAIN " + bad)) == b"535 5.7.8"
    # LOGIN, step by step.
    assert t.cmd(b"AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
    assert t.cmd(base64.b64encode(USER.encode())) == b"334 UGFzc3dvcmQ6\r\n"
    assert code(t.cmd(base64.b64encode(PASSWORD.encode()))) == b"235 2.7.0"
    t.cmd(b"QUIT")


def test_auth_login_with_initial_response_and_unknown_user(fe):
    c = hello(smtp_port(fe, "submission"))
    t = starttls(c)
    t.cmd(b"EHLO client.example")
    assert code(t.cmd(b"AUTH PLAIN " + plain(user="nobody@mailstream.test"))) == b"535 5.7.8"
    r = t.cmd(b"AUTH LOGIN " + base64.b64encode(USER.encode()))
    assert r == b"334 UGFzc3dvcmQ6\r\n"
    assert code(t.cmd(base64.b64encode(PASSWORD.encode()))) == b"235 2.7.0"
    t.cmd(b"QUIT")


def test_credentials_never_logged(fe):
    secret = "s3cr3t-never-in-logs"
    path = fe.passwd
    mslocal.ensure_passwd(path, {USER: (PASSWORD, mslocal.DEMO_SENDERS),
                                 "logger@mailstream.test": (secret, "mailstream.test")})
    node = fe.frontends[0]
    node.send_signal(signal.SIGHUP)
    deadline = time.time() + 30
    while "event=reload" not in node.log.read_text() and time.time() < deadline:
        time.sleep(0.1)
    c = hello(smtp_port(fe, "submission"))
    t = starttls(c)
    t.cmd(b"EHLO client.example")
    blob = plain("logger@mailstream.test", secret)
    # After SIGHUP the new account works (the password file was reloaded).
    assert code(t.cmd(b"AUTH PLAIN " + blob)) == b"235 2.7.0"
    t.cmd(b"QUIT")
    c2 = hello(smtp_port(fe, "submission"))
    t2 = starttls(c2)
    t2.cmd(b"EHLO client.example")
    wrong = plain("logger@mailstream.test", secret + "x")
    assert code(t2.cmd(b"AUTH PLAIN " + wrong)) == b"535 5.7.8"
    t2.cmd(b"QUIT")
    time.sleep(0.5)
    log = node.log.read_text()
    assert secret not in log
    assert blob.decode() not in log and wrong.decode() not in log
    assert "event=auth_ok" in log and "event=auth_failed" in log


def test_submissions_implicit_tls_with_smtplib(fe):
    port = smtp_port(fe, "submissions")
    with smtplib.SMTP_SSL("127.0.0.1", port, context=client_ctx(), timeout=60) as s:
        code_, resp = s.ehlo("client.example")
        assert code_ == 250
        assert b"AUTH PLAIN LOGIN" in resp and b"STARTTLS" not in resp
        s.login(USER, PASSWORD)
        refused = s.sendmail(USER, ["far@elsewhere.example"],
                             b"From: " + USER.encode() + b"\r\nSubject: implicit\r\n\r\n"
                             b"over TLS\r\n")
        assert refused == {}


def test_smtplib_starttls_login_and_mx_relay(fe):
    """On the mx listener, AUTH (after STARTTLS) also allows relaying."""
    with smtplib.SMTP("127.0.0.1", smtp_port(fe), timeout=60) as s:
        s.ehlo("client.example")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@b.example", ["x@elsewhere.example"], b"Subject: no\r\n\r\nno\r\n")
        s.rset()
        s.starttls(context=client_ctx())
        s.ehlo("client.example")
        s.login(USER, PASSWORD)
        assert s.sendmail(USER, ["x@elsewhere.example"], b"Subject: yes\r\n\r\nyes\r\n") == {}


def test_received_header_over_tls(fe):
    c = hello(smtp_port(fe, "submission"))
    t = starttls(c)
    t.cmd(b"EHLO client.example")
    assert code(t.cmd(b"AUTH PLAIN " + plain())) == b"235 2.7.0"
    t.cmd(b"MAIL FROM:<" + USER.encode() + b">")
    t.cmd(b"RCPT TO:<a@elsewhere.example>")
    t.cmd(b"RCPT TO:<b@elsewhere.example>")
    t.cmd(b"DATA")
    t.send(b"From: " + USER.encode() + b"\r\nSubject: tls\r\n\r\nx\r\n.\r\n")
    m = QUEUED.match(t.reply())
    assert m
    t.cmd(b"QUIT")
    out = subprocess.run(
        ["kcat", "-C", "-b", fe.kafka.bootstrap, "-t", fe.spec.topic, "-o", "beginning", "-e",
         "-q", "-f", "%k\n%s\n--END--\n"], capture_output=True, timeout=60)
    rec = [r for r in out.stdout.split(b"--END--\n") if r.startswith(m.group(1) + b"\n")]
    assert len(rec) == 1
    hdr = re.search(rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n"
                    rb"\tby localhost \(Mailstream\) with ESMTPSA id " + m.group(1) +
                    rb"\r\n\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)\r\n\t; ", rec[0])
    assert hdr, rec[0][:600]
    # Two recipients: no "for" clause.
    assert b"\tfor <" not in rec[0]


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_submission(fe):
    port = smtp_port(fe, "submission")
    r = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--tls", "--auth", "LOGIN",
         "--auth-user", USER, "--auth-password", PASSWORD, "--from", USER,
         "--to", "someone@elsewhere.example", "--helo", "client.example",
         "--header", "Subject: swaks", "--body", "via swaks"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"<~  250 2\.0\.0 Ok: queued as [0-9A-Z]{21}", r.stdout), r.stdout
    assert "~> AUTH LOGIN" in r.stdout
