"""REQUIRETLS (RFC 8689) from the worker: a message received with
`MAIL FROM:<...> REQUIRETLS` goes out only over TLS with a verified
certificate, to a server that offers REQUIRETLS, with REQUIRETLS in its MAIL
FROM - never in plaintext. A server that cannot do it is refused as a
permanent failure of that server: the next MX host is tried, and when none
can, the message bounces (5.7.10 without TLS, 5.7.30 without REQUIRETLS)
with a DSN that itself travels under REQUIRETLS and returns the headers only.

Destinations are the scripted FakeSMTP of test_worker_delivery with
certificates from a test CA made here (the worker's [tls] ca_file), reached
through the transport map or, for MX fallback, through NSD (dns_zone).
"""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
from pathlib import Path
from typing import List

import pytest

import mslocal
from dns_zone import module_nsd
from test_worker_bounce import dsns
from test_worker_delivery import (DIRECTION_OUTBOUND, KCAT, FakeSMTP, envelope,  # noqa: F401
                                  fake_smtp, message, metric, new_qid, produce, wait_events,
                                  wait_log)
from test_worker_routing import mx_port, servers  # noqa: F401

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")


def make_ca(d: Path, names: List[str]) -> tuple:
    """A throw-away CA and a server certificate it signed for names (DNS
    names and IP addresses). Returns (ca_pem, server ssl.SSLContext)."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr",
                                                  "srv.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*argv: str) -> None:
        r = subprocess.run(["openssl", *argv], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr

    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=Mailstream test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
    san = ",".join(("IP:" if n[0].isdigit() else "DNS:") + n for n in names)
    (d / "ext.cnf").write_text(f"subjectAltName={san}\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(d / "ext.cnf"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ca, ctx


def outcome(evs, q):
    (e,) = [x for x in evs if x.get("qid") == q]
    return e


def mails(srv) -> List[str]:
    return [c for c in srv.commands if c.upper().startswith("MAIL FROM:")]


def test_requiretls_never_plaintext(cluster_factory, fake_smtp, tmp_path):
    """One cluster, one destination per case (transport map):
    plain.mstest  no STARTTLS                    -> bounced 5.7.10, nothing sent
    noreq.mstest  verified TLS, no REQUIRETLS    -> bounced 5.7.30, nothing sent
    good.mstest   verified TLS and REQUIRETLS    -> delivered, MAIL ... REQUIRETLS
    self.mstest   TLS with a certificate our CA did not sign: deferred 4.7.5
                  (`may` would have delivered it: the control without
                  REQUIRETLS shows it)
    The sender's domain (DSNs) goes to the good server."""
    ca, ctx = make_ca(tmp_path / "ca", ["localhost", "127.0.0.1"])
    cert, key = mslocal.ensure_tls(tmp_path / "self")  # not signed by our CA
    self_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self_ctx.load_cert_chain(str(cert), str(key))
    plain = fake_smtp()
    noreq = fake_smtp(tls=ctx, extensions=("DSN",))
    good = fake_smtp(tls=ctx, tls_extensions=("REQUIRETLS",))
    selfsigned = fake_smtp(tls=self_ctx, tls_extensions=("REQUIRETLS",))
    tmap = ", ".join(f"{dom} smtp:[127.0.0.1]:{srv.port}" for dom, srv in [
        ("plain.mstest", plain), ("noreq.mstest", noreq), ("good.mstest", good),
        ("self.mstest", selfsigned), ("example.org", good)])
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "retry_min_ms": 60000, "retry_max_ms": 60000},
        "transport": {"map": tmap}, "tls": {"ca_file": str(ca)}})

    q_plain, q_noreq, q_good, q_self, q_self_ok, q_plain_ok = (new_qid() for _ in range(6))

    def req(q: str, rcpt: str, on: bool = True) -> tuple:
        return (q, envelope(q, [rcpt], message(q), direction=DIRECTION_OUTBOUND,
                            requiretls=on))
    produce(cl, [req(q_plain, "a@plain.mstest"), req(q_noreq, "b@noreq.mstest"),
                 req(q_good, "c@good.mstest"), req(q_self, "d@self.mstest"),
                 req(q_self_ok, "e@self.mstest", on=False),
                 req(q_plain_ok, "f@plain.mstest", on=False)])
    qs = [q_plain, q_noreq, q_good, q_self, q_self_ok, q_plain_ok]
    evs = wait_events(cl, lambda e: all(any(x.get("qid") == q for x in e) for q in qs),
                      timeout=90)

    # No STARTTLS: refused before MAIL, so the message never went in plaintext.
    e = outcome(evs, q_plain)
    assert (e["outcome"], e["code"], e["dsn"], e["class"]) == ("bounced", 550, "5.7.10", "tls")
    assert "did not offer STARTTLS" in e["reply"]
    # Verified TLS, but the server does not promise to keep it: 5.7.30.
    e = outcome(evs, q_noreq)
    assert (e["outcome"], e["dsn"]) == ("bounced", "5.7.30")
    assert noreq.tls_sessions and mails(noreq) == []
    # The one that can: over verified TLS, REQUIRETLS passed on.
    e = outcome(evs, q_good)
    assert e["outcome"] == "delivered" and e["tls"].endswith(" verified")
    assert f"MAIL FROM:<sender@example.org> SIZE={len(message(q_good))} REQUIRETLS" in \
        mails(good)
    assert [d[1] for d in good.delivered if d[0] == "sender@example.org"] == \
        [["c@good.mstest"]]
    # A certificate that does not verify: deferred (it may be renewed, or
    # an attacker's), nothing sent; without REQUIRETLS `may` delivers there.
    e = outcome(evs, q_self)
    assert (e["outcome"], e["dsn"]) == ("deferred", "4.7.5") and "not verified" in e["reply"]
    assert outcome(evs, q_self_ok)["outcome"] == "delivered"
    assert [d[1] for d in selfsigned.delivered] == [["e@self.mstest"]]
    # Without REQUIRETLS the plaintext server is fine: the only MAIL it saw.
    assert outcome(evs, q_plain_ok)["outcome"] == "delivered"
    assert [d[1] for d in plain.delivered] == [["f@plain.mstest"]]
    assert len(mails(plain)) == 1

    # Both bounces come back as DSNs, themselves sent with REQUIRETLS over
    # verified TLS, with the headers only (RFC 8689, non-delivery message
    # handling).
    mslocal.wait_until(lambda: len(dsns(good)) >= 2, 90, "two DSNs", interval=0.5)
    assert all(m.startswith("MAIL FROM:<>") and m.endswith(" REQUIRETLS")
               for m in mails(good) if m.startswith("MAIL FROM:<>"))
    got = {}
    for (_, rcpts, data) in dsns(good):
        assert rcpts == ["sender@example.org"]
        msg = email.message_from_bytes(data, policy=email.policy.default)
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == [
            "text/plain", "message/delivery-status", "text/rfc822-headers"]
        returned = parts[2].get_content()
        assert "Hello." not in returned
        r = parts[1].get_payload()[1]
        assert r["Action"] == "failed"
        got[r["Final-Recipient"]] = (r["Status"], r["Diagnostic-Code"])
    assert got["rfc822; a@plain.mstest"][0] == "5.7.10"
    assert got["rfc822; b@noreq.mstest"][0] == "5.7.30"
    assert "REQUIRETLS support required" in got["rfc822; b@noreq.mstest"][1]
    log = wait_log(cl.workers[0], f"event=dsn qid={q_noreq}")
    assert "requiretls=1" in log and "event=smtp_requiretls_refused" in log


ZONES = {
    # The first MX cannot do TLS; the second can, with REQUIRETLS.
    "req.mstest": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.2", "mx2 A 127.0.0.3"],
    # Neither MX host offers REQUIRETLS.
    "norq.mstest": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.4", "mx2 A 127.0.0.5"],
}


nsd = module_nsd(ZONES)


def test_requiretls_tries_every_mx(cluster_factory, nsd, mx_port, servers, tmp_path):  # noqa: F811
    """RFC 8689 X.7.30 ("none of the SMTP servers"): bounced only when none of the MX hosts can take
    it; a host that cannot is skipped like one that is down. The
    certificate names the MX host (RFC 8689 §4.2.1 step 4)."""
    ca, ctx = make_ca(tmp_path / "ca", ["mx2.req.mstest", "mx1.norq.mstest", "mx2.norq.mstest"])
    req1 = servers("127.0.0.2", mx_port)
    req2 = servers("127.0.0.3", mx_port, tls=ctx, tls_extensions=("REQUIRETLS",))
    norq1 = servers("127.0.0.4", mx_port, tls=ctx)
    norq2 = servers("127.0.0.5", mx_port, tls=ctx)
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "smtp_port": mx_port, "retry_min_ms": 60000,
                     "retry_max_ms": 60000},
        "dns": {"upstream": nsd.upstream, "timeout_ms": 5000},
        "tls": {"ca_file": str(ca)}})
    q1, q2 = new_qid(), new_qid()
    # Unknown direction: no DSN (nothing routes example.org here).
    produce(cl, [(q1, envelope(q1, ["x@req.mstest"], message(q1), requiretls=True)),
                 (q2, envelope(q2, ["y@norq.mstest"], message(q2), requiretls=True))])
    evs = wait_events(cl, lambda e: {x.get("qid") for x in e} >= {q1, q2}, timeout=90)
    e1, e2 = outcome(evs, q1), outcome(evs, q2)
    assert e1["outcome"] == "delivered" and e1["attempt"] == 1
    assert e1["relay"] == f"mx2.req.mstest[127.0.0.3]:{mx_port}"
    assert mails(req1) == [] and [d[1] for d in req2.delivered] == [["x@req.mstest"]]
    assert (e2["outcome"], e2["dsn"]) == ("bounced", "5.7.30")
    assert e2["relay"] == f"mx2.norq.mstest[127.0.0.5]:{mx_port}"
    assert norq1.tls_sessions and norq2.tls_sessions
    assert mails(norq1) == [] and mails(norq2) == []
    assert metric(cl.workers[0], "mailstream_worker_next_address_total") >= 2
