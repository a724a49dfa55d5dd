"""STARTTLS from the worker (RFC 3207) by policy: none, may (the default),
encrypt, verify. The destination is the scripted FakeSMTP with a self-signed
certificate for localhost / 127.0.0.1 (mslocal.ensure_tls) as the relay host.
"""

from __future__ import annotations

import ssl

import pytest

import mslocal
from test_worker_delivery import (KCAT, envelope, fake_smtp, message, new_qid,  # noqa: F401
                                  produce, wait_events, wait_log)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")


@pytest.fixture
def tls_material(tmp_path):
    cert, key = mslocal.ensure_tls(tmp_path / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx, cert


def cluster_tls(cluster_factory, relay, **tls):
    return cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": relay, "retry_min_ms": 500, "retry_max_ms": 2000},
        "tls": tls})


def outcome(cl, q):
    evs = wait_events(cl, lambda e: any(x.get("qid") == q for x in e))
    return [x for x in evs if x.get("qid") == q][0]


def test_may_uses_starttls_when_offered(cluster_factory, fake_smtp, tls_material):
    ctx, _ = tls_material
    srv = fake_smtp(tls=ctx)
    cl = cluster_tls(cluster_factory, srv.address)  # policy defaults to may
    q = new_qid()
    produce(cl, [(q, envelope(q, ["t@example.net"], message(q)))])
    e = outcome(cl, q)
    assert e["outcome"] == "delivered"
    assert e["tls"].startswith("TLSv1.") and not e["tls"].endswith("verified")
    assert srv.tls_sessions and srv.delivered[0][2] == message(q)
    # Everything after STARTTLS went over TLS: EHLO twice, one MAIL.
    assert [c.split(" ")[0] for c in srv.commands][:3] == ["EHLO", "STARTTLS", "EHLO"]
    assert 'tls="TLSv1.' in wait_log(cl.workers[0], "outcome=delivered")


def test_none_never_starts_tls(cluster_factory, fake_smtp, tls_material):
    ctx, _ = tls_material
    srv = fake_smtp(tls=ctx)
    cl = cluster_tls(cluster_factory, srv.address, policy="none")
    q = new_qid()
    produce(cl, [(q, envelope(q, ["t@example.net"], message(q)))])
    e = outcome(cl, q)
    assert e["outcome"] == "delivered" and "tls" not in e
    assert srv.tls_sessions == [] and "STARTTLS" not in srv.commands


def test_encrypt_defers_without_starttls(cluster_factory, fake_smtp):
    srv = fake_smtp()  # no STARTTLS
    cl = cluster_tls(cluster_factory, srv.address, policy="may",
                     policy_map="example.net encrypt")
    q1, q2 = new_qid(), new_qid()
    produce(cl, [(q1, envelope(q1, ["t@example.net"], message(q1))),
                 (q2, envelope(q2, ["t@other.example"], message(q2)))])
    e1, e2 = outcome(cl, q1), outcome(cl, q2)
    assert e1["outcome"] == "deferred" and e1["dsn"] == "4.7.4" and e1["class"] == "tls"
    assert "did not offer STARTTLS" in e1["reply"]
    assert e2["outcome"] == "delivered"  # `may` for everyone else
    assert [d[1] for d in srv.delivered] == [["t@other.example"]]


def test_verify_checks_the_certificate(cluster_factory, fake_smtp, tls_material):
    ctx, cert = tls_material
    srv = fake_smtp(tls=ctx)
    # Our CA: the self-signed certificate names IP 127.0.0.1, the relay.
    cl = cluster_tls(cluster_factory, srv.address, policy="verify", ca_file=str(cert))
    q = new_qid()
    produce(cl, [(q, envelope(q, ["t@example.net"], message(q)))])
    e = outcome(cl, q)
    assert e["outcome"] == "delivered" and e["tls"].endswith(" verified")

    # The system CAs do not know it: deferred, nothing delivered.
    srv2 = fake_smtp(tls=ctx)
    cl2 = cluster_tls(cluster_factory, srv2.address, policy="verify")
    q2 = new_qid()
    produce(cl2, [(q2, envelope(q2, ["t@example.net"], message(q2)))])
    e2 = outcome(cl2, q2)
    assert e2["outcome"] == "deferred" and e2["dsn"] == "4.7.5"
    assert "not verified" in e2["reply"] and srv2.delivered == []
