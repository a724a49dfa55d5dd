"""[node] threads: one libuv loop per thread, each with its own SO_REUSEPORT
listeners, sessions, Kafka producer and Redis client, in one process.

With threads = 2 many concurrent sessions are spread over both loops (the
loop is visible in the session id: loop i numbers its ids from i << 48), every
message is queued and reaches the sink, max_connections_per_ip holds for the
whole process (not per loop), and SIGTERM drains every loop and exits 0.
threads = 1 is the single loop of before.  Without [node] threads the
process runs one loop per CPU it may use: fewer than the online CPUs when its
affinity or its cgroup's CPU quota (a pod's CPU limit) allows fewer.  Nothing
here depends on timing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

import mslocal
from conftest import smtp_port
from test_frontend_smtp import QUEUED, Client, code, hello

LOOP_SHIFT = 48
SID = re.compile(r"\bsid=(\d+)\b")


def node_cluster(cluster_factory, threads: int, workers: int = 1, smtp=None):
    extra = {"node": {"threads": threads}, "smtp": dict(smtp or {})}
    return cluster_factory(frontends=1, workers=workers, frontend_extra=extra)


def send_one(port: int, i: int, results: dict) -> None:
    c = hello(port)
    assert code(c.cmd(b"MAIL FROM:<s%d@sender.example>" % i)) == b"250 2.1.0"
    assert code(c.cmd(b"RCPT TO:<u%d@mailstream.test>" % i)) == b"250 2.1.5"
    assert c.cmd(b"DATA").startswith(b"354 ")
    c.send(b"Subject: threads %d\r\n\r\nbody %d\r\n.\r\n" % (i, i))
    m = QUEUED.match(c.reply())
    assert m, i
    results[i] = m.group(1)
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"
    c.close()


def loops_seen(log_text: str) -> set:
    return {int(s) >> LOOP_SHIFT for s in SID.findall(log_text)}


def exit_code(node) -> int | None:
    p = node.proc
    node.stop()
    return p.popen.returncode if p and p.popen else None


@pytest.mark.timeout(300)
def test_two_threads_queue_and_deliver_concurrent_sessions(cluster_factory):
    cl = node_cluster(cluster_factory, 2)
    port = smtp_port(cl)
    n = 40
    results: dict = {}
    errors: list = []

    def run(i: int) -> None:
        try:
            send_one(port, i, results)
        except BaseException as e:  # reported below, with the index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == n and len(set(results.values())) == n
    msgs = cl.sink.wait_for(n, timeout=120)
    subjects = {re.search(rb"Subject: threads (\d+)", m.data).group(1) for m in msgs}
    assert subjects == {b"%d" % i for i in range(n)}
    for qid in results.values():
        assert any(b" id " + qid + b"\r\n" in m.data for m in msgs), qid
    node = cl.frontends[0]
    text = node.metrics_text()
    assert re.search(r'^mailstream_smtp_messages_total\{result="queued"\} 40$', text, re.M)
    # Both loops took sessions (SO_REUSEPORT spreads 40 connections).
    assert loops_seen(node.log.read_text()) == {0, 1}
    assert exit_code(node) == 0


@pytest.mark.timeout(300)
def test_two_threads_per_ip_limit_is_process_wide(cluster_factory):
    limit = 4
    cl = node_cluster(cluster_factory, 2, workers=0, smtp={"max_connections_per_ip": limit})
    port = smtp_port(cl)
    held = [hello(port) for _ in range(limit)]
    # Per loop, a second loop would admit up to `limit` more; process-wide,
    # every further connection is refused whichever loop accepts it.
    for _ in range(24):
        c = Client(port)
        assert code(c.reply()) == b"421 4.7.0"
        assert c.closed()
        c.close()
    node = cl.frontends[0]
    assert re.search(r'^mailstream_smtp_limit_hits_total\{limit="max_connections_per_ip"\} 24$',
                     node.metrics_text(), re.M)
    assert loops_seen(node.log.read_text()) == {0, 1}
    for c in held:
        assert code(c.cmd(b"NOOP")) == b"250 2.0.0"


@pytest.mark.timeout(300)
def test_two_threads_sigterm_drains_every_loop(cluster_factory):
    cl = node_cluster(cluster_factory, 2, workers=0)
    port = smtp_port(cl)
    results: dict = {}
    send_one(port, 0, results)  # a finished transaction before the signal
    idle = [hello(port) for _ in range(12)]
    node = cl.frontends[0]
    p = node.proc
    node.send_signal(signal.SIGTERM)
    # Every loop drains: idle sessions on both get 421 4.3.2 and are closed.
    for c in idle:
        assert code(c.reply()) == b"421 4.3.2"
        assert c.closed()
    p.popen.wait(60)
    assert p.popen.returncode == 0
    log = node.log.read_text()
    assert "event=loop_drained loop=0" in log and "event=loop_drained loop=1" in log
    assert "event=drained" in log and "event=exit" in log


@pytest.mark.timeout(300)
def test_one_thread(cluster_factory):
    cl = node_cluster(cluster_factory, 1, smtp={"max_connections_per_ip": 2})
    port = smtp_port(cl)
    results: dict = {}
    for i in range(5):
        send_one(port, i, results)
    msgs = cl.sink.wait_for(5, timeout=120)
    assert len(msgs) == 5
    a, b = hello(port), hello(port)
    c = Client(port)
    assert code(c.reply()) == b"421 4.7.0"
    assert c.closed()
    node = cl.frontends[0]
    assert loops_seen(node.log.read_text()) == {0}
    assert "threads=1" in node.log.read_text()
    node_proc = node.proc
    node.stop()
    assert code(a.reply()) == b"421 4.3.2" and code(b.reply()) == b"421 4.3.2"
    assert node_proc.popen.returncode == 0


STARTED_THREADS = re.compile(r"event=started .*\bthreads=(\d+)\b")


def default_threads(cluster_factory, preexec=None) -> int:
    """The loops a frontend with no [node] threads runs when started with
    preexec (in the child, before exec): read from its started line."""
    cl = cluster_factory(frontends=1, workers=0, start=False)
    cl.write_configs()
    node = cl.frontends[0]
    log = Path(node.config).with_suffix(".threads.log")
    with open(log, "wb") as out:
        p = subprocess.Popen([str(mslocal.binary("frontend")), "-c", str(node.config)],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             preexec_fn=preexec)
    try:
        mslocal.wait_until(lambda: STARTED_THREADS.search(log.read_text()) is not None, 30,
                           "the frontend's started line", lambda: p.poll() is None,
                           log_path=log)
        return int(STARTED_THREADS.search(log.read_text()).group(1))
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_cgroup_v1() -> Path | None:
    """The mount point of cgroup v1's cpu controller, if there is one."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if len(f) > 3 and f[2] == "cgroup" and "cpu" in f[3].split(","):
            return Path(f[1])
    return None


def need_cpus(n: int) -> None:
    if len(os.sched_getaffinity(0)) < n:
        pytest.skip(f"needs {n} CPUs to tell a limit from the machine")


@pytest.mark.timeout(300)
def test_default_threads_follow_affinity(cluster_factory):
    need_cpus(2)
    mine = len(os.sched_getaffinity(0))
    assert default_threads(cluster_factory) <= mine
    one = min(os.sched_getaffinity(0))
    assert default_threads(cluster_factory, lambda: os.sched_setaffinity(0, {one})) == 1


@pytest.mark.timeout(300)
def test_default_threads_follow_the_cgroup_cpu_quota(cluster_factory):
    """A quota of 1 CPU (what `--cpus 1` or a pod's CPU limit of 1 sets)
    gives one loop, 1.5 CPUs two (rounded up), on a machine of two or more;
    the affinity is left whole."""
    need_cpus(2)
    mount = cpu_cgroup_v1()
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("no writable cgroup v1 cpu hierarchy to set a quota in")
    group = mount / f"mailstream-test-{uuid.uuid4().hex[:12]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")

        def enter() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

        (group / "cpu.cfs_quota_us").write_text("100000")
        assert default_threads(cluster_factory, enter) == 1
        (group / "cpu.cfs_quota_us").write_text("150000")
        assert default_threads(cluster_factory, enter) == 2
    finally:
        group.rmdir()
