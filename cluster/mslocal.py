"""mslocal - start and stop a local Mailstream cluster on loopback.

Used by the `cluster/local` launcher (`make run`) and by the integration test
fixtures in tests/integration/conftest.py. Standard library only, so it runs
with any python3 >= 3.9.

What it runs, each as a child process with its output in the state directory:

  Redis       redis-server with a generated config        STATE/redis/
  Kafka       one KRaft node (broker + controller)         STATE/kafka/
  Sink        Postfix's smtp-sink, dumping every message   STATE/sink/
  Frontends   build/mailstream-frontend -c CONF, N times   STATE/frontend-I.{ini,log}
  Workers     build/mailstream-worker -c CONF, M times     STATE/worker-I.{ini,log}

Every started process is recorded in STATE/pids as `name pid starttime`, so
`cluster/local down` stops exactly those processes (SIGTERM, then SIGKILL after
a timeout) and a recycled pid is never signalled. Nothing is found by name.
How each was started (argv, log, extra environment, how to tell it is ready)
is kept in STATE/procs/NAME.json, so another process (`cluster/local restart`,
a chaos driver) can start it again; STATE/pids is rewritten under a lock, so
processes added by `cluster/local add` while `up` runs are never forgotten.

The cluster shape of issue 15 (docs/reliability.md) is built from separate
classes: KafkaCluster (N KRaft nodes, replicated topics), RedisSentinelSet
(a primary, a replica and three Sentinels), Balancer (HAProxy sending PROXY
v2 to the frontends) and Membership (add, remove, kill, restart, status of
the processes of one state directory).

The Kafka jars come from cluster/deps.sh: $MAILSTREAM_CACHE/kafka-<version>/lib.
All listeners bind 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import configparser
import dataclasses
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

# Keep in sync with cluster/deps.sh and cluster/kafka/pom.xml.
KAFKA_VERSION = "4.1.1"
# A second, test-only broker version (KAFKA_SCRAM_VERSION in cluster/deps.sh
# fetches it): Debian 12's librdkafka 2.0.2 sends a SCRAM client-final nonce
# that Kafka >= 4.0 refuses (librdkafka PR #4895, fixed in 2.6.1); 3.8.1 ..
# 3.9.x accept it, so tests/integration/test_kafka_security.py runs SCRAM end
# to end against this one (Kafka(version=...)).
KAFKA_SCRAM_VERSION = "3.9.1"

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MAILSTREAM_CACHE") or Path.home() / ".cache" / "mailstream")
LOG4J2_CONFIG = REPO / "cluster" / "kafka" / "log4j2.xml"
SMTP_SINK = "/usr/sbin/smtp-sink"
HOST = "127.0.0.1"

# docs/config.md: room for a 25 MiB message plus its envelope.
MAX_RECORD_BYTES = 33554432
# MS_KAFKA_SEGMENTS_PER_RETENTION (lib/io/ms_kafka.h).
KAFKA_SEGMENTS_PER_RETENTION = 4
DEFAULT_TOPICS = {"queue": 12, "events": 3}
# Retry tier topics "<queue topic>.retry.<n>" (worker/delivery.h); the local
# cluster and the tests run the workers with this many tiers.
WORKER_RETRY_TIERS = 2
RETRY_TIER_PARTITIONS = 3
DEFAULT_TOPICS.update({f"queue.retry.{n}": RETRY_TIER_PARTITIONS
                       for n in range(1, WORKER_RETRY_TIERS + 1)})

# Topic retention (docs/reliability.md, "What Kafka holds and for how
# long"): every record stays until it is due plus the worker outage the
# cluster is meant to survive. The worker defaults it is derived from:
DEFAULT_OUTAGE_S = 3 * 86400          # a long weekend without any worker
WORKER_RETRY_MAX_S = 4 * 3600         # [delivery] retry_max_ms
WORKER_HOLD_RECHECK_S = 15 * 60       # WK_CONTROL_HOLD_RECHECK_MS (worker/control.h)
WORKER_MAX_AGE_S = 5 * 86400          # [retry] max_age_s


def topic_retention_s(outage_s: int = DEFAULT_OUTAGE_S, queue: str = "queue",
                      events: str = "events", tiers: int = WORKER_RETRY_TIERS,
                      retry_max_s: int = WORKER_RETRY_MAX_S,
                      max_age_s: int = WORKER_MAX_AGE_S) -> Dict[str, int]:
    """Seconds each topic keeps its records: the queue the outage; each
    retry tier the longest delay a record in it can wait (retry_max_ms, or
    a suspension or hold recheck, which the worker caps at the larger of the
    two) plus the outage; events a message's whole life ([retry] max_age_s)
    and a day, so `mailstream-ctl events tail --qid` still finds its
    start."""
    out = {queue: outage_s, events: max_age_s + 86400}
    for n in range(1, tiers + 1):
        out[f"{queue}.retry.{n}"] = max(retry_max_s, WORKER_HOLD_RECHECK_S) + outage_s
    return out


DEMO_USER = "demo@mailstream.test"
DEMO_PASSWORD = "demo"
DEMO_SENDERS = "mailstream.test"


class MsLocalError(Exception):
    """A component could not be set up, started or reached."""


def log(msg: str) -> None:
    print(f"mailstream: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Ports and small helpers
# ---------------------------------------------------------------------------

def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (and to
    bind(port 0)); 32768 when /proc does not say."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports we hand out come from below the kernel's ephemeral range: a port that
# bind(0) found free is also one the kernel may give to any outgoing
# connection (to Kafka, Redis, a sink) before our server binds it, which under
# load made servers fail with "address already in use". Below that range only
# programs that ask for a port by number can take it.
PORT_FLOOR = 10000


def free_ports(n: int, host: str = HOST) -> List[int]:
    """Return n distinct TCP ports that are free on host right now.

    They are drawn at random below the ephemeral range (see PORT_FLOOR), each
    checked by binding it; the sockets are held open until all n are chosen,
    so the ports are distinct. Another program may still take one before we
    bind it, but no outgoing connection will.
    """
    top = _ephemeral_low() - 1
    socks, ports = [], []
    try:
        tries = 0
        while len(ports) < n:
            tries += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if top <= PORT_FLOOR or tries > 1000:
                s.bind((host, 0))  # no room below the range: the old way
            else:
                port = random.randint(PORT_FLOOR, top)
                try:
                    s.bind((host, port))
                except OSError:
                    s.close()
                    continue
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something listens on host:port (or the port cannot be bound)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Servers set SO_REUSEADDR, so sockets in TIME_WAIT from a process we
    # just stopped do not count.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               alive: Optional[Callable[[], bool]] = None, interval: float = 0.1,
               log_path: Optional[Path] = None) -> None:
    """Poll pred() until it is true; raise MsLocalError after timeout or if
    alive() says the process we wait for has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - any failure just means "not yet"
            pass
        if alive is not None and not alive():
            raise MsLocalError(f"{what}: process exited{_log_hint(log_path)}")
        if time.monotonic() > deadline:
            raise MsLocalError(f"{what}: not ready after {timeout:.0f}s{_log_hint(log_path)}")
        time.sleep(interval)


def _log_hint(log_path: Optional[Path]) -> str:
    if not log_path:
        return ""
    return f"\n--- last lines of {log_path} ---\n{tail(log_path)}"


def tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError as e:
        return f"({e})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def http_status(url: str, timeout: float = 1.0) -> int:
    """GET url; return the HTTP status, or 0 if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------
# Process supervision: STATE/pids
# ---------------------------------------------------------------------------

def _proc_starttime(pid: int) -> Optional[str]:
    """Start time of pid (field 22 of /proc/PID/stat), None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    if not rest or rest[0] in ("Z", "X"):
        return None
    return rest[19]


@dataclass
class Proc:
    name: str
    pid: int
    starttime: str
    log: Optional[Path] = None
    popen: Optional[subprocess.Popen] = None

    def alive(self) -> bool:
        if self.popen is not None:
            if self.popen.poll() is not None:
                return False
        return _proc_starttime(self.pid) == self.starttime


class Supervisor:
    """Starts child processes and records them in STATE/pids.

    Children get their own session (start_new_session), so a Ctrl-C in the
    terminal reaches only the launcher, which then stops them in order.
    """

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.pids_file = self.state_dir / "pids"
        self._lock = threading.Lock()
        self.procs: Dict[str, Proc] = {}

    # -- pids file --
    def _save(self, drop: Sequence[str] = ()) -> None:
        """Write our processes into STATE/pids, keeping the entries other
        launchers wrote meanwhile (`cluster/local add` while `up` runs) and
        dropping the names in drop."""
        with self._pids_lock():
            entries = {p.name: p for p in self.read_pids(self.state_dir)}
            for name in drop:
                entries.pop(name, None)
            # Another launcher (Membership in a chaos driver, `cluster/local
            # restart`) may have started a name again since we last saw
            # it: our dead record must not replace its live one.
            entries.update({n: p for n, p in self.procs.items()
                            if n not in entries or p.alive() or not entries[n].alive()})
            tmp = self.pids_file.with_suffix(".tmp")
            with open(tmp, "w") as f:
                for p in entries.values():
                    f.write(f"{p.name} {p.pid} {p.starttime}\n")
            os.replace(tmp, self.pids_file)

    def _pids_lock(self):
        return _FileLock(self.state_dir / "pids.lock")

    @staticmethod
    def read_pids(state_dir: Path) -> List[Proc]:
        out = []
        try:
            lines = (Path(state_dir) / "pids").read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit():
                out.append(Proc(parts[0], int(parts[1]), parts[2]))
        return out

    def adopt(self) -> None:
        """Load STATE/pids (processes started by an earlier `up --detach`)."""
        with self._lock:
            for p in self.read_pids(self.state_dir):
                self.procs[p.name] = p

    def running(self) -> List[Proc]:
        return [p for p in self.read_pids(self.state_dir) if p.alive()]

    # -- how each process was started: STATE/procs/NAME.json --
    def spec_path(self, name: str) -> Path:
        return self.state_dir / "procs" / f"{name}.json"

    def spec(self, name: str) -> Optional[Dict[str, object]]:
        try:
            return json.loads(self.spec_path(name).read_text())
        except (OSError, ValueError):
            return None

    def _write_spec(self, name: str, argv: Sequence[str], log_path: Path, cwd: Optional[Path],
                    env: Optional[Mapping[str, str]], ready: Optional[Mapping[str, object]],
                    kind: Optional[str]) -> None:
        # Only what differs from our environment (MAILSTREAM_* overrides),
        # in a file only we can read: it may hold a password.
        extra = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
        d = self.state_dir / "procs"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"name": name, "kind": kind, "argv": list(argv), "log": str(log_path),
                       "cwd": str(cwd) if cwd else None, "env": extra,
                       "ready": dict(ready or {})}, f, indent=1)
        os.replace(tmp, self.spec_path(name))

    def respawn(self, name: str) -> Proc:
        """Start `name` again exactly as it was started last (its spec)."""
        spec = self.spec(name)
        if spec is None:
            raise MsLocalError(f"{name}: no record of how it was started "
                               f"({self.spec_path(name)})")
        env = {**os.environ, **spec.get("env", {})} if spec.get("env") else None
        return self.spawn(name, spec["argv"], Path(spec["log"]),
                          cwd=Path(spec["cwd"]) if spec.get("cwd") else None, env=env,
                          ready=spec.get("ready"), kind=spec.get("kind"))

    # -- start / stop --
    def spawn(self, name: str, argv: Sequence[str], log_path: Path,
              cwd: Optional[Path] = None, env: Optional[Mapping[str, str]] = None,
              ready: Optional[Mapping[str, object]] = None,
              kind: Optional[str] = None) -> Proc:
        """Start argv as `name`, output to log_path.  ready says how another
        launcher can tell it is up again after a restart: {"http": URL}
        (200), {"port": N} (listening) or {"redis": PORT} (PING answered)."""
        if name in self.procs and self.procs[name].alive():
            raise MsLocalError(f"{name} is already running (pid {self.procs[name].pid})")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "ab")
        try:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None, env=dict(env) if env is not None else None,
                start_new_session=True, close_fds=True)
        except OSError as e:
            raise MsLocalError(f"cannot start {name} ({argv[0]}): {e}") from e
        finally:
            logf.close()
        st = _proc_starttime(popen.pid) or "0"
        proc = Proc(name, popen.pid, st, log_path, popen)
        self._write_spec(name, argv, log_path, cwd, env, ready, kind)
        with self._lock:
            self.procs[name] = proc
            self._save()
        return proc

    def send_signal(self, name: str, sig: int) -> None:
        p = self.procs.get(name)
        if p and p.alive():
            os.kill(p.pid, sig)

    def stop(self, name: str, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
        """Send sig (SIGTERM), wait up to timeout, then SIGKILL; forget the process."""
        p = self.procs.get(name)
        if p is None:
            return
        _terminate(p, timeout, sig)
        with self._lock:
            self.procs.pop(name, None)
            self._save(drop=[name])

    def kill(self, name: str) -> None:
        """SIGKILL, no grace period (crash tests)."""
        self.stop(name, timeout=0, sig=signal.SIGKILL)

    def stop_all(self, timeout: float = 20.0, order: Optional[Iterable[str]] = None) -> None:
        names = list(order) if order is not None else list(reversed(list(self.procs)))
        for name in names:
            self.stop(name, timeout)
        for name in list(reversed(list(self.procs))):
            self.stop(name, timeout)


class _FileLock:
    """An exclusive flock(2) on path for the length of a with block."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_FileLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the lock


def _terminate(p: Proc, timeout: float, sig: int = signal.SIGTERM) -> None:
    if not p.alive():
        if p.popen is not None:
            p.popen.poll()
        return
    try:
        os.kill(p.pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if p.alive():
        log(f"{p.name} (pid {p.pid}) did not stop after {timeout:.0f}s; sending SIGKILL")
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if p.popen is not None:
        try:
            p.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    else:
        deadline = time.monotonic() + 10
        while p.alive() and time.monotonic() < deadline:
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

def redis_command(port: int, *args: str, host: str = HOST, timeout: float = 2.0) -> bytes:
    """Send one command in RESP and return the raw first reply line(s)."""
    req = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        req += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(req)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _resp_encode(parts: Sequence[str]) -> bytes:
    """One command in RESP, as redis-cli sends it."""
    out = f"*{len(parts)}\r\n".encode()
    for a in parts:
        b = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def redis_auth_command(port: int, auth: Sequence[str], *args: str, host: str = HOST,
                       timeout: float = 2.0) -> bytes:
    """AUTH (password, or user and password) then one command on the same
    connection; returns the raw reply to the command (or AUTH's error)."""
    resp = _resp_encode

    def read(f) -> bytes:
        """One whole reply, raw (arrays and bulk strings included)."""
        line = f.readline()
        if line[:1] == b"$" and int(line[1:]) >= 0:
            return line + f.read(int(line[1:]) + 2)
        if line[:1] == b"*" and int(line[1:]) > 0:
            return line + b"".join(read(f) for _ in range(int(line[1:])))
        return line

    with socket.create_connection((host, port), timeout=timeout) as s:
        f = s.makefile("rb")
        if auth:  # empty: no AUTH, the command alone
            s.sendall(resp(["AUTH", *auth]))
            first = read(f)
            if not first.startswith(b"+OK"):
                return first
        s.sendall(resp(list(args)))
        return read(f)


# A Redis loading a large append-only file or snapshot answers -LOADING
# until it is done (a 1.2 GB file took 12 s here, and more on a loaded
# machine). So waiting for one is bounded by progress, not by a fixed time:
# it fails when the load has not moved for REDIS_LOAD_STALL_S (or the
# process exits), and after REDIS_LOAD_MAX_S in any case.
REDIS_LOAD_STALL_S = 30.0
REDIS_LOAD_MAX_S = 3600.0


def wait_redis_ready(port: int, timeout: float, what: str,
                     alive: Optional[Callable[[], bool]] = None,
                     log_path: Optional[Path] = None, auth: Sequence[str] = ()) -> None:
    """Wait until Redis on port serves commands: `timeout` for it to answer
    at all, then as long as a load (-LOADING) makes progress
    (loading_loaded_bytes of INFO persistence grows). NOAUTH counts as
    serving (a spec's `ready` holds no secret)."""
    start = time.monotonic()
    deadline = start + timeout
    loading_since: Optional[float] = None
    last_bytes, last_move = -1, start
    while True:
        try:
            r = redis_auth_command(port, auth, "PING")
        except OSError:
            r = b""
        if r.startswith((b"+PONG", b"-NOAUTH")):
            if loading_since is not None:
                log(f"{what}: loaded in {time.monotonic() - loading_since:.1f}s")
            return
        now = time.monotonic()
        if r.startswith(b"-LOADING"):
            if loading_since is None:
                loading_since = now
                log(f"{what}: loading its data")
            info = redis_auth_command(port, auth, "INFO", "persistence").decode(errors="replace")
            m = re.search(r"^loading_loaded_bytes:(\d+)", info, re.M)
            done = int(m.group(1)) if m else last_bytes
            if done != last_bytes:
                last_bytes, last_move = done, now
            elif now - last_move > REDIS_LOAD_STALL_S:
                raise MsLocalError(f"{what}: loading made no progress for "
                                   f"{REDIS_LOAD_STALL_S:.0f}s{_log_hint(log_path)}")
            if now - start > REDIS_LOAD_MAX_S:
                raise MsLocalError(f"{what}: still loading after {REDIS_LOAD_MAX_S:.0f}s"
                                   f"{_log_hint(log_path)}")
        elif loading_since is None and now > deadline:
            raise MsLocalError(f"{what}: not ready after {timeout:.0f}s{_log_hint(log_path)}")
        if alive is not None and not alive():
            raise MsLocalError(f"{what}: process exited{_log_hint(log_path)}")
        time.sleep(0.2)


class Redis:
    """password: `requirepass` (the default user's password); acl: extra
    `user ...` lines of redis.conf (ACL users, docs/security.md)."""

    def __init__(self, sup: Supervisor, port: int, name: str = "redis",
                 password: Optional[str] = None, acl: Sequence[str] = ()):
        self.sup, self.port, self.name = sup, port, name
        self.password, self.acl = password, list(acl)
        # What PING and the launcher's own queries AUTH with: the password,
        # or an ACL user and its password (RedisSentinelSet sets it).
        self.auth: List[str] = [password] if password else []
        self.dir = sup.state_dir / name
        self.conf = self.dir / "redis.conf"
        self.log = self.dir / "redis.log"
        self.extra_conf: List[str] = []  # more redis.conf lines (RedisSentinelSet)

    # Persistence (docs/reliability.md, "Redis persistence"): the
    # append-only file, fsynced each second, rewritten once it has doubled
    # since the last rewrite (and is at least 64 MB), starting with an RDB
    # snapshot so that a restart loads it quickly.
    PERSISTENCE = ("appendonly yes", "appendfsync everysec", "aof-use-rdb-preamble yes",
                   "auto-aof-rewrite-percentage 100", "auto-aof-rewrite-min-size 64mb",
                   'save ""')

    def ping(self) -> bool:
        if self.auth:
            return redis_auth_command(self.port, self.auth, "PING").startswith(b"+PONG")
        return redis_command(self.port, "PING").startswith(b"+PONG")

    def start(self, timeout: float = 20.0) -> None:
        exe = shutil.which("redis-server")
        if not exe:
            raise MsLocalError("redis-server not found: run `make deps`")
        if port_in_use(self.port):
            raise MsLocalError(f"redis: port {self.port} is already in use")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "# generated by cluster/mslocal.py\n"
            f"bind {HOST}\n"
            f"port {self.port}\n"
            "protected-mode yes\n"
            "daemonize no\n"
            "supervised no\n"
            f'dir "{self.dir}"\n'
            f'logfile "{self.log}"\n'
            'pidfile ""\n'
            + "".join(f"{line}\n" for line in self.PERSISTENCE)
            + "databases 16\n"
            + (f"requirepass {self.password}\n" if self.password else "")
            + "".join(f"{line}\n" for line in (*self.acl, *self.extra_conf)))
        p = self.sup.spawn(self.name, [exe, str(self.conf)], self.dir / "stdout.log",
                           ready={"redis": self.port}, kind="redis")
        wait_redis_ready(self.port, timeout, f"redis on {HOST}:{self.port}", p.alive,
                         log_path=self.log, auth=[self.password] if self.password else [])

    def stop(self, timeout: float = 10.0) -> None:
        self.sup.stop(self.name, timeout)

    @property
    def running(self) -> bool:
        p = self.sup.procs.get(self.name)
        return bool(p and p.alive())


# ---------------------------------------------------------------------------
# Kafka (KRaft, one combined broker+controller node)
# ---------------------------------------------------------------------------

def kafka_lib_dir(version: str = KAFKA_VERSION) -> Path:
    """The jars of that Kafka version (MAILSTREAM_KAFKA_LIB overrides the
    default version's directory only)."""
    env = os.environ.get("MAILSTREAM_KAFKA_LIB") if version == KAFKA_VERSION else None
    lib = Path(env or CACHE / f"kafka-{version}" / "lib")
    if not (lib / f"kafka_2.13-{version}.jar").is_file():
        raise MsLocalError(f"Kafka {version} jars not found in {lib}: run `make deps` "
                           "(cluster/deps.sh kafka)")
    return lib


def new_cluster_id() -> str:
    """A Kafka cluster id: URL-safe base64 of a random UUID, as
    `kafka-storage random-uuid` prints it (never starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass
class TopicInfo:
    name: str
    partitions: int
    replication_factor: int
    configs: Dict[str, str]


class Kafka:
    # Tool JVMs are short-lived: C1 only and the serial GC start faster.
    TOOL_JVM = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m", "-Xshare:auto"]
    # The broker's JVM, on the small machines this launcher is for, where it
    # shares the cores with the frontends and workers:
    # - ParallelGC: G1's concurrent work competes for those cores. make bench
    #   (5k-20, 3 rounds, 2 cores): broker 0.243 vs 0.313 ms CPU/msg, end to
    #   end 3,318 vs 2,874 msg/s.
    # - C1 only (TieredStopAtLevel=1): C2 kept compiling for well over
    #   100,000 messages (0.3-0.6 of a core; still 0.048 of the broker's
    #   0.106 ms/msg after a 100,000-message warm-up), while C1 is done after
    #   ~20,000 and its code costs little more: 0.073 ms/msg in all, end to
    #   end 5,664 vs 4,414 msg/s (bench/results/20261204-185119-s9-final,
    #   20261204-185349-c1). A broker on its own cores for weeks would gain
    #   from C2.
    BROKER_JVM = ["-Xmx512m", "-Xms512m", "-XX:+UseParallelGC", "-XX:TieredStopAtLevel=1",
                  "-Djava.awt.headless=true"]

    def __init__(self, sup: Supervisor, port: int, controller_port: int, name: str = "kafka",
                 security: Optional["KafkaSecurity"] = None, version: str = KAFKA_VERSION):
        self.sup, self.port, self.controller_port, self.name = sup, port, controller_port, name
        # The broker's version: KAFKA_VERSION, or a test-only one that
        # cluster/deps.sh also fetched (KAFKA_SCRAM_VERSION). The same
        # server.properties and `--standalone` format serve 3.9 and 4.x (3.9
        # only warns about the share.coordinator keys it does not know).
        self.version = version
        # Extra secured listeners and SCRAM users (KafkaSecurity, below);
        # the PLAINTEXT listener stays for the tools and between controller
        # and broker.
        self.security = security
        self.dir = sup.state_dir / name
        self.data = self.dir / "data"
        self.props = self.dir / "server.properties"
        self.log = self.dir / "server.log"
        self.lib = kafka_lib_dir(version)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        p = self.sup.procs.get(self.name)
        return bool(p and p.alive())

    def _java(self) -> str:
        java = shutil.which("java")
        if not java:
            raise MsLocalError("java not found: run `make deps`")
        return java

    def _classpath(self) -> str:
        return str(self.lib / "*")

    def _tool(self, main: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        argv = [self._java(), *self.TOOL_JVM, f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
                f"-Dkafka.logs.dir={self.dir / 'tools'}", "-cp", self._classpath(), main, *args]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise MsLocalError(f"kafka tool {main} {' '.join(args[:3])}... timed out") from e

    def properties(self) -> Dict[str, str]:
        """server.properties as a dict (KafkaNode changes a few)."""
        listeners = f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}"
        protocol_map = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        if self.security:
            listeners += "," + self.security.listeners()
            protocol_map += "," + self.security.protocol_map()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{HOST}:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": listeners,
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": protocol_map,
            "log.dirs": str(self.data),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(MAX_RECORD_BYTES),
            "replica.fetch.max.bytes": str(MAX_RECORD_BYTES),
            "socket.request.max.bytes": str(max(104857600, 2 * MAX_RECORD_BYTES)),
            "log.retention.hours": "168",
            "log.segment.bytes": "268435456",
        }
        if self.security:
            props.update(self.security.properties())
        return props

    def _write_properties(self) -> None:
        self.props.write_text("# generated by cluster/mslocal.py\n" + "".join(
            f"{k}={v}\n" for k, v in self.properties().items()))

    def format_args(self) -> List[str]:
        """StorageTool format arguments after -c: a new cluster id, one voter."""
        return ["-t", new_cluster_id(), "--standalone"]

    def format_stamp(self) -> str:
        """What the storage was formatted for; a change means reformat."""
        return f"{self.port} {self.controller_port}\n"

    def _format(self) -> None:
        """Format the KRaft storage once; reformat (wiping data) if the
        listener ports changed, since the voter endpoints are stored there."""
        stamp = self.dir / "formatted-for"
        want = self.format_stamp() + (self.security.stamp() if self.security else "")
        if (self.data / "meta.properties").is_file() and stamp.is_file() and stamp.read_text() == want:
            return
        if self.data.exists():
            log(f"{self.name}: ports changed or storage incomplete; wiping {self.data}")
            shutil.rmtree(self.data)
        r = self._tool("kafka.tools.StorageTool", "format", "-c", str(self.props),
                       *self.format_args(),
                       *(self.security.format_args() if self.security else []))
        if r.returncode != 0:
            raise MsLocalError(f"{self.name} storage format failed:\n{r.stdout}\n{r.stderr}")
        stamp.write_text(want)

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker (formatting storage on first use) and wait until
        it listens. Restarting reuses the same ports and data directory."""
        extra = self.security.ports() if self.security else []
        for p in (self.port, self.controller_port, *extra):
            if port_in_use(p):
                raise MsLocalError(f"kafka: port {p} is already in use")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        self._format()
        argv = [self._java(), *self.BROKER_JVM,
                f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dkafka.logs.dir={self.dir}",
                "-cp", self._classpath(), "kafka.Kafka", str(self.props)]
        p = self.sup.spawn(self.name, argv, self.dir / "stdout.log", ready={"port": self.port},
                           kind="kafka")
        wait_until(lambda: all(port_open(HOST, q) for q in (self.port, *extra)), timeout,
                   f"kafka on {self.bootstrap}", p.alive, log_path=self.log)

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL after timeout."""
        self.sup.stop(self.name, timeout)

    def kill(self) -> None:
        self.sup.kill(self.name)

    def alive_recorded(self) -> bool:
        """Running, as STATE/pids says (also when another launcher, e.g.
        Membership.restart, started it)."""
        return any(p.name == self.name and p.alive()
                   for p in Supervisor.read_pids(self.sup.state_dir))

    def wipe_data(self) -> None:
        """Delete the data directory of a stopped broker (a lost disk, for
        the chaos suite); the next start() formats it again. A KafkaNode
        keeps its cluster id and rejoins; a lone Kafka gets a new cluster
        with no topics."""
        if self.alive_recorded():
            raise MsLocalError(f"{self.name}: wipe_data on a running broker")
        if self.data.exists():
            shutil.rmtree(self.data)

    def create_topics(self, topics: Mapping[str, int],
                      configs: Optional[Mapping[str, str]] = None, timeout: float = 90.0,
                      replication: int = 1, bootstrap: Optional[str] = None,
                      retention: Optional[Mapping[str, int]] = None) -> None:
        """Create topics (name -> partitions) with `replication` replicas, if
        they do not exist yet. One TopicCommand JVM per topic, run in
        parallel; success also proves the broker is really serving requests
        (and, with replication > 1, that enough brokers have joined).
        bootstrap: other brokers to ask (KafkaCluster), default this one.
        retention: seconds per topic name (topic_retention_s), set as
        retention.ms and segment.ms as `mailstream-ctl topics create` does;
        topics it does not name keep the broker's log.retention.hours."""
        bootstrap = bootstrap or self.bootstrap
        configs = {"max.message.bytes": str(MAX_RECORD_BYTES), **(configs or {})}
        retention = retention or {}
        ctl = build_dir() / "mailstream-ctl"
        if os.access(ctl, os.X_OK):
            # One C process with librdkafka's admin API: milliseconds, where a
            # TopicCommand JVM per topic costs seconds of CPU.
            argv = [str(ctl), "-b", bootstrap, "topics", "create",
                    *[f"{n}:{p}:{replication}" + (f"@{retention[n]}s" if n in retention else "")
                      for n, p in topics.items()]]
            for k, v in configs.items():
                argv += ["-c", f"{k}={v}"]
            deadline = time.monotonic() + timeout
            while True:
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=timeout)
                if r.returncode == 0:
                    return
                if time.monotonic() > deadline or not self.running:
                    raise MsLocalError(f"kafka: creating topics failed: {r.stderr.strip()[-500:]}"
                                       f"{_log_hint(self.log)}")
                time.sleep(1)
        cfg_args: List[str] = []
        for k, v in configs.items():
            cfg_args += ["--config", f"{k}={v}"]
        results: Dict[str, subprocess.CompletedProcess] = {}

        def one(name: str, parts: int) -> None:
            deadline = time.monotonic() + timeout
            own: List[str] = []
            if name in retention:  # as ms_kafka_create_topics (lib/io/ms_kafka.h)
                ms = retention[name] * 1000
                own = ["--config", f"retention.ms={ms}",
                       "--config", f"segment.ms={max(1, ms // KAFKA_SEGMENTS_PER_RETENTION)}"]
            while True:
                r = self._tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                               bootstrap, "--create", "--if-not-exists", "--topic", name,
                               "--partitions", str(parts), "--replication-factor", str(replication),
                               *cfg_args, *own, timeout=timeout)
                results[name] = r
                if r.returncode == 0 or time.monotonic() > deadline or not self.running:
                    return
                time.sleep(1)

        threads = [threading.Thread(target=one, args=(n, p)) for n, p in topics.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = {n: r for n, r in results.items() if r.returncode != 0}
        if bad or len(results) != len(topics):
            msg = "; ".join(f"{n}: {(r.stderr or r.stdout).strip()[-500:]}" for n, r in bad.items())
            raise MsLocalError(f"kafka: creating topics failed: {msg}{_log_hint(self.log)}")

    def describe_topics(self, names: Optional[Sequence[str]] = None) -> Dict[str, TopicInfo]:
        """Partitions, replication factor and non-default configs per topic."""
        args = ["--bootstrap-server", self.bootstrap, "--describe"]
        if names:
            args += ["--topic", "|".join(re.escape(n) for n in names)]
        r = self._tool("org.apache.kafka.tools.TopicCommand", *args)
        if r.returncode != 0:
            raise MsLocalError(f"kafka: describe failed: {r.stderr.strip()[-500:]}")
        out: Dict[str, TopicInfo] = {}
        for line in r.stdout.splitlines():
            m = re.match(r"Topic:\s*(\S+)\s+TopicId:.*?PartitionCount:\s*(\d+)\s+"
                         r"ReplicationFactor:\s*(\d+)\s+Configs:\s*(.*)$", line)
            if m:
                cfg = dict(kv.split("=", 1) for kv in m.group(4).split(",") if "=" in kv)
                out[m.group(1)] = TopicInfo(m.group(1), int(m.group(2)), int(m.group(3)), cfg)
        return out


# ---------------------------------------------------------------------------
# Kafka with secured listeners (tests of docs/security.md)
# ---------------------------------------------------------------------------

@dataclass
class KafkaPki:
    """A test CA made at run time with openssl, the broker's certificate
    (localhost, 127.0.0.1) and a client certificate for mutual TLS, all
    signed by it, and a second CA that signed nothing the broker knows."""
    ca: Path
    broker_cert: Path
    broker_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise MsLocalError(f"openssl {args[0]} failed: {r.stderr.strip()}")


def make_test_pki(directory: Path) -> KafkaPki:
    """Make (once per directory) the CA, broker and client certificates."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    pki = KafkaPki(d / "ca.pem", d / "broker.pem", d / "broker.key", d / "client.pem",
                  d / "client.key", d / "other-ca.pem")
    if all(p.is_file() for p in (pki.ca, pki.broker_cert, pki.client_cert, pki.other_ca)):
        return pki
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"),
                 "-subj", f"/CN=mailstream test {name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, subj, ext in (
            ("broker", "/CN=localhost",
             "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
            ("client", "/CN=mailstream-client", "extendedKeyUsage=clientAuth")):
        # PKCS#8 keys ("BEGIN PRIVATE KEY"): what Kafka's PEM key store reads.
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", str(d / f"{name}.key"))
        _openssl("req", "-new", "-key", str(d / f"{name}.key"), "-subj", subj,
                 "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(pki.ca),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "30", "-sha256",
                 "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    # The broker's key store: key and certificate in one PEM file.
    (d / "broker-keystore.pem").write_text(pki.broker_key.read_text() +
                                          pki.broker_cert.read_text())
    for k in d.glob("*.key"):
        os.chmod(k, 0o600)
    return pki


@dataclass
class KafkaSecurity:
    """Secured listeners for Kafka(security=...): SASL_SSL, SSL that requires
    a client certificate (mutual TLS), and SASL_PLAINTEXT, each on its own
    port. `users` (name -> password) can log in with SCRAM-SHA-256,
    SCRAM-SHA-512 (credentials written by `kafka-storage format
    --add-scram`) and PLAIN (the broker's JAAS list)."""
    pki: KafkaPki
    users: Dict[str, str]
    sasl_ssl_port: int
    ssl_port: int
    sasl_plaintext_port: int

    def ports(self) -> List[int]:
        return [self.sasl_ssl_port, self.ssl_port, self.sasl_plaintext_port]

    def address(self, protocol: str) -> str:
        port = {"sasl_ssl": self.sasl_ssl_port, "ssl": self.ssl_port,
                "sasl_plaintext": self.sasl_plaintext_port}[protocol]
        return f"{HOST}:{port}"

    def listeners(self) -> str:
        return (f"SASL_SSL://{HOST}:{self.sasl_ssl_port},SSL://{HOST}:{self.ssl_port},"
                f"SASL_PLAINTEXT://{HOST}:{self.sasl_plaintext_port}")

    def protocol_map(self) -> str:
        return "SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT"

    def properties(self) -> Dict[str, str]:
        """server.properties entries of the secured listeners."""
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required " +
                 " ".join(f'user_{u}="{p}"' for u, p in self.users.items()) + ";")
        out = {"sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
               "ssl.keystore.type": "PEM",
               "ssl.keystore.location": str(self.pki.broker_cert.parent / "broker-keystore.pem"),
               "ssl.truststore.type": "PEM",
               "ssl.truststore.location": str(self.pki.ca),
               "listener.name.ssl.ssl.client.auth": "required"}
        for listener in ("sasl_ssl", "sasl_plaintext"):
            for mech in ("scram-sha-256", "scram-sha-512"):
                out[f"listener.name.{listener}.{mech}.sasl.jaas.config"] = scram
            out[f"listener.name.{listener}.plain.sasl.jaas.config"] = plain
        return out

    def format_args(self) -> List[str]:
        args: List[str] = []
        for u, p in self.users.items():
            for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                args += ["--add-scram", f"{mech}=[name={u},password={p}]"]
        return args

    def stamp(self) -> str:
        return "scram " + " ".join(sorted(f"{u}:{p}" for u, p in self.users.items())) + "\n"


# ---------------------------------------------------------------------------
# Mail sink (Postfix smtp-sink)
# ---------------------------------------------------------------------------

class SinkMessage(NamedTuple):
    """One transaction captured by smtp-sink: (envelope, data).

    envelope: dict with client_addr, client_proto, helo, mail_from, mail_args
    (the whole MAIL argument), rcpts (addresses), rcpt_args (whole RCPT
    arguments), received (the 3-line header smtp-sink adds) and path.
    data: the message as sent after DATA, CRLF line endings, dot-unstuffed,
    without the terminating ".".
    """
    envelope: Dict[str, object]
    data: bytes


_SINK_NAME = re.compile(r"^\d{10}/\d{2}\.[0-9a-f]{8}$")
_SINK_TEMPLATE = "%Y%m%d%H/%M."


def _open_files_under(root: Path) -> set:
    """Paths under root that some process has open (complete dumps are closed)."""
    prefix = str(root.resolve()) + os.sep
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                found.add(target)
    return found


def parse_sink_file(raw: bytes, path: str = "") -> SinkMessage:
    """Split one smtp-sink -d dump into envelope info and message bytes.

    smtp-sink writes LF-terminated lines: its own X-Client-Addr, X-Client-Proto,
    X-Helo-Args, X-Mail-Args, X-Rcpt-Args... headers and a 3-line Received
    header, then the DATA content with every CR removed and dot-stuffing
    undone, then one empty line for the terminating ".". So the message bytes
    are exact for a message with CRLF line endings (the only legal form on
    the wire); a bare CR or LF inside a line cannot be recovered.
    """
    env: Dict[str, object] = {"client_addr": None, "client_proto": None, "helo": None,
                              "mail_from": None, "mail_args": None, "rcpts": [],
                              "rcpt_args": [], "received": None, "path": path}
    pos = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise ValueError(f"{path}: truncated smtp-sink header")
        line = raw[pos:nl].decode("utf-8", "surrogateescape")
        pos = nl + 1
        key, _, val = line.partition(": ")
        if key == "X-Client-Addr":
            env["client_addr"] = val
        elif key == "X-Client-Proto":
            env["client_proto"] = val
        elif key == "X-Helo-Args":
            env["helo"] = val
        elif key == "X-Mail-Args":
            env["mail_args"] = val
            env["mail_from"] = _angle_addr(val)
        elif key == "X-Rcpt-Args":
            env["rcpt_args"].append(val)  # type: ignore[union-attr]
            env["rcpts"].append(_angle_addr(val))  # type: ignore[union-attr]
        elif key == "Received":
            # Three lines: "Received: from ...", "\tby ... id ...;", "\tdate".
            rec = [line]
            for _ in range(2):
                nl = raw.find(b"\n", pos)
                if nl < 0:
                    raise ValueError(f"{path}: truncated Received header")
                rec.append(raw[pos:nl].decode("utf-8", "surrogateescape"))
                pos = nl + 1
            env["received"] = "\n".join(rec)
            break
        else:
            raise ValueError(f"{path}: unexpected smtp-sink header line {line!r}")
    body = raw[pos:]
    if not body.endswith(b"\n"):
        raise ValueError(f"{path}: incomplete smtp-sink dump")
    return SinkMessage(env, body[:-1].replace(b"\n", b"\r\n"))


def _angle_addr(args: str) -> str:
    m = re.match(r"\s*<([^>]*)>", args)
    if m:
        return m.group(1)
    return args.split()[0] if args.split() else ""


def read_sink(directory: Path) -> List[SinkMessage]:
    """All completed transactions captured in an smtp-sink dump directory,
    oldest first. Transactions still being received (file open) are left out."""
    root = Path(directory)
    if not root.is_dir():
        return []
    files = []
    for hour in os.listdir(root):
        hdir = root / hour
        if not hdir.is_dir():
            continue
        for name in os.listdir(hdir):
            rel = f"{hour}/{name}"
            if _SINK_NAME.match(rel):
                files.append(hdir / name)
    if not files:
        return []
    busy = _open_files_under(root)
    out = []
    for f in files:
        if str(f.resolve()) in busy:
            continue
        try:
            st = f.stat()
            raw = f.read_bytes()
        except FileNotFoundError:  # transaction aborted (RSET) meanwhile
            continue
        try:
            msg = parse_sink_file(raw, str(f))
        except ValueError:
            continue
        out.append((st.st_mtime_ns, str(f), msg))
    out.sort(key=lambda t: (t[0], t[1]))
    return [m for _, _, m in out]


class Sink:
    """smtp-sink on 127.0.0.1:port, one file per transaction under dir."""

    def __init__(self, sup: Supervisor, port: int, name: str = "sink",
                 extra_args: Sequence[str] = ()):
        self.sup, self.port, self.name = sup, port, name
        self.dir = sup.state_dir / name / "mail"
        self.log = sup.state_dir / name / "sink.log"
        self.extra_args = list(extra_args)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if not os.access(SMTP_SINK, os.X_OK):
            raise MsLocalError(f"{SMTP_SINK} not found (Debian package postfix): run `make deps`")
        if port_in_use(self.port):
            raise MsLocalError(f"sink: port {self.port} is already in use")
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            # smtp-sink insists on -u when started as root. We keep root: the
            # dump directory may sit below directories (pytest's 0700 temp
            # dirs) that an unprivileged user could not traverse.
            argv += ["-u", "root"]
        # -h: greeting name; -d: one file per transaction; backlog 256.
        argv += ["-h", "sink.mailstream.test", *self.extra_args,
                 "-d", str(self.dir) + "/" + _SINK_TEMPLATE, f"{HOST}:{self.port}", "256"]
        p = self.sup.spawn(self.name, argv, self.log, ready={"port": self.port}, kind="sink")
        wait_until(lambda: port_open(HOST, self.port), timeout, f"sink on {self.address}",
                   p.alive, log_path=self.log)

    def stop(self, timeout: float = 5.0) -> None:
        self.sup.stop(self.name, timeout)

    def messages(self) -> List[SinkMessage]:
        return read_sink(self.dir)

    def wait_for(self, count: int, timeout: float = 30.0) -> List[SinkMessage]:
        """Wait until at least count messages arrived; return them all."""
        msgs: List[SinkMessage] = []

        def enough() -> bool:
            nonlocal msgs
            msgs = self.messages()
            return len(msgs) >= count
        try:
            wait_until(enough, timeout, f"sink: {count} message(s)", interval=0.2)
        except MsLocalError as e:
            raise MsLocalError(f"{e} (got {len(msgs)})") from None
        return msgs

    def clear(self) -> None:
        """Remove captured messages (only completed ones)."""
        for m in self.messages():
            try:
                os.unlink(str(m.envelope["path"]))
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------
# TLS material and the password file
# ---------------------------------------------------------------------------

def ensure_tls(directory: Path) -> tuple:
    """A self-signed certificate for localhost / 127.0.0.1 (made once)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise MsLocalError(f"openssl req failed: {r.stderr.strip()}")
    os.chmod(key, 0o600)
    return cert, key


def crypt_sha512(password: str) -> str:
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith("$6$"):
        raise MsLocalError(f"openssl passwd -6 failed: {r.stderr.strip()}")
    return r.stdout.strip()


def ensure_passwd(path: Path, users: Optional[Mapping[str, tuple]] = None) -> Path:
    """The AUTH password file: `user:sha512-crypt-hash:allowed-senders` lines.
    users maps user -> (password, senders); default: the demo account.
    Written once (kept if it exists and users is None)."""
    if path.is_file() and users is None:
        return path
    users = users or {DEMO_USER: (DEMO_PASSWORD, DEMO_SENDERS)}
    lines = [f"{u}:{crypt_sha512(pw)}:{senders}" for u, (pw, senders) in users.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------------------
# Frontends and workers
# ---------------------------------------------------------------------------

def render_ini(sections: Mapping[str, Mapping[str, object]]) -> str:
    out = ["; generated by cluster/mslocal.py (keys: docs/config.md)"]
    for sec, kv in sections.items():
        out.append(f"\n[{sec}]")
        for k, v in kv.items():
            if isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            out.append(f"{k} = {v}")
    return "\n".join(out) + "\n"


def merge_sections(base: Dict[str, Dict[str, object]],
                   extra: Optional[Mapping[str, Mapping[str, object]]]) -> Dict[str, Dict[str, object]]:
    for sec, kv in (extra or {}).items():
        base.setdefault(sec, {}).update(kv)
    return base


def build_dir() -> Path:
    return Path(os.environ.get("MAILSTREAM_BUILD_DIR") or REPO / "build")


def binary(kind: str) -> Path:
    path = build_dir() / f"mailstream-{kind}"
    if not os.access(path, os.X_OK):
        raise MsLocalError(f"{path} not found: build it first (`make`)")
    return path


def sanitized(kind: str) -> bool:
    """Was mailstream-<kind> built with AddressSanitizer (`make asan`)?  Its
    quarantine keeps freed memory resident, so RSS bounds do not apply."""
    return b"__asan_init" in binary(kind).read_bytes()


@dataclass
class Node:
    """One frontend or worker process."""
    sup: Supervisor
    kind: str            # "frontend" or "worker"
    index: int           # 1-based
    config: Path
    metrics: str         # host:port
    env: Optional[Dict[str, str]] = None

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def log(self) -> Path:
        return self.sup.state_dir / f"{self.name}.log"

    @property
    def proc(self) -> Optional[Proc]:
        return self.sup.procs.get(self.name)

    @property
    def pid(self) -> Optional[int]:
        p = self.proc
        return p.pid if p else None

    def alive(self) -> bool:
        p = self.proc
        return bool(p and p.alive())

    def start(self) -> None:
        env = None
        if self.env:
            env = {**os.environ, **self.env}
        self.sup.spawn(self.name, [str(binary(self.kind)), "-c", str(self.config)], self.log,
                       env=env, ready={"http": self.url("/readyz")}, kind=self.kind)

    def url(self, path: str) -> str:
        return f"http://{self.metrics}{path}"

    def ready(self) -> bool:
        return http_status(self.url("/readyz")) == 200

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(self.ready, timeout, f"{self.name} /readyz on {self.metrics}", self.alive,
                   interval=0.2, log_path=self.log)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=2) as r:
            return r.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (drain), SIGKILL after timeout."""
        self.sup.stop(self.name, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, no draining."""
        self.sup.kill(self.name)

    def send_signal(self, sig: int) -> None:
        """E.g. SIGHUP to reload certificates and the password file."""
        self.sup.send_signal(self.name, sig)


DEFAULT_LISTENERS = {
    "mx": (f"{HOST}:2525", "mx"),
    "submission": (f"{HOST}:2587", "submission"),
    "submissions": (f"{HOST}:2465", "submissions"),
}


@dataclass
class ClusterSpec:
    """Everything a set of frontends and workers is configured with."""
    kafka_brokers: str
    redis_port: int
    relay_host: str
    frontends: int = 1
    workers: int = 1
    listeners: Dict[str, tuple] = field(default_factory=lambda: dict(DEFAULT_LISTENERS))
    frontend_metrics_base: int = 9101
    worker_metrics_base: int = 9201
    frontend_metrics_ports: Optional[List[int]] = None   # overrides the base
    worker_metrics_ports: Optional[List[int]] = None
    topic: str = "queue"
    events_topic: str = "events"
    group: str = "mailstream-workers"
    accepted_domains: Sequence[str] = ("mailstream.test",)
    trusted_networks: Sequence[str] = ()
    max_message_size: int = 26214400
    hostname: str = "localhost"
    frontend_extra: Optional[Dict[str, Dict[str, object]]] = None
    worker_extra: Optional[Dict[str, Dict[str, object]]] = None
    env: Optional[Dict[str, str]] = None   # extra environment (MAILSTREAM_* overrides)


class Cluster:
    """N frontends and M workers against an existing Kafka, Redis and sink."""

    def __init__(self, sup: Supervisor, spec: ClusterSpec):
        self.sup, self.spec = sup, spec
        self.frontends: List[Node] = []
        self.workers: List[Node] = []
        self.tls_cert, self.tls_key = ensure_tls(sup.state_dir / "tls")
        self.passwd = ensure_passwd(sup.state_dir / "passwd")

    def listener(self, name: str = "mx") -> tuple:
        host, port = self.spec.listeners[name][0].rsplit(":", 1)
        return host, int(port)

    def _metrics(self, kind: str, index: int) -> str:
        s = self.spec
        ports = s.frontend_metrics_ports if kind == "frontend" else s.worker_metrics_ports
        base = s.frontend_metrics_base if kind == "frontend" else s.worker_metrics_base
        if ports is not None and index <= len(ports):
            return f"{HOST}:{ports[index - 1]}"
        if ports is not None:
            return f"{HOST}:{free_port()}"
        return f"{HOST}:{base + index - 1}"

    def frontend_config(self, index: int, metrics: str) -> str:
        s = self.spec
        sections: Dict[str, Dict[str, object]] = {
            "node": {"id": f"fe{index}", "hostname": s.hostname, "metrics": metrics},
            "smtp": {"accepted_domains": list(s.accepted_domains),
                     "trusted_networks": list(s.trusted_networks),
                     "max_message_size": s.max_message_size,
                     "tls_cert": self.tls_cert, "tls_key": self.tls_key,
                     "passwd_file": self.passwd},
        }
        for lname, (listen, role, *more) in self.frontend_listeners(index).items():
            sections[f"listener.{lname}"] = {"listen": listen, "role": role, **(more[0] if more else {})}
        sections["kafka"] = {"brokers": s.kafka_brokers, "topic": s.topic}
        sections["redis"] = {"host": HOST, "port": s.redis_port}
        # Rate-limit buckets per cluster (tests share one Redis and all
        # connect from 127.0.0.1).
        sections["ratelimit"] = {"key_prefix": f"ms:rl:{s.topic}:"}
        return render_ini(merge_sections(sections, s.frontend_extra))

    def worker_config(self, index: int, metrics: str) -> str:
        s = self.spec
        sections: Dict[str, Dict[str, object]] = {
            "node": {"id": f"wk{index}", "hostname": s.hostname, "metrics": metrics},
            "kafka": {"brokers": s.kafka_brokers, "topic": s.topic,
                      "events_topic": s.events_topic, "group": s.group},
            "redis": {"host": HOST, "port": s.redis_port},
            # The shipped bounce classification (worker/classify.h), so that
            # every test runs against the rules operators get.
            "delivery": {"relay_host": s.relay_host,
                         "bounce_rules_file": str(REPO / "etc" / "bounce-rules.yaml")},
            "retry": {"tiers": WORKER_RETRY_TIERS},
        }
        return render_ini(merge_sections(sections, s.worker_extra))

    def frontend_listeners(self, index: int) -> Dict[str, tuple]:
        """Frontend index's listeners: name -> (listen, role[, extra keys]).
        All frontends share the ports (SO_REUSEPORT) unless a balancer
        gives each its own (BalancedCluster)."""
        return self.spec.listeners

    def _add(self, kind: str, start: bool, wait: bool, index: Optional[int] = None) -> Node:
        """Configure (and start) frontend or worker `index` (default: the
        next one; Membership passes one past the highest in the state dir)."""
        nodes = self.frontends if kind == "frontend" else self.workers
        index = index or len(nodes) + 1
        metrics = self._metrics(kind, index)
        conf = self.sup.state_dir / f"{kind}-{index}.ini"
        text = self.frontend_config(index, metrics) if kind == "frontend" \
            else self.worker_config(index, metrics)
        conf.write_text(text)
        node = Node(self.sup, kind, index, conf, metrics, self.spec.env)
        nodes.append(node)
        if start:
            node.start()
            if wait:
                node.wait_ready()
        return node

    def add_frontend(self, start: bool = True, wait: bool = True) -> Node:
        return self._add("frontend", start, wait)

    def add_worker(self, start: bool = True, wait: bool = True) -> Node:
        return self._add("worker", start, wait)

    def write_configs(self) -> None:
        """Write all configs without starting anything (for inspection)."""
        for _ in range(self.spec.frontends):
            self._add("frontend", False, False)
        for _ in range(self.spec.workers):
            self._add("worker", False, False)

    def start(self, timeout: float = 30.0) -> None:
        """Start the configured frontends and workers, then wait for /readyz."""
        if self.spec.frontends:
            binary("frontend")
        if self.spec.workers:
            binary("worker")
        for _ in range(self.spec.frontends):
            self._add("frontend", True, False)
        for _ in range(self.spec.workers):
            self._add("worker", True, False)
        for n in self.frontends + self.workers:
            n.wait_ready(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Frontends first (stop accepting), then workers."""
        for n in self.frontends + self.workers:
            self.sup.stop(n.name, timeout)

    def nodes(self) -> List[Node]:
        return self.frontends + self.workers


# ---------------------------------------------------------------------------
# The cluster shape of issue 15: replicated Kafka, Redis with Sentinel, a
# balancer in front, and membership changes at run time
# (docs/reliability.md).  Each piece is its own class; Stack puts them
# together for `cluster/local up --brokers N --redis-sentinel --lb`.
# ---------------------------------------------------------------------------

# KRaft: nodes 1..3 are combined broker+controller (the voters); more nodes
# are brokers only, so the quorum stays at three.
KAFKA_MAX_CONTROLLERS = 3


def replication_for(brokers: int) -> tuple:
    """(replication factor, min.insync.replicas) for a cluster of `brokers`:
    min(N, 3) replicas; with three or more, a write needs all but one of
    them (with acks=all, the producer's setting), so one broker may die
    without losing an acknowledged record or stopping writes."""
    rf = min(brokers, KAFKA_MAX_CONTROLLERS)
    return rf, (rf - 1 if brokers >= 3 else 1)


class KafkaNode(Kafka):
    """Node `node_id` of a KafkaCluster: its own data directory and ports,
    a static voter set (controller.quorum.voters) shared by all nodes."""

    # Three brokers share the machine with everything else: less heap each.
    BROKER_JVM = ["-Xmx384m", "-Xms384m", *Kafka.BROKER_JVM[2:]]

    def __init__(self, sup: Supervisor, port: int, controller_port: int, node_id: int,
                 voters: str, cluster_id: str, controller: bool, brokers: int):
        super().__init__(sup, port, controller_port, name=f"kafka-{node_id}")
        self.node_id, self.voters, self.cluster_id = node_id, voters, cluster_id
        self.controller, self.brokers = controller, brokers

    def properties(self) -> Dict[str, str]:
        rf, isr = replication_for(self.brokers)
        props = super().properties()
        props.pop("controller.quorum.bootstrap.servers")
        plain = f"PLAINTEXT://{HOST}:{self.port}"
        listeners = f"{plain},CONTROLLER://{HOST}:{self.controller_port}" if self.controller \
            else plain
        props.update({
            "process.roles": "broker,controller" if self.controller else "broker",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": listeners,
            "advertised.listeners": plain,
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(isr),
            "offsets.topic.replication.factor": str(rf),
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(isr),
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(isr),
            # An out-of-sync replica never becomes leader: that would drop
            # acknowledged records (the default, spelled out).
            "unclean.leader.election.enable": "false",
        })
        return props

    def format_args(self) -> List[str]:
        return ["-t", self.cluster_id]  # static voters: no --standalone

    def format_stamp(self) -> str:
        return f"{self.cluster_id} {self.port} {self.controller_port} {self.voters}\n"


class KafkaCluster:
    """N KRaft nodes on loopback (issue 15).  ports: 2N ports, (broker,
    controller) per node; the cluster id is kept in STATE/kafka-cluster so
    a node restarted later joins the same cluster."""

    def __init__(self, sup: Supervisor, brokers: int, ports: Sequence[int]):
        if brokers < 1 or len(ports) < 2 * brokers:
            raise MsLocalError(f"kafka: {brokers} broker(s) need {2 * brokers} ports")
        self.sup, self.n = sup, brokers
        idf = sup.state_dir / "kafka-cluster"
        voters = ",".join(f"{i + 1}@{HOST}:{ports[2 * i + 1]}"
                          for i in range(min(brokers, KAFKA_MAX_CONTROLLERS)))
        # A new voter set (other ports, another N) is another cluster.
        try:
            cid, old = idf.read_text().split()
        except (OSError, ValueError):
            cid, old = "", ""
        if not cid or old != voters:
            cid = new_cluster_id()
            idf.write_text(f"{cid} {voters}\n")
        self.cluster_id = cid
        self.nodes = [KafkaNode(sup, ports[2 * i], ports[2 * i + 1], i + 1, voters, cid,
                                i < KAFKA_MAX_CONTROLLERS, brokers) for i in range(brokers)]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def replication(self) -> tuple:
        return replication_for(self.n)

    @property
    def running(self) -> bool:
        return any(n.running for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def start(self, timeout: float = 90.0) -> None:
        """Format (first time) and start every node, in parallel: a lone
        controller cannot finish starting before a quorum is up."""
        errors: List[BaseException] = []

        def one(n: KafkaNode) -> None:
            try:
                n.start(timeout)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=one, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def create_topics(self, topics: Mapping[str, int],
                      configs: Optional[Mapping[str, str]] = None, timeout: float = 120.0,
                      retention: Optional[Mapping[str, int]] = None) -> None:
        """Topics with min(N, 3) replicas and min.insync.replicas as
        replication_for() says; retried until every broker has joined."""
        rf, isr = self.replication
        # Through every broker's address, so a slow first node does not matter.
        self.nodes[0].create_topics(topics, {"min.insync.replicas": str(isr), **(configs or {})},
                                    timeout=timeout, replication=rf, bootstrap=self.bootstrap,
                                    retention=retention)

    def describe_topics(self, names: Optional[Sequence[str]] = None) -> Dict[str, TopicInfo]:
        for n in self.nodes:
            if n.running:
                return n.describe_topics(names)
        raise MsLocalError("kafka: no broker running")

    def leaders(self, topic: str) -> Dict[int, int]:
        """partition -> leader node id (-1: none), from a running broker."""
        return {p: leader for p, (leader, _r, _i) in self.partitions(topic).items()}

    def partitions(self, topic: str) -> Dict[int, tuple]:
        """partition -> (leader, replicas, in-sync replicas) of topic, from a
        running broker (leader -1: none); the chaos suite waits for a full
        ISR before it breaks another broker."""
        for n in self.nodes:
            if not n.running and not n.alive_recorded():
                continue
            r = n._tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                        n.bootstrap, "--describe", "--topic", re.escape(topic))
            if r.returncode != 0:
                continue
            out = {}
            for m in re.finditer(r"Partition:\s*(\d+)\s+Leader:\s*(-?\d+)\s+"
                                 r"Replicas:\s*([\d,]*)\s+Isr:\s*([\d,]*)", r.stdout):
                ids = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
                out[int(m.group(1))] = (int(m.group(2)), ids(m.group(3)), ids(m.group(4)))
            if out:
                return out
        raise MsLocalError("kafka: no broker answered")

    def active_controller(self) -> int:
        """Node id of the KRaft quorum leader (the active controller)."""
        for n in self.nodes:
            if not n.controller or not (n.running or n.alive_recorded()):
                continue
            r = n._tool("org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-controller",
                        f"{HOST}:{n.controller_port}", "describe", "--status", timeout=60)
            m = re.search(r"LeaderId:\s*(\d+)", r.stdout)
            if r.returncode == 0 and m:
                return int(m.group(1))
        raise MsLocalError("kafka: no controller answered")

    def stop(self, timeout: float = 30.0) -> None:
        for n in reversed(self.nodes):
            n.stop(timeout)


# -- Redis with Sentinel ----------------------------------------------------

class RedisReplyError(MsLocalError):
    """Redis answered with an error reply (-ERR ...)."""


def _resp_read(f) -> object:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise MsLocalError("redis: connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8", "replace")
    if kind == b"-":
        raise RedisReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise MsLocalError(f"redis: unexpected reply {line[:40]!r}")


def redis_query(port: int, *args: str, host: str = HOST, timeout: float = 2.0,
                auth: Sequence[str] = ()) -> object:
    """One command (after AUTH with `auth`, when given); the whole reply
    parsed (strings, ints, lists, None)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall((_resp_encode(["AUTH", *auth]) if auth else b"") + _resp_encode(args))
        with s.makefile("rb") as f:
            if auth:
                ok = _resp_read(f)
                if ok != "OK":
                    raise MsLocalError(f"redis {host}:{port}: AUTH refused: {ok}")
            return _resp_read(f)


class Sentinel:
    """One Redis Sentinel (Debian's redis-sentinel, or `redis-server
    --sentinel`, the same program) watching master_name."""

    def __init__(self, sup: Supervisor, port: int, name: str, primary_port: int,
                 master_name: str, quorum: int, down_after_ms: int, failover_timeout_ms: int,
                 auth: Sequence[str] = ()):
        self.sup, self.port, self.name = sup, port, name
        self.auth = list(auth)  # what it AUTHs to the Redis servers with
        self.dir = sup.state_dir / name
        self.conf = self.dir / "sentinel.conf"
        self.log = self.dir / "sentinel.log"
        self.primary_port, self.master_name, self.quorum = primary_port, master_name, quorum
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms

    @staticmethod
    def argv(conf: Path) -> List[str]:
        exe = shutil.which("redis-sentinel")
        if exe:
            return [exe, str(conf)]
        exe = shutil.which("redis-server")
        if not exe:
            raise MsLocalError("redis-sentinel not found: run `make deps`")
        return [exe, str(conf), "--sentinel"]

    def start(self, timeout: float = 20.0) -> None:
        if port_in_use(self.port):
            raise MsLocalError(f"{self.name}: port {self.port} is already in use")
        self.dir.mkdir(parents=True, exist_ok=True)
        # Written fresh by `up`; Sentinel rewrites the file with what it
        # learns (replicas, other Sentinels, the current primary), which a
        # restart (Membership) keeps.
        self.conf.write_text(
            "# generated by cluster/mslocal.py; Sentinel rewrites it\n"
            f"bind {HOST}\n"
            f"port {self.port}\n"
            "daemonize no\n"
            f'dir "{self.dir}"\n'
            f'logfile "{self.log}"\n'
            'pidfile ""\n'
            f"sentinel monitor {self.master_name} {HOST} {self.primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.master_name} 1\n"
            + (f"sentinel auth-user {self.master_name} {self.auth[0]}\n"
               if len(self.auth) == 2 else "")
            + (f"sentinel auth-pass {self.master_name} {self.auth[-1]}\n" if self.auth else ""))
        p = self.sup.spawn(self.name, self.argv(self.conf), self.dir / "stdout.log",
                           ready={"redis": self.port}, kind="sentinel")
        wait_until(lambda: redis_command(self.port, "PING").startswith(b"+PONG"), timeout,
                   f"{self.name} on {HOST}:{self.port}", p.alive, log_path=self.log)

    def master_info(self) -> Dict[str, str]:
        flat = redis_query(self.port, "SENTINEL", "MASTER", self.master_name)
        return dict(zip(flat[0::2], flat[1::2]))  # type: ignore[index]

    def primary(self) -> tuple:
        host, port = redis_query(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                 self.master_name)  # type: ignore[misc]
        return host, int(port)


class RedisSentinelSet:
    """A Redis primary, one replica and three Sentinels (quorum 2).  The
    frontends and workers get `[redis] sentinels` and `master_name` and
    find the primary themselves (lib/io/ms_redis.h).  Replication is
    asynchronous: a write acknowledged by the primary just before it dies
    may be missing on the promoted replica (docs/reliability.md).

    Redis AUTH: `password` alone is both servers' `requirepass`; with
    `username` too, an ACL user of that name (every key and command: it also
    replicates and serves the Sentinels) and the default user off.  Either
    server may become a replica, so both get `masterauth` (and `masteruser`);
    the Sentinels get `sentinel auth-pass` (and `auth-user`) but no password
    of their own (the clients ask them without AUTH: lib/io/ms_redis.h);
    client_config() passes the credentials to frontends and workers through
    a password file."""

    MASTER_NAME = "mailstream"
    SENTINELS = 3
    QUORUM = 2
    DOWN_AFTER_MS = 2000      # how long a silent primary takes to be judged down
    FAILOVER_TIMEOUT_MS = 10000

    def __init__(self, sup: Supervisor, ports: Sequence[int], sentinel_ports: Sequence[int],
                 master_name: str = MASTER_NAME, password: Optional[str] = None,
                 username: Optional[str] = None):
        self.sup, self.master_name = sup, master_name
        self.username, self.password = (username, password) if password else (None, None)
        self.auth: List[str] = ([username, password] if username and password
                                else [password] if password else [])
        self.servers = [Redis(sup, ports[0], "redis-1"), Redis(sup, ports[1], "redis-2")]
        for r in self.servers:
            if self.username:
                r.acl = [f"user {self.username} on >{self.password} ~* &* +@all",
                         "user default off"]
            elif self.password:
                r.password = self.password
            r.auth = list(self.auth)
            r.extra_conf = ([f"masteruser {self.username}"] if self.username else []) + \
                ([f"masterauth {self.password}"] if self.password else [])
        self.servers[1].extra_conf.append(f"replicaof {HOST} {ports[0]}")
        self.sentinels = [Sentinel(sup, p, f"sentinel-{i + 1}", ports[0], master_name,
                                   self.QUORUM, self.DOWN_AFTER_MS, self.FAILOVER_TIMEOUT_MS,
                                   self.auth)
                          for i, p in enumerate(sentinel_ports[:self.SENTINELS])]

    @property
    def sentinels_conf(self) -> str:
        return ",".join(f"{HOST}:{s.port}" for s in self.sentinels)

    def client_config(self) -> Dict[str, Dict[str, object]]:
        """The [redis] keys for frontends and workers."""
        conf: Dict[str, object] = {"sentinels": self.sentinels_conf,
                                   "master_name": self.master_name}
        if self.password:
            pw = self.sup.state_dir / "redis-password"
            pw.touch(mode=0o600)
            pw.write_text(self.password + "\n")
            conf["password_file"] = str(pw)
            if self.username:
                conf["username"] = self.username
        return {"redis": conf}

    def server(self, port: int) -> Redis:
        for s in self.servers:
            if s.port == port:
                return s
        raise MsLocalError(f"redis: no server on port {port}")

    def primary(self) -> Redis:
        """The server a running Sentinel names as primary."""
        for s in self.sentinels:
            try:
                return self.server(s.primary()[1])
            except (OSError, MsLocalError, TypeError, ValueError):
                continue
        raise MsLocalError("redis: no Sentinel answered")

    def _settled(self) -> bool:
        """Every Sentinel knows the replica and the other Sentinels (what a
        failover needs), and the replica's link is up."""
        info = redis_query(self.servers[1].port, "INFO", "replication", auth=self.auth)
        if "master_link_status:up" not in str(info):
            return False
        for s in self.sentinels:
            m = s.master_info()
            if int(m.get("num-slaves", 0)) < 1 or \
                    int(m.get("num-other-sentinels", 0)) < self.SENTINELS - 1:
                return False
        return True

    def start(self, timeout: float = 60.0) -> None:
        for r in self.servers:
            r.start()
        for s in self.sentinels:
            s.start()
        # Sentinels find each other through hello messages every 2 s.
        wait_until(self._settled, timeout, "redis sentinels: replica and peers discovered",
                   interval=0.5, log_path=self.sentinels[0].log)

    def wait_failover(self, old: Redis, timeout: float = 60.0) -> Redis:
        """Wait until the Sentinels name a primary other than old, and that
        server answers ROLE as master."""
        new: List[Redis] = []

        def moved() -> bool:
            p = self.primary()
            if p is old or redis_query(p.port, "ROLE",  # type: ignore[index]
                                       auth=self.auth)[0] != "master":
                return False
            new[:] = [p]
            return True
        wait_until(moved, timeout, "redis sentinel failover", interval=0.3,
                   log_path=self.sentinels[0].log)
        return new[0]


# -- HAProxy in front of the frontends ---------------------------------------

# HAProxy connects to the frontends from this loopback address, and the
# frontends trust PROXY headers only from it: a client reaching a
# frontend's proxy listener directly (from 127.0.0.1) is refused.
LB_SOURCE = "127.0.0.9"
# Frontends a balancer has room for (server slots, so adding or removing a
# frontend never touches HAProxy: a slot without a ready frontend is down).
LB_SLOTS = 8


def haproxy_bin() -> str:
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK)
                                      else None)
    if not exe:
        raise MsLocalError("haproxy not found: run `make deps`")
    return exe


class Balancer:
    """HAProxy on the public listeners, round-robin over LB_SLOTS frontend
    slots.  Slot i has its own proxy listener port per public listener and
    its frontend's metrics address; HAProxy checks /readyz there every
    second, so a frontend that is absent, starting or draining gets no new
    connections, and a connection refused is retried on another frontend
    (option redispatch).  Every connection to a frontend starts with a
    PROXY v2 header naming the client (`send-proxy-v2`)."""

    def __init__(self, sup: Supervisor, public: Mapping[str, tuple],
                 slots: Sequence[Mapping[str, object]], name: str = "haproxy"):
        self.sup, self.name = sup, name
        self.public = {k: tuple(v) for k, v in public.items()}
        # slot: {"listeners": {name: port}, "metrics": port}
        self.slots = [dict(s) for s in slots]
        self.dir = sup.state_dir / name
        self.cfg = self.dir / "haproxy.cfg"

    @classmethod
    def with_ports(cls, sup: Supervisor, public: Mapping[str, tuple], listener_ports: Sequence[int],
                   metrics_ports: Sequence[int]) -> "Balancer":
        names = list(public)
        slots = [{"listeners": {n: listener_ports[i * len(names) + k] for k, n in enumerate(names)},
                  "metrics": metrics_ports[i]} for i in range(len(metrics_ports))]
        return cls(sup, public, slots)

    def to_json(self) -> Dict[str, object]:
        return {"public": {k: list(v) for k, v in self.public.items()}, "slots": self.slots}

    def config_text(self) -> str:
        out = ["# generated by cluster/mslocal.py (Balancer)",
               "global", "    maxconn 4096",
               "defaults", "    mode tcp", "    timeout connect 2s",
               "    timeout client 300s", "    timeout server 300s",
               "    option redispatch", "    retries 2"]
        for lname, (listen, _role, *_x) in self.public.items():
            host, port = listen.rsplit(":", 1)
            out += [f"frontend {lname}", f"    bind {host}:{port}", f"    default_backend {lname}",
                    f"backend {lname}", "    balance roundrobin", f"    source {LB_SOURCE}",
                    "    option httpchk", "    http-check send meth GET uri /readyz",
                    "    default-server send-proxy-v2 check inter 1s fall 1 rise 1"]
            for i, slot in enumerate(self.slots):
                out.append(f"    server fe{i + 1} {HOST}:{slot['listeners'][lname]} "
                           f"port {slot['metrics']}")
        return "\n".join(out) + "\n"

    def start(self, timeout: float = 20.0) -> None:
        exe = haproxy_bin()
        for lname, (listen, *_x) in self.public.items():
            if port_in_use(int(listen.rsplit(":", 1)[1])):
                raise MsLocalError(f"haproxy: {lname} {listen} is already in use")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg.write_text(self.config_text())
        r = subprocess.run([exe, "-c", "-f", str(self.cfg)], capture_output=True, text=True)
        if r.returncode != 0:
            raise MsLocalError(f"haproxy: bad config {self.cfg}: {r.stdout}{r.stderr}")
        first = int(next(iter(self.public.values()))[0].rsplit(":", 1)[1])
        p = self.sup.spawn(self.name, [exe, "-f", str(self.cfg), "-db"], self.dir / "haproxy.log",
                           ready={"port": first}, kind="haproxy")
        wait_until(lambda: port_open(HOST, first), timeout, "haproxy", p.alive,
                   log_path=self.dir / "haproxy.log")


class BalancedCluster(Cluster):
    """Frontends behind a Balancer: frontend i listens on slot i's ports
    with `proxy = yes`, and trusts PROXY headers from LB_SOURCE only."""

    def __init__(self, sup: Supervisor, spec: ClusterSpec, balancer: Balancer):
        trust = {"smtp": {"proxy_trusted_networks": f"{LB_SOURCE}/32"}}
        spec.frontend_extra = merge_sections(dict(spec.frontend_extra or {}), trust)
        super().__init__(sup, spec)
        self.balancer = balancer

    def _slot(self, index: int) -> Mapping[str, object]:
        if not 1 <= index <= len(self.balancer.slots):
            raise MsLocalError(f"frontend-{index}: the balancer has {len(self.balancer.slots)} "
                               "frontend slots")
        return self.balancer.slots[index - 1]

    def frontend_listeners(self, index: int) -> Dict[str, tuple]:
        ports = self._slot(index)["listeners"]
        return {n: (f"{HOST}:{ports[n]}", role, {"proxy": "yes"})  # type: ignore[index]
                for n, (_listen, role, *_x) in self.spec.listeners.items()}

    def _metrics(self, kind: str, index: int) -> str:
        if kind == "frontend":
            return f"{HOST}:{self._slot(index)['metrics']}"
        return super()._metrics(kind, index)


# -- Membership: the processes of one state directory ------------------------

def spec_to_json(spec: ClusterSpec) -> Dict[str, object]:
    d = dataclasses.asdict(spec)
    d["listeners"] = {k: list(v) for k, v in spec.listeners.items()}
    return d


def spec_from_json(d: Mapping[str, object]) -> ClusterSpec:
    d = dict(d)
    d["listeners"] = {k: tuple(v) for k, v in d["listeners"].items()}  # type: ignore[union-attr]
    return ClusterSpec(**d)  # type: ignore[arg-type]


def save_shape(state_dir: Path, spec: ClusterSpec, balancer: Optional[Balancer]) -> None:
    """STATE/cluster.json: what `cluster/local add` needs to configure one
    more frontend or worker like the others."""
    data = {"spec": spec_to_json(spec), "balancer": balancer.to_json() if balancer else None}
    tmp = state_dir / ".cluster.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, state_dir / "cluster.json")


def wait_ready_spec(ready: Mapping[str, object], timeout: float, what: str,
                    alive: Optional[Callable[[], bool]] = None,
                    log_path: Optional[Path] = None) -> None:
    """Wait as a process spec's `ready` says (Supervisor.spawn)."""
    if "http" in ready:
        pred = lambda: http_status(str(ready["http"])) == 200  # noqa: E731
    elif "redis" in ready:
        # NOAUTH also proves it serves: a Redis(password=) refuses PING
        # before AUTH, and the spec holds no secret.
        wait_redis_ready(int(ready["redis"]), timeout, what, alive, log_path)
        return
    elif "port" in ready:
        pred = lambda: port_open(HOST, int(ready["port"]))  # noqa: E731
    else:
        return
    wait_until(pred, timeout, what, alive, interval=0.2, log_path=log_path)


class Membership:
    """Add, remove, kill and restart the processes of a state directory
    while the cluster runs: `cluster/local add|remove|kill|restart|status`,
    and the API a chaos driver calls (docs/reliability.md).

      add(kind)      one more frontend or worker, configured like the others
                     (STATE/cluster.json), named one past the highest index
                     ever used; returns its name once /readyz answers 200.
      remove(name)   SIGTERM (a frontend drains, a worker finishes what it
                     holds), SIGKILL after `timeout`; forgotten (not in status).
      kill(name)     SIGKILL, a crash; stays in status as dead until restarted.
      restart(name)  stop it if it runs (SIGTERM), start it again exactly as it
                     was started, wait until ready.
      status()       every recorded process: name, pid, kind, alive.

    Any recorded process may be named: frontend-3, worker-1, kafka-2,
    redis-1, sentinel-2, haproxy, sink.  Safe to use from several
    processes at once (STATE/pids is rewritten under a lock)."""

    def __init__(self, state_dir: Path):
        self.sup = Supervisor(state_dir)
        self.sup.adopt()

    def _shape(self) -> tuple:
        try:
            data = json.loads((self.sup.state_dir / "cluster.json").read_text())
        except (OSError, ValueError) as e:
            raise MsLocalError(f"no cluster started from {self.sup.state_dir} "
                               f"(cluster.json: {e})") from None
        spec = spec_from_json(data["spec"])
        bal = data.get("balancer")
        if bal:
            balancer = Balancer(self.sup, bal["public"], bal["slots"])
            return BalancedCluster(self.sup, spec, balancer), spec
        return Cluster(self.sup, spec), spec

    def _next_index(self, kind: str) -> int:
        used = [int(m.group(1)) for p in self.sup.state_dir.glob(f"{kind}-*.ini")
                if (m := re.fullmatch(rf"{kind}-(\d+)\.ini", p.name))]
        return max(used, default=0) + 1

    def add(self, kind: str, timeout: float = 60.0, index: Optional[int] = None) -> str:
        """index: reuse that index (and, for a frontend behind the balancer,
        its slot) when its process is gone; default one past the highest."""
        if kind not in ("frontend", "worker"):
            raise MsLocalError(f"add: want frontend or worker, not {kind!r}")
        cluster, _spec = self._shape()
        if index is not None:
            self.sup.adopt()
            p = self.sup.procs.get(f"{kind}-{index}")
            if p is not None and p.alive():
                raise MsLocalError(f"{kind}-{index} is running")
            node = cluster._add(kind, True, False, index=index)
            node.wait_ready(timeout)
            return node.name
        # Claim the index before the slow start: two adds at once get two.
        while True:
            index = self._next_index(kind)
            try:
                (self.sup.state_dir / f"{kind}-{index}.ini").touch(exist_ok=False)
                break
            except FileExistsError:
                continue
        node = cluster._add(kind, True, False, index=index)
        node.wait_ready(timeout)
        return node.name

    def _proc(self, name: str) -> Proc:
        self.sup.adopt()
        p = self.sup.procs.get(name)
        if p is None:
            raise MsLocalError(f"{name}: not recorded in {self.sup.pids_file}")
        return p

    def remove(self, name: str, timeout: float = 30.0) -> None:
        self._proc(name)
        self.sup.stop(name, timeout)

    def kill(self, name: str) -> None:
        p = self._proc(name)
        if p.alive():
            os.kill(p.pid, signal.SIGKILL)
            wait_until(lambda: not p.alive(), 10, f"{name} to die")

    def signal(self, name: str, sig: int) -> None:
        """Any signal (SIGSTOP, SIGCONT for a chaos driver)."""
        p = self._proc(name)
        if p.alive():
            os.kill(p.pid, sig)

    def restart(self, name: str, timeout: float = 60.0) -> Proc:
        p = self._proc(name)
        if p.alive():
            _terminate(p, 30.0)
        proc = self.sup.respawn(name)
        spec = self.sup.spec(name) or {}
        wait_ready_spec(spec.get("ready") or {}, timeout, f"{name} ready", proc.alive,
                        proc.log)  # type: ignore[arg-type]
        return proc

    def status(self) -> List[tuple]:
        """(name, pid, kind, alive) for every recorded process."""
        rows = []
        for p in Supervisor.read_pids(self.sup.state_dir):
            spec = self.sup.spec(p.name) or {}
            rows.append((p.name, p.pid, spec.get("kind") or "-", p.alive()))
        return rows


# ---------------------------------------------------------------------------
# The whole stack, for cluster/local
# ---------------------------------------------------------------------------

def default_state_dir() -> Path:
    return Path(os.environ.get("MAILSTREAM_STATE") or CACHE / "state")


@dataclass
class StackOptions:
    state_dir: Path = field(default_factory=default_state_dir)
    frontends: int = 1
    workers: int = 1
    redis_port: int = 6390
    kafka_port: int = 9192
    kafka_controller_port: int = 9193
    sink_port: int = 2526
    listeners: Dict[str, tuple] = field(default_factory=lambda: dict(DEFAULT_LISTENERS))
    frontend_metrics_base: int = 9101
    worker_metrics_base: int = 9201
    topics: Dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    # The worker outage the topics' retention is sized for (topic_retention_s).
    outage_s: int = DEFAULT_OUTAGE_S
    shape: "ShapeOptions" = field(default_factory=lambda: ShapeOptions())


@dataclass
class ShapeOptions:
    """The issue 15 options of `cluster/local up` (docs/reliability.md).
    Ports: broker node i on kafka_port + 2(i-1) (its controller one above);
    with Sentinel the replica on redis_port + 1 and Sentinels from
    sentinel_port; with the balancer, frontend slot i's proxy listeners from
    lb_port_base + 3(i-1) and its metrics on frontend_metrics_base + i - 1."""
    brokers: int = 1
    redis_sentinel: bool = False
    redis_password: Optional[str] = None   # with redis_sentinel: AUTH on every node
    redis_user: Optional[str] = None       # ... as this ACL user
    lb: bool = False
    sentinel_port: int = 26390
    lb_port_base: int = 2600


class Stack:
    """Redis + Kafka + sink + frontends + workers in one state directory."""

    STOP_ORDER_PREFIXES = ("haproxy", "frontend-", "worker-", "sink", "kafka", "sentinel-",
                           "redis")

    def __init__(self, opts: StackOptions):
        self.opts = opts
        self.sup = Supervisor(opts.state_dir)
        self.redis: Optional[Redis] = None
        self.redis_set: Optional[RedisSentinelSet] = None
        self.kafka = None  # type: Optional[Kafka] | Optional[KafkaCluster]
        self.balancer: Optional[Balancer] = None
        self.sink: Optional[Sink] = None
        self.cluster: Optional[Cluster] = None

    def check_not_running(self) -> None:
        alive = self.sup.running()
        if alive:
            names = ", ".join(f"{p.name}({p.pid})" for p in alive)
            raise MsLocalError(f"already running from {self.opts.state_dir}: {names}; "
                               "run `cluster/local down` first")

    def up(self) -> None:
        o = self.opts
        self.check_not_running()
        if o.frontends:
            binary("frontend")
        if o.workers:
            binary("worker")
        for lname, (listen, *_x) in o.listeners.items():
            if port_in_use(int(listen.rsplit(":", 1)[1])):
                raise MsLocalError(f"listener {lname}: {listen} is already in use")
        if o.shape.lb and o.frontends > LB_SLOTS:
            raise MsLocalError(f"--lb: at most {LB_SLOTS} frontends")
        try:
            log(f"state dir {o.state_dir}")
            self.sink = Sink(self.sup, o.sink_port)
            redis_extra = self._start_redis()
            log(f"starting sink on {HOST}:{o.sink_port}")
            self.sink.start()
            self._start_kafka()
            spec = ClusterSpec(kafka_brokers=self.kafka.bootstrap, redis_port=o.redis_port,
                               relay_host=self.sink.address, frontends=o.frontends,
                               workers=o.workers, listeners=o.listeners,
                               frontend_metrics_base=o.frontend_metrics_base,
                               worker_metrics_base=o.worker_metrics_base,
                               # `mailstream-ctl suppress add` refuses at RCPT, and
                               # `events tail` shows the frontends' side too
                               # (docs/operations.md).
                               frontend_extra=merge_sections(
                                   {"smtp": {"refuse_suppressed": "yes"},
                                    "kafka": {"events_topic": "events"}}, redis_extra),
                               worker_extra=redis_extra)
            self.cluster = self._make_cluster(spec)
            save_shape(o.state_dir, spec, self.balancer)
            log(f"starting {o.frontends} frontend(s) and {o.workers} worker(s)")
            self.cluster.start()
        except BaseException:
            self.down()
            raise

    def _start_redis(self) -> Optional[Dict[str, Dict[str, object]]]:
        """Redis alone, or with a replica and Sentinels: then the [redis]
        keys that point frontends and workers at the Sentinels."""
        o = self.opts
        if not o.shape.redis_sentinel:
            self.redis = Redis(self.sup, o.redis_port)
            log(f"starting redis on {HOST}:{o.redis_port}")
            self.redis.start()
            return None
        sports = [o.shape.sentinel_port + i for i in range(RedisSentinelSet.SENTINELS)]
        self.redis_set = RedisSentinelSet(self.sup, [o.redis_port, o.redis_port + 1], sports,
                                          password=o.shape.redis_password,
                                          username=o.shape.redis_user)
        log(f"starting redis primary {HOST}:{o.redis_port}, replica {o.redis_port + 1}, "
            f"sentinels {self.redis_set.sentinels_conf}")
        self.redis_set.start()
        self.redis = self.redis_set.servers[0]
        return {k: dict(v) for k, v in self.redis_set.client_config().items()}

    def _start_kafka(self) -> None:
        o = self.opts
        n = o.shape.brokers
        if n <= 1:
            self.kafka = Kafka(self.sup, o.kafka_port, o.kafka_controller_port)
            log(f"starting kafka {KAFKA_VERSION} on {HOST}:{o.kafka_port}")
        else:
            self.kafka = KafkaCluster(self.sup, n, [o.kafka_port + i for i in range(2 * n)])
            rf, isr = self.kafka.replication
            log(f"starting {n} kafka {KAFKA_VERSION} nodes on {self.kafka.bootstrap} "
                f"(replication {rf}, min.insync.replicas {isr})")
        self.kafka.start()
        keep = topic_retention_s(o.outage_s)
        log("creating topics " + ", ".join(
            f"{t}({p}" + (f", kept {keep[t] / 3600:g} h)" if t in keep else ")")
            for t, p in o.topics.items()))
        self.kafka.create_topics(o.topics, retention=keep)

    def _make_cluster(self, spec: ClusterSpec) -> Cluster:
        o = self.opts
        if not o.shape.lb:
            return Cluster(self.sup, spec)
        nl = len(o.listeners)
        self.balancer = Balancer.with_ports(
            self.sup, o.listeners, [o.shape.lb_port_base + i for i in range(LB_SLOTS * nl)],
            [o.frontend_metrics_base + i for i in range(LB_SLOTS)])
        log(f"starting haproxy on {', '.join(v[0] for v in o.listeners.values())} "
            f"({LB_SLOTS} frontend slots, PROXY v2 from {LB_SOURCE})")
        self.balancer.start()
        return BalancedCluster(self.sup, spec, self.balancer)

    def down(self, timeout: float = 30.0) -> None:
        self.sup.adopt()
        names = list(self.sup.procs)
        order = [n for pre in self.STOP_ORDER_PREFIXES for n in names if n.startswith(pre)]
        order += [n for n in names if n not in order]
        for n in order:
            p = self.sup.procs.get(n)
            if p and p.alive():
                log(f"stopping {n} (pid {p.pid})")
            self.sup.stop(n, timeout)

    def status(self) -> List[tuple]:
        return [(p.name, p.pid, p.alive()) for p in Supervisor.read_pids(self.opts.state_dir)]

    def dead(self) -> List[Proc]:
        return [p for p in self.sup.procs.values() if not p.alive()]
