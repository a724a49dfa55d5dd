#!/usr/bin/env python3
"""bench/scaling.py - the capacity model of docs/scaling.md, from a report.

    bench/scaling.py bench/results/<main>.json [--check bench/results/<2x2>.json]
                     [--workload 5k-20] [--system mailstream]

From the measured CPU milliseconds per message of each Mailstream component
(frontend, worker, Kafka, Redis) it prints what one process / one core of
each sustains, what a node and a cluster of N frontends and M workers should
sustain, and, with --check, compares the prediction for the run in the second
report (e.g. 2 frontends + 2 workers on the same machine) with what that run
measured. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Dict, List


def row(report: Dict, workload: str, system: str) -> Dict:
    for r in report["summary"]:
        if r["workload"] == workload and r["system"] == system:
            return r
    sys.exit(f"no {system} / {workload} in the report")


def runs(report: Dict, workload: str, system: str) -> List[Dict]:
    return [r for r in report["runs"] if r["workload"] == workload and r["system"] == system
            and r.get("ok")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--check", help="a report of a run with more nodes, to compare with")
    ap.add_argument("--workload", default="5k-20")
    ap.add_argument("--system", default="mailstream")
    ap.add_argument("--partitions", type=int, default=12)
    a = ap.parse_args(argv)
    rep = json.load(open(a.report))
    r = row(rep, a.workload, a.system)
    c = r["cpu_ms_per_msg"]
    fe, wk, ka, rd = (c.get(k, 0.0) for k in ("frontend", "worker", "kafka", "redis"))
    sink, gen = c.get("sink", 0.0), c.get("loadgen", 0.0)
    print(f"{a.system}, {a.workload}: CPU ms per message (median of {r['runs_ok']} runs)")
    for name, v in (("frontend", fe), ("worker", wk), ("kafka", ka), ("redis", rd),
                    ("sink", sink), ("load generator", gen)):
        ceiling = f"{1000 / v:8,.0f} msg/s per core" if v else ""
        print(f"  {name:15s} {v:7.3f}  {ceiling}")
    total = fe + wk + ka + rd
    print(f"  {'system total':15s} {total:7.3f}  {1000 / total:8,.0f} msg/s per core")
    if r.get("redis_calls_per_msg"):
        print(f"  redis commands per message: {r['redis_calls_per_msg']:.2f}")
    print()
    print("One process runs one libuv loop, so one frontend or worker uses at most one core:")
    print(f"  frontend process <= {1000 / fe:,.0f} msg/s, worker process <= {1000 / wk:,.0f} msg/s"
          if fe and wk else "  (no frontend/worker figures)")
    for cores in (2, 4, 8, 16):
        print(f"  all-in-one node, {cores:2d} cores: <= {cores * 1000 / total:8,.0f} msg/s "
              "(CPU bound: frontend + worker + Kafka + Redis)")
    print()
    # The worker's delivery pipeline: if the sink got mail much more slowly
    # than the frontends accepted it, the worker(s) were the bottleneck
    # without using their core: take the measured rate per worker as the
    # worker's capacity (latency-bound: max_in_flight / time per record).
    workers = rep["options"].get("workers", 1)
    acc, e2e = r.get("accept_rate"), r.get("e2e_rate")
    pipe = None
    if acc and e2e and e2e["median"] < 0.8 * acc["median"]:
        pipe = e2e["median"] / workers
        print(f"Measured: accepted {acc['median']:,.0f} msg/s but delivered {e2e['median']:,.0f} "
              f"msg/s with {workers} worker(s) using {e2e['median'] * wk / 1000:.2f} core(s): "
              f"the worker pipeline, not CPU, bounds delivery at ~{pipe:,.0f} msg/s per worker.")
        print()
    wcap = min(1000 / wk, pipe) if pipe else 1000 / wk
    print(f"Cluster of N frontends, M workers (M <= {a.partitions} partitions), "
          "brokers elsewhere:")
    for n, m in ((1, 1), (2, 2), (4, 4), (8, 8), (8, 12), (32, 12)):
        lim = {"frontends": n * 1000 / fe, "workers": min(m, a.partitions) * wcap,
               "redis (1 core)": 1000 / rd if rd else float("inf")}
        which = min(lim, key=lim.get)
        need_kafka = lim[which] * ka / 1000
        print(f"  N={n:2d} M={m:2d}: <= {lim[which]:8,.0f} msg/s (bound: {which}); "
              f"Kafka needs {need_kafka:5.1f} broker cores at that rate (replication 1)")
    if a.check:
        chk = json.load(open(a.check))
        opts = chk["options"]
        rr = row(chk, a.workload, a.system)
        cc = rr["cpu_ms_per_msg"]
        print()
        print(f"Check: {opts['frontends']} frontends + {opts['workers']} workers on "
              f"{chk['machine']['cores']} cores ({a.workload}):")
        per = {k: (c.get(k), cc.get(k)) for k in ("frontend", "worker", "kafka", "redis",
                                                   "sink", "loadgen")}
        for k, (x, y) in per.items():
            if x is not None and y is not None:
                print(f"  {k:10s} {x:7.3f} -> {y:7.3f} ms/msg")
        rs = runs(chk, a.workload, a.system)
        cores_free = statistics.median([
            chk["machine"]["cores"] - (x["machine_busy_cores"] - (x.get("our_cores") or 0))
            for x in rs if x.get("machine_busy_cores") is not None]) if rs else None
        everything = sum(v for v in c.values())  # incl. sink and load generator
        if "loadgen" not in c and "loadgen" in cc:
            everything += cc["loadgen"]
        pred_idle = chk["machine"]["cores"] * 1000 / everything
        print(f"  predicted from the 1+1 costs, whole machine ({chk['machine']['cores']} cores, "
              f"everything incl. sink and load generator): {pred_idle:,.0f} msg/s")
        if cores_free is not None:
            print(f"  cores left by other work during the check runs (median): {cores_free:.2f}"
                  f" -> predicted {cores_free * 1000 / everything:,.0f} msg/s")
        m2 = opts["workers"]
        if pipe:
            pe = min(m2 * pipe, chk["machine"]["cores"] * 1000 / everything)
            print(f"  predicted end-to-end: min({m2} workers x {pipe:,.0f}, CPU bound above) "
                  f"= {pe:,.0f} msg/s")
        for key in ("accept_rate", "e2e_rate"):
            st = rr.get(key)
            if st:
                print(f"  measured {key}: median {st['median']:,.0f} "
                      f"(min {st['min']:,.0f}, max {st['max']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
