"""Smoke run of the benchmark harness (bench/run.py), so it keeps working.

A few hundred messages, one round, Postfix and Mailstream, on the shared
Redis and Kafka of the test session, plus a small idle-connection test.
Asserts only that everything completes and every message arrived; never
timings (the numbers of a smoke run on a busy test machine mean nothing).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import run as bench  # noqa: E402

pytestmark = pytest.mark.skipif(
    not all(os.access(p, os.X_OK) for p in ("/usr/sbin/postfix", "/usr/sbin/smtp-source",
                                            "/usr/sbin/smtp-sink")),
    reason="Postfix (postfix, smtp-source, smtp-sink) is not installed")

MESSAGES = 300


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path, kafka_broker, redis_server):
    args = bench.parse_args([
        "--messages", str(MESSAGES), "--rounds", "1", "--workloads", "5k-20",
        "--systems", "postfix,mailstream", "--warmup", "20", "--kafka-warmup", "0",
        "--idle", "50", "--idle-postfix-limits", "100", "--memory-fill-limit", "16",
        "--out", str(tmp_path)])
    report = bench.run(args, kafka=kafka_broker, redis=redis_server)

    runs = report["runs"]
    assert {r["system"] for r in runs} == {"postfix", "mailstream"}
    for r in runs:
        assert r["ok"], f"{r['system']}: {r.get('error')}"
        assert r["smtp_source_rc"] == 0
        assert r["probe_failed"] == 0, r.get("probe_errors")
        # Every message smtp-source and the probe got a 250 for reached the sink.
        assert r["expected"] == MESSAGES + r["probe_sent"]
        assert r["received"] == r["expected"]
        assert r["probe_sent"] >= 1 and r["latency_samples"] == r["probe_sent"]
        assert r["cpu_seconds"], r
    ms = next(r for r in runs if r["system"] == "mailstream")
    assert {"frontend-1", "worker-1", "kafka", "redis"} <= set(ms["cpu_seconds"])
    assert ms["frontend_counters"], "frontend /metrics had no message counters"
    # Group commit sent the run's records in batches of one or more.
    assert ms["records_per_batch"] >= 1

    idle = {r["system"]: r for r in report["idle"]}
    assert idle["mailstream"]["ehlo_ok"] == 50
    assert any(k.startswith("postfix") for k in idle)

    # The page-cache fill ran, capped at 16 MiB here.
    fill = report["memory_fill"]
    assert 0 <= fill["filled_mib"] <= 16 and fill["new_page_ms_per_mib_after"] >= 0

    mpath, jpath = bench.write_report(tmp_path, report)
    assert json.loads(jpath.read_text())["summary"]
    assert "| 5k-20 | mailstream |" in mpath.read_text()
    assert "page cache filled before the runs" in mpath.read_text()
    assert "### What this machine allows" in mpath.read_text()
    assert "Records per produce request" in mpath.read_text()
    assert ms_row(report)["e2e_bound_vs_postfix"] > 0


def ms_row(report):
    return next(r for r in report["summary"] if r["system"] == "mailstream")


def test_harness_bound_is_what_the_sink_and_load_generator_leave():
    """bench/run.py harness_bound: with 1.5 ms of sink and load generator
    per message on 2 cores, no relay passes 1,333 msg/s; against a Postfix
    at 121 msg/s that is 11x.  With 4 cores the one-process sink binds
    first: 1,000 / 0.5 ms = 2,000 msg/s, 16.5x."""
    row = {"cpu_ms_per_msg": {"frontend": 1.0, "worker": 1.0, "sink": 0.5, "loadgen": 1.0}}
    base = {"e2e_rate": {"median": 121.0}}
    assert bench.harness_bound(row, base, 2) == pytest.approx(2000.0 / 1.5 / 121.0)
    assert bench.harness_bound(row, base, 4) == pytest.approx(1000.0 / 0.5 / 121.0)
    row["cpu_ms_per_msg"]["sink"] = 4.0  # 1 MiB: the sink alone caps at 250 msg/s
    assert bench.harness_bound(row, base, 2) == pytest.approx(1000.0 / 4.0 / 121.0)
    assert bench.harness_bound({"cpu_ms_per_msg": {"worker": 1.0}}, base, 2) is None
    assert bench.harness_bound(row, {"e2e_rate": None}, 2) is None


def test_records_per_batch_sums_every_frontend():
    """Two frontends' group-commit counters over a run: 30 records in 10
    batches and 10 in 10 are 2 records per batch; no batches, no figure."""
    def text(recs, ready, full):
        return ("# TYPE mailstream_smtp_group_commit_records_total counter\n"
                f"mailstream_smtp_group_commit_records_total {recs}\n"
                f'mailstream_smtp_group_commits_total{{reason="ready"}} {ready}\n'
                f'mailstream_smtp_group_commits_total{{reason="full"}} {full}\n')
    before = [text(100, 40, 1), text(0, 0, 0)]
    after = [text(130, 48, 3), text(10, 10, 0)]
    assert bench.records_per_batch(before, after) == pytest.approx(2.0)
    assert bench.records_per_batch(before, before) is None


def test_share_out_splits_a_load_over_processes():
    """19 sessions and 5,000 messages over at most 20 smtp-source processes:
    one session each, the messages in proportion; fewer messages than
    sessions leaves no process without a message."""
    import smtpclient
    parts = smtpclient.share_out(19, 5000, 20)
    assert len(parts) == 19 and {s for s, _ in parts} == {1}
    assert sum(m for _, m in parts) == 5000 and max(m for _, m in parts) - min(m for _, m in parts) <= 1 + 5000 % 19
    assert smtpclient.share_out(100, 1000, 20) == [(5, 50)] * 20
    assert sum(m for _, m in smtpclient.share_out(10, 3, 10)) == 3
    assert all(m > 0 for _, m in smtpclient.share_out(10, 3, 10))


@pytest.mark.parametrize("body", ["b64", "prose"])
def test_body_workloads_send_a_different_file_in_every_session(tmp_path, monkeypatch, body):
    """The b64 and prose workloads: one smtp-source per session, each with
    its own message file of about the workload's size, no two alike (one
    file for all would let a codec remove the repetition between the
    records of a batch, which no real mail allows)."""
    monkeypatch.setattr(bench, "BODY_DIR", tmp_path)
    wl = next(w for w in bench.WORKLOADS if w.name == f"50k-20-{body}")
    system = type("S", (), {"smtp_port": 2525})()
    argvs = bench.source_argvs(system, 19, 1000, wl)
    assert len(argvs) == 19
    files = [Path(a[a.index("-F") + 1]) for a in argvs]
    texts = [f.read_bytes() for f in files]
    assert len(set(texts)) == 19
    for t in texts:
        wire = len(t) + t.count(b"\n")  # smtp-source sends each line with CRLF
        assert 0.95 * wl.size <= wire <= 1.05 * wl.size, wire
        assert t.isascii() and max(len(line) for line in t.split(b"\n")) <= 998
    assert sum(int(a[a.index("-m") + 1]) for a in argvs) == 1000
    assert bench.source_argvs(system, 19, 1000, wl) == argvs  # the files are kept


def test_memory_fill_writes_its_file_and_removes_it(tmp_path):
    """bench/memwarm.py, capped: the filler is written to the size asked
    (free memory and disk allowing), both write-cost probes are measured and
    leave no file, and remove() deletes the filler."""
    import memwarm
    res = memwarm.fill(tmp_path, limit_mib=8)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == (["memwarm-fill"] if res["filled_mib"] else [])
    if res["filled_mib"]:
        assert (tmp_path / "memwarm-fill").stat().st_size == res["filled_mib"] << 20
    assert res["new_page_ms_per_mib_before"] >= 0 and res["new_page_ms_per_mib_after"] >= 0
    # Topping up keeps to the limit: nothing more once the filler is at it.
    if res["filled_mib"] == 8:
        assert memwarm.top_up(tmp_path, limit_mib=8) == 0
        assert (tmp_path / "memwarm-fill").stat().st_size == 8 << 20
    memwarm.remove(tmp_path)
    assert not list(tmp_path.iterdir())
    assert memwarm.top_up(tmp_path, limit_mib=8) == 0  # no filler, nothing written


INBOUND_TOOLS = ("/usr/sbin/opendkim", "/usr/sbin/opendmarc", "/usr/bin/policyd-spf",
                 "/usr/sbin/unbound", "/usr/sbin/nsd")
INBOUND_MESSAGES = 100


@pytest.mark.skipif(not all(os.access(p, os.X_OK) for p in INBOUND_TOOLS) or os.geteuid() != 0,
                    reason="the inbound systems need root (unshare -m) and Debian's opendkim, "
                           "opendmarc, postfix-policyd-spf-python, unbound and nsd")
@pytest.mark.timeout(300)
def test_bench_inbound_smoke(tmp_path, kafka_broker, redis_server):
    """The inbound systems (bench/inbound.py): every message that arrived was
    verified (spf, dkim and dmarc pass at the sink) and the forged one was
    refused by Postfix and discarded by Mailstream; run() marks a run not ok
    otherwise, and these assertions look at what it counted."""
    args = bench.parse_args([
        "--messages", str(INBOUND_MESSAGES), "--rounds", "1", "--workloads", "5k-20",
        "--systems", "postfix-inbound,mailstream-inbound", "--warmup", "10",
        "--kafka-warmup", "0", "--idle", "0", "--no-memory-fill", "--out", str(tmp_path)])
    report = bench.run(args, kafka=kafka_broker, redis=redis_server)

    runs = {r["system"]: r for r in report["runs"]}
    assert set(runs) == {"postfix-inbound", "mailstream-inbound"}
    for name, r in runs.items():
        assert r["ok"], f"{name}: {r.get('error')}"
        assert r["received"] == r["expected"] == INBOUND_MESSAGES + r["probe_sent"]
        chk = r["auth_check"]
        # The warm-up's messages are in the sink's dump too.
        assert chk["messages_checked"] == chk["all_pass"] >= r["expected"] + 10
        assert {"spf", "dkim", "dmarc"} <= set(chk["sample"])
    assert runs["postfix-inbound"]["auth_check"]["forged_reply"].startswith("550")
    assert {"opendkim", "opendmarc", "unbound"} <= set(runs["postfix-inbound"]["cpu_seconds"])
    ms = runs["mailstream-inbound"]["auth_check"]
    assert ms["forged_reply"] == "250"
    assert ms["worker_auth_results"]["dmarc=fail"] >= 1
    assert ms["worker_auth_results"]["dkim=pass"] >= INBOUND_MESSAGES


def test_assigned_since_start_reads_the_last_start_only():
    """bench/run.py waits, with several workers, until each has partitions:
    only what its log says since its last start counts."""
    first = ("ts=1 event=started topic=a\n"
             "ts=2 event=kafka_assigned partitions=12 incremental=1\n")
    assert bench.assigned_since_start(first)
    again = first + "ts=3 event=stopped\nts=4 event=started topic=b\n"
    assert not bench.assigned_since_start(again)
    assert not bench.assigned_since_start(again + "ts=5 event=kafka_assigned partitions=0 "
                                                  "incremental=1\n")
    assert bench.assigned_since_start(again + "ts=6 event=kafka_assigned partitions=6 "
                                              "incremental=1\n")
