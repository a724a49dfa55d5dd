"""Worker routing end to end: MX lookups through a real DNS server (NSD on
loopback), the transport map, and the relay host.

The zones point MX hosts at 127.0.0.x addresses. Every scripted SMTP
destination listens on the same port P on its own loopback address, and the
workers deliver MX mail to port P ([delivery] smtp_port), so "nothing
listens on 127.0.0.4:P" is a refused connection, exactly as an MX host that
is down. No test asserts timings.
"""

from __future__ import annotations

import socket
from typing import Dict, List

import pytest

import mslocal
from dns_zone import free_port_on, module_nsd
from test_worker_delivery import (FakeSMTP, envelope, message, new_qid, produce,  # noqa: F401
                                  wait_events, wait_log, metric, KCAT)

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")


def _v6_loopback() -> bool:
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


HAVE_V6 = _v6_loopback()

ZONES: Dict[str, List[str]] = {
    # Preference order: mx-a (10) before mx-b (20), whatever the zone order.
    "pref.mstest": ["@ MX 20 mx-b", "@ MX 10 mx-a", "mx-a A 127.0.0.2", "mx-b A 127.0.0.3"],
    # The first MX refuses connections; the second takes the mail.
    "fallback.mstest": ["@ MX 10 down", "@ MX 20 up", "down A 127.0.0.4", "up A 127.0.0.5"],
    # No MX: the domain's own address (RFC 5321 §5.1 implicit MX).
    "implicit.mstest": ["@ A 127.0.0.6"],
    # RFC 7505 null MX.
    "nullmx.mstest": ["@ MX 0 ."],
    # Equal preferences: both hosts get mail.
    "equal.mstest": ["@ MX 10 e1", "@ MX 10 e2", "e1 A 127.0.0.7", "e2 A 127.0.0.8"],
    # An MX host with only an IPv6 address.
    "six.mstest": ["@ MX 10 v6", "v6 AAAA ::1"],
    # Names under this zone that do not exist are NXDOMAIN.
    "nx.mstest": [],
}


nsd = module_nsd(ZONES)


@pytest.fixture
def mx_port():
    """A port free on every loopback address the zones use."""
    return free_port_on([f"127.0.0.{last}" for last in range(2, 9)])


@pytest.fixture
def servers():
    made: List[FakeSMTP] = []

    def make(host: str, port: int, **kw) -> FakeSMTP:
        s = FakeSMTP(host=host, port=port, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def mx_cluster(cluster_factory, nsd, port, **extra):
    """Workers only, MX routing through NSD (no relay host)."""
    delivery = {"relay_host": "", "smtp_port": port, "retry_min_ms": 200, "retry_max_ms": 1000,
                "connect_timeout_ms": 5000}
    sections = {"delivery": delivery, "dns": {"upstream": nsd.upstream, "timeout_ms": 5000}}
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    return cluster_factory(frontends=0, workers=1, worker_extra=sections)


def mine(evs, q):
    return [e for e in evs if e.get("qid") == q]


def test_mx_preference_order(cluster_factory, nsd, mx_port, servers):
    a = servers("127.0.0.2", mx_port)
    b = servers("127.0.0.3", mx_port)
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    qids = [new_qid() for _ in range(4)]
    produce(cl, [(q, envelope(q, [f"u.{q}@pref.mstest"], message(q))) for q in qids])
    evs = wait_events(cl, lambda e: sum(x.get("outcome") == "delivered" for x in e) >= 4)
    assert len(a.delivered) == 4 and b.delivered == []
    for q in qids:
        (e,) = mine(evs, q)
        assert e["relay"] == f"mx-a.pref.mstest[127.0.0.2]:{mx_port}"
        assert e["attempt"] == 1 and e["code"] == 250


def test_mx_fallback_when_first_refuses(cluster_factory, nsd, mx_port, servers):
    up = servers("127.0.0.5", mx_port)
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["x@fallback.mstest", "y@fallback.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: sum(x.get("outcome") == "delivered" for x in mine(e, q)) >= 2)
    ours = mine(evs, q)
    # One attempt, both recipients in one transaction to the second MX.
    assert {e["outcome"] for e in ours} == {"delivered"} and {e["attempt"] for e in ours} == {1}
    assert {e["relay"] for e in ours} == {f"up.fallback.mstest[127.0.0.5]:{mx_port}"}
    assert len(up.delivered) == 1 and sorted(up.delivered[0][1]) == ["x@fallback.mstest",
                                                                    "y@fallback.mstest"]
    log = wait_log(cl.workers[0], "event=smtp_next_address")
    assert "127.0.0.4" in log
    assert metric(cl.workers[0], "mailstream_worker_next_address_total") >= 1


def test_implicit_mx(cluster_factory, nsd, mx_port, servers):
    srv = servers("127.0.0.6", mx_port)
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["someone@implicit.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: any(x.get("outcome") == "delivered" for x in mine(e, q)))
    assert mine(evs, q)[0]["relay"] == f"implicit.mstest[127.0.0.6]:{mx_port}"
    assert srv.delivered[0][2] == message(q)


def test_null_mx_bounces_without_connecting(cluster_factory, nsd, mx_port):
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["nobody@nullmx.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: len(mine(e, q)) >= 1)
    (e,) = mine(evs, q)
    assert e["outcome"] == "bounced" and e["dsn"] == "5.1.10" and e["code"] == 556
    assert "null MX" in e["reply"]
    assert e["class"] == "dns"


def test_nxdomain_bounces(cluster_factory, nsd, mx_port):
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@nothere.nx.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: len(mine(e, q)) >= 1)
    (e,) = mine(evs, q)
    assert e["outcome"] == "bounced" and e["dsn"] == "5.1.2"


def test_equal_preferences_share_the_load(cluster_factory, nsd, mx_port, servers):
    e1 = servers("127.0.0.7", mx_port)
    e2 = servers("127.0.0.8", mx_port)
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    qids = [new_qid() for _ in range(20)]
    produce(cl, [(q, envelope(q, [f"r@equal.mstest"], message(q))) for q in qids])
    wait_events(cl, lambda e: sum(x.get("outcome") == "delivered" for x in e) >= 20)
    # Random choice among equals: both get some (all 20 on one: p = 2^-19).
    assert len(e1.delivered) + len(e2.delivered) == 20
    assert e1.delivered and e2.delivered


@pytest.mark.skipif(not HAVE_V6, reason="no IPv6 loopback")
def test_mx_with_ipv6_address(cluster_factory, nsd, mx_port, servers):
    srv = servers("::1", mx_port)
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["v@six.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: any(x.get("outcome") == "delivered" for x in mine(e, q)))
    assert mine(evs, q)[0]["relay"] == f"v6.six.mstest[::1]:{mx_port}"
    assert len(srv.delivered) == 1


def test_recipients_grouped_by_destination(cluster_factory, nsd, mx_port, servers):
    """One message, recipients in three domains: one transaction per
    destination, each with its own recipients, in one attempt."""
    a = servers("127.0.0.2", mx_port)
    imp = servers("127.0.0.6", mx_port)
    cl = mx_cluster(cluster_factory, nsd, mx_port)
    q = new_qid()
    produce(cl, [(q, envelope(q, ["p1@pref.mstest", "i1@implicit.mstest", "p2@PREF.mstest",
                                  "n@nullmx.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: len(mine(e, q)) >= 4)
    by = {e["rcpt"]: e for e in mine(evs, q)}
    assert by["n@nullmx.mstest"]["outcome"] == "bounced"
    assert all(by[r]["outcome"] == "delivered" for r in ("p1@pref.mstest", "i1@implicit.mstest",
                                                        "p2@PREF.mstest"))
    assert [sorted(d[1]) for d in a.delivered] == [["p1@pref.mstest", "p2@PREF.mstest"]]
    assert [d[1] for d in imp.delivered] == [["i1@implicit.mstest"]]


def test_transport_map(cluster_factory, nsd, mx_port, servers, tmp_path):
    """Transport map before MX: smtp:[host]:port, discard, error:, with a
    map file for one entry and the inline list for the others."""
    special = servers("127.0.0.3", mx_port)
    mapfile = tmp_path / "transport"
    mapfile.write_text("# test map\n.sub.pref.mstest  smtp:[127.0.0.3]:%d\n" % mx_port)
    cl = mx_cluster(cluster_factory, nsd, mx_port, transport={
        "map": "drop.mstest discard, refused.mstest error:5.7.1 we do not deliver there, "
               f"pref.mstest smtp:[127.0.0.3]:{mx_port}",
        "map_file": str(mapfile)})
    q = new_qid()
    produce(cl, [(q, envelope(q, ["a@drop.mstest", "b@refused.mstest", "c@pref.mstest",
                                  "d@deep.sub.pref.mstest"], message(q)))])
    evs = wait_events(cl, lambda e: len(mine(e, q)) >= 4)
    by = {e["rcpt"]: e for e in mine(evs, q)}
    assert by["a@drop.mstest"]["outcome"] == "delivered" and by["a@drop.mstest"]["relay"] == "discard"
    assert by["b@refused.mstest"]["outcome"] == "bounced"
    assert by["b@refused.mstest"]["dsn"] == "5.7.1"
    assert "we do not deliver there" in by["b@refused.mstest"]["reply"]
    assert by["c@pref.mstest"]["relay"] == f"127.0.0.3[127.0.0.3]:{mx_port}"
    assert by["d@deep.sub.pref.mstest"]["outcome"] == "delivered"
    # Two map entries with the same next hop are still two destinations.
    assert sorted(r for d in special.delivered for r in d[1]) == ["c@pref.mstest",
                                                                  "d@deep.sub.pref.mstest"]
