"""The chaos suite's duplicate split (tests/chaos/chaos.py): a message
delivered twice is "unavoidable" only if a worker flagged its queue id
(`event=duplicate_risk kind=unavoidable qid=...`), every other duplicate
fails the run; unavoidable ones are attributed to the worker signal that
left them. Pure Python on written files: no cluster."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "chaos"))
import chaos  # noqa: E402


def write_state(d: Path, sink_lines, worker_logs) -> None:
    (d / "chaos-sink").mkdir()
    (d / "chaos-sink" / "delivered.log").write_text("".join(l + "\n" for l in sink_lines))
    for name, text in worker_logs.items():
        (d / f"{name}.log").write_text(text)


def test_split_per_queue_id(tmp_path):
    write_state(tmp_path, [
        "r1-1-1 aa 100.000 Q1",          # once: not a duplicate
        "r1-2-1 bb 100.100 Q2",          # twice, Q2 flagged: unavoidable
        "r1-2-1 bb 115.500 Q2",
        "r1-3-1 cc 100.200 Q3",          # twice, Q3 not flagged: other
        "r1-3-1 cc 101.000 Q3",
        "r1-4-1 dd 100.300 -",           # twice, no qid recorded: other
        "r1-4-1 dd 116.000 -",
        "r1-5-2 ee 100.400 Q5",          # three times, flagged: 2 unavoidable
        "r1-5-2 ee 116.000 Q5",
        "r1-5-2 ee 117.000 Q5",
        "r1-6-1 ff 100.500 Q6a",         # queued twice by the frontend: other,
        "r1-6-1 ff 101.500 Q6b",         # even though one qid was flagged
        "other-7-1 gg 100.000 Q7",       # another run's line
        "r1-8-1 hh 100.600",             # an older sink's line (no qid), once
        "r1-9-1 ii 100.700 Q10",         # twice, flagged, but its marker was given
        "r1-9-1 ii 118.000 Q10",         # up on (Redis lost it): other
    ], {
        # Q2's line in a worker that was killed later (its log stays), Q5
        # and Q6a in a worker added during the run; Q9 flagged but arrived
        # once (DATA started, the "." never sent): the counter's overcount.
        "worker-1": "ts=2026-12-06T10:00:15.000Z level=warn node=wk1 event=duplicate_risk "
                    "kind=unavoidable qid=Q2 rcpts=1 prior_in_data=1 gen=2\n"
                    "mailstream-worker: rdkafka_sticky_assignor.c:1896: "
                    "rd_kafka_sticky_assignor_state_destroy: Assertion `assignor_state' failed.\n",
        "worker-7": "ts=2026-12-06T10:00:16.000Z level=warn node=wk7 event=duplicate_risk "
                    "kind=unavoidable qid=Q5 rcpts=2 prior_in_data=1 gen=3\n"
                    "ts=2026-12-06T10:00:16.000Z level=info node=wk7 event=delivery qid=Q3\n"
                    "ts=2026-12-06T10:00:16.100Z level=warn node=wk7 event=duplicate_risk "
                    "kind=unavoidable qid=Q6a rcpts=1 prior_in_data=1 gen=2\n"
                    "ts=2026-12-06T10:00:17.000Z level=warn node=wk7 event=duplicate_risk "
                    "kind=unavoidable qid=Q9 rcpts=1 prior_in_data=1 gen=2\n"
                    "ts=2026-12-06T10:00:17.500Z level=warn node=wk7 event=duplicate_risk "
                    "kind=unavoidable qid=Q10 rcpts=1 prior_in_data=1 gen=2\n",
        "worker-2": "ts=2026-12-06T10:00:18.000Z level=warn node=wk2 event=marker_lost "
                    "qid=Q10 rcpts=1 waited_ms=60000\n",
    })
    deliv, foreign = chaos.read_deliveries(tmp_path / "chaos-sink" / "delivered.log", "r1")
    assert foreign == 1
    assert deliv[(8, 1)] == [("hh", 100.6, "-")]
    flagged, aborts = chaos.read_worker_logs(tmp_path)
    assert set(flagged) == {"Q2", "Q5", "Q6a", "Q9", "Q10"}
    assert flagged["Q5"] == [("worker-7", "2026-12-06T10:00:16.000Z", 2)]
    assert len(aborts) == 1 and aborts[0][0] == "worker-1"
    unavoidable, other = chaos.classify_duplicates(deliv, flagged)
    assert [(k, n, q) for k, n, q in unavoidable] == [((2, 1), 1, "Q2"), ((5, 2), 2, "Q5")]
    assert [(k, n, q) for k, n, q in other] == [((3, 1), 1, "Q3"), ((4, 1), 1, "-"),
                                                ((6, 1), 1, "Q6a,Q6b"), ((9, 1), 1, "Q10")]

    # Attribution: the signal nearest after the first copy (the dying
    # worker's), allowing the sink to record it up to 2 s after the signal.
    ops = [(90.0, "worker_kill", "worker-1", "SIGKILL", 2),
           (100.2, "worker_kill", "worker-2", "SIGKILL", 2),   # Q2's first copy at 100.1
           (101.5, "worker_stop", "worker-1", "SIGSTOP", 2)]   # Q5's at 100.4: 0.2 s late
    by_op = chaos.attribute_duplicates(unavoidable, deliv, ops)
    assert by_op == {1: 3}
    late = chaos.attribute_duplicates(unavoidable, deliv, [(300.0, "worker_kill", "w", "SIGKILL", 2)])
    assert late == {-1: 3}
    rows = chaos.per_op_rows(ops, by_op, deliv)
    assert [r["unavoidable"] for r in rows] == [0, 3, 0]
    # 100.2: the 5 s before hold this run's copies at 100.0 and 100.1 (2
    # copies: 0.4/s, 0.2/s for each of 2 workers): 3 duplicates / 0.2/s.
    assert rows[1]["worker_rate"] == 0.2
    assert rows[1]["window_ms"] == 15000.0


def test_window_histograms_summed():
    text = ('mailstream_worker_unrecorded_seconds_bucket{le="0.001"} 1\n'
            'mailstream_worker_unrecorded_seconds_bucket{le="0.01"} 5\n'
            'mailstream_worker_unrecorded_seconds_bucket{le="+Inf"} 6\n'
            'mailstream_worker_unrecorded_seconds_sum 0.5\n'
            'mailstream_worker_unrecorded_seconds_count 6\n')
    h = chaos.parse_histograms(text, chaos.WINDOW_HISTOGRAMS)
    assert set(h) == {"mailstream_worker_unrecorded_seconds"}   # no replies yet: absent
    u = h["mailstream_worker_unrecorded_seconds"]
    assert u["buckets"] == {0.001: 1.0, 0.01: 5.0, float("inf"): 6.0}
    s = chaos.summarize_histogram(u["buckets"], u["sum"], u["count"])
    assert s == {"count": 6, "mean_ms": 83.33, "p50_le_ms": 10.0, "p90_le_ms": "inf",
                 "p99_le_ms": "inf"}
