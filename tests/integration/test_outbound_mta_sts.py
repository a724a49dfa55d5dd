"""MTA-STS (RFC 8461) for outbound SMTP end to end: NSD serves the
_mta-sts TXT records, the MX records and the address of mta-sts.<domain>;
a local HTTPS server (Python's http.server over ssl, a certificate from a
throw-away CA: the worker's [tls] mta_sts_ca_file) serves the policies;
scripted SMTP servers (FakeSMTP) have certificates from another CA (the
worker's [tls] ca_file).

Domains under sts.mstest, each its own policy:
  good     enforce, MX listed, certificate valid  -> delivered, verified, "mta-sts"
  badcert  enforce, the certificate of another CA -> deferred 4.7.5, nothing sent
  strip    enforce, STARTTLS not offered          -> deferred 4.7.4
  unlisted enforce, the MX host is not in the policy -> deferred 4.7.5, never connected
  testing  testing, bad certificate               -> delivered (the default `may`)
Then: the policy is cached in Redis for the cluster (max_age, with the TXT
id), survives the policy server going down, and a cached policy whose id
differs from the TXT record's is fetched again.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from typing import Dict

import pytest

import mslocal
from dns_zone import Nsd, free_port_on
from test_worker_delivery import (KCAT, envelope, message, metric, new_qid,  # noqa: F401
                                  produce, wait_events, wait_log)
from test_worker_routing import servers  # noqa: F401
from test_worker_requiretls import make_ca

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")

ZONE = "sts.mstest"
HTTPS_IP = "127.0.0.9"


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "\r\n".join(["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx),
                        f"max_age: {max_age}"]) + "\r\n"


POLICIES: Dict[str, str] = {
    "good": policy("enforce", f"mx-good.good.{ZONE}"),
    "badcert": policy("enforce", f"*.badcert.{ZONE}"),
    "strip": policy("enforce", f"mx.strip.{ZONE}"),
    "unlisted": policy("enforce", f"elsewhere.{ZONE}"),
    "testing": policy("testing", f"mx.testing.{ZONE}"),
}
MX_IP = {"good": "127.0.0.2", "badcert": "127.0.0.3", "strip": "127.0.0.4",
         "unlisted": "127.0.0.5", "testing": "127.0.0.6"}
MX_NAME = {"good": "mx-good", "badcert": "mx", "strip": "mx", "unlisted": "mx",
           "testing": "mx"}


class PolicyServer:
    """HTTPS on HTTPS_IP:port; GET /.well-known/mta-sts.txt answers the
    policy of the domain named by the Host header (mta-sts.<domain>)."""

    def __init__(self, ctx: ssl.SSLContext, port: int, policies: Dict[str, str]):
        self.policies, self.hits = policies, []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                srv.hits.append(host)
                suffix = f".{ZONE}"
                dom = host[len("mta-sts."):] if host.startswith("mta-sts.") else ""
                dom = dom[:-len(suffix)] if dom.endswith(suffix) else ""
                body = srv.policies.get(dom)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((HTTPS_IP, port), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("sts")
    smtp_port = free_port_on(MX_IP.values())
    https_port = free_port_on([HTTPS_IP])
    smtp_ca, smtp_ctx = make_ca(base / "smtp", [f"{MX_NAME[d]}.{d}.{ZONE}" for d in MX_IP])
    _, other_ctx = make_ca(base / "other", [f"mx.badcert.{ZONE}", f"mx.testing.{ZONE}"])
    web_ca, web_ctx = make_ca(base / "web", [f"mta-sts.{d}.{ZONE}" for d in POLICIES])
    records = []
    for d in POLICIES:
        records += [f"{d} MX 10 {MX_NAME[d]}.{d}", f"{MX_NAME[d]}.{d} A {MX_IP[d]}",
                    f'_mta-sts.{d} TXT "v=STSv1; id=1;"', f"mta-sts.{d} A {HTTPS_IP}"]
    sup = mslocal.Supervisor(base / "nsd")
    nsd = Nsd(sup, mslocal.free_port(), {ZONE: records})
    nsd.start()
    web = PolicyServer(web_ctx, https_port, dict(POLICIES))
    yield {"nsd": nsd, "smtp_port": smtp_port, "https_port": https_port, "smtp_ca": smtp_ca,
           "web_ca": web_ca, "smtp_ctx": smtp_ctx, "other_ctx": other_ctx, "web": web}
    web.close()
    sup.stop_all()


def sts_cluster(cluster_factory, env):
    return cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "smtp_port": env["smtp_port"], "retry_min_ms": 60000,
                     "retry_max_ms": 60000, "connect_timeout_ms": 5000},
        "dns": {"upstream": env["nsd"].upstream, "timeout_ms": 5000},
        "tls": {"policy": "may", "ca_file": str(env["smtp_ca"]), "mta_sts": "yes",
                "mta_sts_ca_file": str(env["web_ca"]), "mta_sts_port": env["https_port"]}})


def outcomes(cl, qs):
    evs = wait_events(cl, lambda e: all(any(x.get("qid") == q for x in e) for q in qs.values()),
                      timeout=90)
    return {d: [x for x in evs if x.get("qid") == q][0] for d, q in qs.items()}


def test_mta_sts(cluster_factory, env, servers):
    port = env["smtp_port"]
    srv = {
        "good": servers(MX_IP["good"], port, tls=env["smtp_ctx"]),
        "badcert": servers(MX_IP["badcert"], port, tls=env["other_ctx"]),
        "strip": servers(MX_IP["strip"], port),
        "unlisted": servers(MX_IP["unlisted"], port, tls=env["smtp_ctx"]),
        "testing": servers(MX_IP["testing"], port, tls=env["other_ctx"]),
    }
    cl = sts_cluster(cluster_factory, env)
    qs = {d: new_qid() for d in POLICIES}
    produce(cl, [(q, envelope(q, [f"r@{d}.{ZONE}"], message(q))) for d, q in qs.items()])
    ev = outcomes(cl, qs)

    assert ev["good"]["outcome"] == "delivered", ev["good"]
    assert ev["good"]["tls"].endswith(" verified")
    assert ev["good"]["tls_policy"] == "mta-sts" and ev["good"]["tls_auth"] == "verified"

    assert (ev["badcert"]["outcome"], ev["badcert"]["dsn"]) == ("deferred", "4.7.5")
    assert srv["badcert"].delivered == []

    assert (ev["strip"]["outcome"], ev["strip"]["dsn"]) == ("deferred", "4.7.4")
    assert srv["strip"].delivered == []

    assert (ev["unlisted"]["outcome"], ev["unlisted"]["dsn"]) == ("deferred", "4.7.5")
    assert "MTA-STS" in ev["unlisted"]["reply"]
    assert srv["unlisted"].sessions == 0  # never connected

    assert ev["testing"]["outcome"] == "delivered", ev["testing"]
    assert srv["testing"].delivered

    # Cached for the cluster: the id and the policy, expiring after max_age.
    raw = mslocal.redis_command(cl.redis.port, "GET", f"ms:mtasts:good.{ZONE}")
    assert b"1\nversion: STSv1" in raw
    ttl = mslocal.redis_command(cl.redis.port, "TTL", f"ms:mtasts:good.{ZONE}")
    assert 0 < int(ttl[1:].strip()) <= 86400
    assert "event=mta_sts_fetched" in wait_log(cl.workers[0], "event=mta_sts_fetched")
    assert metric(cl.workers[0], 'mailstream_worker_tls_outcomes_total{policy="mta-sts",'
                  'auth="verified",outcome="delivered"}') == 1


def test_cache_survives_server_down_and_id_change_refetches(cluster_factory, env, servers):
    port = env["smtp_port"]
    good = servers(MX_IP["good"], port, tls=env["smtp_ctx"])
    unlisted = servers(MX_IP["unlisted"], port, tls=env["smtp_ctx"])
    cl = sts_cluster(cluster_factory, env)
    web = env["web"]
    # A cached policy with another id than the TXT record's: fetched again,
    # and the fresh one (enforce, another MX) is what applies.
    mslocal.redis_command(cl.redis.port, "SET", f"ms:mtasts:unlisted.{ZONE}",
                          "old\n" + policy("testing", f"mx.unlisted.{ZONE}"), "EX", "3600")
    hits = len(web.hits)
    q = new_qid()
    produce(cl, [(q, envelope(q, [f"r@unlisted.{ZONE}"], message(q)))])
    e = outcomes(cl, {"u": q})["u"]
    assert (e["outcome"], e["dsn"]) == ("deferred", "4.7.5")
    assert f"mta-sts.unlisted.{ZONE}" in web.hits[hits:]
    assert unlisted.sessions == 0
    raw = mslocal.redis_command(cl.redis.port, "GET", f"ms:mtasts:unlisted.{ZONE}")
    assert raw.split(b"\r\n")[1].startswith(b"1\n")

    # The policy server goes down: the cached policy (same id) still
    # applies, without a fetch.
    q1 = new_qid()
    produce(cl, [(q1, envelope(q1, [f"r@good.{ZONE}"], message(q1)))])
    assert outcomes(cl, {"g": q1})["g"]["tls_policy"] == "mta-sts"
    saved = dict(web.policies)
    web.policies.clear()  # every fetch now fails (404)
    try:
        hits = len(web.hits)
        q2 = new_qid()
        produce(cl, [(q2, envelope(q2, [f"r@good.{ZONE}"], message(q2)))])
        e2 = outcomes(cl, {"g": q2})["g"]
        assert e2["outcome"] == "delivered" and e2["tls_policy"] == "mta-sts"
        assert web.hits[hits:] == []  # from the cache
        assert len(good.delivered) == 2
    finally:
        web.policies.update(saved)
