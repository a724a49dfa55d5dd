#!/usr/bin/env python3
"""bench/footprint.py - Redis memory and Kafka disk over a long run (issue 25).

    bench/footprint.py                                  # 1,000,000 messages
    bench/footprint.py --messages 100000 --horizon 60   # a shorter proof
    bench/footprint.py --worker-set delivery.KEY=VALUE  # any worker setting

A cluster's state should be proportional to the mail in flight and the
retry horizon, not to the mail it has ever carried (docs/reliability.md,
"What Redis holds" and "What Kafka holds"). This runs one frontend and one
worker (or more) on a Redis and a Kafka of its own, sends --messages
through smtp-source to an smtp-sink, and samples every --sample seconds:
messages delivered (the sink's count), Redis used_memory, keys and
append-only file size, and the size of each topic's log on disk.

The horizon is made short so that the flat part comes quickly: every topic
keeps --horizon seconds (retention.ms, with segment.ms a quarter of it as
`mailstream-ctl topics create` sets it) and the broker looks for expired
segments every 5 s, where production keeps days (72 h of outage survived)
and looks every 5 minutes. Once the run has lasted a few horizons, what the
cluster holds should stop growing while mail keeps flowing: the report gives,
over the samples after STEADY_HORIZONS horizons, the growth per delivered
message of Redis memory and Kafka disk (a least-squares slope), next to
their size at the start of that window; Redis keys are counted by kind (SCAN
at each sample), so that those kept on purpose longer than the horizon show
apart from all the others. Redis keys that live longer than the
horizon by design (the delivered markers: docs/reliability.md) make Redis
grow until their own lifetime has passed; --worker-set sets the worker's
keys (e.g. their lifetime, where the worker has one).

The report goes to stdout and to bench/results/<timestamp>-footprint.{md,json}
(--out). Only loopback addresses are used; every process is started here and
stopped by its pid. Not part of `make test`: a 1,000,000-message run takes
about 1,000,000 / (the end-to-end rate) seconds, 4-10 minutes at the
1,700-5,700 msg/s docs/scaling.md measured here, more on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "cluster"))

import mslocal  # noqa: E402
import run as bench  # noqa: E402

HOST = mslocal.HOST
# The flat window starts once this many horizons have passed: one for the
# retention itself, one for the segment that holds the last expired record
# to roll (segment.ms is a quarter) and the broker to notice (5 s).
STEADY_HORIZONS = 2
RETENTION_CHECK_MS = 5000


class FootprintKafka(bench.BenchKafka):
    """BenchKafka that deletes expired segments within seconds (production:
    every 5 minutes, log.retention.check.interval.ms), so a short horizon
    shows in the disk at once."""

    def _write_properties(self) -> None:
        super()._write_properties()
        with open(self.props, "a") as f:
            # log.initial.task.delay.ms: the first retention check waits
            # this long after start (Kafka's default 30 s), longer than a
            # quick run's whole tail on an idle machine.
            f.write("# bench/footprint.py: expired segments go quickly\n"
                    f"log.retention.check.interval.ms={RETENTION_CHECK_MS}\n"
                    "log.segment.delete.delay.ms=1000\n"
                    "log.initial.task.delay.ms=1000\n")


def dir_bytes(path: Path) -> int:
    """Disk blocks in use under path, in bytes: Kafka preallocates each
    segment's index files sparse (segment.index.bytes, 10 MiB each), which
    their size counts and the disk does not."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass  # a segment deleted while we walk
    return total


def topic_bytes(data: Path, topics: List[str]) -> Dict[str, int]:
    """Bytes on disk per topic (its partition directories topic-N)."""
    out = {t: 0 for t in topics}
    try:
        entries = list(data.iterdir())
    except OSError:
        return out
    for d in entries:
        name, _, part = d.name.rpartition("-")
        if name in out and part.isdigit():
            out[name] += dir_bytes(d)
    return out


# Keys of this kind are kept on purpose longer than the horizon (the
# delivered markers, docs/reliability.md); the report counts the others
# apart, which should not grow at all.
LONG_LIVED = "ms:delivered"


def key_kinds(port: int) -> Dict[str, int]:
    """Keys per kind ("ms:retry", "ms:rl", ...: the first two parts of the
    name), by SCAN: a few hundred round trips per 100,000 keys."""
    out: Dict[str, int] = {}
    with socket.create_connection((HOST, port), timeout=30) as s:
        f = s.makefile("rb")
        cursor = b"0"
        while True:
            s.sendall(b"*4\r\n$4\r\nSCAN\r\n$%d\r\n%s\r\n$5\r\nCOUNT\r\n$4\r\n2000\r\n"
                      % (len(cursor), cursor))
            f.readline()                        # *2
            f.readline()                        # $n of the cursor
            cursor = f.readline().rstrip(b"\r\n")
            n = int(f.readline()[1:])           # *n keys
            for _ in range(n):
                size = int(f.readline()[1:])
                key = f.read(size + 2)[:-2].decode(errors="replace")
                kind = ":".join(key.split(":")[:2])
                out[kind] = out.get(kind, 0) + 1
            if cursor == b"0":
                return out


def slope(xs: List[float], ys: List[float]) -> Optional[float]:
    """Least-squares slope of ys over xs (None with fewer than 3 points)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def summarize(samples: List[Dict[str, object]], horizon: float) -> Dict[str, object]:
    """Over the samples taken while mail flowed, after STEADY_HORIZONS
    horizons: growth per delivered message and the range of each figure."""
    steady = [s for s in samples if s["t"] >= STEADY_HORIZONS * horizon and s["sending"]]
    out: Dict[str, object] = {"steady_samples": len(steady)}
    if len(steady) < 3:
        out["note"] = "the run ended before the horizon was reached: lengthen it"
        return out
    xs = [float(s["delivered"]) for s in steady]
    for key in ("redis_used_memory", "redis_keys", "redis_other_keys", "redis_aof_bytes",
                "kafka_bytes"):
        ys = [float(s[key]) for s in steady]
        out[key] = {"per_message": slope(xs, ys), "first": ys[0], "last": ys[-1],
                    "min": min(ys), "max": max(ys)}
    out["delivered_in_window"] = xs[-1] - xs[0]
    out["window_s"] = steady[-1]["t"] - steady[0]["t"]
    return out


def markdown(rep: Dict[str, object]) -> str:
    a, s = rep["args"], rep["summary"]
    lines = [f"# Footprint run {rep['started']}", "",
             f"{a['messages']:,} messages of {a['size']} bytes, {a['rcpts']} recipient(s), "
             f"{a['sessions']} sessions, {a['frontends']} frontend(s) + {a['workers']} worker(s); "
             f"every topic kept {a['horizon']:g} s; sampled every {a['sample']:g} s.", "",
             f"Delivered {rep['delivered']:,} of {rep['expected']:,} in {rep['elapsed_s']:.0f} s "
             f"({rep['delivered'] / max(rep['elapsed_s'], 1e-9):,.0f} msg/s end to end); "
             f"smtp-source batches failed: {rep['smtp_source_failed_batches']}; offsets reset "
             f"past expired records: {rep['expired_unread_resets']}.", ""]
    if s.get("steady_samples", 0) >= 3:
        lines += [f"After {STEADY_HORIZONS} horizons, while mail flowed "
                  f"({s['window_s']:.0f} s, {s['delivered_in_window']:,.0f} messages):", "",
                  "| figure | per delivered message | at start of window | at end | min | max |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for key, unit in (("redis_used_memory", "B"), ("redis_keys", "keys"),
                          ("redis_other_keys", "keys"),
                          ("redis_aof_bytes", "B"), ("kafka_bytes", "B")):
            f = s[key]
            per = "n/a" if f["per_message"] is None else f"{f['per_message']:.2f} {unit}"
            lines.append(f"| {key} | {per} | {f['first']:,.0f} | {f['last']:,.0f} | "
                         f"{f['min']:,.0f} | {f['max']:,.0f} |")
    else:
        lines.append(s.get("note", ""))
    lines += ["", f"`redis_other_keys`: keys other than {LONG_LIVED}:*, kept on purpose "
              "longer than the horizon (docs/reliability.md).",
              "", "| t (s) | delivered | Redis used_memory | keys | other keys | AOF | Kafka disk |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    samples = rep["samples"]
    step = max(1, len(samples) // 40)
    for x in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        lines.append(f"| {x['t']:.0f} | {x['delivered']:,} | {x['redis_used_memory']:,} | "
                     f"{x['redis_keys']:,} | {x['redis_other_keys']:,} | "
                     f"{x['redis_aof_bytes']:,} | {x['kafka_bytes']:,} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=5 * 1024, help="body bytes (smtp-source -l)")
    ap.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--frontends", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=mslocal.DEFAULT_TOPICS["queue"])
    ap.add_argument("--horizon", type=float, default=60.0,
                    help="seconds every topic keeps its records (default 60)")
    ap.add_argument("--batch", type=int, default=10_000,
                    help="messages per smtp-source run; the next starts once at most half "
                         "a batch is undelivered (default 10,000)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--tail", type=float, default=None,
                    help="seconds to keep sampling after the last delivery "
                         "(default: the horizon and a bit, to show the floor)")
    ap.add_argument("--worker-set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--frontend-set", action="append", default=[],
                    metavar="SECTION.KEY=VALUE")
    ap.add_argument("--state-dir", default=None)
    ap.add_argument("--out", default=str(BENCH / "results"))
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> Dict[str, object]:
    own_state = not args.state_dir
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="mailstream-footprint-",
                                                    dir="/var/tmp"))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    sup = mslocal.Supervisor(state / "infra")
    ms_sup = mslocal.Supervisor(state / "mailstream")
    tag = uuid.uuid4().hex[:6]
    samples: List[Dict[str, object]] = []
    bench.raise_nofile()
    try:
        sink = bench.CountingSink(sup, mslocal.free_port())
        sink.start()
        redis = mslocal.Redis(sup, mslocal.free_port())
        redis.start()
        p, cp = mslocal.free_ports(2)
        kafka = FootprintKafka(sup, p, cp)
        kafka.start()
        topic, events = f"fp-{tag}", f"fp-events-{tag}"
        topics = {topic: args.partitions, events: mslocal.DEFAULT_TOPICS["events"]}
        topics.update({f"{topic}.retry.{n}": mslocal.RETRY_TIER_PARTITIONS
                       for n in range(1, mslocal.WORKER_RETRY_TIERS + 1)})
        keep = {t: max(1, int(args.horizon)) for t in topics}
        kafka.create_topics(topics, retention=keep)
        port, sub, subs = mslocal.free_ports(3)
        spec = mslocal.ClusterSpec(
            kafka_brokers=kafka.bootstrap, redis_port=redis.port, relay_host=sink.address,
            frontends=args.frontends, workers=args.workers,
            listeners={"mx": (f"{HOST}:{port}", "mx"), "submission": (f"{HOST}:{sub}", "submission"),
                       "submissions": (f"{HOST}:{subs}", "submissions")},
            frontend_metrics_ports=[], worker_metrics_ports=[], topic=topic, events_topic=events,
            group=f"fp-{tag}",
            frontend_extra=bench._sections(bench.BENCH_FRONTEND_DEFAULTS + args.frontend_set),
            worker_extra=bench._sections(args.worker_set))
        cluster = mslocal.Cluster(ms_sup, spec)
        cluster.start(timeout=120)

        expected = args.messages * args.rcpts

        def source(n: int) -> subprocess.Popen:
            argv = bench.smtp_source_argv(port, args.sessions, n, args.size)
            if args.rcpts > 1:
                argv[1:1] = ["-r", str(args.rcpts)]
            return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        bench.log(f"state {state}; sending {args.messages:,} messages in batches of "
                  f"{args.batch:,}; every topic keeps {args.horizon:g} s")
        t0 = time.monotonic()
        # Batches, each started once the previous one is sent and at most
        # half a batch of it is undelivered: the backlog stays seconds long,
        # far under the horizon. (Unpaced, accepting outruns delivering and
        # the backlog ages past a short retention: those records are
        # deleted unread, as after an outage longer than the one chosen.)
        sent = min(args.batch, args.messages)
        src = source(sent)
        src_failed = 0
        done_at: Optional[float] = None
        tail = args.tail if args.tail is not None else args.horizon * 1.25 + 3 * args.sample
        stall_since, last_count, next_sample = time.monotonic(), -1, 0.0
        while True:
            now = time.monotonic()
            t = now - t0
            if src.poll() is not None and sent < args.messages and \
                    sink.count >= (sent - args.batch // 2) * args.rcpts:
                src_failed += src.returncode != 0
                n = min(args.batch, args.messages - sent)
                src, sent = source(n), sent + n
            if t < next_sample and done_at is None:
                time.sleep(0.1)
                continue
            next_sample = t + args.sample
            used, keys = bench.redis_memory(redis.port)
            kinds = key_kinds(redis.port)
            sizes = topic_bytes(kafka.data, list(topics))
            delivered = sink.count
            sending = done_at is None
            samples.append({"t": round(t, 1), "delivered": delivered, "sending": sending,
                            "redis_used_memory": used, "redis_keys": keys,
                            "redis_other_keys": sum(v for k, v in kinds.items()
                                                    if k != LONG_LIVED),
                            "redis_key_kinds": kinds,
                            "redis_aof_bytes": dir_bytes(redis.dir / "appendonlydir"),
                            "kafka_bytes": sum(sizes.values()), "kafka_topics": sizes})
            if len(samples) % 12 == 1:
                bench.log(f"t={t:.0f}s delivered={delivered:,} redis={used / 2**20:.1f} MiB "
                          f"keys={keys:,} kafka={sum(sizes.values()) / 2**20:.1f} MiB")
            if delivered != last_count:
                last_count, stall_since = delivered, now
            if done_at is None and sent >= args.messages and src.poll() is not None and (
                    delivered >= expected or now - stall_since > args.horizon):
                done_at = now
                bench.log(f"all {delivered:,} delivered after {t:.0f}s; sampling {tail:.0f}s more")
            if done_at is not None and now - done_at >= tail:
                break
            if done_at is not None:
                time.sleep(args.sample)
        src_failed += src.returncode != 0
        elapsed = (done_at or time.monotonic()) - t0
        # Records a worker found deleted before it read them (librdkafka
        # resets the offset: "Offset out of range").
        expired = sum(n.log.read_text(errors="replace").count("Offset out of range")
                      for n in cluster.workers)
        rep = {"started": started,
               "args": vars(args), "delivered": sink.count, "expected": expected,
               "elapsed_s": elapsed, "smtp_source_failed_batches": src_failed,
               "expired_unread_resets": expired, "samples": samples,
               "summary": summarize(samples, args.horizon)}
        return rep
    finally:
        ms_sup.stop_all()
        sup.stop_all()
        if own_state:  # logs and data of a finished run: the report has what counts
            shutil.rmtree(state, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and SIGINT, which a shell's background job ignores) stop
    # what the run started, by pid, through run()'s `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rep = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-footprint"
    md = markdown(rep)
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(json.dumps(rep, indent=1))
    print(md)
    bench.log(f"report: {out / stem}.md")
    return 0 if rep["delivered"] >= args.messages * args.rcpts else 1


if __name__ == "__main__":
    sys.exit(main())
