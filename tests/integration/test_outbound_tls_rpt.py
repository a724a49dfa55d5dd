"""SMTP TLS Reporting (RFC 8460) end to end: two workers count every
outbound session's TLS result in the cluster's Redis, and once per period
one of them (the period's lease) sends each domain that publishes an
_smtp._tls record its aggregate report: https: by POST to a local HTTPS
server, mailto: as a message through our own queue to a scripted SMTP
server.  [tls] tlsrpt_interval_s makes a period a few seconds instead of a
UTC day.

Domains under rpt.mstest (NSD serves the zone; MTA-STS policies come from
the same local HTTPS server, a certificate from a throw-away CA):
  good     MTA-STS enforce, valid certificate      -> sessions successful
  badcert  MTA-STS enforce, another CA's certificate -> certificate-not-trusted
  strip    MTA-STS enforce, STARTTLS not offered   -> starttls-not-supported
  testing  MTA-STS testing, another CA's certificate -> delivered, and reported
           as certificate-not-trusted (RFC 8461 §5: testing mode is for that)
  plain    no policy, TLS with any certificate     -> no-policy-found, successful;
           its rua is mailto: (the report goes to sink.rpt.mstest)
  danegood DANE, a TLSA 3 1 1 record of the server's key -> tlsa, successful
  danebad  DANE, a TLSA record of another key      -> tlsa, validation-failure
The zone is DNSSEC-signed and the worker's default level is `dane`, so DANE
applies where TLSA records exist and MTA-STS (or `may`) elsewhere.
Each report must be valid JSON of §4.4's shape, gzipped, sent as
application/tlsrpt+gzip; its counts must add up to the sessions tried; no
domain gets two reports for one period although two workers run.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import http.server
import json
import re
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

import mslocal
from dns_zone import LDNS_SIGNZONE, Nsd, free_port_on
from test_worker_delivery import (KCAT, envelope, message, metric, new_qid,  # noqa: F401
                                  produce, wait_events)
from test_worker_routing import servers  # noqa: F401
from test_worker_requiretls import make_ca

pytestmark = [
    pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`"),
    pytest.mark.skipif(LDNS_SIGNZONE is None, reason="ldns-signzone not installed: run "
                       "`make deps`"),
]

ZONE = "rpt.mstest"
HTTPS_IP = "127.0.0.9"
INTERVAL = 4

STS = {"good": "enforce", "badcert": "enforce", "strip": "enforce", "testing": "testing"}
MX_IP = {"good": "127.0.0.2", "badcert": "127.0.0.3", "strip": "127.0.0.4",
         "plain": "127.0.0.5", "sink": "127.0.0.6", "testing": "127.0.0.7",
         "danegood": "127.0.0.8", "danebad": "127.0.0.10"}
# Messages sent per domain: each one session (connection reuse is off).
SENT = {"good": 2, "badcert": 1, "strip": 1, "plain": 1, "testing": 1, "danegood": 1,
        "danebad": 1}
DANE = ("danegood", "danebad")


def policy(mode: str, mx: str) -> str:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"


class Web:
    """HTTPS on HTTPS_IP: GET serves MTA-STS policies (by Host), POST
    /report/<domain> keeps TLS reports."""

    def __init__(self, ctx: ssl.SSLContext, port: int):
        self.reports: List[dict] = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                m = re.fullmatch(rf"mta-sts\.([a-z]+)\.{re.escape(ZONE)}", host)
                if not m or m.group(1) not in STS or self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                data = policy(STS[m.group(1)], f"mx.{m.group(1)}.{ZONE}").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                srv.reports.append({"path": self.path, "host": self.headers.get("Host"),
                                    "type": self.headers.get("Content-Type"), "body": body})
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((HTTPS_IP, port), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("tlsrpt")
    smtp_port = free_port_on(MX_IP.values())
    https_port = free_port_on([HTTPS_IP])
    smtp_ca, smtp_ctx = make_ca(base / "smtp", [f"mx.{d}.{ZONE}" for d in MX_IP])
    _, other_ctx = make_ca(base / "other", [f"mx.badcert.{ZONE}", f"mx.plain.{ZONE}",
                                            f"mx.testing.{ZONE}"])
    web_ca, web_ctx = make_ca(base / "web",
                              [f"rpt.{ZONE}"] + [f"mta-sts.{d}.{ZONE}" for d in STS])
    records = [f"rpt A {HTTPS_IP}"]
    for d, ip in MX_IP.items():
        records += [f"{d} MX 10 mx.{d}", f"mx.{d} A {ip}"]
    for d in STS:
        records += [f'_mta-sts.{d} TXT "v=STSv1; id=1;"', f"mta-sts.{d} A {HTTPS_IP}",
                    f'_smtp._tls.{d} TXT "v=TLSRPTv1; '
                    f'rua=https://rpt.{ZONE}:{https_port}/report/{d}"']
    records.append(f'_smtp._tls.plain TXT "v=TLSRPTv1; rua=mailto:tls-reports@sink.{ZONE}"')
    good_key = spki_sha256(base / "smtp" / "srv.pem")
    for d in DANE:
        records += [f"_{smtp_port}._tcp.mx.{d} TLSA 3 1 1 "
                    f"{good_key if d == 'danegood' else '00' * 32}",
                    f'_smtp._tls.{d} TXT "v=TLSRPTv1; '
                    f'rua=https://rpt.{ZONE}:{https_port}/report/{d}"']
    sup = mslocal.Supervisor(base / "nsd")
    nsd = Nsd(sup, mslocal.free_port(), {ZONE: records}, signed=(ZONE,))
    nsd.start()
    web = Web(web_ctx, https_port)
    yield {"nsd": nsd, "smtp_port": smtp_port, "https_port": https_port, "smtp_ca": smtp_ca, "web_ca": web_ca,
           "smtp_ctx": smtp_ctx, "other_ctx": other_ctx, "web": web}
    web.close()
    sup.stop_all()


def spki_sha256(cert: Path) -> str:
    """SHA2-256 of a certificate's SubjectPublicKeyInfo, hex (TLSA 3 1 1)."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def check_report(rep: dict, domain: str) -> None:
    """RFC 8460 §4.4's schema: the fields, their types, the names."""
    assert isinstance(rep["organization-name"], str) and rep["organization-name"]
    assert isinstance(rep["contact-info"], str) and rep["contact-info"]
    assert isinstance(rep["report-id"], str) and rep["report-id"]
    dr = rep["date-range"]
    t0 = time.strptime(dr["start-datetime"], "%Y-%m-%dT%H:%M:%SZ")
    t1 = time.strptime(dr["end-datetime"], "%Y-%m-%dT%H:%M:%SZ")
    assert time.mktime(t1) - time.mktime(t0) == INTERVAL - 1
    assert isinstance(rep["policies"], list) and rep["policies"]
    for p in rep["policies"]:
        pol = p["policy"]
        assert pol["policy-type"] in ("sts", "tlsa", "no-policy-found")
        assert pol["policy-domain"] == domain
        for k in ("policy-string", "mx-host"):
            if k in pol:
                assert isinstance(pol[k], list) and all(isinstance(x, str) for x in pol[k])
        s = p["summary"]
        assert isinstance(s["total-successful-session-count"], int)
        assert isinstance(s["total-failure-session-count"], int)
        fails = 0
        for d in p.get("failure-details", []):
            assert d["result-type"] in (
                "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
                "certificate-not-trusted", "validation-failure", "tlsa-invalid",
                "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
                "sts-policy-invalid", "sts-webpki-invalid")
            assert isinstance(d["failed-session-count"], int) and d["failed-session-count"] > 0
            for k in ("sending-mta-ip", "receiving-mx-hostname", "receiving-ip"):
                assert isinstance(d.get(k, ""), str)
            fails += d["failed-session-count"]
        assert fails == s["total-failure-session-count"]


def good_key(env) -> str:
    return spki_sha256(Path(env["smtp_ca"]).parent / "srv.pem")


def totals(reps: List[dict]) -> Dict[str, list]:
    """(successes, failures by result-type, failure details) per domain,
    summed over the reports (one per period)."""
    out: Dict[str, list] = {}
    for dom, rep in reps:
        t = out.setdefault(dom, [0, {}, []])
        for p in rep["policies"]:
            t[0] += p["summary"]["total-successful-session-count"]
            for d in p.get("failure-details", []):
                t[1][d["result-type"]] = t[1].get(d["result-type"], 0) + d["failed-session-count"]
                t[2].append((p["policy"]["policy-type"], d))
    return out


def test_tls_rpt(cluster_factory, env, servers):
    port = env["smtp_port"]
    servers(MX_IP["good"], port, tls=env["smtp_ctx"])
    servers(MX_IP["badcert"], port, tls=env["other_ctx"])
    servers(MX_IP["strip"], port)
    servers(MX_IP["plain"], port, tls=env["other_ctx"])
    servers(MX_IP["testing"], port, tls=env["other_ctx"])
    for d in DANE:
        servers(MX_IP[d], port, tls=env["smtp_ctx"])
    sink = servers(MX_IP["sink"], port)
    cl = cluster_factory(frontends=0, workers=2, worker_extra={
        "delivery": {"relay_host": "", "smtp_port": port, "retry_min_ms": 60000,
                     "retry_max_ms": 60000, "connect_timeout_ms": 5000,
                     "connection_cache_ms": 0},
        "dns": {"upstream": env["nsd"].upstream, "timeout_ms": 5000,
                "trust_anchor": str(env["nsd"].trust_anchor)},
        "tls": {"policy": "dane", "ca_file": str(env["smtp_ca"]), "mta_sts": "yes",
                "mta_sts_ca_file": str(env["web_ca"]), "mta_sts_port": env["https_port"],
                "tlsrpt": "yes",
                "tlsrpt_interval_s": INTERVAL, "tlsrpt_org_name": "Mailstream Test",
                "tlsrpt_contact": "tls@example.net", "tlsrpt_submitter": "example.net",
                "tlsrpt_from": "tlsrpt@example.net"}})
    qs = {}
    for d, n in SENT.items():
        for i in range(n):
            qs[f"{d}{i}"] = new_qid()
    produce(cl, [(q, envelope(q, [f"r@{k.rstrip('0123456789')}.{ZONE}"], message(q)))
                 for k, q in qs.items()])
    evs = wait_events(cl, lambda e: all(any(x.get("qid") == q for x in e) for q in qs.values()),
                      timeout=90)
    out = {k: [x for x in evs if x.get("qid") == q][0]["outcome"] for k, q in qs.items()}
    assert out == {"good0": "delivered", "good1": "delivered", "badcert0": "deferred",
                   "strip0": "deferred", "plain0": "delivered", "testing0": "delivered",
                   "danegood0": "delivered", "danebad0": "deferred"}, out

    # https: reports, until every session is accounted for.
    web = env["web"]
    expect = {"good": (2, {}), "badcert": (0, {"certificate-not-trusted": 1}),
              "strip": (0, {"starttls-not-supported": 1}),
              "testing": (0, {"certificate-not-trusted": 1}),
              "danegood": (1, {}), "danebad": (0, {"validation-failure": 1})}

    def posted():
        reps = []
        for r in list(web.reports):
            dom = r["path"].rsplit("/", 1)[1]
            reps.append((f"{dom}.{ZONE}", json.loads(gzip.decompress(r["body"]))))
        return reps

    def complete():
        t = totals(posted())
        return all(t.get(f"{d}.{ZONE}", [0, {}])[:2] == [s, f] for d, (s, f) in expect.items())

    mslocal.wait_until(complete, 10 * INTERVAL + 30,
                       f"TLS reports adding up to {expect}: {posted()}")
    for r in web.reports:
        assert r["type"] == "application/tlsrpt+gzip"
        assert r["host"].startswith(f"rpt.{ZONE}")
    reps = posted()
    for dom, rep in reps:
        check_report(rep, dom)
        assert rep["organization-name"] == "Mailstream Test"
        assert rep["contact-info"] == "tls@example.net"
        assert rep["report-id"].endswith("@example.net")
        name = dom.split(".")[0]
        for p in rep["policies"]:
            pol = p["policy"]
            assert pol["mx-host"] == [f"mx.{name}.{ZONE}"]
            if name in DANE:
                assert pol["policy-type"] == "tlsa", pol
                # The TLSA records, in presentation form (only usable ones).
                assert pol["policy-string"] == [
                    "3 1 1 " + (good_key(env) if name == "danegood" else "00" * 32)], pol
            else:
                assert pol["policy-type"] == "sts", pol
                assert f"mode: {STS[name]}" in pol["policy-string"]
    t = totals(reps)
    (ptype, d), = t[f"badcert.{ZONE}"][2]
    assert d["receiving-mx-hostname"] == f"mx.badcert.{ZONE}"
    assert d["receiving-ip"] == MX_IP["badcert"]
    assert d["sending-mta-ip"].startswith("127.")  # our end of the connection
    # One report per domain and period, though two workers ran.
    periods = [(dom, rep["date-range"]["start-datetime"]) for dom, rep in reps]
    assert len(periods) == len(set(periods)), periods
    sent = sum(metric(w, 'mailstream_worker_tlsrpt_reports_total{via="https",outcome="sent"}')
               for w in cl.workers)
    assert sent == len(web.reports)

    # mailto: the report of plain.rpt.mstest went through the queue to the
    # sink's MX, with §5.3's headers and the gzipped report attached.
    mslocal.wait_until(lambda: sink.delivered, 10 * INTERVAL + 30, "the mailto: report")
    mail_from, rcpts, data = sink.delivered[0]
    assert rcpts == [f"tls-reports@sink.{ZONE}"]
    assert mail_from == "tlsrpt@example.net"
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["TLS-Report-Domain"] == f"plain.{ZONE}"
    assert msg["TLS-Report-Submitter"] == "example.net"
    assert re.fullmatch(rf"Report Domain: plain\.{re.escape(ZONE)} Submitter: example\.net "
                        r"Report-ID: <[0-9A-Z]+@example\.net>", str(msg["Subject"]))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    (att,) = [p for p in msg.iter_attachments() if p.get_content_type() ==
              "application/tlsrpt+gzip"]
    assert re.fullmatch(rf"example\.net!plain\.{re.escape(ZONE)}!\d+!\d+!\w+\.json\.gz",
                        att.get_filename())
    rep = json.loads(gzip.decompress(att.get_content()))
    check_report(rep, f"plain.{ZONE}")
    (p,) = rep["policies"]
    assert p["policy"]["policy-type"] == "no-policy-found"
    assert p["summary"]["total-successful-session-count"] == 1
    assert p["policy"]["mx-host"] == [f"mx.plain.{ZONE}"]

    # The counts live in Redis for the cluster, with a TTL; the lease too.
    keys = mslocal.redis_command(cl.redis.port, "KEYS", "ms:tlsrptl:*")
    assert b"ms:tlsrptl:" in keys
    k = re.search(rb"ms:tlsrptl:\d+", keys).group(0).decode()
    ttl = mslocal.redis_command(cl.redis.port, "TTL", k)
    assert 0 < int(ttl[1:].strip()) <= 4 * INTERVAL
