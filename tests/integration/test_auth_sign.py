"""Outbound DKIM signing through the whole cluster (issue 5).

A message submitted with AUTH on the submission port (STARTTLS, the demo
account) leaves the worker signed twice, RSA-SHA256 and Ed25519-SHA256, and
both signatures verify with dkimpy.  The first delivery attempt gets a 451:
the retry carries the message signed once (no second pair of signatures).
SIGHUP re-reads rotated key files.
"""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import subprocess
import time
from pathlib import Path
from typing import Dict

import pytest

import mslocal
from test_worker_delivery import FakeSMTP

dkim = pytest.importorskip("dkim", reason="dkimpy not installed (tests/integration/requirements.txt)")
pytest.importorskip("nacl", reason="PyNaCl (dkimpy[ed25519]) not installed")

DOMAIN = "mailstream.test"


def genkey(path: Path, alg: str) -> str:
    """Write a private key; return its DKIM key record."""
    if alg == "rsa":
        args = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    else:
        args = ["-algorithm", "ed25519"]
    subprocess.run(["openssl", "genpkey", *args, "-out", str(path)], check=True,
                   capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if alg == "rsa":
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]).decode()


def verify(data: bytes, records: Dict[str, str]) -> list:
    """dkimpy's verdict for every DKIM-Signature, in order."""
    def dnsfunc(name, timeout=5):
        return records.get(name.decode().rstrip(".") if isinstance(name, bytes) else name,
                           "").encode()
    d = dkim.DKIM(data)
    n = len(re.findall(rb"(?im)^DKIM-Signature:", data.split(b"\r\n\r\n", 1)[0]))
    return [d.verify(idx=i, dnsfunc=dnsfunc) for i in range(n)]


def submit(cl, subject: str) -> None:
    host, port = cl.listener("submission")
    ctx = ssl.create_default_context(cafile=str(cl.tls_cert))
    msg = (f"From: Demo <{mslocal.DEMO_USER}>\r\nTo: <bob@example.org>\r\nSubject: {subject}\r\n"
           f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{subject}@mailstream.test>\r\n"
           "\r\nHello Bob,\r\n  trailing spaces   \r\n\r\n\r\n").encode()
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=30) as s:
        s.starttls(context=ctx)
        s.login(mslocal.DEMO_USER, mslocal.DEMO_PASSWORD)
        s.sendmail(mslocal.DEMO_USER, ["bob@example.org"], msg)


def wait_delivered(srv: FakeSMTP, subject: str, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, _, data in list(srv.delivered):
            if f"Subject: {subject}".encode() in data:
                return data
        time.sleep(0.2)
    raise AssertionError(f"{subject} not delivered: {srv.delivered}")


def test_outbound_signed_once_and_verifies_with_dkimpy(cluster_factory, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    rsa_rec = genkey(keys / "rsa.pem", "rsa")
    ed_rec = genkey(keys / "ed.pem", "ed25519")
    records = {f"rsa._domainkey.{DOMAIN}": rsa_rec, f"ed._domainkey.{DOMAIN}": ed_rec}

    # The first transaction is refused with 451: the retry must reuse the
    # signatures added before it.
    srv = FakeSMTP(data_reply=lambda n: "451 4.3.0 try again" if n == 1 else "250 2.0.0 Ok")
    try:
        cl = cluster_factory(worker_extra={
            "delivery": {"relay_host": srv.address, "retry_min_ms": 200, "retry_max_ms": 1000},
            "dkim.rsa": {"domain": DOMAIN, "selector": "rsa", "key": keys / "rsa.pem"},
            "dkim.ed": {"domain": DOMAIN, "selector": "ed", "key": keys / "ed.pem"},
        })
        submit(cl, "first")
        data = wait_delivered(srv, "first")
        assert srv.data_count >= 2, "the first attempt was not refused"
        head = data.split(b"\r\n\r\n", 1)[0]
        sigs = re.findall(rb"(?im)^DKIM-Signature:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", head)
        assert len(sigs) == 2, sigs
        assert b"a=rsa-sha256" in sigs[0] and b"s=rsa" in sigs[0], sigs[0]
        assert b"a=ed25519-sha256" in sigs[1] and b"s=ed" in sigs[1], sigs[1]
        assert data.startswith(b"DKIM-Signature:"), data[:80]
        assert verify(data, records) == [True, True]
        # Oversigned From: a second From breaks the signature.
        assert verify(b"From: evil@example.net\r\n" + data, records) == [False, False]

        # Rotate the RSA key and reload with SIGHUP.
        new_rec = genkey(keys / "rsa.pem", "rsa")
        cl.workers[0].send_signal(__import__("signal").SIGHUP)
        mslocal.wait_until(lambda: "event=dkim_keys_reloaded" in cl.workers[0].log.read_text(),
                           10, "key reload")
        submit(cl, "second")
        data2 = wait_delivered(srv, "second")
        assert verify(data2, {**records, f"rsa._domainkey.{DOMAIN}": new_rec}) == [True, True]
        assert verify(data2, records) == [False, True]

        text = cl.workers[0].metrics_text()
        assert 'mailstream_worker_policy_actions_total{verdict="signed",action="deliver"} 2' \
            in text, text
    finally:
        srv.close()
