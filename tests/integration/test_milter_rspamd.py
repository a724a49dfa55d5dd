"""Mailstream's frontend with rspamd as its milter (issue 18).

A private rspamd in milter mode (tests/integration/milters.py; the same one
test_milter_peers.py proves behind Postfix) as the frontend's only
`[milter] servers` entry:

  * GTUBE is refused at the end of DATA with rspamd's 5.7.1 reply, and
    never reaches the sink;
  * a plain message is queued and reaches the sink with the headers rspamd
    asked for (X-Spamd-Result, X-Rspamd-Queue-Id, X-Spam-Status);
  * rspamd stopped: [milter] default_action decides, tempfail (451 4.x.x,
    nothing queued) or accept (queued and delivered, unfiltered);
  * a BDAT (RFC 3030) and a PIPELINING (RFC 2920) session through rspamd
    get the same verdicts, each transaction its own;
  * the milter metrics count the calls, the reject and the connect errors.
"""

from __future__ import annotations

import itertools
import os

import pytest

import mslocal
from conftest import smtp_port
from milters import (MODULE_TIMEOUT, RCPT, SIGNER, Rspamd, delivered, gtube_message, header_values,
                     message, metric, milter_cluster, not_delivered, queued, refusal, replies_of)
# pytest fixtures, used by name:
from milters import (milter_sup, rspamd, rspamd_hs_cache)  # noqa: F401
from test_frontend_smtp import QUEUED, Client, code, hello

pytestmark = [pytest.mark.timeout(MODULE_TIMEOUT),
              pytest.mark.skipif(not os.access("/usr/bin/rspamd", os.X_OK),
                                 reason="rspamd not installed (make deps)")]

SENDER = f"alice@{SIGNER}"
RSPAMD_HEADERS = ("X-Spamd-Result", "X-Rspamd-Queue-Id", "X-Spam-Status")
# rspamd's own reply to GTUBE (SMFIR_REPLYCODE), not the frontend's 550 5.7.1.
GTUBE_REFUSAL = b"554 5.7.1 Gtube pattern\r\n"


def assert_rspamd_headers(data: bytes) -> None:
    for h in RSPAMD_HEADERS:
        assert len(header_values(data, h)) == 1, (h, data.decode(errors="replace"))
    assert header_values(data, "X-Spam-Status")[0].startswith("No,"), data.decode()


def test_gtube_refused_at_end_of_data(cluster_factory, rspamd):
    cl = milter_cluster(cluster_factory, [rspamd])
    r = replies_of(smtp_port(cl), SENDER, gtube_message(SENDER, RCPT, "rs-gtube"))
    # Every stage before the end of the message was passed.
    assert [x[:3] for x in r[:5]] == [b"220", b"250", b"250", b"250", b"354"], r
    assert refusal(r) == GTUBE_REFUSAL, r
    # A message after it, in a new session, goes through: the refusal was
    # the GTUBE message's alone.
    assert queued(replies_of(smtp_port(cl), SENDER, message(SENDER, RCPT, "rs-after-gtube")))
    delivered(cl.sink, "rs-after-gtube")
    assert not_delivered(cl.sink, "rs-gtube")
    text = cl.frontends[0].metrics_text()
    assert metric(text, "mailstream_frontend_milter_actions_total", milter=rspamd.address,
                  action="reject") == 1, text
    assert metric(text, "mailstream_frontend_milter_calls_total", milter=rspamd.address) >= 2


def test_plain_message_passes_with_rspamd_headers(cluster_factory, rspamd):
    cl = milter_cluster(cluster_factory, [rspamd])
    body = "First line.\r\n.leading dot\r\nLast line.\r\n"
    msg = message(SENDER, RCPT, "rs-plain", body)
    assert queued(replies_of(smtp_port(cl), SENDER, msg))
    data = delivered(cl.sink, "rs-plain")
    assert_rspamd_headers(data)
    assert data.endswith(b"\r\n\r\n" + body.encode()), data.decode()
    # Our Received field stays first: rspamd's headers are added, not prepended.
    assert data.startswith(b"Received: "), data[:200]


_own = itertools.count(1)


@pytest.fixture
def own_rspamd(milter_sup, rspamd):
    """An rspamd of the test's own (the test stops it), sharing the module's
    compiled Hyperscan databases."""
    r = Rspamd(milter_sup, mslocal.free_port(), name=f"rspamd-own{next(_own)}",
               hs_cache=rspamd.hs_cache)
    r.start()
    yield r
    r.stop()


def test_rspamd_stopped_tempfails_by_default(cluster_factory, own_rspamd):
    cl = milter_cluster(cluster_factory, [own_rspamd])  # default_action: tempfail
    assert queued(replies_of(smtp_port(cl), SENDER, message(SENDER, RCPT, "rs-before-stop")))
    assert_rspamd_headers(delivered(cl.sink, "rs-before-stop"))
    own_rspamd.stop()
    r = replies_of(smtp_port(cl), SENDER, message(SENDER, RCPT, "rs-while-down"))
    no = refusal(r)
    assert no[:4] == b"451 " and no[4:6] == b"4.", r
    assert not queued(r)
    text = cl.frontends[0].metrics_text()
    assert metric(text, "mailstream_frontend_milter_errors_total",
                  milter=own_rspamd.address) >= 1, text
    assert not_delivered(cl.sink, "rs-while-down")


def test_rspamd_stopped_default_action_accept(cluster_factory, own_rspamd):
    cl = milter_cluster(cluster_factory, [own_rspamd], default_action="accept")
    own_rspamd.stop()
    # Unfiltered: even GTUBE goes through, without rspamd's headers.
    r = replies_of(smtp_port(cl), SENDER, gtube_message(SENDER, RCPT, "rs-accept-down"))
    assert queued(r), r
    data = delivered(cl.sink, "rs-accept-down")
    assert not header_values(data, "X-Spamd-Result"), data.decode()
    text = cl.frontends[0].metrics_text()
    assert metric(text, "mailstream_frontend_milter_errors_total",
                  milter=own_rspamd.address, reason="connect") >= 1, text


def bdat_session(c: Client, msg: bytes, chunk: int = 100) -> bytes:
    """MAIL, RCPT and msg in BDAT chunks of `chunk` octets, all pipelined in
    one write; returns the reply to BDAT LAST (the others must be 250)."""
    parts = [msg[i:i + chunk] for i in range(0, len(msg), chunk)]
    out = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode()
    for i, p in enumerate(parts):
        out += b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == len(parts) - 1 else b"") + p
    c.send(out)
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    for p in parts[:-1]:
        assert c.reply() == b"250 2.0.0 %d octets received\r\n" % len(p)
    return c.reply()


def test_bdat_session_through_rspamd(cluster_factory, rspamd):
    cl = milter_cluster(cluster_factory, [rspamd])
    c = hello(smtp_port(cl), b"client.mstest")
    spam = gtube_message(SENDER, RCPT, "rs-bdat-gtube")
    assert bdat_session(c, spam) == GTUBE_REFUSAL
    plain = message(SENDER, RCPT, "rs-bdat-plain", "chunked\r\n" * 40)
    assert QUEUED.match(bdat_session(c, plain))
    assert code(c.cmd(b"QUIT")) == b"221 2.0.0"
    data = delivered(cl.sink, "rs-bdat-plain")
    assert_rspamd_headers(data)
    assert data.endswith(b"\r\n\r\n" + b"chunked\r\n" * 40)
    assert not_delivered(cl.sink, "rs-bdat-gtube")


def test_pipelined_session_through_rspamd(cluster_factory, rspamd):
    """Two transactions and QUIT in one write (RFC 2920): the GTUBE one is
    refused, the plain one after it queued; the replies come in order."""
    cl = milter_cluster(cluster_factory, [rspamd])
    c = Client(smtp_port(cl))
    assert c.reply().startswith(b"220 ")
    spam = gtube_message(SENDER, RCPT, "rs-pipe-gtube")
    plain = message(SENDER, RCPT, "rs-pipe-plain")
    tx = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
    c.send(b"EHLO client.mstest\r\n" + tx + spam + b".\r\n" + tx + plain + b".\r\nQUIT\r\n")
    assert c.reply().startswith(b"250-")
    for _ in range(2):
        assert code(c.reply()) == b"250 2.1.0"
        assert code(c.reply()) == b"250 2.1.5"
        assert c.reply().startswith(b"354 ")
        if _ == 0:
            assert c.reply() == GTUBE_REFUSAL
        else:
            assert QUEUED.match(c.reply())
    assert code(c.reply()) == b"221 2.0.0"
    assert c.closed()
    assert_rspamd_headers(delivered(cl.sink, "rs-pipe-plain"))
    assert not_delivered(cl.sink, "rs-pipe-gtube")
