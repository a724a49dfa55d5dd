"""Mailstream's frontend with OpenDMARC as its milter (issue 18).

A private OpenDMARC (tests/integration/milters.py) that rejects failures,
checks SPF itself and resolves through NSD serving the test zone:

  * mail with From: @reject.mstest (p=reject) that neither DKIM nor an
    aligned SPF pass covers is refused at the end of DATA, at SMTP time,
    with OpenDMARC's 5.7.1 reply naming the domain; nothing reaches the sink;
  * aligned mail from pass.mstest (also p=reject) is queued, and carries
    OpenDMARC's Authentication-Results (dmarc=pass) at the sink.
"""

from __future__ import annotations

import os

import pytest

from conftest import smtp_port
from milters import (MODULE_TIMEOUT, AUTHSERV_ID, DMARC_PASS, DMARC_REJECT, RCPT, SPOOFER,
                     delivered, header_values, message, milter_cluster, not_delivered, queued,
                     refusal, replies_of)
# pytest fixtures, used by name:
from milters import (dkim_key, milter_sup, mstest_dns, opendmarc)  # noqa: F401

pytestmark = [pytest.mark.timeout(MODULE_TIMEOUT),
              pytest.mark.skipif(not os.access("/usr/sbin/opendmarc", os.X_OK),
                                 reason="opendmarc not installed (make deps)")]


def test_dmarc_p_reject_failure_refused_at_smtp_time(cluster_factory, opendmarc):
    cl = milter_cluster(cluster_factory, [opendmarc])
    r = replies_of(smtp_port(cl), f"mallory@{SPOOFER}",
                   message(f"ceo@{DMARC_REJECT}", RCPT, "dm-fail"))
    assert [x[:3] for x in r[:5]] == [b"220", b"250", b"250", b"250", b"354"], r
    no = refusal(r)
    assert no[:10] == b"550 5.7.1 ", r
    assert DMARC_REJECT.encode() in no, no
    # The aligned message after it is delivered: the sink is reachable, and
    # the refused one is not there.
    sender = f"carol@{DMARC_PASS}"
    assert queued(replies_of(smtp_port(cl), sender, message(sender, RCPT, "dm-after")))
    delivered(cl.sink, "dm-after")
    assert not_delivered(cl.sink, "dm-fail")


def test_dmarc_pass_delivered_with_authentication_results(cluster_factory, opendmarc):
    cl = milter_cluster(cluster_factory, [opendmarc])
    sender = f"carol@{DMARC_PASS}"
    assert queued(replies_of(smtp_port(cl), sender, message(sender, RCPT, "dm-pass")))
    data = delivered(cl.sink, "dm-pass")
    ar = [v for v in header_values(data, "Authentication-Results")
          if v.startswith(AUTHSERV_ID + ";") and "dmarc=" in v]
    assert len(ar) == 1, data.decode()
    assert f"dmarc=pass (p=reject dis=none) header.from={DMARC_PASS}" in ar[0], ar
