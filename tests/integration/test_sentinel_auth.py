"""Redis Sentinel with AUTH (issue 15: "Redis AUTH configurable for every
node here too"): mslocal.RedisSentinelSet(password=, username=), what
`cluster/local up --redis-sentinel --redis-password PW [--redis-user NAME]`
starts.  The servers refuse unauthenticated clients, the replica and the
Sentinels authenticate with what the launcher gave them (masterauth,
sentinel auth-pass), and a worker finds the primary through the Sentinels,
delivers through it, and follows a failover to the replica.
"""

from __future__ import annotations

import secrets

import pytest

import mslocal
from conftest import _test_dir
from test_worker_delivery import KCAT, envelope, message, new_qid, produce

pytestmark = [pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`"),
              pytest.mark.timeout(240)]


@pytest.mark.parametrize("user", [None, "mailstream"], ids=["requirepass", "acl-user"])
def test_sentinel_set_with_auth(request, tmp_path_factory, cluster_factory, user):
    sup = mslocal.Supervisor(_test_dir(request, tmp_path_factory, "sentinel-auth"))
    pw = "pw-" + secrets.token_hex(8)
    try:
        ports = mslocal.free_ports(5)
        rs = mslocal.RedisSentinelSet(sup, ports[:2], ports[2:], password=pw, username=user)
        rs.start()  # waits for the replica's link and the Sentinels: both authenticated
        auth = [user, pw] if user else [pw]
        old, new = rs.servers
        assert mslocal.redis_command(old.port, "GET", "x").startswith(b"-NOAUTH")
        cfg = rs.client_config()
        assert "password" not in cfg["redis"] and cfg["redis"].get("username") == user
        cl = cluster_factory(frontends=0, workers=1, worker_extra=cfg)
        w = cl.workers[0]
        q1 = new_qid()
        produce(cl, [(q1, envelope(q1, ["a@example.net"], message(q1)))])
        cl.sink.wait_for(1, timeout=60)
        if user:
            assert f"user={user}" in w.log.read_text()
        assert mslocal.redis_query(old.port, "EXISTS", f"ms:delivered:{q1}:a@example.net",
                                   auth=auth) == 1
        # A failover asked of one Sentinel: it must log in to both servers.
        assert mslocal.redis_query(rs.sentinels[0].port, "SENTINEL", "FAILOVER",
                                   rs.master_name) == "OK"
        assert rs.wait_failover(old, 60) is new
        line = f"event=redis_connected host={mslocal.HOST} port={new.port}"
        mslocal.wait_until(lambda: line in w.log.read_text(), 60, "the worker on the new primary",
                           log_path=w.log)
        q2 = new_qid()
        produce(cl, [(q2, envelope(q2, ["b@example.net"], message(q2)))])
        cl.sink.wait_for(2, timeout=60)
        mslocal.wait_until(lambda: mslocal.redis_query(
            new.port, "EXISTS", f"ms:delivered:{q2}:b@example.net", auth=auth) == 1, 30,
            "the marker on the new primary")
        # The old primary follows as a replica, authenticated (masterauth).
        mslocal.wait_until(lambda: "master_link_status:up" in str(mslocal.redis_query(
            old.port, "INFO", "replication", auth=auth)), 60, "the old primary replicating")
    finally:
        sup.stop_all(timeout=10)
