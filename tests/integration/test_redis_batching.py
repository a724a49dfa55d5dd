"""[redis] linger_ms (lib/io/ms_redis.c): the commands a client queues
within linger_ms of the first leave in one write; with 0, each loop
iteration's commands leave before the loop waits.  tests/redis_batch_probe
sends PINGs from loop iterations of their own through ms_redis against a
real Redis and counts its own write calls (/proc/self/io) until the last
PONG."""
import subprocess

import mslocal

PROBE = mslocal.build_dir() / "tests" / "redis_batch_probe"
PINGS = 20


def probe(port: int, linger_ms: int) -> int:
    out = subprocess.run([str(PROBE), str(port), str(linger_ms), str(PINGS)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pongs, writes = out.stdout.split()
    assert pongs == f"pongs={PINGS}"
    return int(writes.split("=")[1])


def test_linger_sends_a_burst_of_commands_in_one_write(infra_supervisor):
    redis = mslocal.Redis(infra_supervisor, mslocal.free_port(), name="redis-batching")
    redis.start()
    try:
        # 0: one write per loop iteration that queued a command.
        assert probe(redis.port, 0) == PINGS
        # The default, 1 ms: the twenty iterations take microseconds; a
        # second or third write only if the machine stopped the probe for
        # over a millisecond between two of them.
        assert probe(redis.port, 1) <= 3
        assert probe(redis.port, 20) <= 2
    finally:
        redis.stop()
