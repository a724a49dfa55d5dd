"""The DSN extension (RFC 3461) across the worker: NOTIFY, ORCPT, RET and
ENVID go on to a next hop that offers DSN (§5.2.1, xtext-encoded again),
which then owes the success notice; a next hop without DSN gets none of
them and NOTIFY=SUCCESS earns a "relayed" DSN from us (§5.2.2); final
delivery by LMTP (Dovecot, from Debian) a "delivered" one (§5.2.3).

Destinations are the scripted FakeSMTP of test_worker_delivery through the
transport map; DSNs go to the sender's domain, example.org, another
FakeSMTP. Only recipients that asked get a notice: the checks of "none" use
a recipient in the same message that does get one, so "none" is not just
"not yet".
"""

from __future__ import annotations

import email
import email.policy
import os
from typing import Dict

import pytest

import mslocal
from test_worker_bounce import dsns
from test_worker_delivery import (DIRECTION_OUTBOUND, KCAT, NOTIFY_DELAY,  # noqa: F401
                                  NOTIFY_FAILURE, NOTIFY_SUCCESS, RET_HDRS, envelope,
                                  fake_smtp, message, new_qid, produce, wait_events, wait_log)
from test_worker_client import imap_messages
from test_worker_lmtp import DOVECOT, MODULES, run_dovecot

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed: run `make deps`")


def reports(srv) -> Dict[str, Dict[str, object]]:
    """The DSNs at srv, by original queue id: {"status": [per-recipient
    fields], "msg": the message, "returned": the returned part's type}."""
    out: Dict[str, Dict[str, object]] = {}
    for (_, rcpts, data) in dsns(srv):
        msg = email.message_from_bytes(data, policy=email.policy.default)
        parts = list(msg.iter_parts())
        fields = parts[1].get_payload()
        qid = fields[0]["X-Mailstream-Queue-ID"]
        out[qid] = {"msg": msg, "per_message": fields[0], "rcpts": fields[1:],
                    "returned": parts[2].get_content_type(), "to": rcpts}
    return out


def test_dsn_parameters_and_success_notices(cluster_factory, fake_smtp):
    nodsn = fake_smtp()
    withdsn = fake_smtp(extensions=("DSN",))
    collector = fake_smtp()
    tmap = ", ".join(f"{dom} smtp:[127.0.0.1]:{srv.port}" for dom, srv in [
        ("nodsn.mstest", nodsn), ("dsn.mstest", withdsn), ("example.org", collector)])
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        "delivery": {"relay_host": "", "retry_min_ms": 200, "retry_max_ms": 1000},
        "transport": {"map": tmap}})
    q1, q2 = new_qid(), new_qid()
    # q1: one recipient asks for SUCCESS, one does not; neither server
    # offers DSN.
    # q2: to the DSN server with every parameter, the orcpt and envid with
    # characters xtext must encode; plus a recipient elsewhere that asks
    # for SUCCESS, so q2 gets exactly one notice: its.
    envid = "ENV " + q2 + " a+b=c"
    orcpt = "rfc822;Carol+tag=x@DSN.mstest"
    produce(cl, [
        (q1, envelope(q1, ["asked@nodsn.mstest", "quiet@nodsn.mstest"], message(q1),
                      direction=DIRECTION_OUTBOUND, envid="ENV-" + q1,
                      notify={"asked@nodsn.mstest": NOTIFY_SUCCESS | NOTIFY_FAILURE},
                      orcpt={"asked@nodsn.mstest": "rfc822;Asked@NoDSN.mstest"})),
        (q2, envelope(q2, ["carol@dsn.mstest", "dave@nodsn.mstest"], message(q2),
                      direction=DIRECTION_OUTBOUND, ret=RET_HDRS, envid=envid,
                      notify={"carol@dsn.mstest": NOTIFY_SUCCESS | NOTIFY_DELAY,
                              "dave@nodsn.mstest": NOTIFY_SUCCESS},
                      orcpt={"carol@dsn.mstest": orcpt})),
    ])
    mslocal.wait_until(lambda: {q1, q2} <= set(reports(collector)), 90, "two DSNs",
                       interval=0.5)
    got = reports(collector)

    # §5.2.2: relayed to a server without DSN; only the one who asked.
    r1 = got[q1]
    assert r1["to"] == ["sender@example.org"]
    assert r1["msg"]["Subject"] == "Successful Mail Delivery Report"
    assert r1["per_message"]["Original-Envelope-Id"] == "ENV-" + q1
    (rc,) = r1["rcpts"]
    assert rc["Final-Recipient"] == "rfc822; asked@nodsn.mstest"
    assert rc["Original-Recipient"] == "rfc822;Asked@NoDSN.mstest"
    assert rc["Action"] == "relayed" and rc["Status"] == "2.0.0"
    assert rc["Remote-MTA"] == "dns; 127.0.0.1"
    assert rc["Diagnostic-Code"].startswith("smtp; 250 2.0.0")
    assert r1["returned"] == "text/rfc822-headers"  # no RET, not a failure
    # The server without DSN was given no DSN parameter.
    assert not any("NOTIFY=" in c or "ORCPT=" in c or "ENVID=" in c or "RET=" in c
                   for c in nodsn.commands)

    # §5.2.1: the DSN server got everything, as it came, and owes the
    # success notice for carol; q2's notice is dave's alone.
    (rc,) = got[q2]["rcpts"]
    assert rc["Final-Recipient"] == "rfc822; dave@nodsn.mstest" and rc["Action"] == "relayed"
    mail = [c for c in withdsn.commands if c.startswith("MAIL FROM:")]
    assert mail == [f"MAIL FROM:<sender@example.org> SIZE={len(message(q2))} RET=HDRS "
                    f"ENVID=ENV+20{q2}+20a+2Bb+3Dc"]
    rcpt = [c for c in withdsn.commands if c.startswith("RCPT TO:")]
    assert rcpt == ["RCPT TO:<carol@dsn.mstest> NOTIFY=SUCCESS,DELAY "
                    "ORCPT=rfc822;Carol+2Btag+3Dx@DSN.mstest"]
    log = wait_log(cl.workers[0], f"event=dsn qid={q2}")
    assert f"event=dsn qid={q1} " in log and "success=1" in log


HAVE_DOVECOT = os.access(DOVECOT, os.X_OK) and all(os.path.exists(m) for m in MODULES)


@pytest.mark.skipif(not HAVE_DOVECOT, reason="dovecot-lmtpd, dovecot-imapd not installed")
def test_lmtp_final_delivery_is_delivered(cluster_factory, tmp_path):
    """§5.2.3: LMTP delivers to the mailbox, so NOTIFY=SUCCESS earns a
    "delivered" notice (Dovecot's LMTP does not offer DSN). Over the UNIX
    socket a REQUIRETLS message is delivered too: it leaves no network hop
    (RFC 8689 §4.4), and its notice goes under REQUIRETLS with the headers
    only."""
    with run_dovecot(tmp_path, pop3=False) as dv:
        cl = cluster_factory(frontends=0, workers=1, worker_extra={
            "delivery": {"relay_host": "", "retry_min_ms": 200, "retry_max_ms": 1000},
            "transport": {"map": f"lmtp.mstest lmtp:unix:{dv['socket']}"}})
        q1, q2 = new_qid(), new_qid()
        produce(cl, [
            (q1, envelope(q1, ["alice@lmtp.mstest"], message(q1), direction=DIRECTION_OUTBOUND,
                          sender="bob@lmtp.mstest", notify={"alice@lmtp.mstest": NOTIFY_SUCCESS})),
            (q2, envelope(q2, ["alice@lmtp.mstest"], message(q2), direction=DIRECTION_OUTBOUND,
                          sender="bob@lmtp.mstest", requiretls=True,
                          notify={"alice@lmtp.mstest": NOTIFY_SUCCESS})),
        ])
        evs = wait_events(cl, lambda e: {x.get("qid") for x in e
                                         if x.get("outcome") == "delivered"} >= {q1, q2},
                          timeout=90)
        assert all(e["outcome"] == "delivered" for e in evs if e.get("qid") in (q1, q2))
        # The notices go to bob, in the same Dovecot.
        log = wait_log(cl.workers[0], f"event=dsn qid={q2}")
        assert f"event=dsn qid={q1} " in log
        mslocal.wait_until(lambda: len(imap_messages(dv["imap"], "bob@lmtp.mstest")) >= 2, 60,
                           "two notices for bob", interval=0.5)
        for raw in imap_messages(dv["imap"], "bob@lmtp.mstest"):
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            parts = list(msg.iter_parts())
            (rc,) = parts[1].get_payload()[1:]
            assert rc["Action"] == "delivered" and rc["Status"].startswith("2.")
            assert rc["Final-Recipient"] == "rfc822; alice@lmtp.mstest"
            assert parts[2].get_content_type() == "text/rfc822-headers"
