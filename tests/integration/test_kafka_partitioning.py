"""How the frontend's producer spreads records over the queue topic's
partitions (lib/io/ms_kafka.c, sticky_partitioner): records stay on one
partition for a window of MS_KAFKA_STICKY_BYTES octets, then move on, so a
linger window becomes one batch while every partition still gets its share.
Read back from the real broker with kcat."""

import re
import shutil
import smtplib
import subprocess
import time

import pytest

import mslocal
from conftest import smtp_port
from test_frontend_metrics import sample
from test_frontend_smtp import QUEUED, code, hello

pytestmark = pytest.mark.timeout(240)

STICKY_BYTES = 256 * 1024  # MS_KAFKA_STICKY_BYTES


def _partitions(cluster, expect: int) -> list:
    """The partition of each record on the cluster's queue topic, in
    produce order (offsets within a partition; records are numbered by a
    Subject header, so order across partitions comes from it)."""
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if not kcat:
        pytest.fail("kcat/kafkacat not installed: run `make deps`")
    r = subprocess.run([kcat, "-b", cluster.kafka.bootstrap, "-C", "-t", cluster.spec.topic,
                        "-e", "-q", "-o", "beginning",
                        "-X", f"fetch.max.bytes={mslocal.MAX_RECORD_BYTES}",
                        "-X", f"receive.message.max.bytes={mslocal.MAX_RECORD_BYTES + 1024 * 1024}",
                        "-f", "@@P%p@@%s"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    seq = []
    for rec in r.stdout.split(b"@@P")[1:]:
        part, _, rest = rec.partition(b"@@")
        # The envelope is protobuf; the message text is inside it verbatim.
        i = rest.find(b"Subject: part-")
        if i >= 0:
            n = int(rest[i + 14:rest.index(b"\r", i)])
            seq.append((n, int(part)))
    assert len(seq) == expect, (len(seq), r.stdout[:300])
    return [p for _, p in sorted(seq)]


def _send(port: int, count: int, body_octets: int) -> None:
    body = ("x" * 76 + "\r\n") * (body_octets // 78)
    with smtplib.SMTP(mslocal.HOST, port, timeout=30) as s:
        for n in range(count):
            msg = (f"From: a@example.org\r\nTo: b@mailstream.test\r\nSubject: part-{n}\r\n"
                   f"\r\n{body}")
            s.sendmail("a@example.org", ["b@mailstream.test"], msg.encode())


def test_small_records_of_one_producer_share_a_partition(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0, frontend_extra={"node": {"threads": 1}})
    port = cl.listener("mx")[1]
    # 40 records of ~2 KiB: 80 KiB, less than one window.  Hashing the queue
    # ids over 12 partitions would use nearly all of them.
    _send(port, 40, 2048)
    parts = _partitions(cl, 40)
    assert len(set(parts)) <= 2, parts
    # Within the window the partition only changes once, at a boundary.
    changes = sum(1 for a, b in zip(parts, parts[1:]) if a != b)
    assert changes <= 1, parts


def test_large_volume_moves_over_partitions(cluster_factory):
    cl = cluster_factory(frontends=1, workers=0, frontend_extra={"node": {"threads": 1}})
    port = cl.listener("mx")[1]
    # One small record first, not counted (_partitions reads "part-" ones):
    # the first record of a new producer may find a window's partition
    # without a known leader yet and go to the next one that has one
    # (sticky_partitioner), which the later records would then seem to
    # revisit. 1 KiB moves the window boundaries by too little to matter.
    with smtplib.SMTP(mslocal.HOST, port, timeout=30) as s:
        s.sendmail("a@example.org", ["b@mailstream.test"],
                   b"Subject: warm-up\r\n\r\n" + (b"w" * 76 + b"\r\n") * 13)
    # 24 records of ~100 KiB: about 9 windows, so at least 6 partitions,
    # each holding a contiguous run of records.
    _send(port, 24, 100 * 1024)
    parts = _partitions(cl, 24)
    assert len(set(parts)) >= 6, parts
    runs = [parts[0]] + [b for a, b in zip(parts, parts[1:]) if a != b]
    assert len(runs) == len(set(runs)), parts  # no partition revisited


def test_events_of_one_queue_id_stay_on_one_partition(cluster_factory):
    """The worker's `events` topic is the producer's keyed topic: hashed by
    queue id, so one message's events keep their order for consumers."""
    cl = cluster_factory(frontends=1, workers=1)
    port = cl.listener("mx")[1]
    with smtplib.SMTP(mslocal.HOST, port, timeout=30) as s:
        for n in range(12):
            s.sendmail("a@example.org", [f"r{n}a@mailstream.test", f"r{n}b@mailstream.test"],
                       f"Subject: part-{n}\r\n\r\nbody {n}\r\n".encode())
    cl.sink.wait_for(12, timeout=120)  # one transaction, two RCPTs each
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    parts = {}
    for _ in range(30):
        r = subprocess.run([kcat, "-b", cl.kafka.bootstrap, "-C", "-t", cl.spec.events_topic,
                            "-e", "-q", "-o", "beginning", "-f", "%p %k\n"],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        lines = [ln.split(" ", 1) for ln in r.stdout.decode().splitlines() if " " in ln]
        if len(lines) >= 24:  # one event per recipient
            break
        time.sleep(1)
    assert len(lines) >= 24, lines
    for part, key in lines:
        parts.setdefault(key, set()).add(part)
    assert len(parts) == 12, parts
    assert all(len(p) == 1 for p in parts.values()), parts
    assert len({next(iter(p)) for p in parts.values()}) > 1, parts  # hashed, not all on one


def _kafka_batches(cluster) -> list:
    """The record count of every record batch on the cluster's queue topic,
    as the broker stored them (Kafka's DumpLogSegments on the segments)."""
    logs = sorted(str(p) for p in cluster.kafka.data.glob(f"{cluster.spec.topic}-*/*.log"))
    assert logs, f"no segments of {cluster.spec.topic} under {cluster.kafka.data}"
    r = cluster.kafka._tool("kafka.tools.DumpLogSegments", "--files", ",".join(logs))
    assert r.returncode == 0, r.stderr
    return [int(m) for m in re.findall(r"baseOffset: \d+ lastOffset: \d+ count: (\d+)", r.stdout)]


def test_a_group_commit_batch_is_one_kafka_batch(cluster_factory):
    """A batch of group commit (frontend/fe_commit.h) goes to one partition
    (ms_producer_batch_begin) in one produce request ([kafka]
    batch_linger_ms 1), so the broker appends it once (and fsyncs once with
    flush.messages=1): six held 100 KiB records span more than two sticky
    windows, and with librdkafka's linger.ms 0 its broker thread may start
    sending at the first of them."""
    # One loop; every session stays a member for a second, so the records
    # are held until the last of the six has come (fe_commit_due). The
    # batch's linger is 50 ms here, not the 1 ms of the fsync bench, so a
    # loaded (sanitised) frontend queueing the six records still has them
    # all in librdkafka before its broker thread sends.
    cl = cluster_factory(frontends=1, workers=0, frontend_extra={
        "node": {"threads": "1"},
        "kafka": {"linger_ms": "1000", "group_commit_window_us": "1000000",
                  "batch_linger_ms": "50"}})
    node = cl.frontends[0]
    port = smtp_port(cl)
    body = ("Subject: big\r\n\r\n" + ("x" * 76 + "\r\n") * (100 * 1024 // 78)).encode()
    clients = [hello(port) for _ in range(6)]
    for c in clients:
        assert code(c.cmd(b"MAIL FROM:<a@example.org>")) == b"250 2.1.0"
        assert code(c.cmd(b"RCPT TO:<u@mailstream.test>")) == b"250 2.1.5"
        assert c.cmd(b"DATA").startswith(b"354 ")
        c.send(body)
    for c in clients:  # the six ends of data within microseconds
        c.send(b".\r\n")
    for c in clients:
        assert QUEUED.match(c.reply())
    text = node.metrics_text()
    records = sample(text, "mailstream_smtp_group_commit_records_total")
    commits = sum(sample(text, "mailstream_smtp_group_commits_total", f'reason="{why}"')
                  for why in ("ready", "linger", "full", "flush"))
    assert records == 6
    # Held together (the frontend's part; it does not depend on Kafka) ...
    assert commits <= 2, commits
    # ... and stored as they were held: one Kafka batch per group commit.
    batches = _kafka_batches(cl)
    assert sum(batches) == 6, batches
    assert len(batches) == commits, (batches, commits)
