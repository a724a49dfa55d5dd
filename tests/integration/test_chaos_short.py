"""The chaos suite's short mode (tests/chaos/chaos.py, issue 15,
docs/reliability.md), part of `make test`.

One run: 3 KRaft brokers, Redis with Sentinel, HAProxy, 2 frontends and 2
workers; a few thousand numbered messages at 40 a second from 6 clients
through the balancer while every fault of the plan happens once (frontend
SIGKILL mid-DATA and mid-BDAT, worker SIGKILL / SIGTERM / SIGSTOP past the
session timeout, SIGKILL of the broker leading most partitions and of the
active controller, a broker's disk wiped, the Redis primary SIGKILLed, the
destination answering 421 then 451, workers and frontends added and
removed). About 2.5 minutes on a 2-core machine (load 9); far longer when the machine is
shared with several other heavy jobs (9.5 minutes at load 30), hence the timeout.

It asserts what a 250 promises: no accepted message lost, none corrupted,
every fault carried out. Duplicates: until duplicate fencing (issue 15,
branch `fence`) gives the workers their "unavoidable" counter, a worker
that was SIGSTOPped or killed may still deliver what another now owns, so
other duplicates are held to the 2 % the older tests accept; once the
counter is there (the workers export it), none but the unavoidable ones
may remain: a duplicate is unavoidable only if a worker logged
`event=duplicate_risk kind=unavoidable` for its queue id. No worker may
abort (a SIGTERM during a rebalance exits 0).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, _test_dir

CHAOS = REPO / "tests" / "chaos" / "chaos.py"
# PENDING FENCING: the tolerance for avoidable duplicates while the workers
# have no fencing (the bound tests/integration/test_worker_*.py use).
PRE_FENCING_DUPLICATE_SHARE = 0.02


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_short(request, tmp_path_factory):
    state = _test_dir(request, tmp_path_factory, "chaos")
    out = state / "summary.json"
    r = subprocess.run([sys.executable, str(CHAOS), "--mode", "short", "--state-dir",
                        str(state / "cluster"), "--json", str(out),
                        "--max-other-duplicates", "1000000"],
                       capture_output=True, text=True, timeout=870)
    print(r.stdout[-6000:])
    assert r.returncode != 2, f"the cluster did not start:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    s = json.loads(out.read_text())
    assert s["accepted"] >= 2000, f"only {s['accepted']} accepted: {s['retry_reasons']}"
    assert s["lost"] == 0, f"{s['lost']} accepted messages lost, e.g. {s['lost_examples']}"
    assert s["corrupted"] == 0, f"{s['corrupted']} bodies arrived altered"
    assert s["refused_5xx"] == 0, f"5xx for {s['refused_examples']}"
    assert s["not_accepted_gave_up"] == 0
    errors = [(f["fault"], f["error"]) for f in s["faults"] if f["error"]]
    assert not errors, f"faults that could not be carried out: {errors}"
    skipped = [f["fault"] for f in s["faults"] if f["detail"].startswith("skipped")]
    assert not skipped, f"faults skipped: {skipped}"
    assert len(s["faults"]) == 12
    # A worker stopped with SIGTERM exits 0, also in a rebalance (librdkafka's
    # sticky-assignor abort at destroy, lib/io/ms_kafka.c).
    assert s["library_aborts"] == 0, f"workers aborted: {s['library_abort_examples']}"
    if s["unavoidable_metric_seen"]:
        # Fencing is in: a duplicate whose queue id no worker flagged as
        # possibly delivered by a dead holder is a bug (chaos.py,
        # classify_duplicates).
        assert s["duplicated_other"] == 0, \
            f"{s['duplicated_other']} avoidable duplicates, e.g. {s['duplicate_examples']}"
    else:
        # PENDING FENCING (issue 15, branch `fence`): becomes the assertion above.
        assert s["duplicated_other"] <= PRE_FENCING_DUPLICATE_SHARE * s["accepted"], \
            f"{s['duplicated_other']} duplicates, e.g. {s['duplicate_examples']}"
