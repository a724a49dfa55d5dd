"""DANE for outbound SMTP (RFC 7672) end to end: a DNSSEC-signed zone
served by NSD (signed with ldns-signzone, dns_zone.Nsd), the worker's
resolver given its trust anchor ([dns] trust_anchor), TLSA records for MX
hosts, and scripted SMTP servers (FakeSMTP) whose self-signed certificates
match those records or do not.

[tls] policy is `dane` (opportunistic DANE) with one domain at `dane-only`.
Cases:
  TLSA 3 1 1 matches              -> delivered, TLS authenticated by DANE
  TLSA does not match             -> deferred 4.7.5, nothing sent in plaintext
  STARTTLS stripped, TLSA present -> deferred 4.7.4
  only unusable TLSA (PKIX-EE)    -> mandatory TLS, unauthenticated (§2.2)
  no TLSA, `dane`                 -> opportunistic TLS (`may`)
  no TLSA, `dane-only`            -> deferred 4.7.5, never connected
  an unsigned zone with a wrong TLSA record -> insecure, ignored: `may`
  REQUIRETLS through a DANE-authenticated session -> delivered
  an MX host that is a CNAME (RFC 7672 §2.2.2): TLSA at the expanded name
    first (a wrong record at the original name is not looked at), and at
    the original name when the expanded one has none -> delivered, DANE
and `mailstream-authcheck tls-check` on the same destinations.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
from pathlib import Path

import pytest

import mslocal
from dns_zone import LDNS_SIGNZONE, Nsd, free_port_on
from test_worker_delivery import (KCAT, envelope, message, metric, new_qid,  # noqa: F401
                                  produce, wait_events, wait_log)
from test_worker_routing import servers  # noqa: F401

pytestmark = [
    pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`"),
    pytest.mark.skipif(LDNS_SIGNZONE is None, reason="ldns-signzone not installed: run "
                       "`make deps`"),
]

LAST = range(2, 9)  # 127.0.0.2 .. 127.0.0.8
BUILD = Path(os.environ.get("MAILSTREAM_BUILD_DIR") or Path(__file__).resolve().parents[2] / "build")
AUTHCHECK = BUILD / "mailstream-authcheck"


def _selfsigned(d: Path, name: str) -> tuple:
    """A self-signed certificate for name: (ssl server context, SHA2-256 of
    its SubjectPublicKeyInfo in hex)."""
    d.mkdir(parents=True, exist_ok=True)
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", f"/CN={name}"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    spki = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                          capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=spki,
                         capture_output=True, check=True).stdout
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx, hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """NSD with the signed zone dane.mstest and the unsigned plain.mstest,
    the certificates, and the port every MX host listens on."""
    base = tmp_path_factory.mktemp("dane")
    port = free_port_on([f"127.0.0.{last}" for last in LAST])
    good_ctx, good = _selfsigned(base / "certs", "mx-good.dane.mstest")
    other_ctx, other = _selfsigned(base / "certs", "mx-other.dane.mstest")
    wrong = "00" * 32
    tlsa = lambda host: f"_{port}._tcp.{host}"  # noqa: E731
    zones = {
        "dane.mstest": [
            "good MX 10 mx-good", "mx-good A 127.0.0.2",
            f"{tlsa('mx-good')} TLSA 3 1 1 {good}",
            "bad MX 10 mx-bad", "mx-bad A 127.0.0.3",
            f"{tlsa('mx-bad')} TLSA 3 1 1 {wrong}",
            "strip MX 10 mx-strip", "mx-strip A 127.0.0.4",
            f"{tlsa('mx-strip')} TLSA 3 1 1 {good}",
            "unusable MX 10 mx-unusable", "mx-unusable A 127.0.0.5",
            f"{tlsa('mx-unusable')} TLSA 1 1 1 {other}",
            "notlsa MX 10 mx-notlsa", "mx-notlsa A 127.0.0.6",
            "only MX 10 mx-notlsa",
            # §2.2.2: the TLSA records of the expanded name win; the ones at
            # the alias would refuse the certificate.
            "cname MX 10 mx-alias", "mx-alias CNAME mx-target", "mx-target A 127.0.0.8",
            f"{tlsa('mx-target')} TLSA 3 1 1 {good}", f"{tlsa('mx-alias')} TLSA 3 1 1 {wrong}",
            # None at the expanded name: the alias's own records.
            "cname2 MX 10 mx-alias2", "mx-alias2 CNAME mx-target2", "mx-target2 A 127.0.0.8",
            f"{tlsa('mx-alias2')} TLSA 3 1 1 {good}",
        ],
        "plain.mstest": [
            "@ MX 10 mx", "mx A 127.0.0.7", f"{tlsa('mx')} TLSA 3 1 1 {wrong}",
        ],
    }
    sup = mslocal.Supervisor(base / "nsd")
    nsd = Nsd(sup, mslocal.free_port(), zones, signed=("dane.mstest",))
    nsd.start()
    yield {"nsd": nsd, "port": port, "good_ctx": good_ctx, "other_ctx": other_ctx}
    sup.stop_all()


def dane_cluster(cluster_factory, env):
    return cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "smtp_port": env["port"], "retry_min_ms": 500,
                     "retry_max_ms": 2000, "connect_timeout_ms": 5000},
        "dns": {"upstream": env["nsd"].upstream, "timeout_ms": 5000,
                "trust_anchor": str(env["nsd"].trust_anchor)},
        "tls": {"policy": "dane", "policy_map": "only.dane.mstest dane-only"}})


def outcome(cl, q):
    evs = wait_events(cl, lambda e: any(x.get("qid") == q for x in e))
    return [x for x in evs if x.get("qid") == q][0]


def test_dane(cluster_factory, env, servers):
    port = env["port"]
    good = servers("127.0.0.2", port, tls=env["good_ctx"])
    bad = servers("127.0.0.3", port, tls=env["good_ctx"])      # TLSA names another key
    strip = servers("127.0.0.4", port)                         # no STARTTLS offered
    unusable = servers("127.0.0.5", port, tls=env["other_ctx"])
    notlsa = servers("127.0.0.6", port, tls=env["other_ctx"])
    plain = servers("127.0.0.7", port, tls=env["other_ctx"])
    cname = servers("127.0.0.8", port, tls=env["good_ctx"])
    cl = dane_cluster(cluster_factory, env)
    cases = {}
    for dom in ("good", "bad", "strip", "unusable", "notlsa", "only", "cname", "cname2"):
        q = new_qid()
        cases[dom] = q
        produce(cl, [(q, envelope(q, [f"r@{dom}.dane.mstest"], message(q)))])
    q = new_qid()
    cases["plain"] = q
    produce(cl, [(q, envelope(q, ["r@plain.mstest"], message(q)))])
    ev = {dom: outcome(cl, q) for dom, q in cases.items()}

    # A matching DANE-EE record: authenticated, whatever CA (none) signed it.
    assert ev["good"]["outcome"] == "delivered", ev["good"]
    assert ev["good"]["tls"].endswith(" dane")
    assert ev["good"]["tls_policy"] == "dane" and ev["good"]["tls_auth"] == "dane"
    assert good.delivered[0][2] == message(cases["good"])

    # A record that matches nothing: deferred, never sent in plaintext.
    assert ev["bad"]["outcome"] == "deferred" and ev["bad"]["dsn"] == "4.7.5", ev["bad"]
    assert "TLSA" in ev["bad"]["reply"]
    assert bad.delivered == [] and "MAIL" not in " ".join(bad.commands)

    # STARTTLS stripped where TLSA records say TLS is there: deferred.
    assert ev["strip"]["outcome"] == "deferred" and ev["strip"]["dsn"] == "4.7.4", ev["strip"]
    assert strip.delivered == []

    # Only unusable records: TLS is mandatory, not authenticated (§2.2).
    assert ev["unusable"]["outcome"] == "delivered", ev["unusable"]
    assert ev["unusable"]["tls"].startswith("TLSv1.")
    assert not ev["unusable"]["tls"].endswith((" dane", " verified"))
    assert ev["unusable"]["tls_auth"] == "none"
    assert unusable.tls_sessions

    # No TLSA records: `dane` is opportunistic; `dane-only` defers.
    assert ev["notlsa"]["outcome"] == "delivered", ev["notlsa"]
    assert not ev["notlsa"]["tls"].endswith(" dane")
    assert ev["only"]["outcome"] == "deferred" and ev["only"]["dsn"] == "4.7.5", ev["only"]
    assert "TLSA" in ev["only"]["reply"]
    assert len(notlsa.delivered) == 1  # the `dane` one only

    # An unsigned zone's TLSA record is not used (RFC 7672 §2.2): `may`.
    assert ev["plain"]["outcome"] == "delivered", ev["plain"]
    assert not ev["plain"]["tls"].endswith(" dane")
    assert plain.delivered

    # A CNAME'd MX host: the expanded name's records, else the alias's.
    for dom in ("cname", "cname2"):
        assert ev[dom]["outcome"] == "delivered", ev[dom]
        assert ev[dom]["tls"].endswith(" dane") and ev[dom]["tls_auth"] == "dane", ev[dom]
    assert len(cname.delivered) == 2

    log = wait_log(cl.workers[0], "event=tls_policy_defer")
    assert "policy=dane-only" in log
    assert "tls_policy=dane tls_auth=dane" in wait_log(cl.workers[0], "outcome=delivered")
    assert metric(cl.workers[0], 'mailstream_worker_tls_outcomes_total{policy="dane",'
                  'auth="dane",outcome="delivered"}') == 3


def test_requiretls_accepts_dane(cluster_factory, env, servers):
    """RFC 8689 §4.2.1: DANE authenticates the server as well as a CA."""
    srv = servers("127.0.0.2", env["port"], tls=env["good_ctx"], tls_extensions=("REQUIRETLS",))
    cl = dane_cluster(cluster_factory, env)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["r@good.dane.mstest"], message(q), requiretls=True))])
    e = outcome(cl, q)
    assert e["outcome"] == "delivered", e
    assert e["tls"].endswith(" dane")
    assert any("REQUIRETLS" in c for c in srv.commands if c.startswith("MAIL"))


def test_tls_check_tool(env, servers, tmp_path):
    """mailstream-authcheck tls-check: the policy, the TLSA records and a
    test connection, for a matching and a mismatching destination."""
    good = servers("127.0.0.2", env["port"], tls=env["good_ctx"])
    servers("127.0.0.3", env["port"], tls=env["good_ctx"])
    ini = tmp_path / "worker.ini"
    ini.write_text("\n".join([
        "[delivery]", f"smtp_port = {env['port']}",
        "[dns]", f"upstream = {env['nsd'].upstream}",
        f"trust_anchor = {env['nsd'].trust_anchor}",
        "[tls]", "policy = dane", "policy_map = only.dane.mstest dane-only", ""]))

    def check(domain: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(AUTHCHECK), "tls-check", "-c", str(ini), domain],
                              capture_output=True, text=True, timeout=60)

    r = check("good.dane.mstest")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "policy: dane (the default" in r.stdout
    assert "dnssec: validating" in r.stdout
    assert "mx 10 mx-good.dane.mstest [127.0.0.2]: dane usable, policy dane: verify (DANE)" \
        in r.stdout
    assert "TLSA 3 1 1 " in r.stdout
    assert "authenticated: dane" in r.stdout
    assert good.delivered == []  # a test connection sends no mail

    r = check("bad.dane.mstest")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "certificate refused" in r.stdout

    r = check("only.dane.mstest")
    assert r.returncode == 2 and "policy: dane-only (only.dane.mstest)" in r.stdout
    assert "no MX host is allowed" in r.stdout
