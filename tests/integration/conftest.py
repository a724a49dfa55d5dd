"""Fixtures for Mailstream integration tests, built on cluster/mslocal.py.

Session-scoped (started once for the whole run, on free loopback ports):
  redis_server    mslocal.Redis
  kafka_broker    mslocal.Kafka with the default topics `queue` and `events`

Per test:
  sink            a fresh smtp-sink (mslocal.Sink): .messages(), .wait_for(n)
  cluster_factory make_cluster(frontends=1, workers=1, **ClusterSpec fields) ->
                  mslocal.Cluster with its own sink (cluster.sink), own SMTP and
                  metrics ports, and by default its own topics and consumer
                  group (created on the shared broker), so tests never see
                  each other's messages. Pass isolated=False to use `queue`
                  and `events`.
  cluster         make_cluster() with the defaults
  kafka_control   the broker, for stop()/start() (same ports and data dir);
                  it is restarted after the test if the test left it stopped.

Helpers: isolate_topics(broker, spec, key) (for a cluster built by hand),
kill_worker(cluster, i), read_sink (mslocal.read_sink), smtp_port(),
need_testdata(rel) (the shared conformance data: skips the test when absent, fails
it with CI=true).
Every test has a timeout (pytest-timeout; MAILSTREAM_TEST_TIMEOUT seconds,
default 180). On failure the report names the state directories and shows
the tail of every log in them. Everything is stopped at the end, failure or
not; state directories stay under pytest's basetemp for inspection.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "cluster"))

import mslocal  # noqa: E402
from mslocal import read_sink  # noqa: E402,F401  (re-exported for tests)

DEFAULT_TIMEOUT = int(os.environ.get("MAILSTREAM_TEST_TIMEOUT", "180"))

# The shared conformance data (RFC vectors, the OpenSPF suite): outside the
# project, never copied into it (tests/unit/testdata.h for the C tests).
TESTDATA = Path(os.environ.get("MAILSTREAM_TESTDATA") or (REPO.parent / "shared" / "testdata"))

_KAFKA: List[mslocal.Kafka] = []
_DIRS_KEY = pytest.StashKey[List[Path]]()


# ---------------------------------------------------------------------------
# Timeouts and failure reports
# ---------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: starts a KRaft quorum or waits out a failover (issue 15); "
                   "PYTEST_ARGS=\"-m 'not slow'\" leaves them out")


def pytest_collection_modifyitems(config, items):
    """Give every test a timeout unless it sets its own (or --timeout is given)."""
    if config.getoption("timeout", None):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


def _remember_dir(request, path: Path) -> None:
    node = request.node
    dirs = node.stash.setdefault(_DIRS_KEY, [])
    if path not in dirs:
        dirs.append(path)


def _logs(d: Path) -> List[str]:
    """Our processes' logs (not Kafka segment files, not captured mail)."""
    out = []
    for p in sorted(d.rglob("*.log")):
        rel = p.relative_to(d).parts
        if p.is_file() and "data" not in rel and "mail" not in rel and "tools" not in rel:
            out.append(str(p))
    return out


# A sanitizer's report in a process log (`make asan`: the programs are built
# with -fno-sanitize-recover, so the process also stopped there), and
# LeakSanitizer's report at a process's exit.  What a worker leaves to its
# exit on purpose (librdkafka handles whose destroy would abort:
# lib/io/ms_kafka.c, event=kafka_destroy_skipped, librdkafka #4312) is
# marked so (ms_mem_keep) and not reported.
SANITIZER_ERRORS = (b"ERROR: AddressSanitizer", b": runtime error: ", b"ERROR: LeakSanitizer")


def sanitizer_reports(paths: List[str]) -> List[str]:
    """The lines of the files that report a sanitizer error, as
    "path: line"."""
    out = []
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                if any(m in line for m in SANITIZER_ERRORS):
                    out.append(f"{p}: {line.decode('utf-8', 'replace').rstrip()}")
    return out


@pytest.fixture(autouse=True)
def _no_sanitizer_errors(request):
    """After the test (and its processes' teardown: an autouse fixture is set
    up first, so torn down last), no log of its processes reports a
    sanitizer error."""
    yield
    found = sanitizer_reports([p for d in request.node.stash.get(_DIRS_KEY, [])
                               for p in _logs(d)])
    if found:
        pytest.fail("sanitizer report in a process log:\n" + "\n".join(found[:20]),
                    pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    dirs = list(item.stash.get(_DIRS_KEY, []))
    lines = []
    for k in _KAFKA:  # shared infrastructure: name the logs only
        d = k.sup.state_dir
        lines.append(f"shared redis/kafka state dir: {d} (logs: {', '.join(_logs(d)) or '-'})")
    for d in dirs:
        lines.append(f"state dir: {d}")
        for p in _logs(d):
            lines.append(f"--- {p} (last lines) ---")
            lines.append(mslocal.tail(Path(p), 20))
    if not lines:
        return
    rep.sections.append(("mailstream logs", "\n".join(lines)))


# ---------------------------------------------------------------------------
# Session infrastructure
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def infra_supervisor(infra_dir):
    sup = mslocal.Supervisor(infra_dir)
    yield sup
    sup.stop_all()


@pytest.fixture(scope="session")
def redis_server(infra_supervisor) -> mslocal.Redis:
    r = mslocal.Redis(infra_supervisor, mslocal.free_port())
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def kafka_broker(infra_supervisor) -> mslocal.Kafka:
    port, cport = mslocal.free_ports(2)
    k = mslocal.Kafka(infra_supervisor, port, cport)
    k.start()
    _KAFKA.append(k)
    try:
        k.create_topics(mslocal.DEFAULT_TOPICS)
        yield k
    finally:
        _KAFKA.remove(k)
        k.stop()


@pytest.fixture(autouse=True)
def _restart_kafka_if_stopped():
    """A test that stops the broker and fails before restarting it must not
    break the tests after it."""
    yield
    for k in _KAFKA:
        if not k.running:
            k.start()


@pytest.fixture
def kafka_control(kafka_broker) -> mslocal.Kafka:
    """The shared broker; stop() and start() keep its ports and data."""
    return kafka_broker


# ---------------------------------------------------------------------------
# Per-test processes
# ---------------------------------------------------------------------------

def _test_dir(request, tmp_path_factory, what: str) -> Path:
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    d = tmp_path_factory.mktemp(f"{what}-{name}")
    _remember_dir(request, d)
    return d


@pytest.fixture
def sink(request, tmp_path_factory):
    sup = mslocal.Supervisor(_test_dir(request, tmp_path_factory, "sink"))
    s = mslocal.Sink(sup, mslocal.free_port())
    s.start()
    yield s
    sup.stop_all()


_cluster_seq = itertools.count(1)


def isolate_topics(kafka_broker: mslocal.Kafka, spec: Dict[str, object], key) -> None:
    """With a key (any string unique to the caller): give spec a topic, events
    topic and consumer group of its own unless it names them. Then create on
    the broker every topic spec names other than the shared defaults (the
    queue, events and retry tier topics)."""
    if key is not None:
        tag = hashlib.sha1(f"{key}#{os.getpid()}".encode()).hexdigest()[:10]
        spec.setdefault("topic", f"queue.{tag}")
        spec.setdefault("events_topic", f"events.{tag}")
        spec.setdefault("group", f"workers.{tag}")
    topics: Dict[str, int] = {}
    if spec.get("topic", "queue") != "queue":
        topics[spec["topic"]] = mslocal.DEFAULT_TOPICS["queue"]
    if spec.get("events_topic", "events") != "events":
        topics[spec["events_topic"]] = mslocal.DEFAULT_TOPICS["events"]
    if spec.get("topic", "queue") != "queue":  # the workers' retry tier topics
        for t in range(1, mslocal.WORKER_RETRY_TIERS + 1):
            topics[f"{spec['topic']}.retry.{t}"] = mslocal.RETRY_TIER_PARTITIONS
    if topics:
        kafka_broker.create_topics(topics)


@pytest.fixture
def cluster_factory(request, tmp_path_factory, redis_server, kafka_broker):
    """make_cluster(frontends=1, workers=1, isolated=True, start=True,
    sink_args=(), **spec) -> mslocal.Cluster (with .sink and .kafka).

    spec: any mslocal.ClusterSpec field (topic, events_topic, group,
    accepted_domains, trusted_networks, max_message_size, frontend_extra,
    worker_extra, env, listeners, ...). Listener and metrics ports are free
    loopback ports unless given. redis: a Redis of the test's own (an
    mslocal.Redis) instead of the shared one.
    """
    supervisors: List[mslocal.Supervisor] = []

    def make_cluster(frontends: int = 1, workers: int = 1, *, isolated: bool = True,
                     start: bool = True, sink_args=(), redis=None,
                     **spec) -> mslocal.Cluster:
        n = next(_cluster_seq)
        sup = mslocal.Supervisor(_test_dir(request, tmp_path_factory, f"cluster{n}"))
        supervisors.append(sup)
        snk = mslocal.Sink(sup, mslocal.free_port(), extra_args=sink_args)
        snk.start()
        if isolated:
            isolate_topics(kafka_broker, spec, f"{request.node.nodeid}#{n}")
        else:
            isolate_topics(kafka_broker, spec, None)
        # Every port in one call, so no two of them can be the same (ports
        # picked one at a time can repeat once the first is released).
        # Four spare metrics ports per kind for nodes a test adds later.
        nfe, nwk = frontends + 4, workers + 4
        ports = mslocal.free_ports(3 + nfe + nwk)
        if "listeners" not in spec:
            mx, sub, subs = ports[:3]
            spec["listeners"] = {"mx": (f"{mslocal.HOST}:{mx}", "mx"),
                                 "submission": (f"{mslocal.HOST}:{sub}", "submission"),
                                 "submissions": (f"{mslocal.HOST}:{subs}", "submissions")}
        spec.setdefault("frontend_metrics_ports", ports[3:3 + nfe])
        spec.setdefault("worker_metrics_ports", ports[3 + nfe:])
        redis = redis or redis_server
        cl = mslocal.Cluster(sup, mslocal.ClusterSpec(
            kafka_brokers=kafka_broker.bootstrap, redis_port=redis.port,
            relay_host=snk.address, frontends=frontends, workers=workers, **spec))
        cl.sink = snk            # type: ignore[attr-defined]
        cl.kafka = kafka_broker  # type: ignore[attr-defined]
        cl.redis = redis         # type: ignore[attr-defined]
        if start:
            cl.start()
        return cl

    yield make_cluster
    for sup in reversed(supervisors):
        sup.stop_all(order=[n for pre in ("frontend-", "worker-", "sink")
                            for n in list(sup.procs) if n.startswith(pre)])


@pytest.fixture
def cluster(cluster_factory) -> mslocal.Cluster:
    return cluster_factory()


# ---------------------------------------------------------------------------
# Helpers for tests
# ---------------------------------------------------------------------------

def kill_worker(cluster: mslocal.Cluster, index: int = 0) -> None:
    """SIGKILL worker number index (0-based): a crash, no draining."""
    cluster.workers[index].kill()


def smtp_port(cluster: mslocal.Cluster, listener: str = "mx") -> int:
    return cluster.listener(listener)[1]


def testdata_required() -> bool:
    """CI=true or CI=1 (what CI services set): absent data is a failure."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def need_testdata(rel: str) -> Path:
    """The file or directory rel under the conformance data ($MAILSTREAM_TESTDATA,
    default ../shared/testdata). Absent: skips the calling test, saying so, or
    fails it when testdata_required(), so that a CI run that lost the data
    cannot pass by skipping (issue 13, defect 4)."""
    path = TESTDATA / rel
    if not path.exists():
        if testdata_required():
            pytest.fail(f"{path} absent, and CI is set: the conformance data must be there "
                        "(set MAILSTREAM_TESTDATA)", pytrace=False)
        pytest.skip(f"{path} absent (set MAILSTREAM_TESTDATA)")
    return path
