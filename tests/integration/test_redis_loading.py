"""A large but valid Redis does not make the local cluster fail to start
(issue 25; docs/reliability.md "Redis persistence").

Redis is filled with a few hundred MB (DEBUG POPULATE), its append-only
file rewritten (with the RDB preamble the cluster configures) and Redis
restarted with a start timeout far shorter than the load: the wait follows
the load's progress (-LOADING, loading_loaded_bytes) instead of giving up,
and every key is there afterwards. The same Redis.start() is what
`cluster/local up` runs.
"""

from __future__ import annotations

import re
import time

import pytest

import mslocal

KEYS = 3_000_000
VALUE_BYTES = 100


def info(port: int, section: str) -> dict:
    raw = mslocal.redis_auth_command(port, [], "INFO", section).decode()
    return dict(m.groups() for m in re.finditer(r"^(\w+):(.*?)\r?$", raw, re.M))


@pytest.mark.timeout(180)
def test_start_waits_for_a_large_load(tmp_path):
    sup = mslocal.Supervisor(tmp_path)
    r = mslocal.Redis(sup, mslocal.free_port())
    r.extra_conf.append("enable-debug-command local")
    try:
        r.start()
        conf = r.conf.read_text()
        for line in ("appendonly yes", "aof-use-rdb-preamble yes",
                     "auto-aof-rewrite-percentage 100", "auto-aof-rewrite-min-size 64mb"):
            assert line in conf
        assert mslocal.redis_auth_command(r.port, [], "DEBUG", "POPULATE", str(KEYS), "big",
                                          str(VALUE_BYTES), timeout=120).startswith(b"+OK")
        used = int(info(r.port, "memory")["used_memory"])
        assert used > 250 * 2**20, used
        assert mslocal.redis_command(r.port, "BGREWRITEAOF").startswith(b"+")
        mslocal.wait_until(lambda: info(r.port, "persistence")["aof_rewrite_in_progress"] == "0"
                           and info(r.port, "persistence")["aof_rewrite_scheduled"] == "0",
                           120, "AOF rewrite")
        r.stop(timeout=60)
        # Redis 7's multi-part AOF: a base file (".base.rdb" with the RDB
        # preamble) and increments, in appendonlydir.
        parts = list((r.dir / "appendonlydir").iterdir())
        assert any(f.name.endswith(".base.rdb") for f in parts), parts
        size = sum(f.stat().st_size for f in parts)
        assert size > 32 * 2**20, size

        # One second to answer at all: the load takes longer, and is waited for.
        t0 = time.monotonic()
        r.start(timeout=1.0)
        took = time.monotonic() - t0
        assert mslocal.redis_command(r.port, "DBSIZE") == b":%d\r\n" % KEYS
        print(f"\nredis: {used / 2**20:.0f} MiB used, AOF {size / 2**20:.0f} MiB, "
              f"started in {took:.1f}s")
        log = r.log.read_text()
        assert "DB loaded from" in log or "Done loading" in log
    finally:
        sup.stop_all()


def test_a_stalled_load_is_reported(monkeypatch, tmp_path):
    """No progress for REDIS_LOAD_STALL_S: an error naming it, not a hang.
    A stand-in that answers -LOADING with a loaded byte count that never
    moves."""
    import socket
    import threading

    monkeypatch.setattr(mslocal, "REDIS_LOAD_STALL_S", 1.0)
    srv = socket.socket()
    srv.bind((mslocal.HOST, 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with c:
                data = c.recv(65536)
                if b"INFO" in data:
                    body = b"# Persistence\r\nloading:1\r\nloading_loaded_bytes:4096\r\n"
                    c.sendall(b"$%d\r\n%s\r\n" % (len(body), body))
                else:
                    c.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(mslocal.MsLocalError, match="no progress"):
            mslocal.wait_redis_ready(port, 1.0, "stand-in redis")
    finally:
        stop.set()
        t.join()
        srv.close()
