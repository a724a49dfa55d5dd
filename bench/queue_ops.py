#!/usr/bin/env python3
"""bench/queue_ops.py - the queue control at 100,000 deferred messages.

    bench/queue_ops.py [--messages 100000] [--dests 50] [--keep-state]

Starts a private Redis (cluster/mslocal.py, a free loopback port), fills
the deferred-queue index exactly as the workers write it (worker/control.c:
ms:retryq, ms:retryq:dest:<D>, ms:retryq:dests and one ms:qinfo:<qid>
listing line per message; lib/io/ms_keys.h) with --messages messages, all
deferred to destination D (so one destination holds them all, the worst
case for `--dest D`) and --dests smaller destinations beside it, then times

    mailstream-ctl queue list --dest D     (every line printed)
    mailstream-ctl queue shape
    mailstream-ctl queue retry --dest D    (a control record per message)

and checks the issue's bound: list and shape under one second.  retry is
reported and checked for completeness (every message got its record), not
timed against a bound.  Prints one JSON object; exit 1 if a check fails.
Standard library only; needs redis-server and the built binaries.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cluster"))
import mslocal  # noqa: E402

BOUND_S = 1.0
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def qid(i: int, now_ms: int) -> str:
    """A queue id of ms_queueid.h's shape: 10 time characters, 11 more."""
    def b32(v: int, n: int) -> str:
        return "".join(ALPHABET[(v >> (5 * k)) & 31] for k in reversed(range(n)))
    return b32(now_ms, 10) + b32(i, 11)


def resp(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def pipeline(port: int, cmds: list) -> None:
    """Send every command, read (and discard) as many replies."""
    with socket.create_connection((mslocal.HOST, port)) as s:
        s.sendall(b"".join(cmds))
        f = s.makefile("rb")
        for _ in cmds:
            line = f.readline()
            if line.startswith(b"-"):
                raise SystemExit(f"redis: {line!r}")


def fill(port: int, n: int, ndests: int) -> str:
    now_us = int(time.time() * 1e6)
    dest = "big.example"
    cmds, batch = [], 5000
    for i in range(n + ndests * 10):
        d = dest if i < n else f"d{i % ndests}.example"
        q = qid(i, now_us // 1000)
        received = now_us - (i % 20000) * 1000000  # ages spread over 0 to 5.5 hours
        line = "\t".join(["deferred", str(received), str(now_us + 600 * 1000000), "3", "2",
                          "5120", "sender@example.org", f"user{i}@{d}", d,
                          "451 4.3.0 try again later"])
        cmds += [resp("ZADD", "ms:retryq", str(received), q),
                 resp("ZADD", f"ms:retryq:dest:{d}", str(received), q),
                 resp("SET", f"ms:qinfo:{q}", line, "EX", "86400")]
        if len(cmds) >= batch:
            pipeline(port, cmds)
            cmds = []
    for d in [dest] + [f"d{k}.example" for k in range(ndests)]:
        cmds.append(resp("ZADD", "ms:retryq:dests", str(now_us), d))
    pipeline(port, cmds)
    return dest


def timed(ctl: str, port: int, *args: str) -> tuple:
    env = dict(os.environ, MAILSTREAM_REDIS_PORT=str(port))
    t0 = time.monotonic()
    r = subprocess.run([ctl, *args], capture_output=True, env=env, timeout=600)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{args}: exit {r.returncode}: {r.stderr.decode()}")
    return dt, r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--dests", type=int, default=50)
    ap.add_argument("--keep-state", action="store_true")
    a = ap.parse_args()
    ctl = str(Path(os.environ.get("MAILSTREAM_BUILD_DIR", REPO / "build")) / "mailstream-ctl")
    state = Path(tempfile.mkdtemp(prefix="mailstream-queue-ops-"))
    sup = mslocal.Supervisor(state)
    redis = mslocal.Redis(sup, mslocal.free_port())
    redis.start()
    try:
        t0 = time.monotonic()
        dest = fill(redis.port, a.messages, a.dests)
        fill_s = time.monotonic() - t0
        res = {"messages": a.messages, "fill_s": round(fill_s, 2)}
        for name, args in (("list_dest", ("queue", "list", "--dest", dest)),
                           ("list_dest_json", ("--json", "queue", "list", "--dest", dest)),
                           ("shape", ("queue", "shape")),
                           ("retry_dest", ("--json", "queue", "retry", "--dest", dest))):
            best = None
            for _ in range(3 if name != "retry_dest" else 1):
                dt, out = timed(ctl, redis.port, *args)
                best = dt if best is None else min(best, dt)
            res[name + "_s"] = round(best, 3)
            if name == "list_dest_json":
                res["listed"] = len(json.loads(out))
            if name == "retry_dest":
                res["retried"] = json.loads(out)["applied"]
        ok = (res["list_dest_s"] < BOUND_S and res["shape_s"] < BOUND_S and
              res["listed"] == a.messages and res["retried"] == a.messages)
        res["ok"] = ok
        print(json.dumps(res))
        return 0 if ok else 1
    finally:
        sup.stop_all()
        if not a.keep_state:
            subprocess.run(["rm", "-rf", str(state)], check=False)


if __name__ == "__main__":
    sys.exit(main())
