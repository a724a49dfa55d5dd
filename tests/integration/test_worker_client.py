"""The worker's SMTP/LMTP client against real peers (smtp_client.h):

  - AUTH (RFC 4954) to the relay host: our own frontend's submission
    listener (STARTTLS, AUTH PLAIN LOGIN against a crypt(3) password file)
    is the smarthost; its own worker delivers on to its smtp-sink.  Wrong
    credentials defer (never bounce); credentials never go in the clear
    unless relay_auth_plaintext allows it.
  - CHUNKING (RFC 3030): the frontend and Dovecot's LMTP offer it, so the
    message goes in BDAT chunks (no dot-stuffing: lines starting with "."
    must arrive unchanged); BINARYMIME goes octet for octet where offered and
    bounces with 5.6.3 where not (the scripted FakeSMTP offers no CHUNKING).
  - lmtp:unix: Dovecot's LMTP on a UNIX-domain socket, read back over IMAP;
    the second message reuses the connection (keyed on the socket path).
  - `may` falls back to plaintext on a new connection when the STARTTLS
    handshake fails (FakeSMTP with a "TLS" that answers garbage: no Debian
    server misbehaves that way on request), or answers STARTTLS with 421;
    another refusal (454) goes on in plaintext on the same connection;
    `encrypt` does neither.  A missing lmtp:unix: socket defers (4.4.1).
  - [delivery] max_msgs_per_conn: a cached connection gets QUIT after N.

No timing assertions: waits are "until it happens", bounded by timeouts.
"""

from __future__ import annotations

import base64
import imaplib
import os
import socketserver
import subprocess
import threading

import pytest

import mslocal
from conftest import smtp_port
from test_worker_lmtp import USERS, run_dovecot
from test_worker_delivery import (KCAT, _field_bytes, envelope, fake_smtp, message,  # noqa: F401
                                  new_qid, produce, wait_events, wait_log)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")

DOVECOT = "/usr/sbin/dovecot"
HAVE_DOVECOT = os.access(DOVECOT, os.X_OK) and all(
    os.path.exists(m) for m in ("/usr/lib/dovecot/lmtp", "/usr/lib/dovecot/imap"))
SENDER = "someone@mailstream.test"  # RELAY_USER may send as its domain
RELAY_USER = "relay@mailstream.test"
RELAY_PASSWORD = "S3cret-relay-pw"
DOTS = b".leading dot\r\n..two dots\r\n.\r\nlast\r\n"


def mine(evs, q):
    return [e for e in evs if e.get("qid") == q]


def binarymime(env: bytes, sender: str) -> bytes:
    """Turn an envelope made with body_8bit=True into BODY=BINARYMIME."""
    f = _field_bytes(1, sender.encode())
    assert f + b"\x10\x02" in env
    return env.replace(f + b"\x10\x02", f + b"\x10\x03", 1)


def queue_records(cl) -> bytes:
    """Every record value in the cluster's queue topic, concatenated."""
    r = subprocess.run([KCAT, "-b", cl.kafka.bootstrap, "-C", "-t", cl.spec.topic,
                        "-o", "beginning", "-e", "-q", "-f", "%s"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


@pytest.fixture
def smarthost(cluster_factory):
    """A frontend (and a worker delivering to its sink): the relay host, with
    an account of its own (a password that appears nowhere else).  The
    account relays other people's mail (From: sender@example.org), so the
    From of what it submits is not checked against its senders."""
    cl = cluster_factory(frontends=1, workers=1, start=False,
                         frontend_extra={"format.submission": {"from_owned": "no"}})
    mslocal.ensure_passwd(cl.passwd, {RELAY_USER: (RELAY_PASSWORD, "mailstream.test")})
    cl.start()
    return cl


def relaying_worker(cluster_factory, smarthost, listener="submission", tls=None, **delivery):
    host, port = smarthost.listener(listener)
    d = {"relay_host": f"{host}:{port}", "retry_min_ms": 500, "retry_max_ms": 2000, **delivery}
    extra = {"delivery": d, "node": {"log_level": "debug"}}
    if tls:
        extra["tls"] = tls
    return cluster_factory(frontends=0, workers=1, worker_extra=extra)


# ---------------------------------------------------------------------------
# AUTH to the smarthost, and BDAT to it
# ---------------------------------------------------------------------------

def test_auth_plain_over_starttls_to_our_submission_listener(cluster_factory, smarthost,
                                                             tmp_path):
    pw = tmp_path / "relay-password"
    pw.write_text(RELAY_PASSWORD + "\n")
    os.chmod(pw, 0o600)
    cl = relaying_worker(cluster_factory, smarthost, relay_user=RELAY_USER,
                         relay_password_file=str(pw))
    q = new_qid()
    body = message(q, DOTS)
    produce(cl, [(q, envelope(q, ["friend@example.net"], body, sender=SENDER))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev)), q)[0]
    assert e["outcome"] == "delivered", e
    assert e["tls"].startswith("TLSv1.")
    # The smarthost took it as an authenticated submission over TLS, in BDAT
    # chunks (the dots arrive unchanged: no stuffing), and its worker passed
    # it on to its sink.
    msgs = smarthost.sink.wait_for(1, timeout=60)
    got = msgs[0].data
    assert got.endswith(body), got[:300]
    assert b"with ESMTPSA id" in got[:len(got) - len(body)]
    assert msgs[0].envelope["mail_from"] == SENDER
    fe_log = wait_log(smarthost.frontends[0], "event=auth_ok")
    assert f'user="{RELAY_USER}"' in fe_log
    log = wait_log(cl.workers[0], "event=smtp_auth ")
    assert "mech=PLAIN" in log and "via=bdat" in log and "auth=yes" in log
    plain = base64.b64encode(b"\0" + RELAY_USER.encode() + b"\0" + RELAY_PASSWORD.encode())
    assert RELAY_PASSWORD not in log and plain.decode() not in log


def test_auth_login_when_plain_is_filtered_out(cluster_factory, smarthost):
    # relay_auth_mechanisms = login: the frontend offers PLAIN and LOGIN,
    # the client must take LOGIN (two 334 challenges).
    cl = relaying_worker(cluster_factory, smarthost, relay_user=RELAY_USER,
                         relay_password=RELAY_PASSWORD, relay_auth_mechanisms="login")
    q = new_qid()
    body = message(q)
    produce(cl, [(q, envelope(q, ["friend@example.net"], body, sender=SENDER))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev)), q)[0]
    assert e["outcome"] == "delivered", e
    assert smarthost.sink.wait_for(1, timeout=60)[0].data.endswith(body)
    log = wait_log(cl.workers[0], "event=smtp_auth ")
    assert "mech=LOGIN" in log and "mech=PLAIN" not in log
    assert RELAY_PASSWORD not in log
    assert base64.b64encode(RELAY_PASSWORD.encode()).decode() not in log


def test_bdat_large_message_in_several_chunks(cluster_factory):
    # Our frontend's mx listener (CHUNKING) with its worker delivering to its
    # sink; over 3 MiB is four chunks, every line needing dot-stuffing under
    # DATA (not under BDAT).
    fe = cluster_factory(frontends=1, workers=1)
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": f"{mslocal.HOST}:{smtp_port(fe)}"},
        "node": {"log_level": "debug"}})
    q = new_qid()
    line = b"." + b"y" * 97 + b"\r\n"
    big = message(q, line * (3 * 1024 * 1024 // len(line) + 1))
    produce(cl, [(q, envelope(q, ["big@mailstream.test"], big))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev), timeout=120), q)[0]
    assert e["outcome"] == "delivered", e
    got = fe.sink.wait_for(1, timeout=120)[0].data
    assert got.endswith(big) and len(got) < len(big) + 1024
    log = cl.workers[0].log.read_text()
    # A reply to each chunk but the last (state bdat), then LAST's.
    chunks = -(-len(big) // (1024 * 1024))  # WK_SMTP_BDAT_CHUNK
    assert chunks >= 3 and f"qid={q} peer=" in log
    assert log.count("from=body to=bdat") == chunks - 1


def test_auth_wrong_password_defers_and_is_not_logged(cluster_factory, smarthost):
    secret = "Wr0ng-Secret-xyzzy"
    cl = relaying_worker(cluster_factory, smarthost, relay_user=RELAY_USER,
                         relay_password=secret)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["friend@example.net"], message(q), sender=SENDER))])
    evs = wait_events(cl, lambda ev: len(mine(ev, q)) >= 2)
    for e in mine(evs, q)[:2]:
        # 535 5.7.8 is our configuration's fault: deferred, not bounced.
        assert e["outcome"] == "deferred" and e["dsn"] == "4.7.8" and e["code"] == 0, e
        assert "535" in e["reply"] and "SASL authentication (PLAIN)" in e["reply"]
    assert smarthost.sink.messages() == []
    log = wait_log(cl.workers[0], "event=smtp_auth_failed")
    assert secret not in log
    assert "event=auth_failed" in smarthost.frontends[0].log.read_text()


def test_auth_never_in_clear_unless_allowed(cluster_factory, smarthost):
    # TLS policy none: the client never says AUTH at all.
    cl = relaying_worker(cluster_factory, smarthost, tls={"policy": "none"},
                         relay_user=RELAY_USER, relay_password=RELAY_PASSWORD)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["friend@example.net"], message(q), sender=SENDER))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev)), q)[0]
    assert e["outcome"] == "deferred" and e["dsn"] == "4.7.11", e
    assert "without TLS (TLS policy none)" in e["reply"]
    fe = smarthost.frontends[0].log.read_text()
    assert "event=auth_ok" not in fe and "event=auth_failed" not in fe

    # Allowed in the clear: past that check; this server offers AUTH only
    # over TLS, so there is no mechanism to use: still a deferral (4.7.0),
    # never a delivery without AUTH.
    cl2 = relaying_worker(cluster_factory, smarthost, tls={"policy": "none"},
                          relay_user=RELAY_USER, relay_password=RELAY_PASSWORD,
                          relay_auth_plaintext="yes")
    q2 = new_qid()
    produce(cl2, [(q2, envelope(q2, ["friend@example.net"], message(q2), sender=SENDER))])
    e2 = mine(wait_events(cl2, lambda ev: any(x.get("qid") == q2 for x in ev)), q2)[0]
    assert e2["outcome"] == "deferred" and e2["code"] == 0 and e2["dsn"] == "4.7.0", e2
    assert "no AUTH at all" in e2["reply"]
    assert smarthost.sink.messages() == []


# ---------------------------------------------------------------------------
# BINARYMIME
# ---------------------------------------------------------------------------

def test_binarymime_goes_by_bdat_or_bounces_5_6_3(cluster_factory, fake_smtp):
    # Our frontend's mx listener takes mail for mailstream.test with
    # CHUNKING and BINARYMIME; nothing behind it (no worker), so the record
    # it produced is read back from Kafka.
    fe = cluster_factory(frontends=1, workers=0)
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": f"{mslocal.HOST}:{smtp_port(fe)}", "retry_min_ms": 500,
                     "retry_max_ms": 2000},
        "node": {"log_level": "debug"}})
    q = new_qid()
    sender = "sender@example.org"
    # Binary: NUL, bare LF and CR, a line starting with ".", no final CRLF.
    payload = b"\x00\x01binary\nbare LF\rbare CR\r\n.dot\r\n\xff\xfe end"
    body = message(q) + payload
    produce(cl, [(q, binarymime(envelope(q, ["user@mailstream.test"], body, sender=sender,
                                         body_8bit=True), sender))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev)), q)[0]
    assert e["outcome"] == "delivered", e
    assert "via=bdat" in wait_log(cl.workers[0], "via=bdat")
    mslocal.wait_until(lambda: body in queue_records(fe), 60, "the message in the queue topic")

    # A server without CHUNKING: returned with 5.6.3, nothing sent.
    srv = fake_smtp()
    cl2 = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv.address}})
    q2 = new_qid()
    produce(cl2, [(q2, binarymime(envelope(q2, ["user@example.net"], message(q2) + payload,
                                           body_8bit=True), "sender@example.org"))])
    e2 = mine(wait_events(cl2, lambda ev: any(x.get("qid") == q2 for x in ev)), q2)[0]
    assert e2["outcome"] == "bounced" and e2["code"] == 554 and e2["dsn"] == "5.6.3", e2
    assert srv.delivered == [] and not any(c.startswith("MAIL") for c in srv.commands)


# ---------------------------------------------------------------------------
# lmtp:unix: into Dovecot
# ---------------------------------------------------------------------------

@pytest.fixture
def dovecot_unix(tmp_path):
    with run_dovecot(tmp_path, pop3=False) as dv:
        yield dv


def imap_messages(port: int, user: str) -> list:
    im = imaplib.IMAP4(mslocal.HOST, port)
    im.login(user, USERS[user])
    im.select("INBOX")
    typ, ids = im.search(None, "ALL")
    assert typ == "OK"
    out = []
    for i in ids[0].split():
        typ, data = im.fetch(i, "(RFC822)")
        out.append(data[0][1])
    im.logout()
    return out


@pytest.mark.skipif(not HAVE_DOVECOT, reason="dovecot-lmtpd, dovecot-imapd not installed")
def test_lmtp_unix_socket_into_dovecot(cluster_factory, dovecot_unix):
    sock = dovecot_unix["socket"]
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "retry_min_ms": 200, "retry_max_ms": 1000,
                     "connection_cache_ms": 60000},
        "transport": {"map": f"lmtp.mstest lmtp:unix:{sock}"},
        "node": {"log_level": "debug"}})
    q = new_qid()
    body = message(q, DOTS)
    produce(cl, [(q, envelope(q, ["alice@lmtp.mstest", "nobody@lmtp.mstest",
                                  "bob@lmtp.mstest"], body))])
    evs = wait_events(cl, lambda e: len(mine(e, q)) >= 3, timeout=90)
    by = {e["rcpt"]: e for e in mine(evs, q)}
    assert by["alice@lmtp.mstest"]["outcome"] == "delivered", by
    assert by["bob@lmtp.mstest"]["outcome"] == "delivered"
    assert by["nobody@lmtp.mstest"]["outcome"] == "bounced"
    assert by["alice@lmtp.mstest"]["relay"] == f"unix:{sock}"
    # One reply per recipient after BDAT LAST (RFC 2033 §4.2, RFC 3030).
    assert "alice@lmtp.mstest" not in by["bob@lmtp.mstest"]["reply"]
    log = wait_log(cl.workers[0], "via=bdat")
    assert f"peer=unix:{sock} via=bdat" in log

    # A second message to the same socket takes the parked connection.
    q2 = new_qid()
    body2 = message(q2)
    produce(cl, [(q2, envelope(q2, ["alice@lmtp.mstest"], body2))])
    evs = wait_events(cl, lambda e: len(mine(e, q2)) >= 1, timeout=90)
    assert mine(evs, q2)[0]["outcome"] == "delivered"
    log = cl.workers[0].log.read_text()
    assert f"peer=unix:{sock} from=idle to=rset" in log

    got = imap_messages(dovecot_unix["imap"], "alice@lmtp.mstest")
    assert len(got) == 2
    assert any(m.endswith(body) for m in got), got[0][:400]
    assert any(m.endswith(body2) for m in got)
    got = imap_messages(dovecot_unix["imap"], "bob@lmtp.mstest")
    assert len(got) == 1 and got[0].endswith(body)


# ---------------------------------------------------------------------------
# `may` falls back to plaintext; max_msgs_per_conn
# ---------------------------------------------------------------------------

class BrokenTLS:
    """Stands in for an ssl.SSLContext in FakeSMTP: after "220 Ready to start
    TLS" it answers the ClientHello with plaintext garbage and hangs up."""

    def __init__(self):
        self.handshakes = 0

    def wrap_socket(self, sock, server_side=True):
        self.handshakes += 1
        try:
            sock.recv(4096)
            sock.sendall(b"this is not TLS\r\n" * 8)
        finally:
            sock.close()
        raise OSError("handshake broken on purpose")


def test_may_falls_back_to_plaintext_after_failed_handshake(cluster_factory, fake_smtp):
    broken = BrokenTLS()
    srv = fake_smtp(tls=broken)
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv.address, "retry_min_ms": 500, "retry_max_ms": 2000}})
    q = new_qid()
    produce(cl, [(q, envelope(q, ["t@example.net"], message(q)))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev)), q)[0]
    assert e["outcome"] == "delivered" and e["attempt"] == 1, e
    assert "tls" not in e  # it went in plaintext, and says so
    assert broken.handshakes == 1 and srv.sessions == 2
    verbs = [c.split(" ")[0].split(":")[0] for c in srv.commands]
    assert verbs[:4] == ["EHLO", "STARTTLS", "EHLO", "MAIL"], verbs
    assert srv.delivered[0][2] == message(q)
    assert "event=smtp_tls_fallback" in wait_log(cl.workers[0], "event=smtp_tls_fallback")

    # `encrypt` never falls back: deferred with 4.7.5, nothing sent.
    broken2 = BrokenTLS()
    srv2 = fake_smtp(tls=broken2)
    cl2 = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv2.address, "retry_min_ms": 500, "retry_max_ms": 2000},
        "tls": {"policy": "encrypt"}})
    q2 = new_qid()
    produce(cl2, [(q2, envelope(q2, ["t@example.net"], message(q2)))])
    e2 = mine(wait_events(cl2, lambda ev: any(x.get("qid") == q2 for x in ev)), q2)[0]
    assert e2["outcome"] == "deferred" and e2["dsn"] in ("4.7.5", "4.4.2"), e2
    assert srv2.delivered == [] and "MAIL" not in " ".join(srv2.commands)
    assert "event=smtp_tls_fallback" not in cl2.workers[0].log.read_text()


def test_max_msgs_per_conn_quits_after_n(cluster_factory, fake_smtp):
    srv = fake_smtp()
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv.address, "connection_cache_ms": 60000,
                     "max_msgs_per_conn": 2}})
    qids = [new_qid() for _ in range(3)]
    for q in qids:  # one after the other, so each can reuse the last
        produce(cl, [(q, envelope(q, ["a@example.net"], message(q)))])
        wait_events(cl, lambda ev, q=q: any(x.get("qid") == q for x in ev))
    assert len(srv.delivered) == 3
    verbs = [c.split(" ")[0].split(":")[0] for c in srv.commands]
    # Message 1 and 2 on the first connection (RSET between), then QUIT;
    # message 3 on a new one (parked at the end, so no QUIT yet).
    assert srv.sessions == 2, verbs
    assert verbs.count("EHLO") == 2 and verbs.count("RSET") == 1 and verbs.count("QUIT") == 1
    assert verbs.index("QUIT") < len(verbs) - 1 - verbs[::-1].index("EHLO")


class RefusingSTARTTLS:
    """A minimal scripted ESMTP server that offers STARTTLS and refuses it
    with `reply`; a 421 closes the connection (RFC 5321 §3.8).  Mail is
    taken in plaintext; .sessions counts connections, .commands every
    command line, .delivered the messages."""

    def __init__(self, reply: str):
        self.reply = reply
        self.sessions = 0
        self.commands: list = []
        self.delivered: list = []
        self.lock = threading.Lock()
        srv = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                srv._session(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((mslocal.HOST, 0), Handler)
        self.address = f"{mslocal.HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile, wfile):
        def say(line):
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        with self.lock:
            self.sessions += 1
        say("220 refuser.test ESMTP")
        rcpts = []
        while True:
            raw = rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            with self.lock:
                self.commands.append(verb)
            if verb == "EHLO":
                say("250-refuser.test")
                say("250 STARTTLS")
            elif verb == "STARTTLS":
                say(self.reply)
                if self.reply.startswith("421"):
                    return
            elif verb == "MAIL":
                rcpts = []
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(line[8:].split(">")[0].lstrip("<"))
                say("250 2.1.5 Ok")
            elif verb == "DATA":
                say("354 go ahead")
                data = bytearray()
                while True:
                    raw = rfile.readline()
                    if not raw:
                        return
                    if raw == b".\r\n":
                        break
                    data += raw[1:] if raw.startswith(b".") else raw
                with self.lock:
                    self.delivered.append((list(rcpts), bytes(data)))
                say("250 2.0.0 Ok")
            elif verb == "RSET":
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                return
            else:
                say("502 5.5.2 Error: command not recognized")


@pytest.fixture
def refuser():
    servers = []

    def make(reply):
        s = RefusingSTARTTLS(reply)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_may_when_starttls_is_refused(cluster_factory, refuser):
    # 421 to STARTTLS: the server closes, so a new connection, no STARTTLS.
    srv = refuser("421 4.7.0 TLS service not available, closing")
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv.address, "retry_min_ms": 500, "retry_max_ms": 2000}})
    q = new_qid()
    produce(cl, [(q, envelope(q, ["t@example.net"], message(q)))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev)), q)[0]
    assert e["outcome"] == "delivered" and e["attempt"] == 1 and "tls" not in e, e
    assert srv.sessions == 2 and srv.commands[:4] == ["EHLO", "STARTTLS", "EHLO", "MAIL"]
    assert srv.delivered == [(["t@example.net"], message(q))]

    # 454: the session is as it was (RFC 3207 §4), so plaintext on the same
    # connection, as Postfix does.
    srv2 = refuser("454 4.7.0 TLS not available due to local problem")
    cl2 = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv2.address, "retry_min_ms": 500, "retry_max_ms": 2000}})
    q2 = new_qid()
    produce(cl2, [(q2, envelope(q2, ["t@example.net"], message(q2)))])
    e2 = mine(wait_events(cl2, lambda ev: any(x.get("qid") == q2 for x in ev)), q2)[0]
    assert e2["outcome"] == "delivered" and "tls" not in e2, e2
    assert srv2.sessions == 1 and srv2.commands[:3] == ["EHLO", "STARTTLS", "MAIL"]

    # `encrypt`: a refusal defers.
    srv3 = refuser("454 4.7.0 TLS not available due to local problem")
    cl3 = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": srv3.address, "retry_min_ms": 500, "retry_max_ms": 2000},
        "tls": {"policy": "encrypt"}})
    q3 = new_qid()
    produce(cl3, [(q3, envelope(q3, ["t@example.net"], message(q3)))])
    e3 = mine(wait_events(cl3, lambda ev: any(x.get("qid") == q3 for x in ev)), q3)[0]
    assert e3["outcome"] == "deferred" and e3["code"] == 454, e3
    assert srv3.delivered == [] and "MAIL" not in srv3.commands


def test_lmtp_unix_socket_missing_defers(cluster_factory, tmp_path):
    path = tmp_path / "no-such-lmtp"
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "retry_min_ms": 500, "retry_max_ms": 2000},
        "transport": {"map": f"lmtp.mstest lmtp:unix:{path}"}})
    q = new_qid()
    produce(cl, [(q, envelope(q, ["alice@lmtp.mstest"], message(q)))])
    e = mine(wait_events(cl, lambda ev: any(x.get("qid") == q for x in ev)), q)[0]
    assert e["outcome"] == "deferred" and e["code"] == 0 and e["dsn"] == "4.4.1", e
    assert f"connect to unix:{path}" in e["reply"] and e["relay"] == f"unix:{path}"
