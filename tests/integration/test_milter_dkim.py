"""Mailstream's frontend with OpenDKIM (sign mode) as its milter (issue 18).

A private OpenDKIM (tests/integration/milters.py) signs mail whose From:
domain is signer.mstest with a key made for the test run; the key's record
is in the test zone (NSD). The DKIM-Signature field OpenDKIM asks the
frontend to add must reach the sink and verify there
(mailstream-authcheck against the zone), so the message the worker
delivers is, byte for byte where the signature covers it, the one the
milter signed. Mail from another domain is passed unsigned.
"""

from __future__ import annotations

import os

import pytest

from conftest import smtp_port
from milters import (MODULE_TIMEOUT, RCPT, SELECTOR, SIGNER, delivered, dkim_verdicts,
                     header_values, message, milter_cluster, queued, replies_of)
# pytest fixtures, used by name:
from milters import (dkim_key, milter_sup, mstest_dns, opendkim)  # noqa: F401

pytestmark = [pytest.mark.timeout(MODULE_TIMEOUT),
              pytest.mark.skipif(not os.access("/usr/sbin/opendkim", os.X_OK),
                                 reason="opendkim not installed (make deps)")]


def test_opendkim_signature_reaches_the_sink_and_verifies(cluster_factory, opendkim,
                                                          mstest_dns):
    cl = milter_cluster(cluster_factory, [opendkim])
    sender = f"alice@{SIGNER}"
    body = "Signed by the milter.\r\n.dot line\r\n\r\n"
    assert queued(replies_of(smtp_port(cl), sender, message(sender, RCPT, "dk-signed", body)))
    data = delivered(cl.sink, "dk-signed")
    sigs = header_values(data, "DKIM-Signature")
    assert len(sigs) == 1, data.decode()
    assert f"d={SIGNER};" in sigs[0] and f"s={SELECTOR};" in sigs[0], sigs
    assert dkim_verdicts(mstest_dns.upstream, data, sender) == [("pass", SIGNER)]
    # Tampering is noticed: the check is not a formality.
    bad = data.replace(b"Signed by the milter.", b"Signed by the mallet.")
    assert dkim_verdicts(mstest_dns.upstream, bad, sender) == [("fail", SIGNER)]


def test_opendkim_leaves_other_domains_unsigned(cluster_factory, opendkim):
    cl = milter_cluster(cluster_factory, [opendkim])
    sender = "carol@elsewhere.mstest"
    assert queued(replies_of(smtp_port(cl), sender, message(sender, RCPT, "dk-unsigned")))
    assert not header_values(delivered(cl.sink, "dk-unsigned"), "DKIM-Signature")
