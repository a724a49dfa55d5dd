#!/usr/bin/env python3
"""The chaos suite (issue 15, docs/reliability.md): mail through the cluster's
production shape while its parts are killed, stopped, wiped and churned,
then proof that every message the client got 250 for arrived exactly once.

  tests/chaos/chaos.py --mode short|long [--brokers N] [--json FILE] ...

What it runs (cluster/mslocal.py's classes, free loopback ports, its own
state directory): N KRaft brokers (default 3: replication 3,
min.insync.replicas 2), Redis with a replica and three Sentinels, HAProxy
sending PROXY v2 to 2 frontends, 2 workers, and tests/chaos/sink.py as the
destination (every 250 it gives is on record with the body's digest).

Clients (--clients threads, persistent SMTP sessions through the balancer,
a new session every SESSION_MESSAGES messages) send unique numbered
messages at --rate a second, a third of them with BDAT. A message is
accepted only on 250; on a 4xx or a lost connection the client sends it
again (a client retry) as a new attempt with its own id, so every attempt
is tracked on its own: an attempt that got 250 must arrive exactly once; an
attempt that got no 250 may arrive once (the server committed it, the
client never heard: SMTP's own duplicate, RFC 5321 §6.1, reported apart).

The fault plan: each fault alone (the order in FAULTS), then, in long mode,
all of them mixed at random until the message count is reached. Then the
queue drains and the check runs. It prints sent, accepted, delivered, lost,
duplicated, split per queue id into "unavoidable" (a worker logged
`event=duplicate_risk kind=unavoidable` for that qid: it redelivered after
the previous holder passed its DATA check and died without recording the
outcome) and other (avoidable: a failure), the unavoidable ones per worker
signal with that worker's delivery rate (their ratio is the window between
the "." and the recorded outcome), client retries, and for each fault the
time until accepting and delivering are back at half the send rate.

Exit status: 0 when nothing accepted was lost (with --brokers 1 losses are
reported, not failed: that is what the mode is for) and other duplicates
are at most --max-other-duplicates; 1 otherwise; 2 if the cluster could not
be started.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import configparser
import email.utils
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "cluster"))
import mslocal  # noqa: E402

HOST = mslocal.HOST
SESSION_MESSAGES = 20          # a client opens a new session (maybe on another frontend) this often
CLIENT_TIMEOUT = 30.0          # seconds a client waits for a reply
RETRY_PAUSE = (0.2, 2.0)       # client backoff after a 4xx or a lost connection: first, cap
SESSION_TIMEOUT_S = 10         # the workers' Kafka session.timeout.ms (lib/io/ms_kafka.c)
RECOVERY_WINDOW_S = 2.0        # rates are judged over this window
RECOVERY_FRACTION = 0.5        # "back" = this share of the send rate
# The workers' count of recipients a new owner may deliver again because the
# old one died after the destination took the message (worker/fence.h).
DEFAULT_DUP_METRIC = r'mailstream_worker_duplicate_risk_total\{[^}]*kind="unavoidable"[^}]*\}'

MODES = {
    # A few thousand messages, each fault once, faults overlapping their heal
    # (a broker restarting while the next fault runs): under 3 minutes.
    "short": dict(messages=3000, rate=40.0, clients=6, tempfail_s=8.0, churn_s=6.0,
                  gap_s=1.5, heal_alone=False, mixed=False, drain_s=150.0),
    # >= 100,000 messages, every fault alone once, then mixed at random
    # (each at least twice more) until the count is reached: ~15 minutes.
    "long": dict(messages=100000, rate=120.0, clients=8, tempfail_s=60.0, churn_s=30.0,
                 gap_s=5.0, heal_alone=True, mixed=True, drain_s=600.0),
}

FAULTS = ["broker_leader_kill", "frontend_kill_data", "worker_kill", "controller_kill",
          "frontend_kill_bdat", "worker_term", "redis_primary_kill", "broker_wipe",
          "worker_stop", "destination_tempfail", "worker_churn", "frontend_churn"]


def log(msg: str) -> None:
    print(f"chaos {time.strftime('%H:%M:%S')} {msg}", flush=True)


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

_ALPHA = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "


def body_for(seq: int) -> bytes:
    """The body of message seq: 200 B to 6 KiB of text, the same for every
    attempt, so its digest says the message arrived intact."""
    r = random.Random(seq)
    n = r.randint(200, 6000)
    lines, size = [], 0
    while size < n:
        line = "".join(r.choice(_ALPHA) for _ in range(r.randint(10, 76))).strip() or "x"
        lines.append(line)
        size += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode()


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def message_for(run: str, seq: int, attempt: int, rcpt: str) -> Tuple[bytes, bytes]:
    ident = f"{run}-{seq}-{attempt}"
    head = (f"From: <chaos@example.org>\r\nTo: <{rcpt}>\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: <{ident}@example.org>\r\nSubject: chaos {seq}\r\n"
            f"X-Chaos-Id: {ident}\r\n\r\n").encode()
    return head, body_for(seq)


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------

class Reply(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


class Hold:
    """Lets the fault plan catch every client in the middle of DATA or BDAT:
    while `mode` is set, a client sends the first half of its message that
    way, then waits for `release` (the fault fires meanwhile)."""

    def __init__(self):
        self.mode: Optional[str] = None
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()
        self.held = 0

    def begin(self, mode: str) -> None:
        self.release.clear()
        self.mode = mode

    def end(self) -> None:
        self.mode = None
        self.release.set()

    def wait_here(self) -> None:
        with self.lock:
            self.held += 1
        try:
            self.release.wait(20)
        finally:
            with self.lock:
                self.held -= 1


class Pacer:
    """Hands out sequence numbers at `rate` a second until `stop`."""

    def __init__(self, rate: float):
        self.rate = rate
        self.lock = threading.Lock()
        self.next = 0
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.stopped = threading.Event()

    def take(self) -> Optional[int]:
        with self.lock:
            if self.stopped.is_set():
                return None
            seq = self.next
            self.next += 1
        due = self.t0 + seq / self.rate
        while not self.stopped.is_set():
            d = due - time.monotonic()
            if d <= 0:
                return seq
            self.stopped.wait(min(d, 0.5))
        return seq  # taken before the stop: still sent


class Client(threading.Thread):
    def __init__(self, idx: int, run: str, port: int, pacer: Pacer, hold: Hold,
                 stats: "Stats", give_up: threading.Event):
        super().__init__(daemon=True, name=f"client-{idx}")
        self.idx, self.run_id, self.port = idx, run, port
        self.pacer, self.hold, self.stats, self.give_up = pacer, hold, stats, give_up
        self.sock: Optional[socket.socket] = None
        self.f = None
        self.chunking = False
        self.in_session = 0
        self.phase = "idle"

    # -- wire --
    def _reply(self) -> Tuple[int, str]:
        text = []
        while True:
            line = self.f.readline(4096)
            if not line:
                raise ConnectionError("connection closed")
            text.append(line[4:].decode("ascii", "replace").rstrip())
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(text)

    def _cmd(self, line: str, want: int) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        code, text = self._reply()
        if code != want:
            raise Reply(code, text)
        return text

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock, self.f, self.in_session = None, None, 0

    def connect(self) -> None:
        self.sock = socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT)
        self.f = self.sock.makefile("rb")
        code, text = self._reply()
        if code != 220:
            raise Reply(code, text)
        ext = self._cmd("EHLO chaos-client.example.org", 250)
        self.chunking = "CHUNKING" in ext.upper()

    def transaction(self, seq: int, attempt: int) -> Tuple[int, str]:
        if self.sock is None or self.in_session >= SESSION_MESSAGES:
            if self.sock is not None:
                try:
                    self._cmd("QUIT", 221)
                except (OSError, Reply):
                    pass
                self.close()
            self.phase = "connect"
            self.connect()
        self.in_session += 1
        rcpt = f"u{seq % 50}@mailstream.test"
        head, body = message_for(self.run_id, seq, attempt, rcpt)
        self.stats.body_sent(seq, body)
        msg = head + body
        hold = self.hold.mode
        verb = hold or ("bdat" if seq % 3 == 0 and self.chunking else "data")
        if verb == "bdat" and not self.chunking:
            verb = "data"
        self.phase = "envelope"
        self._cmd("MAIL FROM:<chaos@example.org>", 250)
        self._cmd(f"RCPT TO:<{rcpt}>", 250)
        half = len(head) + len(body) // 2
        if verb == "data":
            self._cmd("DATA", 354)
            self.phase = "data"
            self.sock.sendall(msg[:half])
            if hold == "data":
                self.hold.wait_here()
            self.sock.sendall(msg[half:] + b".\r\n")   # no line starts with "."
        else:
            self.phase = "bdat"
            first, rest = msg[:half], msg[half:]
            self.sock.sendall(f"BDAT {len(first)}\r\n".encode() + first)
            code, text = self._reply()
            if code != 250:
                raise Reply(code, text)
            if hold == "bdat":
                self.hold.wait_here()
            self.sock.sendall(f"BDAT {len(rest)} LAST\r\n".encode() + rest)
        code, text = self._reply()
        self.phase = "idle"
        return code, text

    def run(self) -> None:
        while True:
            seq = self.pacer.take()
            if seq is None:
                break
            self.stats.sent(seq)
            attempt, pause = 0, RETRY_PAUSE[0]
            while True:
                attempt += 1
                t = time.time()
                self.stats.attempt()
                phase = "connect"
                try:
                    code, text = self.transaction(seq, attempt)
                except Reply as r:
                    code, text, phase = r.code, r.text, self.phase
                    self.close()
                except (OSError, ValueError) as e:
                    code, text, phase = 0, str(e), self.phase
                    self.close()
                if code == 250:
                    self.stats.accepted(seq, attempt, time.time())
                    break
                if 500 <= code < 600:
                    self.stats.refused(seq, attempt, code, text)
                    break
                self.stats.retry(seq, attempt, code, phase, t)
                if self.give_up.is_set():
                    self.stats.gave_up(seq)
                    break
                time.sleep(pause)
                pause = min(pause * 2, RETRY_PAUSE[1])
        self.close()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent_seqs = set()
        self.attempts = 0
        self.acc: Dict[Tuple[int, int], float] = {}     # (seq, attempt) -> time of 250
        self.acc_times: List[float] = []
        self.retries = 0
        self.retry_reasons: collections.Counter = collections.Counter()
        self.cut_mid: collections.Counter = collections.Counter()  # phase of a lost connection
        self.refused_5xx: List[tuple] = []
        self.given_up: List[int] = []
        # seq -> digest of its body, as the client sent it: the check compares
        # the sink's digests with these instead of making 100,000 bodies again
        # (minutes of CPU on the loaded machine).
        self.digests: Dict[int, str] = {}

    def body_sent(self, seq, body):
        if seq not in self.digests:
            d = digest(body)
            with self.lock:
                self.digests[seq] = d

    def sent(self, seq):
        with self.lock:
            self.sent_seqs.add(seq)

    def attempt(self):
        with self.lock:
            self.attempts += 1

    def accepted(self, seq, attempt, t):
        with self.lock:
            self.acc[(seq, attempt)] = t
            self.acc_times.append(t)

    def refused(self, seq, attempt, code, text):
        with self.lock:
            self.refused_5xx.append((seq, attempt, code, text[:80]))

    def retry(self, seq, attempt, code, phase, t):
        with self.lock:
            self.retries += 1
            self.retry_reasons[str(code) if code else "connection lost"] += 1
            if code == 0 and phase in ("data", "bdat"):
                self.cut_mid[phase] += 1

    def gave_up(self, seq):
        with self.lock:
            self.given_up.append(seq)


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------

class Shape:
    """The production shape on free loopback ports in state_dir."""

    def __init__(self, state_dir: Path, brokers: int, frontends: int, workers: int):
        self.state_dir = state_dir
        self.sup = mslocal.Supervisor(state_dir)
        self.brokers, self.n_frontends, self.n_workers = brokers, frontends, workers
        p = mslocal.free_ports(2 * brokers + 2 + 3 + 1 + 3 + mslocal.LB_SLOTS * 4 + workers)
        it = iter(p)
        take = lambda n: [next(it) for _ in range(n)]  # noqa: E731
        self.kafka_ports, self.redis_ports, self.sentinel_ports = take(2 * brokers), take(2), take(3)
        self.sink_port = take(1)[0]
        pub = take(3)
        self.listeners = {"mx": (f"{HOST}:{pub[0]}", "mx"),
                          "submission": (f"{HOST}:{pub[1]}", "submission"),
                          "submissions": (f"{HOST}:{pub[2]}", "submissions")}
        self.lb_ports, self.lb_metrics = take(mslocal.LB_SLOTS * 3), take(mslocal.LB_SLOTS)
        self.worker_metrics = take(workers)
        self.sink_log = state_dir / "chaos-sink" / "delivered.log"
        self.sink_control = state_dir / "chaos-sink" / "mode"
        self.kafka: Optional[mslocal.KafkaCluster] = None
        self.redis: Optional[mslocal.RedisSentinelSet] = None
        self.balancer: Optional[mslocal.Balancer] = None
        self.members = None  # mslocal.Membership, once up

    @property
    def mx_port(self) -> int:
        return int(self.listeners["mx"][0].rsplit(":", 1)[1])

    def up(self) -> None:
        t0 = time.monotonic()
        self.redis = mslocal.RedisSentinelSet(self.sup, self.redis_ports, self.sentinel_ports)
        self.kafka = mslocal.KafkaCluster(self.sup, self.brokers, self.kafka_ports)
        errors: List[BaseException] = []

        def bg(fn):
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
        # Kafka's JVMs take longest: start them while Redis settles.
        tk = threading.Thread(target=bg, args=(self.kafka.start,))
        tk.start()
        self.redis.start()
        self.sink_log.parent.mkdir(parents=True, exist_ok=True)
        self.sink_control.write_text("ok\n")
        self.sup.spawn("sink", [sys.executable, str(HERE / "sink.py"), "--port", str(self.sink_port),
                                "--log", str(self.sink_log), "--control", str(self.sink_control)],
                       self.sink_log.parent / "sink.out", ready={"port": self.sink_port}, kind="sink")
        mslocal.wait_until(lambda: mslocal.port_open(HOST, self.sink_port), 20, "chaos sink")
        tk.join()
        if errors:
            raise errors[0]
        self.kafka.create_topics(mslocal.DEFAULT_TOPICS)
        log(f"kafka x{self.brokers} and redis+sentinel up after {time.monotonic() - t0:.0f} s")
        redis_extra = self.redis.client_config()
        fe_extra = mslocal.merge_sections(
            {"ratelimit": {"connections_per_ip": "100000000/1h", "redis_failure": "open"},
             "smtp": {"drain_timeout": 5, "max_connections_per_ip": 1000},
             "kafka": {"events_topic": "events"}}, redis_extra)
        wk_extra = mslocal.merge_sections(
            # Deferred mail comes back within seconds, not the default 5 min,
            # so the queue drains after the destination's outage.
            {"delivery": {"retry_min_ms": 1000, "retry_max_ms": 4000,
                          "drain_timeout_ms": 10000}}, redis_extra)
        spec = mslocal.ClusterSpec(
            kafka_brokers=self.kafka.bootstrap, redis_port=self.redis_ports[0],
            relay_host=f"{HOST}:{self.sink_port}", frontends=self.n_frontends,
            workers=self.n_workers, listeners=self.listeners,
            worker_metrics_ports=self.worker_metrics, frontend_extra=fe_extra,
            worker_extra=wk_extra)
        self.balancer = mslocal.Balancer.with_ports(self.sup, self.listeners, self.lb_ports,
                                                    self.lb_metrics)
        self.balancer.start()
        cluster = mslocal.BalancedCluster(self.sup, spec, self.balancer)
        mslocal.save_shape(self.state_dir, spec, self.balancer)
        cluster.start(timeout=120)
        self.members = mslocal.Membership(self.state_dir)
        log(f"shape up after {time.monotonic() - t0:.0f} s: {self.brokers} broker(s), "
            f"redis+sentinel, haproxy, {self.n_frontends} frontends, {self.n_workers} workers")

    def down(self) -> None:
        opts = mslocal.StackOptions(state_dir=self.state_dir)
        mslocal.Stack(opts).down(timeout=5)  # the run is over: no drain needed
        # Anything of this run that STATE/pids lost track of (its command
        # line names this run's own state directory): by pid, and said.
        left = own_processes(self.state_dir)
        for pid in left:
            log(f"warning: pid {pid} of this run was not recorded in STATE/pids; SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


    # -- membership --
    def running(self, kind: str) -> List[str]:
        return [n for n, _pid, k, alive in self.members.status() if k == kind and alive]

    def metrics_addr(self, name: str) -> Optional[str]:
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(self.state_dir / f"{name}.ini")
            return cp["node"]["metrics"]
        except (KeyError, configparser.Error):
            return None

    def pid(self, name: str) -> Optional[int]:
        for n, pid, _k, alive in self.members.status():
            if n == name and alive:
                return pid
        return None

    def free_frontend_slot(self) -> Optional[int]:
        live = set(self.running("frontend"))
        for i in range(1, mslocal.LB_SLOTS + 1):
            if f"frontend-{i}" not in live:
                return i
        return None

    def slot_port(self, name: str) -> int:
        idx = int(name.rsplit("-", 1)[1])
        return int(self.balancer.slots[idx - 1]["listeners"]["mx"])

    def kafka_node(self, node_id: int) -> mslocal.KafkaNode:
        return self.kafka.node(node_id)

    def isr_full(self) -> bool:
        rf = self.kafka.replication[0]
        try:
            parts = self.kafka.partitions("queue")
        except mslocal.MsLocalError:
            return False
        return bool(parts) and all(len(isr) >= rf and leader > 0
                                   for leader, _r, isr in parts.values())


def own_processes(state_dir: Path) -> List[int]:
    """Processes whose command line names state_dir (a new directory per
    run, so only this run's)."""
    key = str(state_dir.resolve()).encode()
    mine = set()   # this process and its ancestors (`timeout ... --state-dir DIR`)
    pid = os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if key in f.read():
                    out.append(int(d))
        except OSError:
            continue
    return out


def sessions_on(pid: int, port: int) -> int:
    """Established TCP connections process pid holds on local port (the
    frontend's end of HAProxy's connections: its SMTP sessions)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("socket:["):
                inodes.add(t[8:-1])
    except OSError:
        return 0
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[3] == "01" and int(cols[1].split(":")[1], 16) == port and cols[9] in inodes:
                n += 1
    return n


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------

class FaultRun:
    def __init__(self, name: str, t: float):
        self.name, self.t, self.detail, self.error = name, t, "", None
        self.t_inject: Optional[float] = None   # the kill itself (after any set-up)
        self.phase = "alone"
        self.t_end: Optional[float] = None


class Faults:
    """Each fault: inject, then heal (in the background when heal_alone is
    off, so the next fault can start). Locks keep two faults off the same
    part at once: one broker fault at a time (and a full ISR before the
    next), one Redis failover, one destination outage, one frontend kill."""

    def __init__(self, shape: Shape, hold: Hold, mode: dict, rng: random.Random):
        self.s, self.hold, self.m, self.rng = shape, hold, mode, rng
        self.kafka_lock = threading.Lock()
        self.redis_lock = threading.Lock()
        self.fe_lock = threading.Lock()
        self.sink_lock = threading.Lock()
        self.busy_workers = set()
        self.wlock = threading.Lock()
        self.heals: List[threading.Thread] = []
        self.runs: List[FaultRun] = []
        self.rlock = threading.Lock()
        self.phase = "alone"
        # Every signal that stops a worker (time, fault, worker, what, workers
        # running then): what an unavoidable duplicate is attributed to.
        self.worker_ops: List[tuple] = []

    def _note_op(self, fault: str, worker: str, what: str) -> None:
        with self.rlock:
            self.worker_ops.append((time.time(), fault, worker, what,
                                    len(self.s.running("worker"))))

    # -- helpers --
    def _bg(self, name: str, fn: Callable[[], None], lock: Optional[threading.Lock] = None):
        """Run fn (a heal) now or in the background; `lock` is held until it
        is done (taken by the caller, released here)."""
        def wrapped():
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log(f"heal of {name} failed: {e}")
            finally:
                if lock is not None:
                    lock.release()
        if self.m["heal_alone"]:
            wrapped()
        else:
            t = threading.Thread(target=wrapped, daemon=True, name=f"heal-{name}")
            t.start()
            self.heals.append(t)

    def _pick_worker(self, wait: float = 60.0, exclude: Tuple[str, ...] = ()) -> Optional[str]:
        """A running worker no other fault holds, once at least one more
        is running and free (one worker stays out of every fault); None if
        none within `wait` seconds."""
        end = time.monotonic() + wait
        while True:
            with self.wlock:
                live = [w for w in self.s.running("worker") if w not in self.busy_workers]
                if len(live) >= 2 and [w for w in live if w not in exclude]:
                    w = self.rng.choice([w for w in live if w not in exclude])
                    self.busy_workers.add(w)
                    return w
            if time.monotonic() >= end:
                return None
            time.sleep(0.5)

    def _free_worker(self, w: str) -> None:
        with self.wlock:
            self.busy_workers.discard(w)

    def run(self, name: str) -> FaultRun:
        fr = FaultRun(name, time.time())
        fr.phase = self.phase
        with self.rlock:
            self.runs.append(fr)
        log(f"fault {name}")
        try:
            getattr(self, name)(fr)
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            fr.error = f"{type(e).__name__}: {e}"
            log(f"fault {name} failed: {fr.error}")
            traceback.print_exc()
        fr.t_end = time.time()
        if fr.detail:
            log(f"  {name}: {fr.detail}")
        return fr

    def wait_heals(self, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        for t in self.heals:
            t.join(max(0.0, end - time.monotonic()))

    # -- frontends --
    def _frontend_kill(self, fr: FaultRun, mode: str) -> None:
        with self.fe_lock:
            self.hold.begin(mode)
            try:
                # Every client that is in a session reaches the middle of its
                # DATA / BDAT and waits there.
                try:
                    mslocal.wait_until(lambda: self.hold.held >= self.m["clients"] - 1, 10,
                                       f"clients held mid-{mode}", interval=0.05)
                except mslocal.MsLocalError:
                    pass
                fes = self.s.running("frontend")
                counts = {f: sessions_on(self.s.pid(f) or 0, self.s.slot_port(f)) for f in fes}
                victim = max(fes, key=lambda f: counts[f])
                held = self.hold.held
                fr.t_inject = time.time()
                self.s.members.kill(victim)
                time.sleep(0.2)
            finally:
                self.hold.end()
            fr.detail = (f"SIGKILL {victim} with {counts[victim]} session(s), {held} client(s) "
                         f"held mid-{mode.upper()}")
            time.sleep(1.0)
            self.s.members.restart(victim)

    def frontend_kill_data(self, fr):
        self._frontend_kill(fr, "data")

    def frontend_kill_bdat(self, fr):
        self._frontend_kill(fr, "bdat")

    def frontend_churn(self, fr):
        """Add a frontend in a free balancer slot, then remove (SIGTERM, it
        drains) another; repeated for churn_s."""
        end = time.monotonic() + self.m["churn_s"]
        ops = []
        with self.fe_lock:
            while True:
                slot, new = self.s.free_frontend_slot(), None
                if slot is not None:
                    new = self.s.members.add("frontend", index=slot)
                    ops.append(f"+{new}")
                    time.sleep(1.5)   # HAProxy's check (1 s) marks it up
                live = [f for f in self.s.running("frontend") if f != new]
                if len(live) >= 2:
                    gone = self.rng.choice(live)
                    self.s.members.remove(gone, timeout=20)
                    ops.append(f"-{gone}")
                if time.monotonic() >= end:
                    break
                time.sleep(2.0)
        fr.detail = " ".join(ops)

    # -- workers --
    def _worker_fault(self, fr: FaultRun, inject: Callable[[str], str],
                      heal: Callable[[str], None]) -> None:
        """inject(worker) -> detail, now; heal(worker) afterwards (in the
        background unless heal_alone), the worker held from other faults
        until it is done."""
        w = self._pick_worker()
        if w is None:
            fr.detail = "skipped: fewer than 2 free workers"
            return
        fr.t_inject = time.time()
        fr.detail = inject(w)

        def healer():
            try:
                heal(w)
            finally:
                self._free_worker(w)
        self._bg(fr.name, healer)

    def worker_kill(self, fr):
        def inject(w):
            self._note_op(fr.name, w, "SIGKILL")
            self.s.members.kill(w)
            return f"SIGKILL {w}"

        def heal(w):
            time.sleep(2.0)
            self.s.members.restart(w)
        self._worker_fault(fr, inject, heal)

    def worker_term(self, fr):
        # restart: SIGTERM, the worker drains, then it is started again.
        def heal(w):
            self._note_op(fr.name, w, "SIGTERM")
            self.s.members.restart(w)
        self._worker_fault(fr, lambda w: f"SIGTERM {w}, started again", heal)

    def worker_stop(self, fr):
        stop_s = SESSION_TIMEOUT_S + 4

        def inject(w):
            self._note_op(fr.name, w, "SIGSTOP")
            self.s.members.signal(w, signal.SIGSTOP)
            return f"SIGSTOP {w} for {stop_s} s (session timeout {SESSION_TIMEOUT_S} s), SIGCONT"

        def heal(w):
            time.sleep(stop_s)
            self.s.members.signal(w, signal.SIGCONT)
        self._worker_fault(fr, inject, heal)

    def worker_churn(self, fr):
        """Every few seconds one worker added and one (not a fault's) removed."""
        end = time.monotonic() + self.m["churn_s"]
        ops = []
        while True:
            new = self.s.members.add("worker")
            ops.append(f"+{new}")
            gone = self._pick_worker(wait=10, exclude=(new,))
            if gone is not None:
                try:
                    self._note_op(fr.name, gone, "SIGTERM")
                    self.s.members.remove(gone, timeout=30)
                    ops.append(f"-{gone}")
                finally:
                    self._free_worker(gone)
            if time.monotonic() >= end:
                break
            time.sleep(3.0)
        fr.detail = " ".join(ops)

    # -- kafka --
    def _kafka_ready(self) -> None:
        """Wait (holding kafka_lock) until every queue partition has its
        full ISR: two broker faults at once are not what this fault is."""
        if self.s.brokers > 1:
            mslocal.wait_until(self.s.isr_full, 180, "kafka: full ISR", interval=2)

    def _restart_broker(self, node_id: int, wipe: bool) -> None:
        node = self.s.kafka_node(node_id)
        if wipe:
            node.wipe_data()
        node.start(timeout=120)
        if self.s.brokers == 1 and wipe:
            # A lone broker's lost disk is a new, empty cluster: the topics
            # are made again (what the queue held is gone).
            self.s.kafka.create_topics(mslocal.DEFAULT_TOPICS)

    def _take(self, lock: threading.Lock, fr: FaultRun) -> bool:
        """Alone: wait for the part to be free. Mixed: a fault on a part
        still healing from the last one is skipped (said in its detail),
        so broker faults do not queue up behind each other."""
        if lock.acquire(timeout=-1 if self.phase == "alone" else 5):
            return True
        fr.detail = "skipped: the previous fault on this part is still healing"
        return False

    def _broker_fault(self, fr, pick: str, wipe: bool) -> None:
        if not self._take(self.kafka_lock, fr):
            return
        try:
            self._kafka_ready()
            if pick == "leader":
                leaders = collections.Counter(
                    ldr for ldr, _r, _i in self.s.kafka.partitions("queue").values() if ldr > 0)
                victim, led = leaders.most_common(1)[0]
                what = f"kafka-{victim} (leader of {led}/{sum(leaders.values())} queue partitions)"
            elif pick == "controller":
                victim = self.s.kafka.active_controller()
                what = f"kafka-{victim} (active controller)"
            else:
                ctl = self.s.kafka.active_controller() if self.s.brokers > 1 else 1
                others = [i for i in range(1, self.s.brokers + 1) if i != ctl] or [ctl]
                victim = self.rng.choice(others)
                what = f"kafka-{victim}"
            fr.t_inject = time.time()
            self.s.members.kill(f"kafka-{victim}")
            fr.detail = f"SIGKILL {what}" + (", data directory wiped, restarted" if wipe
                                             else ", restarted after 3 s")
        except BaseException:
            self.kafka_lock.release()
            raise

        def heal():
            time.sleep(3.0)
            self._restart_broker(victim, wipe)
            self._kafka_ready()
        self._bg(fr.name, heal, self.kafka_lock)

    def broker_leader_kill(self, fr):
        self._broker_fault(fr, "leader", False)

    def controller_kill(self, fr):
        self._broker_fault(fr, "controller", False)

    def broker_wipe(self, fr):
        self._broker_fault(fr, "other", True)

    # -- redis --
    def redis_primary_kill(self, fr):
        if not self._take(self.redis_lock, fr):
            return
        try:
            old = self.s.redis.primary()
            t0 = time.monotonic()
            fr.t_inject = time.time()
            self.s.members.kill(old.name)
            new = self.s.redis.wait_failover(old, 60)
            fr.detail = f"SIGKILL {old.name}; {new.name} promoted after {time.monotonic() - t0:.1f} s"
        except BaseException:
            self.redis_lock.release()
            raise

        def heal():
            # Back as a replica (Sentinel reconfigures it), ready for the next.
            self.s.members.restart(old.name)
            mslocal.wait_until(lambda: "master_link_status:up" in str(
                mslocal.redis_query(old.port, "INFO", "replication")), 60,
                f"{old.name} replicating again", interval=0.5)
        self._bg("redis_primary_kill", heal, self.redis_lock)

    # -- the destination --
    def destination_tempfail(self, fr):
        d = self.m["tempfail_s"]
        with self.sink_lock:
            self.s.sink_control.write_text("421\n")
            time.sleep(d / 2)
            self.s.sink_control.write_text("451\n")
            time.sleep(d / 2)
            self.s.sink_control.write_text("ok\n")
        fr.detail = f"421 for {d / 2:.0f} s, then 451 after DATA for {d / 2:.0f} s"


# ---------------------------------------------------------------------------
# Metrics, sink records, the check
# ---------------------------------------------------------------------------

class Scraper(threading.Thread):
    """Every 2 s, the last value of the duplicate metric and the queue's
    state from every running worker (a killed worker's last scrape stays)."""

    def __init__(self, shape: Shape, dup_metric: str):
        super().__init__(daemon=True, name="scraper")
        self.s, self.dup_re = shape, re.compile(rf"^{dup_metric}\s+(?P<v>\S+)$", re.M)
        self.dup: Dict[Tuple[str, int], float] = {}
        self.lag: Dict[str, float] = {}
        self.halt = threading.Event()
        self.seen_metric = False
        # (worker, pid) -> histogram name -> {"buckets": {le: n}, "sum", "count"}
        self.hist: Dict[Tuple[str, int], Dict[str, dict]] = {}
        self.loads: List[float] = []   # the machine's 1-minute load average, each scrape

    def scrape_once(self) -> None:
        self.loads.append(os.getloadavg()[0])
        lag = {}
        for name, pid, kind, alive in self.s.members.status():
            if kind != "worker" or not alive:
                continue
            addr = self.s.metrics_addr(name)
            if not addr:
                continue
            try:
                with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as r:
                    text = r.read().decode("utf-8", "replace")
            except OSError:
                continue
            total = 0.0
            for m in self.dup_re.finditer(text):
                self.seen_metric = True
                total += float(m.group("v"))
            self.dup[(name, pid)] = total
            self.hist[(name, pid)] = parse_histograms(text, WINDOW_HISTOGRAMS)
            v = 0.0
            for m in re.finditer(r"^mailstream_worker_(consumer_lag|retry_held|in_flight)"
                                 r"(\{[^}]*\})?\s+(\S+)$", text, re.M):
                v += float(m.group(3))
            lag[name] = v
        self.lag = lag

    def run(self) -> None:
        while not self.halt.wait(2.0):
            try:
                self.scrape_once()
            except Exception:  # noqa: BLE001 - the next round tries again
                pass

    def unavoidable(self) -> int:
        return int(sum(self.dup.values()))

    def windows(self) -> Dict[str, dict]:
        """Each window histogram summed over every worker process seen (a
        killed one's last scrape kept): count, mean and bucket quantiles."""
        out = {}
        for name in WINDOW_HISTOGRAMS:
            buckets: Dict[float, float] = collections.Counter()
            total = count = 0.0
            for h in self.hist.values():
                if name in h:
                    for le, n in h[name]["buckets"].items():
                        buckets[le] += n
                    total += h[name]["sum"]
                    count += h[name]["count"]
            out[name] = summarize_histogram(buckets, total, count)
        return out


# The worker's histograms of the unavoidable duplicate's window
# (worker/delivery.c): end of data sent -> destination's reply, and ->
# outcome recorded in Redis.
WINDOW_HISTOGRAMS = ("mailstream_worker_end_reply_seconds", "mailstream_worker_unrecorded_seconds")


def parse_histograms(text: str, names) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for name in names:
        h = {"buckets": {}, "sum": 0.0, "count": 0.0}
        for m in re.finditer(rf'^{name}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}}\s+(\S+)$', text, re.M):
            h["buckets"][float(m.group(1))] = float(m.group(2))
        m = re.search(rf"^{name}_sum(?:\{{\}})?\s+(\S+)$", text, re.M)
        h["sum"] = float(m.group(1)) if m else 0.0
        m = re.search(rf"^{name}_count(?:\{{\}})?\s+(\S+)$", text, re.M)
        h["count"] = float(m.group(1)) if m else 0.0
        if h["count"]:
            out[name] = h
    return out


def summarize_histogram(buckets: Dict[float, float], total: float, count: float) -> dict:
    """count, mean, and the p50/p90/p99 bucket bounds (cumulative buckets)."""
    res = {"count": int(count), "mean_ms": round(1000 * total / count, 2) if count else None}
    for q in (0.5, 0.9, 0.99):
        bound = None
        for le in sorted(buckets):
            if count and buckets[le] >= q * count:
                bound = le
                break
        res[f"p{int(q * 100)}_le_ms"] = None if bound is None else (
            "inf" if bound == float("inf") else round(1000 * bound, 1))
    return res


def read_deliveries(path: Path, run: str) -> Tuple[Dict[Tuple[int, int], List[tuple]], int]:
    """(seq, attempt) -> [(digest, time, qid)], and lines of other runs /
    unreadable. qid is "-" in a line without one (tests/chaos/sink.py)."""
    out: Dict[Tuple[int, int], List[tuple]] = collections.defaultdict(list)
    other = 0
    try:
        text = path.read_text()
    except OSError:
        return out, 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (3, 4):
            other += 1
            continue
        ident, dg, t = parts[:3]
        qid = parts[3] if len(parts) == 4 else "-"
        r, _, rest = ident.partition("-")
        seq, _, att = rest.partition("-")
        if r != run or not seq.isdigit() or not att.isdigit():
            other += 1
            continue
        out[(int(seq), int(att))].append((dg, float(t), qid))
    return out, other


# A worker's line for a redelivery after a holder died past its DATA check
# (worker/delivery.c, fence_note_prior).
FLAG_RE = re.compile(r"^ts=(\S+) .*\bevent=duplicate_risk kind=unavoidable qid=(\S+) rcpts=(\d+)",
                     re.M)
# A worker that got the destination's 250 but could not write the marker
# within WK_MARKER_RETRY_MAX_MS (worker/delivery.c, marker_retry): a later
# owner then sees the lease "in DATA" and flags the redelivery, but the
# duplicate was the cluster's (Redis lost), not a death after the ".".
LOST_RE = re.compile(r"\bevent=marker_lost qid=(\S+)")
# librdkafka's own aborts (an assertion in the library, not ours).
ABORT_RE = re.compile(r"^mailstream-worker: (\S+: .*Assertion .*)$", re.M)


def read_worker_logs(state_dir: Path) -> Tuple[Dict[str, List[tuple]], List[tuple]]:
    """Every worker log under state_dir (each worker NAME writes NAME.log,
    appended across restarts, so killed, removed and added workers are all
    there): qid -> [(worker, time, rcpts)] of the `duplicate_risk
    kind=unavoidable` lines (and (worker, "marker_lost", 0) for a marker
    given up on), and [(worker, line)] of library aborts."""
    flagged: Dict[str, List[tuple]] = collections.defaultdict(list)
    aborts: List[tuple] = []
    for p in sorted(state_dir.glob("worker-*.log")):
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        for m in FLAG_RE.finditer(text):
            flagged[m.group(2)].append((p.stem, m.group(1), int(m.group(3))))
        for m in LOST_RE.finditer(text):
            flagged[m.group(1)].append((p.stem, "marker_lost", 0))
        for m in ABORT_RE.finditer(text):
            aborts.append((p.stem, m.group(1)))
    return flagged, aborts


def classify_duplicates(deliv: Dict[Tuple[int, int], List[tuple]],
                        flagged) -> Tuple[List[tuple], List[tuple]]:
    """Split the duplicated attempts into (unavoidable, other), each a list
    of (key, extra copies, qid). A copy delivered more than once is
    unavoidable only if a worker flagged its queue id (it redelivered
    after a previous holder passed the DATA check and recorded nothing:
    the destination may have taken the "." just before that holder died);
    every other duplicate is one the fencing should have prevented. A
    copy without a queue id in the sink's record (an older sink) cannot
    be matched and counts as other, and so does one whose marker a worker
    gave up writing (`event=marker_lost`: Redis lost the outcome, no
    death after the "." explains it). Copies of one attempt under two queue
    ids (the frontend queued it twice) are other too: no worker fault
    explains them."""
    unavoidable, other = [], []
    for key, copies in sorted(deliv.items()):
        if len(copies) < 2:
            continue
        qids = {c[2] for c in copies}
        qid = next(iter(qids)) if len(qids) == 1 else None
        row = (key, len(copies) - 1, qid if qid is not None else ",".join(sorted(qids)))
        marks = flagged.get(qid, []) if qid not in (None, "-") else []
        if any(t != "marker_lost" for _w, t, _n in marks) and \
                not any(t == "marker_lost" for _w, t, _n in marks):
            unavoidable.append(row)
        else:
            other.append(row)
    return unavoidable, other


def attribute_duplicates(rows: List[tuple], deliv: Dict[Tuple[int, int], List[tuple]],
                         ops: List[tuple], slack_s: float = 2.0) -> Dict[int, int]:
    """For each unavoidable duplicate, the worker fault that made it: the
    operation (index into ops = [(time, fault, worker, what)], the time
    of the signal) nearest after the first copy's arrival (the dying
    worker sent that one; it may be recorded up to slack_s after the
    signal, the sink still reading what was sent before). Returns op index
    -> duplicates (-1: none within 60 s)."""
    out: Dict[int, int] = collections.Counter()
    times = [o[0] for o in ops]
    for key, extra, _qid in rows:
        t1 = min(c[1] for c in deliv[key])
        i = bisect.bisect_left(times, t1 - slack_s)
        best = i if i < len(ops) and ops[i][0] - t1 <= 60 else -1
        out[best] += extra
    return dict(out)


def recovery(times: List[float], t_fault: float, rate: float, horizon: float) -> Optional[float]:
    """Seconds after t_fault until the rate over RECOVERY_WINDOW_S is back to
    RECOVERY_FRACTION of `rate` (0 if it never dropped); None if not within
    horizon."""
    times = sorted(t for t in times if t_fault - 1 <= t <= t_fault + horizon + RECOVERY_WINDOW_S)
    need = RECOVERY_FRACTION * rate * RECOVERY_WINDOW_S
    dropped = False
    step = 0.25
    x = t_fault
    while x <= t_fault + horizon:
        n = bisect.bisect_left(times, x + RECOVERY_WINDOW_S) - bisect.bisect_left(times, x)
        if n >= need:
            return round(x - t_fault, 2) if dropped else 0.0
        dropped = True
        x += step
    return None


def per_op_rows(ops: List[tuple], by_op: Dict[int, int],
                deliv: Dict[Tuple[int, int], List[tuple]]) -> List[dict]:
    """One row per worker signal: unavoidable duplicates it left, and the
    delivery rate a worker had then (the sink's rate over the 5 s before,
    shared among the workers running), so duplicates / rate is the window
    in seconds between a "." reaching the destination and its outcome
    being recorded (docs/reliability.md, "The one duplicate left")."""
    times = sorted(c[1] for v in deliv.values() for c in v)
    rows = []
    for i, (t, fault, worker, what, nworkers) in enumerate(ops):
        n = bisect.bisect_left(times, t) - bisect.bisect_left(times, t - 5.0)
        rate = n / 5.0 / max(1, nworkers)
        dups = by_op.get(i, 0)
        rows.append({"t": round(t, 3), "fault": fault, "worker": worker, "signal": what,
                     "workers": nworkers, "worker_rate": round(rate, 1),
                     "unavoidable": dups,
                     "window_ms": round(1000.0 * dups / rate, 1) if rate > 0 else None})
    return rows


def check(run: str, stats: Stats, shape: Shape, scraper: Scraper,
          ops: Optional[List[tuple]] = None) -> dict:
    deliv, other_lines = read_deliveries(shape.sink_log, run)
    flagged, aborts = read_worker_logs(shape.state_dir)
    unavoidable_rows, other_rows = classify_duplicates(deliv, flagged)
    ops = sorted(ops or [])
    by_op = attribute_duplicates(unavoidable_rows, deliv, ops)
    dup_qids = {r[2] for r in unavoidable_rows}
    accepted = stats.acc
    acc_seqs = {s for s, _a in accepted}
    lost_attempts = [k for k in accepted if not deliv.get(k)]
    def want(seq: int) -> str:
        return stats.digests.get(seq) or digest(body_for(seq))
    corrupt = sum(1 for k, v in deliv.items() for dg, _t, _q in v if dg != want(k[0]))
    dup_extra = sum(len(v) - 1 for v in deliv.values() if len(v) > 1)
    dup_keys = sorted(k for k, v in deliv.items() if len(v) > 1)
    delivered_seqs = {s for s, _a in deliv}
    # An attempt without 250 that arrived anyway, for a message that also
    # arrived through its accepted attempt: the client's own duplicate.
    unacked = [k for k in deliv if k not in accepted]
    delivered_acked = {s for s, a in deliv if (s, a) in accepted}
    client_dups = sum(1 for s, _a in unacked if s in delivered_acked)
    unavoidable = scraper.unavoidable()
    flagged_rcpts = sum(n for v in flagged.values() for _w, _t, n in v)
    markers_lost = sum(1 for v in flagged.values() if any(t == "marker_lost" for _w, t, _n in v))
    return {
        "sent": len(stats.sent_seqs),
        "attempts": stats.attempts,
        "accepted": len(acc_seqs),
        "accepted_attempts": len(accepted),
        "delivered": len(delivered_seqs),
        "deliveries": sum(len(v) for v in deliv.values()),
        "lost": len({s for s, _a in lost_attempts}),
        "lost_examples": [f"{run}-{s}-{a}" for s, a in sorted(lost_attempts)[:10]],
        "duplicated": dup_extra,
        # Per queue id: unavoidable only if a worker flagged that qid.
        "duplicated_unavoidable": sum(r[1] for r in unavoidable_rows),
        "duplicated_other": sum(r[1] for r in other_rows),
        "duplicate_examples": [f"{run}-{s}-{a}" for s, a in dup_keys[:10]],
        "other_duplicate_examples": [f"{run}-{k[0]}-{k[1]} qid={q}" for k, _n, q in other_rows[:10]],
        "unavoidable_metric_seen": scraper.seen_metric or bool(flagged),
        "unavoidable_metric_total": unavoidable,
        # What the workers flagged: recipients (their counter's sum) and
        # queue ids; the flagged qids that did not arrive twice are the
        # counter's overcount (DATA started, "." never sent or never taken).
        "flagged_rcpts": flagged_rcpts,
        "flagged_qids": sum(1 for v in flagged.values()
                            if any(t != "marker_lost" for _w, t, _n in v)),
        "markers_lost": markers_lost,
        "flagged_not_duplicated": len({q for q, v in flagged.items()
                                       if any(t != "marker_lost" for _w, t, _n in v)} - dup_qids),
        "unavoidable_by_signal": per_op_rows(ops, by_op, deliv),
        "unavoidable_unattributed": by_op.get(-1, 0),
        "window_histograms": scraper.windows(),
        "load_avg_1m": ({"min": round(min(scraper.loads), 1), "max": round(max(scraper.loads), 1),
                         "mean": round(sum(scraper.loads) / len(scraper.loads), 1)}
                        if scraper.loads else None),
        "library_aborts": len(aborts),
        "library_abort_examples": aborts[:5],
        "corrupted": corrupt,
        "delivered_without_250": len(unacked),
        "client_visible_duplicates": client_dups,
        "client_retries": stats.retries,
        "retry_reasons": dict(stats.retry_reasons),
        "cut_mid_transaction": dict(stats.cut_mid),
        "refused_5xx": len(stats.refused_5xx),
        "refused_examples": stats.refused_5xx[:5],
        "not_accepted_gave_up": len(stats.given_up),
        "foreign_sink_lines": other_lines,
    }


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tests/chaos/chaos.py",
                                 description="Chaos suite: faults under steady mail (issue 15).")
    ap.add_argument("--mode", choices=sorted(MODES), default="short")
    ap.add_argument("--brokers", type=int, default=3,
                    help="Kafka brokers (3: replication 3; 1: shows what replication buys)")
    ap.add_argument("--frontends", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--messages", type=int, help="at least this many sent (mode default)")
    ap.add_argument("--rate", type=float, help="messages a second (mode default)")
    ap.add_argument("--clients", type=int, help="client connections (mode default)")
    ap.add_argument("--faults", help="comma-separated subset of: " + ",".join(FAULTS))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--state-dir", help="default: a new temporary directory")
    ap.add_argument("--keep", action="store_true", help="leave the state directory")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--dup-metric", default=DEFAULT_DUP_METRIC,
                    help="regex of the workers' unavoidable-duplicate sample (name and labels)")
    ap.add_argument("--max-other-duplicates", type=int, default=0,
                    help="other (avoidable) duplicates tolerated before failing")
    args = ap.parse_args(argv)

    mode = dict(MODES[args.mode])
    for k in ("messages", "rate", "clients"):
        if getattr(args, k) is not None:
            mode[k] = getattr(args, k)
    faults = args.faults.split(",") if args.faults else list(FAULTS)
    for f in faults:
        if f not in FAULTS:
            ap.error(f"unknown fault {f}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    state = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix="chaos-"))
    state.mkdir(parents=True, exist_ok=True)
    log(f"run {run} mode {args.mode} seed {seed} brokers {args.brokers} state {state}")

    def on_term(_sig, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)   # `timeout`: stop the cluster, write the summary
    shape = Shape(state, args.brokers, args.frontends, args.workers)
    t_start = time.monotonic()
    try:
        shape.up()
    except BaseException as e:  # noqa: BLE001
        log(f"cluster did not start: {e}")
        shape.down()
        return 2
    t_up = time.monotonic() - t_start

    stats, hold = Stats(), Hold()
    pacer = Pacer(mode["rate"])
    give_up = threading.Event()
    clients = [Client(i, run, shape.mx_port, pacer, hold, stats, give_up)
               for i in range(mode["clients"])]
    scraper = Scraper(shape, args.dup_metric)
    fx = Faults(shape, hold, mode, rng)
    summary: dict = {}
    rc = 1
    try:
        scraper.start()
        for c in clients:
            c.start()
        time.sleep(5.0)  # a baseline before the first fault
        plan = [f for f in FAULTS if f in faults]
        for f in plan:
            fx.run(f)
            if mode["heal_alone"]:
                fx.wait_heals()
                time.sleep(mode["gap_s"])
            else:
                time.sleep(mode["gap_s"])
        if mode["mixed"]:
            fx.phase = "mixed"
            log("mixed phase: faults at random, overlapping")
            mixed = plan * 2
            rng.shuffle(mixed)
            running: List[threading.Thread] = []
            send_end = pacer.t0 + mode["messages"] / mode["rate"]
            while mixed or time.monotonic() < send_end - 20:
                f = mixed.pop() if mixed else rng.choice(plan)
                t = threading.Thread(target=fx.run, args=(f,), daemon=True)
                t.start()
                running.append(t)
                time.sleep(rng.uniform(2.0, 8.0))
            for t in running:
                t.join(300)
        # Keep sending until the count is reached, then let the faults heal.
        while pacer.next < mode["messages"]:
            time.sleep(0.5)
        pacer.stopped.set()
        fx.wait_heals()
        log(f"sending stopped at {pacer.next} messages; clients finishing their retries")
        deadline = time.monotonic() + 120
        for c in clients:
            c.join(max(0.1, deadline - time.monotonic()))
        give_up.set()
        for c in clients:
            c.join(30)

        # Drain: every accepted attempt delivered, the workers idle, and
        # the sink quiet for a while (late duplicates have time to show).
        log(f"draining: {len(stats.acc)} accepted attempts")
        t_drain = time.monotonic()
        end = t_drain + mode["drain_s"]
        last_size, quiet_since = -1, time.monotonic()
        while time.monotonic() < end:
            deliv, _o = read_deliveries(shape.sink_log, run)
            missing = sum(1 for k in stats.acc if not deliv.get(k))
            size = shape.sink_log.stat().st_size if shape.sink_log.exists() else 0
            if size != last_size:
                last_size, quiet_since = size, time.monotonic()
            idle = scraper.lag and all(v == 0 for v in scraper.lag.values())
            quiet = time.monotonic() - quiet_since
            # The lag gauges may keep a stale value for a partition a worker
            # lost: a long enough quiet spell counts as idle too.
            if missing == 0 and ((idle and quiet >= 5) or quiet >= 20):
                break
            time.sleep(1.0)
        drain_s = time.monotonic() - t_drain
        scraper.scrape_once()
        summary = check(run, stats, shape, scraper, fx.worker_ops)
        deliv, _o = read_deliveries(shape.sink_log, run)
        dtimes = [c[1] for v in deliv.values() for c in v]
        fault_rows = []
        for fr in fx.runs:
            horizon = 120.0
            t0 = fr.t_inject or fr.t
            fault_rows.append({
                "fault": fr.name, "phase": fr.phase, "at_s": round(t0 - pacer.wall0, 1),
                "detail": fr.detail, "error": fr.error,
                "accept_recover_s": recovery(stats.acc_times, t0, mode["rate"], horizon),
                "deliver_recover_s": recovery(dtimes, t0, mode["rate"], horizon),
            })
        summary.update({
            "run": run, "mode": args.mode, "seed": seed, "brokers": args.brokers,
            "frontends": args.frontends, "workers": args.workers, "rate": mode["rate"],
            "clients": mode["clients"], "startup_s": round(t_up, 1),
            "send_s": round(max(stats.acc_times or [pacer.wall0]) - pacer.wall0, 1),
            "drain_s": round(drain_s, 1), "wall_s": round(time.monotonic() - t_start, 1),
            "faults": fault_rows, "state_dir": str(state),
            "fault_errors": sum(1 for r in fault_rows if r["error"]),
        })
        print_summary(summary)
        ok = summary["lost"] == 0 or args.brokers == 1
        ok = ok and summary["duplicated_other"] <= args.max_other_duplicates
        ok = ok and summary["corrupted"] == 0
        rc = 0 if ok else 1
    except KeyboardInterrupt:
        log("interrupted: counting what arrived so far")
    finally:
        pacer.stopped.set()
        give_up.set()
        hold.end()
        if not summary:
            # Interrupted (a time limit, Ctrl-C): what arrived so far, so a
            # cut run still says what it saw (lost is then an upper bound).
            try:
                summary = check(run, stats, shape, scraper, fx.worker_ops)
                summary.update({"run": run, "mode": args.mode, "brokers": args.brokers,
                                "interrupted": True, "faults": [
                                    {"fault": r.name, "phase": r.phase, "detail": r.detail,
                                     "error": r.error} for r in fx.runs]})
            except Exception as e:  # noqa: BLE001
                log(f"no summary: {e}")
        scraper.halt.set()
        shape.sink_control.write_text("ok\n") if shape.sink_control.parent.exists() else None
        shape.down()
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
        if not args.keep and not args.state_dir and rc == 0:
            shutil.rmtree(state, ignore_errors=True)
    return rc


def print_summary(s: dict) -> None:
    print("\n== chaos summary ==")
    print(f"run {s['run']} mode {s['mode']} brokers {s['brokers']} frontends {s['frontends']} "
          f"workers {s['workers']} rate {s['rate']}/s clients {s['clients']} seed {s['seed']}")
    print(f"startup {s['startup_s']} s, sending {s['send_s']} s, drain {s['drain_s']} s, "
          f"wall {s['wall_s']} s, load average (1 min) {s.get('load_avg_1m')}")
    print(f"sent {s['sent']}  accepted {s['accepted']}  delivered {s['delivered']}  "
          f"lost {s['lost']}  duplicated {s['duplicated']} (unavoidable "
          f"{s['duplicated_unavoidable']}, other {s['duplicated_other']}"
          f"{'' if s['unavoidable_metric_seen'] else '; no unavoidable metric in the workers'})")
    print(f"client retries {s['client_retries']} {s['retry_reasons']}  cut mid-transaction "
          f"{s['cut_mid_transaction']}  delivered without 250 {s['delivered_without_250']}  "
          f"refused 5xx {s['refused_5xx']}  gave up {s['not_accepted_gave_up']}  "
          f"corrupted {s['corrupted']}")
    if s["lost_examples"]:
        print(f"lost e.g. {s['lost_examples']}")
    if s["duplicate_examples"]:
        print(f"duplicated e.g. {s['duplicate_examples']}")
    if s.get("other_duplicate_examples"):
        print(f"other (avoidable) duplicates e.g. {s['other_duplicate_examples']}")
    print(f"workers flagged {s.get('flagged_qids', 0)} queue ids ({s.get('flagged_rcpts', 0)} "
          f"recipients) as possibly delivered by a dead holder; "
          f"{s.get('flagged_not_duplicated', 0)} of them arrived once; "
          f"library aborts {s.get('library_aborts', 0)}")
    for name, h in (s.get("window_histograms") or {}).items():
        print(f"{name}: {h}")
    sig = s.get("unavoidable_by_signal") or []
    if sig:
        print(f"{'worker signal':<30} {'workers':>7} {'rate/s':>7} {'unavoid.':>8} {'window ms':>9}")
        for r in sig:
            w = "-" if r["window_ms"] is None else f"{r['window_ms']:.0f}"
            print(f"{r['fault'] + ' ' + r['signal'] + ' ' + r['worker']:<30} {r['workers']:>7} "
                  f"{r['worker_rate']:>7} {r['unavoidable']:>8} {w:>9}")
        if s.get("unavoidable_unattributed"):
            print(f"unavoidable duplicates near no worker signal: {s['unavoidable_unattributed']}")
    print(f"{'fault':<22} {'phase':<6} {'at s':>6} {'accept back s':>13} {'deliver back s':>14}  detail")
    for r in s["faults"]:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{r['fault']:<22} {r['phase']:<6} {r['at_s']:>6} {fmt(r['accept_recover_s']):>13} "
              f"{fmt(r['deliver_recover_s']):>14}  {r['error'] or r['detail']}")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
