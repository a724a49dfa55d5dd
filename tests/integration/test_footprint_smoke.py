"""Smoke run of bench/footprint.py (issue 25), so it keeps working, and
proof that a topic's retention really frees the disk: a few thousand
messages with every topic kept 10 s, then the log shrinks once they are
past it. Asserts delivery and that shrinking, never rates.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import footprint  # noqa: E402

pytestmark = pytest.mark.skipif(
    not all(os.access(p, os.X_OK) for p in ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink")),
    reason="smtp-source and smtp-sink (Postfix) are not installed")

MESSAGES = 4000


@pytest.mark.timeout(300)
def test_footprint_smoke(tmp_path):
    args = footprint.parse_args([
        "--messages", str(MESSAGES), "--batch", "1000", "--horizon", "10", "--sample", "1",
        "--tail", "25", "--state-dir", str(tmp_path / "state"), "--out", str(tmp_path)])
    rep = footprint.run(args)
    assert rep["delivered"] == MESSAGES
    assert rep["smtp_source_failed_batches"] == 0
    assert rep["expired_unread_resets"] == 0
    samples = rep["samples"]
    peak = max(s["kafka_bytes"] for s in samples)
    # 4,000 records of 5 KiB: ~25 MB at the peak; 25 s after the last,
    # every closed segment is past its 10 s and deleted.
    assert peak > 10 * 2**20, peak
    assert samples[-1]["kafka_bytes"] < peak / 2, [s["kafka_bytes"] for s in samples]
    assert samples[-1]["redis_keys"] >= 0 and samples[-1]["redis_used_memory"] > 0
    md = footprint.markdown(rep)
    assert f"Delivered {MESSAGES:,} of {MESSAGES:,}" in md
