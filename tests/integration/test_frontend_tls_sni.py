"""TLS certificates on the frontend: SNI choosing among [tls.NAME]
certificates, the TLS 1.2 cipher policy (ECDHE + AEAD only), and SIGHUP
replacing certificates without dropping live sessions.  Python's ssl with
server_hostname; certificates made here with openssl.  No timing asserted.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import smtp_port
from test_frontend_smtp import Client, code, hello
from test_frontend_tls_auth import client_ctx, starttls


def make_cert(d: Path, name: str, cn: str, sans: str) -> tuple:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "30", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName={sans}"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return cert, key


def peer_cn(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "multiline"],
                         input=pem, capture_output=True, text=True)
    for ln in out.stdout.splitlines():
        if "commonName" in ln:
            return ln.split("=", 1)[1].strip()
    return ""


def implicit_tls(cl, server_hostname: str | None, ctx: ssl.SSLContext | None = None):
    raw = socket.create_connection(cl.listener("submissions"), timeout=60)
    return (ctx or client_ctx()).wrap_socket(raw, server_hostname=server_hostname)


@pytest.fixture
def sni_fe(cluster_factory, tmp_path):
    a = make_cert(tmp_path, "a", "a.test", "DNS:a.test")
    w = make_cert(tmp_path, "w", "wild", "DNS:*.wild.test")
    n = make_cert(tmp_path, "n", "named", "DNS:ignored.test")
    return cluster_factory(frontends=1, workers=0, frontend_extra={
        "tls.a": {"cert": a[0], "key": a[1]},
        "tls.wild": {"cert": w[0], "key": w[1]},
        "tls.named": {"cert": n[0], "key": n[1], "names": "b.test, c.test"},
    })


@pytest.mark.parametrize("host,cn", [
    ("a.test", "a.test"),
    ("A.TEST", "a.test"),
    ("x.wild.test", "wild"),
    ("x.y.wild.test", "localhost"),  # a wildcard covers one label only
    ("b.test", "named"),
    ("c.test", "named"),
    ("ignored.test", "localhost"),   # names = replaces the certificate's own
    ("other.test", "localhost"),
    (None, "localhost"),             # no SNI: the default
])
def test_sni_picks_certificate(sni_fe, host, cn):
    s = implicit_tls(sni_fe, host)
    assert peer_cn(s) == cn
    c = Client(0, sock=s)
    assert c.reply().startswith(b"220 ")
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"


def test_sni_over_starttls(sni_fe):
    c = hello(smtp_port(sni_fe))
    assert code(c.cmd(b"STARTTLS")) == b"220 2.0.0"
    t = client_ctx().wrap_socket(c.s, server_hostname="a.test")
    assert peer_cn(t) == "a.test"
    tc = Client(0, sock=t)
    assert tc.cmd(b"EHLO client.example").startswith(b"250-")
    tc.cmd(b"QUIT")


def test_tls12_ciphers_are_ecdhe_aead(sni_fe):
    ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
    s = implicit_tls(sni_fe, "localhost", ctx)
    assert s.version() == "TLSv1.2"
    name = s.cipher()[0]
    assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
    s.close()
    # Static RSA key exchange, or CBC: no handshake.
    for weak in ("AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA"):
        ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers(weak + ":@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            implicit_tls(sni_fe, "localhost", ctx)
    # TLS 1.1 is refused outright.
    ctx = client_ctx()
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        implicit_tls(sni_fe, "localhost", ctx)


def wait_log(node, needle: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while node.log.read_text().count(needle) < count and time.time() < deadline:
        time.sleep(0.1)
    assert node.log.read_text().count(needle) >= count, needle


def test_sighup_reloads_certificates_keeping_sessions(cluster_factory, tmp_path):
    old = make_cert(tmp_path, "old", "old.test", "DNS:localhost")
    new = make_cert(tmp_path, "new", "new.test", "DNS:localhost")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(old[0], live_cert)
    shutil.copy(old[1], live_key)
    cl = cluster_factory(frontends=1, workers=0,
                         frontend_extra={"smtp": {"tls_cert": live_cert, "tls_key": live_key}})
    node = cl.frontends[0]
    wait_log(node, "event=tls_loaded", 1)
    # A STARTTLS session and an implicit-TLS one, both on the old certificate.
    c = hello(smtp_port(cl))
    t = starttls(c)
    assert peer_cn(t.s) == "old.test"
    t.cmd(b"EHLO client.example")
    s = implicit_tls(cl, "localhost")
    assert peer_cn(s) == "old.test"
    sc = Client(0, sock=s)
    assert sc.reply().startswith(b"220 ")

    shutil.copy(new[0], live_cert)
    shutil.copy(new[1], live_key)
    node.send_signal(signal.SIGHUP)
    wait_log(node, "event=tls_loaded", 2)

    # The old sessions go on, a transaction included.
    assert code(t.cmd(b"NOOP")) == b"250 2.0.0"
    assert code(t.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    assert code(t.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
    assert t.cmd(b"DATA").startswith(b"354 ")
    t.send(b"Subject: across a reload\r\n\r\nx\r\n.\r\n")
    assert t.reply().startswith(b"250 2.0.0 Ok: queued as ")
    assert sc.cmd(b"EHLO client.example").startswith(b"250-")
    assert code(sc.cmd(b"NOOP")) == b"250 2.0.0"
    # New connections see the new certificate.
    s2 = implicit_tls(cl, "localhost")
    assert peer_cn(s2) == "new.test"
    c2 = hello(smtp_port(cl))
    t2 = starttls(c2)
    assert peer_cn(t2.s) == "new.test"
    for x in (t, sc, t2):
        assert code(x.cmd(b"QUIT")) == b"221 2.0.0"
    s2.close()
    # A broken certificate on reload keeps the current one.
    live_key.write_text("not a key\n")
    node.send_signal(signal.SIGHUP)
    wait_log(node, "event=reload_failed what=tls", 1)
    s3 = implicit_tls(cl, "localhost")
    assert peer_cn(s3) == "new.test"
    s3.close()
    assert node.alive()
