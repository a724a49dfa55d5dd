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

The Kafka jars come from cluster/deps.sh: $MAILSTREAM_CACHE/kafka-<version>/lib.
All listeners bind 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import configparser
import os
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

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MAILSTREAM_CACHE") or Path.home() / ".cache" / "mailstream")
LOG4J2_CONFIG = REPO / "cluster" / "kafka" / "log4j2.xml"
SMTP_SINK = "/usr/sbin/smtp-sink"
HOST = "127.0.0.1"

# docs/config.md: room for a 25 MiB message plus its envelope.
MAX_RECORD_BYTES = 33554432
DEFAULT_TOPICS = {"queue": 12, "events": 3}
# Retry tier topics "<queue topic>.retry.<n>" (worker/delivery.h); the local
# cluster and the tests run the workers with this many tiers.
WORKER_RETRY_TIERS = 2
RETRY_TIER_PARTITIONS = 3
DEFAULT_TOPICS.update({f"queue.retry.{n}": RETRY_TIER_PARTITIONS
                       for n in range(1, WORKER_RETRY_TIERS + 1)})

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

def free_ports(n: int, host: str = HOST) -> List[int]:
    """Return n distinct TCP ports that are free on host right now.

    The sockets are held open until all n are chosen, so the ports are
    distinct; another program may still take one before we bind it.
    """
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
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
    def _save(self) -> None:
        tmp = self.pids_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for p in self.procs.values():
                f.write(f"{p.name} {p.pid} {p.starttime}\n")
        os.replace(tmp, self.pids_file)

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

    # -- start / stop --
    def spawn(self, name: str, argv: Sequence[str], log_path: Path,
              cwd: Optional[Path] = None, env: Optional[Mapping[str, str]] = None) -> Proc:
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
            self._save()

    def kill(self, name: str) -> None:
        """SIGKILL, no grace period (crash tests)."""
        self.stop(name, timeout=0, sig=signal.SIGKILL)

    def stop_all(self, timeout: float = 20.0, order: Optional[Iterable[str]] = None) -> None:
        names = list(order) if order is not None else list(reversed(list(self.procs)))
        for name in names:
            self.stop(name, timeout)
        for name in list(reversed(list(self.procs))):
            self.stop(name, timeout)


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


class Redis:
    def __init__(self, sup: Supervisor, port: int, name: str = "redis"):
        self.sup, self.port, self.name = sup, port, name
        self.dir = sup.state_dir / name
        self.conf = self.dir / "redis.conf"
        self.log = self.dir / "redis.log"

    def ping(self) -> bool:
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
            "appendonly yes\n"
            'save ""\n'
            "databases 16\n")
        p = self.sup.spawn(self.name, [exe, str(self.conf)], self.dir / "stdout.log")
        wait_until(self.ping, timeout, f"redis on {HOST}:{self.port}", p.alive, log_path=self.log)

    def stop(self, timeout: float = 10.0) -> None:
        self.sup.stop(self.name, timeout)

    @property
    def running(self) -> bool:
        p = self.sup.procs.get(self.name)
        return bool(p and p.alive())


# ---------------------------------------------------------------------------
# Kafka (KRaft, one combined broker+controller node)
# ---------------------------------------------------------------------------

def kafka_lib_dir() -> Path:
    lib = Path(os.environ.get("MAILSTREAM_KAFKA_LIB") or CACHE / f"kafka-{KAFKA_VERSION}" / "lib")
    if not (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        raise MsLocalError(f"Kafka {KAFKA_VERSION} jars not found in {lib}: run `make deps` "
                           "(cluster/deps.sh)")
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

    def __init__(self, sup: Supervisor, port: int, controller_port: int, name: str = "kafka"):
        self.sup, self.port, self.controller_port, self.name = sup, port, controller_port, name
        self.dir = sup.state_dir / name
        self.data = self.dir / "data"
        self.props = self.dir / "server.properties"
        self.log = self.dir / "server.log"
        self.lib = kafka_lib_dir()

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

    def _write_properties(self) -> None:
        listeners = f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}"
        self.props.write_text(
            "# generated by cluster/mslocal.py\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.bootstrap.servers={HOST}:{self.controller_port}\n"
            f"listeners={listeners}\n"
            f"advertised.listeners={listeners}\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            f"log.dirs={self.data}\n"
            "num.partitions=1\n"
            "default.replication.factor=1\n"
            "min.insync.replicas=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            "offsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=12\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "auto.create.topics.enable=false\n"
            f"message.max.bytes={MAX_RECORD_BYTES}\n"
            f"replica.fetch.max.bytes={MAX_RECORD_BYTES}\n"
            f"socket.request.max.bytes={max(104857600, 2 * MAX_RECORD_BYTES)}\n"
            "log.retention.hours=168\n"
            "log.segment.bytes=268435456\n")

    def _format(self) -> None:
        """Format the KRaft storage once; reformat (wiping data) if the
        listener ports changed, since the voter endpoints are stored there."""
        stamp = self.dir / "formatted-for"
        want = f"{self.port} {self.controller_port}\n"
        if (self.data / "meta.properties").is_file() and stamp.is_file() and stamp.read_text() == want:
            return
        if self.data.exists():
            log(f"kafka: ports changed or storage incomplete; wiping {self.data}")
            shutil.rmtree(self.data)
        cid = new_cluster_id()
        r = self._tool("kafka.tools.StorageTool", "format", "-t", cid, "-c", str(self.props),
                       "--standalone")
        if r.returncode != 0:
            raise MsLocalError(f"kafka storage format failed:\n{r.stdout}\n{r.stderr}")
        stamp.write_text(want)

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker (formatting storage on first use) and wait until
        it listens. Restarting reuses the same ports and data directory."""
        for p in (self.port, self.controller_port):
            if port_in_use(p):
                raise MsLocalError(f"kafka: port {p} is already in use")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        self._format()
        argv = [self._java(), *self.BROKER_JVM,
                f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dkafka.logs.dir={self.dir}",
                "-cp", self._classpath(), "kafka.Kafka", str(self.props)]
        p = self.sup.spawn(self.name, argv, self.dir / "stdout.log")
        wait_until(lambda: port_open(HOST, self.port), timeout, f"kafka on {self.bootstrap}",
                   p.alive, log_path=self.log)

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL after timeout."""
        self.sup.stop(self.name, timeout)

    def kill(self) -> None:
        self.sup.kill(self.name)

    def create_topics(self, topics: Mapping[str, int],
                      configs: Optional[Mapping[str, str]] = None, timeout: float = 90.0) -> None:
        """Create topics (name -> partitions), replication 1, if they do not
        exist yet. One TopicCommand JVM per topic, run in parallel; success
        also proves the broker is really serving requests."""
        configs = {"max.message.bytes": str(MAX_RECORD_BYTES), **(configs or {})}
        ctl = build_dir() / "mailstream-ctl"
        if os.access(ctl, os.X_OK):
            # One C process with librdkafka's admin API: milliseconds, where a
            # TopicCommand JVM per topic costs seconds of CPU.
            argv = [str(ctl), "-b", self.bootstrap, "topics", "create",
                    *[f"{n}:{p}:1" for n, p in topics.items()]]
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
            while True:
                r = self._tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                               self.bootstrap, "--create", "--if-not-exists", "--topic", name,
                               "--partitions", str(parts), "--replication-factor", "1",
                               *cfg_args, timeout=timeout)
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
        p = self.sup.spawn(self.name, argv, self.log)
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
                       env=env)

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
        for lname, (listen, role) in s.listeners.items():
            sections[f"listener.{lname}"] = {"listen": listen, "role": role}
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
            "delivery": {"relay_host": s.relay_host},
            "retry": {"tiers": WORKER_RETRY_TIERS},
        }
        return render_ini(merge_sections(sections, s.worker_extra))

    def _add(self, kind: str, start: bool, wait: bool) -> Node:
        nodes = self.frontends if kind == "frontend" else self.workers
        index = len(nodes) + 1
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


class Stack:
    """Redis + Kafka + sink + frontends + workers in one state directory."""

    STOP_ORDER_PREFIXES = ("frontend-", "worker-", "sink", "kafka", "redis")

    def __init__(self, opts: StackOptions):
        self.opts = opts
        self.sup = Supervisor(opts.state_dir)
        self.redis: Optional[Redis] = None
        self.kafka: Optional[Kafka] = None
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
        for lname, (listen, _role) in o.listeners.items():
            if port_in_use(int(listen.rsplit(":", 1)[1])):
                raise MsLocalError(f"listener {lname}: {listen} is already in use")
        try:
            log(f"state dir {o.state_dir}")
            self.redis = Redis(self.sup, o.redis_port)
            self.kafka = Kafka(self.sup, o.kafka_port, o.kafka_controller_port)
            self.sink = Sink(self.sup, o.sink_port)
            log(f"starting redis on {HOST}:{o.redis_port}")
            self.redis.start()
            log(f"starting sink on {HOST}:{o.sink_port}")
            self.sink.start()
            log(f"starting kafka {KAFKA_VERSION} on {HOST}:{o.kafka_port}")
            self.kafka.start()
            log("creating topics " + ", ".join(f"{n}({p})" for n, p in o.topics.items()))
            self.kafka.create_topics(o.topics)
            spec = ClusterSpec(kafka_brokers=self.kafka.bootstrap, redis_port=o.redis_port,
                               relay_host=self.sink.address, frontends=o.frontends,
                               workers=o.workers, listeners=o.listeners,
                               frontend_metrics_base=o.frontend_metrics_base,
                               worker_metrics_base=o.worker_metrics_base,
                               # `mailstream-ctl suppress add` refuses at RCPT, and
                               # `events tail` shows the frontends' side too
                               # (docs/operations.md).
                               frontend_extra={"smtp": {"refuse_suppressed": "yes"},
                                               "kafka": {"events_topic": "events"}})
            self.cluster = Cluster(self.sup, spec)
            log(f"starting {o.frontends} frontend(s) and {o.workers} worker(s)")
            self.cluster.start()
        except BaseException:
            self.down()
            raise

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
