"""The delivery lease's three scripts (lib/io/ms_script.h: fence_take,
fence_check, fence_done) run with EVAL against a real Redis, one holder and
another, through the interface ms_script.h gives: the fencing generation,
the count of destinations in DATA that the next holder is told about, the
lapse, and the delivered markers written whoever holds the lease.

The worker's own use of them (two workers, a destination that stalls, Redis
frozen) is tests/integration/test_worker_fencing.py."""
import subprocess
import time

import mslocal

SOURCE = mslocal.build_dir() / "tests" / "script_source"
KEEP_MS = "60000"


def script(name: str) -> str:
    return subprocess.run([str(SOURCE), name], check=True, capture_output=True,
                          text=True).stdout


class Fence:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.src = {n: script(n) for n in ("fence_take", "fence_check", "fence_done")}

    def eval(self, name: str, keys, args):
        return mslocal.redis_query(self.port, "EVAL", self.src[name], str(len(keys)), *keys,
                                   *args)

    def take(self, tok: str, lease_ms: int, *read):
        return self.eval("fence_take", [self.key, *read], [tok, str(lease_ms), KEEP_MS])

    def check(self, tok: str, lease_ms: int, count_data: bool):
        return self.eval("fence_check", [self.key],
                         [tok, str(lease_ms), KEEP_MS, "1" if count_data else "0"])

    def done(self, tok: str, markers=(), give_back=False, one_fewer=False):
        return self.eval("fence_done", [self.key, *markers],
                         [tok, "1", "600", "1" if give_back else "0", "1" if one_fewer else "0"])

    def fields(self) -> dict:
        v = mslocal.redis_query(self.port, "HGETALL", self.key) or []
        return dict(zip(v[0::2], v[1::2]))


def wait_lapse(f: Fence):
    """Until Redis's own clock is past the lease's exp."""
    exp = int(f.fields()["exp"])
    while True:
        sec, usec = mslocal.redis_query(f.port, "TIME")
        if int(sec) * 1000 + int(usec) // 1000 > exp:
            return
        time.sleep(0.01)


def test_take_check_lapse_takeover_done(redis_server):
    f = Fence(redis_server.port, "test:fence:q1")
    mslocal.redis_query(f.port, "SET", "test:marker:q1:a", "1")

    # Free: taken, generation 1, no earlier holder in DATA, the read key's value.
    assert f.take("A1", 60000, "test:marker:q1:a", "test:marker:q1:b") == [1, 0, "1", None]
    assert f.fields() == {"who": "A1", "exp": f.fields()["exp"], "data": "0", "gen": "1"}
    # Held by A: B is told how long until it lapses.
    busy = f.take("B1", 60000)
    assert busy[0] == 0 and 0 < busy[1] <= 60000
    # A taking again (its own token): the generation moves on.
    assert f.take("A1", 60000)[:2] == [2, 0]

    # The check before DATA counts one destination in DATA; a renewal does not.
    assert f.check("A1", 60000, True) >= 60000
    assert f.fields()["data"] == "1"
    assert f.check("A1", 60000, False) >= 60000
    assert f.check("A1", 60000, True) >= 60000
    assert f.fields()["data"] == "2"
    # One outcome recorded: one destination fewer, the lease still A's.
    assert f.done("A1", one_fewer=True) == 1
    assert f.fields()["data"] == "1"
    assert f.fields()["who"] == "A1"
    # Another token's check changes nothing.
    assert f.check("B1", 60000, True) == 0
    assert f.fields()["data"] == "1"

    # A's lease lapses (a renewal shortens nothing; a fresh take with a short
    # lease does, and keeps what A has in DATA as its own).
    assert f.take("A1", 1)[:2] == [3, 0]
    assert f.fields()["data"] == "0"
    assert f.check("A1", 1, True) >= 1
    wait_lapse(f)
    # B takes the lapsed lease: generation 4, told of A's one destination in DATA.
    assert f.take("B1", 60000)[:2] == [4, 1]
    assert f.fields()["data"] == "0"
    # A is fenced out: its check fails, its outcome writes the marker (a fact)
    # but neither gives the lease back nor counts.
    assert f.check("A1", 60000, True) == 0
    assert f.done("A1", ["test:marker:q1:c"], give_back=True, one_fewer=True) == 0
    assert mslocal.redis_query(f.port, "GET", "test:marker:q1:c") == "1"
    assert f.fields()["who"] == "B1"
    # B gives it back: the hash is gone, the next taking starts again at 1.
    assert f.done("B1", ["test:marker:q1:d"], give_back=True) == 1
    assert f.fields() == {}
    assert 0 < mslocal.redis_query(f.port, "TTL", "test:marker:q1:d") <= 600
    assert f.take("C1", 60000)[:2] == [1, 0]
