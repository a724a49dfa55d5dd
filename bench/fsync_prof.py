#!/usr/bin/env python3
"""bench/fsync_prof.py - where a mailstream-fsync 250 waits (issue 19).

    bench/fsync_prof.py --variant A:MAILSTREAM_BUILD_DIR=/tmp/old --variant B:MAILSTREAM_BUILD_DIR=build
    bench/fsync_prof.py --variant base: --variant idx:topic.index.interval.bytes=1048576
    bench/fsync_prof.py --system mailstream --workload 5k-20 --variant A:... --variant B:...

One broker, one Redis, one sink (bench/run.py's Bench); the variants take
turns round after round (the order reverses each round), each with a fresh
`queue` topic and a fresh frontend + worker.  A variant is NAME:K=V,...: a
key `topic.X` sets the topic config X on top of the system's own
(mailstream-fsync: flush.messages=1), any other key is an environment
variable for the Mailstream processes (MAILSTREAM_BUILD_DIR picks a build).

Per run: accept and end-to-end rates; the probe's DATA-end -> 250 latency;
CPU ms per message per process; and, over 2 s in the middle of the load,
the broker's fsync and msync calls (`perf stat` on the syscall tracepoints,
which does not slow the broker as strace does), the frontend's sendmsg calls
(librdkafka's produce requests: libuv writes SMTP replies with write/writev)
and the records the frontend's group commit handed over in that time, hence
records per fsync, per produce request and per group-commit batch.
Needs perf with tracepoint access (root).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat  # noqa: E402
import run as bench_run  # noqa: E402
import smtpclient  # noqa: E402

WINDOW_S = 2.0


def _counter(addrs, prefix: str) -> float:
    return sum(v for a in addrs for k, v in bench_run.counters(bench_run.fetch_metrics(a)).items()
               if k.startswith(prefix))


def _perf(pid: int, events: str, out: dict, key: str) -> None:
    r = subprocess.run(["perf", "stat", "-x,", "-e", events, "-p", str(pid),
                        "sleep", str(WINDOW_S)], capture_output=True, text=True)
    out[key] = [int(ln.split(",")[0]) for ln in r.stderr.splitlines() if ln[:1].isdigit()]


def window(ms, kpid: int, fpid: int, out: dict) -> None:
    """Counts over WINDOW_S seconds, 0.7 s into the load."""
    time.sleep(0.7)
    addrs = ms.metrics_addrs()
    r0 = _counter(addrs, "mailstream_smtp_group_commit_records_total")
    c0 = _counter(addrs, "mailstream_smtp_group_commits_total")
    fe = threading.Thread(target=_perf, args=(fpid, "syscalls:sys_enter_sendmsg", out, "fe"))
    fe.start()
    _perf(kpid, "syscalls:sys_enter_fsync,syscalls:sys_enter_msync", out, "kafka")
    fe.join()
    out["records"] = _counter(addrs, "mailstream_smtp_group_commit_records_total") - r0
    out["commits"] = _counter(addrs, "mailstream_smtp_group_commits_total") - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", default="mailstream-fsync")
    ap.add_argument("--workload", default="50k-20")
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kafka-warmup", type=int, default=4000)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V,...")
    a = ap.parse_args()
    variants = []
    for item in a.variant or ["base:"]:
        name, _, kv = item.partition(":")
        pairs = dict(x.split("=", 1) for x in kv.split(",") if x)
        variants.append((name, {k[6:]: v for k, v in pairs.items() if k.startswith("topic.")},
                         {k: v for k, v in pairs.items() if not k.startswith("topic.")}))
    env_keys = {k for _, _, env in variants for k in env}
    wl = next(w for w in bench_run.WORKLOADS if w.name == a.workload)
    args = bench_run.parse_args(["--systems", a.system, "--workloads", wl.name, "--idle", "0",
                                 "--messages", str(a.messages)])
    bench = bench_run.Bench(args)
    try:
        bench.start(True, False)
        ms = bench.system(a.system)
        ms.prepare("jit")
        bench_run.warm_up_kafka(ms, bench.sink, wl, a.kafka_warmup, 4)
        ms.finish()
        for rnd in range(a.rounds):
            for name, topic, env in (variants if rnd % 2 == 0 else variants[::-1]):
                for k in env_keys:
                    os.environ.pop(k, None)
                os.environ.update(env)
                ms = bench.system(a.system)
                ms.topic_configs = {**ms.topic_configs, **topic}
                ms.prepare(f"p{rnd}-{name}")
                try:
                    bench_run.warm_up(ms, bench.sink, wl, 200)
                    pids = ms.pids()
                    cpu0 = {k: procstat.cpu_self(p) for k, p in pids.items()}
                    base, load0 = bench.sink.count, procstat.loadavg()[0]
                    win: dict = {}
                    th = threading.Thread(target=window, args=(
                        ms, bench_run.kafka_pid(ms.kafka), pids["frontend-1"], win))
                    th.start()
                    t0, t1, rc, err, probe = asyncio.run(bench_run._load(ms, wl, a.messages, 1))
                    th.join()
                    n = a.messages + probe.sent
                    bench.sink.wait_for(base + n, 300)
                    cpu = {k: 1000 * (procstat.cpu_self(p) - cpu0[k]) / n for k, p in pids.items()}
                    fs, ms_ = (win.get("kafka") or [0, 0])[:2]
                    recs, req = win.get("records", 0), (win.get("fe") or [0])[0]
                    print(f"[{name} r{rnd + 1}] accept {n / (t1 - t0):.0f}/s "
                          f"e2e {n / (bench.sink.changed_at - t0):.0f}/s "
                          f"p50 {1000 * smtpclient.percentile(probe.latencies, 50):.1f} ms "
                          f"p99 {1000 * smtpclient.percentile(probe.latencies, 99):.1f} ms | "
                          f"fsync/s {fs / WINDOW_S:.0f} msync/s {ms_ / WINDOW_S:.0f} "
                          f"records/fsync {recs / max(fs, 1):.2f} "
                          f"records/request {recs / max(req, 1):.2f} "
                          f"records/batch {recs / max(win.get('commits', 0), 1):.2f} | CPU ms/msg "
                          + " ".join(f"{k} {v:.3f}" for k, v in cpu.items())
                          + f" | load {load0:.1f}-{procstat.loadavg()[0]:.1f}"
                          + ("" if rc == 0 else f" | smtp-source exit {rc}: {err[-200:]}"),
                          flush=True)
                finally:
                    ms.finish()
    finally:
        bench.stop()
        if bench.own_state:
            shutil.rmtree(bench.state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
