"""LMTP delivery (RFC 2033) into Dovecot from Debian, read back over IMAP and
POP3 with imaplib and poplib: the message in the mailbox is the message the
worker was given (Dovecot only prepends its own trace fields).

Dovecot runs in the foreground with a configuration of ours in a private
directory (world-traversable, because Dovecot refuses to deliver as root and
pytest's temporary directories are private to root). Skipped when Dovecot's
LMTP, IMAP or POP3 server is not installed (cluster/deps.sh installs them).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import pytest

import mslocal
from test_worker_delivery import KCAT, envelope, message, new_qid, produce, wait_events

DOVECOT = "/usr/sbin/dovecot"
MODULES = ["/usr/lib/dovecot/lmtp", "/usr/lib/dovecot/imap", "/usr/lib/dovecot/pop3"]
pytestmark = [
    pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`"),
    pytest.mark.skipif(not (os.access(DOVECOT, os.X_OK) and all(os.path.exists(m)
                                                                 for m in MODULES)),
                       reason="dovecot-lmtpd, dovecot-imapd, dovecot-pop3d not installed"),
]

USERS = {"alice@lmtp.mstest": "alice-pw", "bob@lmtp.mstest": "bob-pw"}
MAIL_UID = 65534  # nobody: Dovecot does not deliver as root


@contextlib.contextmanager
def run_dovecot(tmp_path: Path, *, lmtp_port: Optional[int] = None, pop3: bool = True):
    """Dovecot in the foreground with a configuration of ours: LMTP on
    127.0.0.1:lmtp_port, or on the UNIX socket <dir>/run/lmtp when
    lmtp_port is None; IMAP, and POP3 when asked. Yields its ports, the
    socket path and its directory."""
    d = Path(tempfile.mkdtemp(prefix="ms-dovecot-"))
    os.chmod(d, 0o755)
    imap, pop3_port = mslocal.free_ports(2)
    home = d / "home"
    home.mkdir()
    os.chown(home, MAIL_UID, MAIL_UID)
    passwd = d / "passwd"
    passwd.write_text("".join(f"{u}:{{PLAIN}}{p}:{MAIL_UID}:{MAIL_UID}::{home}/{u}::\n"
                              for u, p in USERS.items()))
    if lmtp_port is None:
        lmtp_listener = "unix_listener lmtp {\n    mode = 0666\n  }"
    else:
        lmtp_listener = (f"inet_listener lmtp {{\n    address = 127.0.0.1\n"
                         f"    port = {lmtp_port}\n  }}")
    pop3_service = f"""
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}""" if pop3 else ""
    conf = d / "dovecot.conf"
    conf.write_text(f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = lmtp imap{" pop3" if pop3 else ""}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = {MAIL_UID}
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service lmtp {{
  {lmtp_listener}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}{pop3_service}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")
    sock = d / "run" / "lmtp"
    ports = [imap] + ([pop3_port] if pop3 else []) + ([lmtp_port] if lmtp_port else [])

    def up() -> bool:
        return ((lmtp_port is not None or sock.is_socket())
                and all(mslocal.port_open(mslocal.HOST, p) for p in ports))

    sup = mslocal.Supervisor(tmp_path / "dovecot-sup")
    proc = sup.spawn("dovecot", [DOVECOT, "-F", "-c", str(conf)], tmp_path / "dovecot.out")
    try:
        mslocal.wait_until(up, 30, "dovecot listeners", proc.alive, log_path=d / "dovecot.log")
        yield {"lmtp": lmtp_port, "socket": str(sock), "imap": imap, "pop3": pop3_port, "dir": d}
    finally:
        sup.stop_all()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dovecot(tmp_path):
    (lmtp,) = mslocal.free_ports(1)
    with run_dovecot(tmp_path, lmtp_port=lmtp) as dv:
        yield dv


def test_lmtp_into_dovecot_read_back_over_imap_and_pop3(cluster_factory, dovecot):
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "retry_min_ms": 200, "retry_max_ms": 1000},
        "transport": {"map": f"lmtp.mstest lmtp:[127.0.0.1]:{dovecot['lmtp']}"}})
    q = new_qid()
    body = message(q, b"..a line that needs dot-stuffing\r\nUTF-8? no: plain ASCII.\r\n")
    produce(cl, [(q, envelope(q, ["alice@lmtp.mstest", "nobody@lmtp.mstest",
                                  "bob@lmtp.mstest"], body))])
    evs = wait_events(cl, lambda e: len([x for x in e if x.get("qid") == q]) >= 3, timeout=90)
    by = {e["rcpt"]: e for e in evs if e.get("qid") == q}
    assert by["alice@lmtp.mstest"]["outcome"] == "delivered"
    assert by["bob@lmtp.mstest"]["outcome"] == "delivered"
    # Per-recipient replies (RFC 2033 §4.2): each accepted recipient got its
    # own reply after the data, naming it.
    assert "alice@lmtp.mstest" not in by["bob@lmtp.mstest"]["reply"]
    assert by["nobody@lmtp.mstest"]["outcome"] == "bounced"
    assert by["nobody@lmtp.mstest"]["code"] == 550

    im = imaplib.IMAP4(mslocal.HOST, dovecot["imap"])
    im.login("alice@lmtp.mstest", USERS["alice@lmtp.mstest"])
    im.select("INBOX")
    typ, ids = im.search(None, "ALL")
    assert typ == "OK" and len(ids[0].split()) == 1
    typ, data = im.fetch(ids[0].split()[0], "(RFC822)")
    im.logout()
    got = data[0][1]
    # Dovecot prepends Return-Path / Delivered-To / Received; the rest is ours.
    assert got.endswith(body), got[:400]
    assert b"Return-Path: <sender@example.org>" in got[:len(got) - len(body)]

    pop = poplib.POP3(mslocal.HOST, dovecot["pop3"])
    pop.user("bob@lmtp.mstest")
    pop.pass_(USERS["bob@lmtp.mstest"])
    count, _ = pop.stat()
    assert count == 1
    _, lines, _ = pop.retr(1)
    pop.quit()
    # poplib removes the byte-stuffing and the line ends.
    got = b"\r\n".join(lines) + b"\r\n"
    assert got.endswith(body)
