#!/usr/bin/env python3
"""bench/fe_instr.py - the frontend's instructions per message, under callgrind.

    bench/fe_instr.py --system main=build \\
        --system old=/tmp/old/build \\
        --system off=build,format.mx.header_syntax=false \\
        --workloads 5k,50k --messages 1000

Wall-clock CPU figures on a shared machine move by tens of percent; an
instruction count does not.  Each system (a frontend binary directory and
optional [section] key=value settings) runs as one mailstream-frontend under
valgrind --tool=callgrind against one Redis and one Kafka broker (no worker:
the records stay in the topic).  Per workload: a warm-up, then the counters
are zeroed, smtp-source sends N messages over 19 sessions (as bench/run.py's
*-20 workloads), the counters are dumped; then the same time again with no
mail, to subtract what the process does idle (timers, librdkafka's threads).
Every thread of the process is counted: librdkafka's producer work is the
frontend's too.

Prints a Markdown report (instructions per message, per KiB, the functions
that differ most between the first system and each other) and writes it to
--out (bench/results/<timestamp>-<label>.md).  Needs valgrind (callgrind,
callgrind_control, callgrind_annotate) and Postfix's smtp-source.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "cluster"))

import mslocal  # noqa: E402

HOST = "127.0.0.1"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SIZES = {"5k": 5 * 1024, "50k": 50 * 1024, "1m": 1024 * 1024}
SESSIONS = 19  # bench/run.py's *-20 workloads: 19 smtp-source sessions and a probe
# As bench/run.py: a frontend that takes every bench connection.
BASE_SET = ["smtp.max_connections_per_ip=20000", "smtp.max_connections=20000"]


def log(msg: str) -> None:
    print(f"[fe_instr {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_system(text: str) -> Tuple[str, Path, Dict[str, Dict[str, object]], List[str]]:
    """NAME=BUILD_DIR[,section.key=value...]"""
    name, _, rest = text.partition("=")
    parts = rest.split(",")
    build = Path(parts[0]).resolve()
    extra: Dict[str, Dict[str, object]] = {}
    sets = BASE_SET + [p for p in parts[1:] if p]
    for s in sets:
        key, _, value = s.partition("=")
        section, _, k = key.rpartition(".")
        extra.setdefault(section, {})[k] = value
    return name, build, extra, sets


def callgrind_totals(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def dump(pid: int, outbase: str, before: set) -> Path:
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                   stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(Path(outbase).parent.glob(Path(outbase).name + ".*")) - before
        if new:
            time.sleep(0.5)  # written whole
            return max(new, key=lambda p: int(p.name.rsplit(".", 1)[1]))
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def zero(pid: int) -> None:
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, stdout=subprocess.DEVNULL)


def functions(path: Path) -> Dict[str, int]:
    """Self instructions per function, read from the dump itself: every cost
    line counts for the current fn= but the inclusive line after a calls=."""
    names: Dict[str, str] = {}
    res: Dict[str, int] = {}
    fn, after_call = "?", False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                fn = names.get(m.group(1), m.group(1))
            else:
                fn = line[3:]
            continue
        if line.startswith("cfn="):
            m = re.match(r"cfn=\((\d+)\) (.*)$", line)
            if m:
                names[m.group(1)] = m.group(2)
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                res[fn] = res.get(fn, 0) + int(parts[-1])
    return res


def proc_counters(pid: int) -> Dict[str, float]:
    """The process's CPU seconds (user, system), minor page faults, read and
    write system calls (/proc/PID/io) and context switches of its threads."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    out = {"user": int(f[11]) / tick, "sys": int(f[12]) / tick, "minflt": float(f[7])}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("syscr", "syscw"):
            out[k] = float(v)
    cs = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (t / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    cs += int(line.split()[1])
        except OSError:
            pass
    out["ctxsw"] = float(cs)
    return out


NATIVE_KEYS = [("user", "user CPU ms/msg", 1000), ("sys", "system CPU ms/msg", 1000),
               ("minflt", "page faults/msg", 1), ("syscr", "read calls/msg", 1),
               ("syscw", "write calls/msg", 1), ("ctxsw", "context switches/msg", 1)]


def smtp_source(port: int, sessions: int, n: int, size: int) -> float:
    t = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(n), "-l", str(size),
                    "-f", "bench@client.test", "-t", "bench@mailstream.test",
                    "-M", "client.test", f"{HOST}:{port}"], check=True, timeout=3600)
    return time.monotonic() - t


def write_report(a, lines: List[str]) -> None:
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{a.label}.md"
    path.write_text(report)
    log(f"report: {path}")


def native_report(a, argv, systems, workloads, results, load_before, load_after) -> int:
    lines = [f"# Frontend CPU, page faults and system calls per message, "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}", "",
             f"Command: `{' '.join(['bench/fe_instr.py'] + (argv if argv is not None else sys.argv[1:]))}`",
             "",
             f"- load average before: {[round(x, 2) for x in load_before]}, after: "
             f"{[round(x, 2) for x in load_after]} (CPU times move with it; the counts do not)",
             f"- {a.messages} messages per run, {a.rounds} run(s) per workload (median shown), over "
             f"{SESSIONS} {a.client} sessions after {a.warmup} untimed; one frontend (no valgrind), "
             "one Kafka broker, Redis, no worker; /proc/PID/stat, io and task/*/status", "",
             "| system | workload | " + " | ".join(h for _, h, _ in NATIVE_KEYS) + " |",
             "|---|---|" + "---|" * len(NATIVE_KEYS)]
    for name, *_ in systems:
        for w in workloads:
            r = results[name][w]
            lines.append(f"| {name} | {w} | " +
                         " | ".join(f"{r[k] * m:,.3f}" for k, _, m in NATIVE_KEYS) + " |")
    write_report(a, lines)
    return 0


def smtplib_source(port: int, sessions: int, n: int, size: int) -> float:
    """As smtp_source, through Python's smtplib: EHLO, and MAIL FROM with
    SIZE= (RFC 1870), as MTAs send it; smtp-source sends HELO and no SIZE."""
    import smtplib
    import threading
    lines = ["From: <bench@client.test>", "To: <bench@mailstream.test>",
             "Subject: fe_instr", ""]
    body_len = sum(len(x) + 2 for x in lines)
    i = 0
    while body_len < size:
        line = (f"{i}" + "X" * 78)[:78]
        lines.append(line)
        body_len += len(line) + 2
        i += 1
    msg = ("\r\n".join(lines) + "\r\n").encode()
    counts = [n // sessions + (1 if k < n % sessions else 0) for k in range(sessions)]
    errors: List[str] = []

    def one(k: int) -> None:
        try:
            with smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=600) as c:
                for _ in range(counts[k]):
                    c.sendmail("bench@client.test", ["bench@mailstream.test"], msg)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    t = time.monotonic()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(sessions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError(f"smtplib: {errors[0]}")
    return time.monotonic() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", action="append", required=True,
                    metavar="NAME=BUILD_DIR[,SECTION.KEY=VALUE...]")
    ap.add_argument("--workloads", default="5k,50k")
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--label", default="fe-instr")
    ap.add_argument("--out", default=str(BENCH / "results"))
    ap.add_argument("--top", type=int, default=12, help="functions listed per difference")
    ap.add_argument("--native", action="store_true",
                    help="no valgrind: CPU time, page faults, system calls and context "
                         "switches per message from /proc (noisy on a busy machine)")
    ap.add_argument("--rounds", type=int, default=1, help="--native: runs per workload")
    ap.add_argument("--client", choices=["smtp-source", "smtplib"], default="smtp-source",
                    help="smtplib: EHLO and MAIL FROM with SIZE= (the declared size)")
    a = ap.parse_args(argv)
    send = smtplib_source if a.client == "smtplib" else smtp_source

    systems = [parse_system(s) for s in a.system]
    workloads = [w for w in a.workloads.split(",") if w]
    state = Path(tempfile.mkdtemp(prefix="mailstream-instr-", dir="/var/tmp"))
    sup = mslocal.Supervisor(state / "infra")
    load_before = os.getloadavg()
    results: Dict[str, Dict[str, dict]] = {}
    try:
        redis = mslocal.Redis(sup, mslocal.free_port())
        redis.start()
        kport, cport = mslocal.free_ports(2)
        kafka = mslocal.Kafka(sup, kport, cport)
        log("starting kafka")
        kafka.start(timeout=120)
        kafka.create_topics({"queue": mslocal.DEFAULT_TOPICS["queue"]})
        for name, build, extra, _sets in systems:
            port, sub, subs, metrics = mslocal.free_ports(4)
            spec = mslocal.ClusterSpec(
                kafka_brokers=kafka.bootstrap, redis_port=redis.port, relay_host="127.0.0.1:9",
                frontends=1, workers=0,
                listeners={"mx": (f"{HOST}:{port}", "mx"),
                           "submission": (f"{HOST}:{sub}", "submission"),
                           "submissions": (f"{HOST}:{subs}", "submissions")},
                frontend_metrics_ports=[metrics], frontend_extra=extra)
            msup = mslocal.Supervisor(state / f"fe-{name}")
            cl = mslocal.Cluster(msup, spec)
            conf = msup.state_dir / "frontend.ini"
            conf.write_text(cl.frontend_config(1, f"{HOST}:{metrics}"))
            outbase = str(msup.state_dir / "callgrind.out")
            argv_ = [str(build / "mailstream-frontend"), "-c", str(conf)]
            if not a.native:
                argv_ = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={outbase}.%p",
                         "--dump-instr=no"] + argv_
            p = msup.spawn("frontend", argv_, msup.state_dir / "frontend.log")
            url = f"http://{HOST}:{metrics}/readyz"
            mslocal.wait_until(lambda: mslocal.http_status(url) == 200, 180,
                               f"{name} /readyz", p.alive, interval=0.5,
                               log_path=msup.state_dir / "frontend.log")
            results[name] = {}
            try:
                for w in workloads:
                    size = SIZES[w]
                    log(f"{name} {w}: warm-up {a.warmup}")
                    send(port, 4, a.warmup, size)
                    if a.native:
                        runs = []
                        for _ in range(a.rounds):
                            c0 = proc_counters(p.pid)
                            send(port, SESSIONS, a.messages, size)
                            c1 = proc_counters(p.pid)
                            runs.append({k: (c1[k] - c0[k]) / a.messages for k in c0})
                        results[name][w] = {k: sorted(r[k] for r in runs)[len(runs) // 2]
                                            for k in runs[0]}
                        results[name][w]["runs"] = runs
                        log(f"{name} {w}: " + ", ".join(
                            f"{k} {results[name][w][k] * m:.3f}" for k, _, m in NATIVE_KEYS))
                        continue
                    before = set(msup.state_dir.glob("callgrind.out.*"))
                    zero(p.pid)
                    dt = send(port, SESSIONS, a.messages, size)
                    busy = dump(p.pid, outbase + f".{p.pid}", before)
                    before.add(busy)
                    zero(p.pid)
                    time.sleep(dt)
                    idle = dump(p.pid, outbase + f".{p.pid}", before)
                    ib, ii = callgrind_totals(busy), callgrind_totals(idle)
                    per = (ib - ii) / a.messages
                    log(f"{name} {w}: {per:,.0f} instructions/msg (busy {ib:,}, idle {ii:,}, "
                        f"{dt:.1f} s)")
                    results[name][w] = {"busy": ib, "idle": ii, "seconds": dt, "per_msg": per,
                                        "funcs": functions(busy), "dump": str(busy)}
            finally:
                msup.stop_all(timeout=30)
    finally:
        sup.stop_all(timeout=30)
        # Kafka's log and Redis go; the callgrind dumps stay.
        shutil.rmtree(state / "infra", ignore_errors=True)
        if a.native:
            shutil.rmtree(state, ignore_errors=True)
    load_after = os.getloadavg()

    if a.native:
        return native_report(a, argv, systems, workloads, results, load_before, load_after)
    lines = [f"# Frontend instructions per message (callgrind), {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
             "",
             f"Command: `{' '.join(['bench/fe_instr.py'] + (argv if argv is not None else sys.argv[1:]))}`",
             "",
             f"- load average before: {[round(x, 2) for x in load_before]}, after: "
             f"{[round(x, 2) for x in load_after]} (instruction counts do not depend on it)",
             f"- {a.messages} messages per workload over {SESSIONS} sessions of "
             + ("Python's smtplib (EHLO, MAIL FROM with SIZE=)" if a.client == "smtplib" else
                f"smtp-source (`smtp-source -d -s {SESSIONS} -m N -l SIZE`)")
             + f" after {a.warmup} untimed; one frontend "
             "under valgrind --tool=callgrind, all its threads; one Kafka broker, Redis, no worker",
             "- per message = (instructions while the messages went through - instructions over "
             "the same time idle) / N",
             "",
             "| system | settings | " + " | ".join(f"{w} instr/msg" for w in workloads) +
             " | " + " | ".join(f"{w} idle instr/s" for w in workloads) + " |",
             "|---|---|" + "---|" * (2 * len(workloads))]
    for name, build, _extra, sets in systems:
        r = results[name]
        shown = [s for s in sets if s not in BASE_SET]
        lines.append(f"| {name} | {', '.join(shown) or '-'} ({build}) | " +
                     " | ".join(f"{r[w]['per_msg']:,.0f}" for w in workloads) + " | " +
                     " | ".join(f"{r[w]['idle'] / r[w]['seconds']:,.0f}" for w in workloads) + " |")
    if len(workloads) > 1 and all(w in SIZES for w in workloads):
        lo, hi = workloads[0], workloads[-1]
        lines += ["", f"Per KiB ({lo} -> {hi}: the difference over "
                  f"{(SIZES[hi] - SIZES[lo]) // 1024} KiB):", ""]
        for name, *_ in systems:
            r = results[name]
            lines.append(f"- {name}: {(r[hi]['per_msg'] - r[lo]['per_msg']) * 1024 / (SIZES[hi] - SIZES[lo]):,.0f} instructions per KiB")
    base = systems[0][0]
    for name, *_ in systems[1:]:
        for w in workloads:
            fb, fo = results[base][w]["funcs"], results[name][w]["funcs"]
            diff = {f: (fo.get(f, 0) - fb.get(f, 0)) / a.messages for f in set(fb) | set(fo)}
            top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:a.top]
            lines += ["", f"### {name} - {base}, {w}: self instructions per message, largest "
                      "differences (busy dumps, idle not subtracted)", "",
                      "| function | " + f"{base} | {name} | difference |", "|---|---|---|---|"]
            for f, d in top:
                lines.append(f"| `{f}` | {fb.get(f, 0) / a.messages:,.0f} | "
                             f"{fo.get(f, 0) / a.messages:,.0f} | {d:+,.0f} |")
    for name, *_ in systems:
        for w in workloads:
            f = results[name][w]["funcs"]
            top = sorted(f.items(), key=lambda kv: -kv[1])[:a.top]
            lines += ["", f"### {name}, {w}: the functions with the most self instructions per message",
                      "", "| function | instr/msg |", "|---|---|"]
            lines += [f"| `{fn}` | {v / a.messages:,.0f} |" for fn, v in top]
    write_report(a, lines)
    log(f"callgrind dumps (callgrind_annotate reads them): {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
