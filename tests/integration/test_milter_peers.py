"""The milter fixtures against a real MTA: Postfix with smtpd_milters (issue 18).

The same private rspamd, OpenDMARC and OpenDKIM the Mailstream milter tests
use (tests/integration/milters.py), behind a private Postfix
(bench/postfix_instance.py, the benchmark's peer) relaying to a sink:

  * rspamd refuses GTUBE at end of DATA with 5.7.1, and adds its headers to
    a plain message;
  * OpenDMARC refuses a p=reject failure at SMTP time and adds its
    Authentication-Results to a message that passes;
  * OpenDKIM signs, and the signature verifies (mailstream-authcheck against
    the test zone);
  * bench/run.py --milter rspamd (that benchmark's smoke run) completes.

This proves each fixture is a working milter independently of Mailstream's
client, so a failure of test_milter_{rspamd,dkim,dmarc}.py points at the
client; it is also the Postfix half of the milter benchmark.
"""

from __future__ import annotations

import os
import smtplib
import sys
from pathlib import Path

import pytest

import mslocal
from milters import (MODULE_TIMEOUT, AUTHSERV_ID, DMARC_PASS, DMARC_REJECT, RCPT, SIGNER, SPOOFER,
                     delivered, dkim_verdicts, gtube_message, header_values, message, not_delivered)
# pytest fixtures, used by name:
from milters import (dkim_key, milter_sup, mstest_dns, opendkim, opendmarc,  # noqa: F401
                     rspamd, rspamd_hs_cache)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from postfix_instance import PostfixInstance  # noqa: E402

pytestmark = [pytest.mark.timeout(MODULE_TIMEOUT), pytest.mark.skipif(
    not all(os.access(p, os.X_OK) for p in ("/usr/sbin/postfix", "/usr/bin/rspamd",
                                            "/usr/sbin/opendkim", "/usr/sbin/opendmarc")),
    reason="postfix, rspamd, opendkim or opendmarc not installed (make deps)")]

@pytest.fixture(scope="module")
def postfix(milter_sup, rspamd, opendmarc, opendkim):
    """Postfix with the three milters in the usual order: policy (DMARC),
    content (rspamd), then signing last. Yields (postfix, sink)."""
    sink = mslocal.Sink(milter_sup, mslocal.free_port())
    sink.start()
    pf = PostfixInstance(milter_sup.state_dir / "postfix", mslocal.free_port(), sink.port,
                         process_limit=20,
                         milters=[opendmarc.address, rspamd.address, opendkim.address])
    pf.start()
    try:
        yield pf, sink
    finally:
        pf.stop()
        sink.stop()


def send(pf: PostfixInstance, sender: str, msg: bytes):
    """One transaction (MAIL FROM sender); returns None when accepted, else
    (code, text) of the refusal at end of DATA."""
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, timeout=60) as s:
        s.ehlo("client.mstest")
        try:
            s.sendmail(sender, [RCPT], msg)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()
    return None


def test_postfix_rspamd_refuses_gtube(postfix):
    pf, sink = postfix
    code, text = send(pf, f"alice@{SIGNER}", gtube_message(f"alice@{SIGNER}", RCPT, "pf-gtube"))
    assert (code, text) == (554, "5.7.1 Gtube pattern")
    assert not_delivered(sink, "pf-gtube")


def test_postfix_rspamd_headers_and_dkim_signature(postfix, mstest_dns):
    pf, sink = postfix
    sender = f"alice@{SIGNER}"
    assert send(pf, sender, message(sender, RCPT, "pf-plain")) is None
    data = delivered(sink, "pf-plain")
    assert header_values(data, "X-Spamd-Result"), data.decode()
    assert header_values(data, "X-Rspamd-Queue-Id"), data.decode()
    sigs = header_values(data, "DKIM-Signature")
    assert len(sigs) == 1 and f"d={SIGNER};" in sigs[0] and "s=sel;" in sigs[0], sigs
    assert dkim_verdicts(mstest_dns.upstream, data, sender) == [("pass", SIGNER)]


def test_postfix_opendmarc_rejects_p_reject_failure(postfix):
    pf, sink = postfix
    code, text = send(pf, f"mallory@{SPOOFER}",
                      message(f"ceo@{DMARC_REJECT}", RCPT, "pf-dmarc-fail"))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert DMARC_REJECT in text, text
    assert not_delivered(sink, "pf-dmarc-fail")


def test_postfix_opendmarc_passes_aligned_mail(postfix):
    pf, sink = postfix
    sender = f"carol@{DMARC_PASS}"
    assert send(pf, sender, message(sender, RCPT, "pf-dmarc-pass")) is None
    data = delivered(sink, "pf-dmarc-pass")
    ar = [v for v in header_values(data, "Authentication-Results")
          if v.startswith(AUTHSERV_ID + ";") and "dmarc=" in v]
    assert len(ar) == 1 and f"dmarc=pass (p=reject dis=none) header.from={DMARC_PASS}" in ar[0], ar


def test_bench_milter_option(tmp_path, kafka_broker, redis_server):
    """bench/run.py --milter rspamd (the milter workload of `make bench`)
    keeps working: a smoke run of both systems behind one private rspamd.
    Asserts that every message arrived and that rspamd did work for both
    systems; never timings."""
    sys.path.insert(0, str(REPO / "bench"))
    import run as bench  # noqa: E402

    n = 100
    args = bench.parse_args([
        "--milter", "rspamd", "--messages", str(n), "--rounds", "1", "--workloads", "5k-20",
        "--systems", "postfix,mailstream", "--warmup", "10", "--kafka-warmup", "0",
        "--no-memory-fill", "--out", str(tmp_path)])
    assert args.idle == 0
    report = bench.run(args, kafka=kafka_broker, redis=redis_server)
    assert "rspamd" in report["options"]["milter"]
    assert report["postfix_settings"]["smtpd_milters"].startswith("inet:127.0.0.1:")
    runs = report["runs"]
    assert {r["system"] for r in runs} == {"postfix", "mailstream"}
    for r in runs:
        assert r["ok"], f"{r['system']}: {r.get('error')}"
        assert r["received"] == r["expected"] == n + r["probe_sent"]
        # The milter scanned this system's messages: a scan costs rspamd
        # 1.5-2.3 ms of CPU (docs/scaling.md), an idle rspamd next to nothing.
        assert r["cpu_ms_per_msg"].get("rspamd", 0) > 0.5, r["cpu_ms_per_msg"]
    assert not report["idle"]
