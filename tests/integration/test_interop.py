"""Interoperability with Postfix, Exim, OpenSMTPD and Sendmail (issue 24).

Each MTA runs as a private instance (tests/interop/mta.py: its own port,
configuration, spool and log; stopped by pid), one at a time, shared by the
tests of that MTA. One Mailstream cluster serves the whole module:

  they send to us ("in"): client -> MTA -> our MX listener -> worker -> sink
      ms.test      the MTA connects to 127.0.0.2 and never uses TLS
      tls.ms.test  the MTA connects to 127.0.0.1 and must use STARTTLS
      nope.test    our MX answers 550 5.7.1 (not a domain of ours)
      retry.ms.test  [smtp] recipient_lists: our MX answers 451 while the
                   Redis set cannot be read (test_in_451_then_retry)
  we send to them ("out"): client -> our submission listener -> worker ->
      MTA -> sink, by the transport map
      <mta>.far.test      TLS policy none
      <mta>.tls.far.test  TLS policy encrypt (STARTTLS required)
      <mta>.busy.far.test the MTA's busy listener: one connection at a time
                          and a rate limit (test_out_their_limits)
      <mta>.nodsn.far.test  the MTA relays to a second sink that offers no
                          DSN; its DSN for NOTIFY=SUCCESS comes back to our
                          MX (our sender is demo@mailstream.test)
      refuse@...          the MTA answers 550 5.1.1

The sink is one smtp-sink; each test finds its own transactions by a token
in the Message-ID. Every message is compared byte for byte with what the
client sent: what the far end got must be the original with only hop
header fields (Received) prepended. docs/interop.md has the table.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import ssl
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pytest

import mslocal
import conftest
from conftest import REPO, isolate_topics

sys.path.insert(0, str(REPO / "tests" / "interop"))
import mta  # noqa: E402

PEERS = {"postfix": mta.PostfixPeer, "exim": mta.EximPeer,
         "opensmtpd": mta.OpenSmtpdPeer, "sendmail": mta.SendmailPeer}


# Header fields a hop may prepend (RFC 5321 §4.4: trace fields). Anything
# else added, removed or changed fails the comparison.
HOP_FIELDS = {b"received"}
LARGE = 11 * 1024 * 1024
MANY = 60
SENDER_IN = "sender@far.test"
# Recipients of this domain must be in the Redis set ms:rcpts:retry.ms.test
# ([smtp] recipient_lists); a set that cannot be read gets 451 4.3.0.
RETRY_DOMAIN = "retry.ms.test"
# Messages sent to one MTA in test_out_connection_reuse.
REUSE_MESSAGES = 50
# [delivery] dest_concurrency of the worker: at most this many connections to
# one MTA at a time, so that 50 messages submitted back to back go over a few
# reused connections rather than one each.
DEST_CONCURRENCY = 4
# Messages sent to an MTA's busy listener in test_out_their_limits.
BUSY_MESSAGES = 20


# ---------------------------------------------------------------------------
# Fixtures: one cluster and one sink for the module, one MTA at a time
# ---------------------------------------------------------------------------

class World:
    def __init__(self, root: Path, sup: mslocal.Supervisor, sink: mslocal.Sink,
                 cluster: mslocal.Cluster, ports: Dict[str, int], mx_port: int,
                 redis_port: int, nodsn: mslocal.Sink, busy_ports: Dict[str, int]):
        self.root, self.sup, self.sink, self.cluster = root, sup, sink, cluster
        self.ports, self.mx_port, self.redis_port = ports, mx_port, redis_port
        self.nodsn = nodsn  # smtp-sink -N: no DSN offered
        self.busy_ports = busy_ports


@pytest.fixture(scope="module")
def world(redis_server, kafka_broker):
    why = mta.missing()
    if why is not None:
        # Under CI the MTAs must be there (cluster/deps.sh step mta), so that
        # a run that lost them cannot pass by skipping.
        if conftest.testdata_required():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    # Exim's processes run as their own uid and must traverse the instance
    # directories: not below pytest's 0700 temporary directories.
    root = Path(tempfile.mkdtemp(prefix="ms-interop-"))
    os.chmod(root, 0o755)
    sup = mslocal.Supervisor(root / "ms")
    try:
        yield from _world(root, sup, redis_server, kafka_broker)
    finally:
        sup.stop_all(order=[n for pre in ("frontend-", "worker-", "sink")
                            for n in list(sup.procs) if n.startswith(pre)])
        if os.environ.get("MAILSTREAM_KEEP_INTEROP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def _world(root: Path, sup: mslocal.Supervisor, redis_server, kafka_broker):
    sink_port, mx_port, sub_port, nodsn_port, *rest = mslocal.free_ports(
        4 + 2 * len(PEERS) + 8)
    ports = dict(zip(PEERS, rest))
    busy_ports = dict(zip(PEERS, rest[len(PEERS) + 8:]))
    sink = mslocal.Sink(sup, sink_port)
    sink.start()
    nodsn = mslocal.Sink(sup, nodsn_port, name="sink-nodsn", extra_args=["-N"])
    nodsn.start()
    tmap = root / "transport"
    tmap.write_text("".join(f"{dom} smtp:[127.0.0.1]:{port}\n" for name, port in ports.items()
                            for dom in (f"{name}.far.test", f"{name}.tls.far.test",
                                        f"{name}.nodsn.far.test"))
                    + "".join(f"{name}.busy.far.test smtp:[127.0.0.1]:{port}\n"
                              for name, port in busy_ports.items()))
    spec: Dict[str, object] = dict(
        kafka_brokers=kafka_broker.bootstrap, redis_port=redis_server.port,
        relay_host=sink.address, frontends=1, workers=1,
        listeners={"mx": (f"127.0.0.1:{mx_port}", "mx"),
                   "mx2": (f"127.0.0.2:{mx_port}", "mx"),
                   "submission": (f"127.0.0.1:{sub_port}", "submission")},
        frontend_metrics_ports=rest[len(PEERS):len(PEERS) + 4],
        worker_metrics_ports=rest[len(PEERS) + 4:],
        accepted_domains=("ms.test", "tls.ms.test", "mailstream.test", RETRY_DOMAIN),
        frontend_extra={"smtp": {"recipient_lists": RETRY_DOMAIN}},
        worker_extra={"transport": {"map_file": str(tmap)},
                      "tls": {"policy": "none", "policy_map": ".tls.far.test encrypt"},
                      "delivery": {"retry_min_ms": 1000, "retry_max_ms": 4000,
                                   "dest_concurrency": DEST_CONCURRENCY}})
    isolate_topics(kafka_broker, spec, f"interop#{root}")
    cl = mslocal.Cluster(sup, mslocal.ClusterSpec(**spec))  # type: ignore[arg-type]
    cl.start()
    yield World(root, sup, sink, cl, ports, mx_port, redis_server.port, nodsn, busy_ports)


@pytest.fixture(scope="module", params=list(PEERS))
def peer(request, world):
    name = request.param
    p = PEERS[name](world.sup, world.root, world.ports[name], world.mx_port, world.sink.port,
                    world.cluster.tls_cert, world.cluster.tls_key, nodsn_port=world.nodsn.port,
                    busy_port=world.busy_ports[name])
    try:
        p.start()
        yield p
    finally:
        p.stop()  # by its pid, also when it never answered


# ---------------------------------------------------------------------------
# Messages and checks
# ---------------------------------------------------------------------------

def new_token() -> str:
    return uuid.uuid4().hex[:16]


def message(token: str, sender: str, rcpts: List[str], body: bytes = b"",
            extra_headers: bytes = b"") -> bytes:
    # No recipient address in the header: a bounce that names one names it
    # in its report, not in the returned message.
    head = (f"From: <{sender}>\r\nTo: undisclosed-recipients:;\r\nSubject: interop {token}\r\n"
            f"Date: Sun, 6 Dec 2026 05:00:00 +0000\r\n"
            f"Message-ID: <{token}@client.interop.test>\r\n").encode()
    body = body or (b"Hello,\r\n  a line with leading and trailing spaces   \r\n"
                    b".a line starting with a dot\r\n\r\n\r\n")
    return head + extra_headers + b"\r\n" + body


def eight_bit_message(token: str, sender: str, rcpt: str) -> bytes:
    body = "Grüße aus Zürich — ½ € ✓\r\n".encode() * 3
    return message(token, sender, [rcpt], body,
                   b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n")


def large_message(token: str, sender: str, rcpt: str) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+0123456789ab\r\n"
    msg = message(token, sender, [rcpt], line * (LARGE // len(line) + 1))
    assert len(msg) > 10 * 1024 * 1024
    return msg


def check_8bit_declared(peer, m: mslocal.SinkMessage) -> None:
    """The sink sees the MAIL of the hop before it, which declares
    BODY=8BITMIME if the MTA declared it (to us, or to the sink)."""
    declared = "BODY=8BITMIME" in (m.envelope["mail_args"] or "").upper()
    assert declared == peer.relays_body_8bitmime, m.envelope


def check_dsn_params(m: mslocal.SinkMessage, token: str, notify: str, orcpt: str) -> None:
    """RET=HDRS, ENVID=env-<token>, NOTIFY and ORCPT as the client gave them
    (RFC 3461 §4) on the MAIL and RCPT the sink saw."""
    margs, rargs = (m.envelope["mail_args"] or "").upper(), " ".join(m.envelope["rcpt_args"])
    assert "RET=HDRS" in margs and f"ENVID=ENV-{token}".upper() in margs, m.envelope
    assert f"NOTIFY={notify}" in rargs.upper(), m.envelope
    assert f"ORCPT=rfc822;{orcpt}".lower() in rargs.lower(), m.envelope


def hop_check(data: bytes, original: bytes) -> List[bytes]:
    """data must be original with only hop fields prepended; the prepended
    fields are returned."""
    assert data.endswith(original), (
        f"message changed in transit:\n{data[:1500]!r}\n---- sent ----\n{original[:1500]!r}")
    prefix = data[:len(data) - len(original)]
    fields: List[bytes] = []
    for line in prefix.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    for f in fields:
        assert f.split(b":", 1)[0].strip().lower() in HOP_FIELDS, f"field added in transit: {f!r}"
    return fields


def wait_sink(peer, sink: mslocal.Sink, token: str, rcpts: List[str], timeout: float = 90.0,
              bounces: int = 0) -> List[mslocal.SinkMessage]:
    """Transactions carrying token, once every recipient in rcpts arrived (and
    bounces null-sender ones mentioning it); then a moment more, so that a
    duplicate would be seen."""
    want = sorted(r.lower() for r in rcpts)

    def mine() -> List[mslocal.SinkMessage]:
        return [m for m in sink.messages() if token.encode() in m.data]

    def got(ms) -> List[str]:
        return sorted(r.lower() for m in ms if m.envelope["mail_from"] != ""
                      for r in m.envelope["rcpts"])

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ms = mine()
        nb = sum(1 for m in ms if m.envelope["mail_from"] == "")
        if set(got(ms)) >= set(want) and nb >= bounces:
            break
        time.sleep(0.3)
    time.sleep(1.5)
    ms = mine()
    assert got(ms) == want, (f"recipients at the far end: {got(ms)} (want each once: {want})\n"
                             + (f"--- {peer.name} ---\n{peer.log_tail(40)}" if peer else ""))
    return ms


def submit_in(peer, sender: str, rcpts: List[str], msg: bytes,
              mail_options=(), rcpt_options=()) -> Dict[str, tuple]:
    """Hand msg to the MTA (plain SMTP on loopback, no TLS: the hop under
    test is the MTA's to us)."""
    with smtplib.SMTP("127.0.0.1", peer.port, local_hostname="client.interop.test",
                      timeout=120) as s:
        s.ehlo()
        return s.sendmail(sender, rcpts, msg, mail_options=list(mail_options),
                          rcpt_options=list(rcpt_options))


def submit_out(world: World, rcpts: List[str], msg: bytes, mail_options=(),
               rcpt_options=()) -> Dict[str, tuple]:
    """Hand msg to our submission listener (STARTTLS, AUTH as the demo user)."""
    host, port = world.cluster.listener("submission")
    ctx = ssl.create_default_context(cafile=str(world.cluster.tls_cert))
    with smtplib.SMTP(host, port, local_hostname="client.interop.test", timeout=120) as s:
        s.starttls(context=ctx)
        s.login(mslocal.DEMO_USER, mslocal.DEMO_PASSWORD)
        return s.sendmail(mslocal.DEMO_USER, rcpts, msg, mail_options=list(mail_options),
                          rcpt_options=list(rcpt_options))


def our_received(fields: List[bytes]) -> bytes:
    """Our frontend's Received field among the hop fields."""
    ours = [f for f in fields if b"by localhost" in f and b"Mailstream" in f
            or b"mailstream" in f.lower() and b"by localhost" in f]
    assert ours, f"no Received field of ours in {fields!r}"
    return ours[0]


def peer_received(peer, fields: List[bytes]) -> bytes:
    mine = [f for f in fields if f"{peer.name}.interop.test".encode() in f
            and b"by " + f"{peer.name}.interop.test".encode() in f]
    assert mine, f"no Received field of {peer.name} in {fields!r}"
    return mine[0]


# Whether a peer's Received field says the message came over TLS.
def peer_saw_tls(peer, field: bytes) -> bool:
    return any(k in field for k in (b"ESMTPS", b"esmtps", b"using TLS", b"TLSv1"))


def xfail_opensmtpd_tls_server(peer) -> None:
    if peer.name == "opensmtpd":
        pytest.xfail("OpenSMTPD 6.8.0p2 (Debian 12) cannot complete a STARTTLS handshake as "
                     "a server with OpenSSL 3 (OpenSMTPD issues #1171, #1239): its fault; "
                     "docs/interop.md")


# ---------------------------------------------------------------------------
# They send to us
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_in_plain(world, peer, tls):
    token = new_token()
    rcpt = f"user-{token}@{'tls.' if tls else ''}ms.test"
    msg = message(token, SENDER_IN, [rcpt])
    submit_in(peer, SENDER_IN, [rcpt], msg)
    (m,) = wait_sink(peer, world.sink, token, [rcpt])
    assert m.envelope["mail_from"] == SENDER_IN
    fields = hop_check(m.data, msg)
    ours = our_received(fields)
    assert (b"ESMTPS" in ours) == tls, f"our Received field: {ours!r}"


def test_in_8bitmime(world, peer):
    token = new_token()
    rcpt = f"user-{token}@ms.test"
    msg = eight_bit_message(token, SENDER_IN, rcpt)
    submit_in(peer, SENDER_IN, [rcpt], msg, mail_options=["BODY=8BITMIME"])
    (m,) = wait_sink(peer, world.sink, token, [rcpt])
    hop_check(m.data, msg)
    check_8bit_declared(peer, m)  # our worker declares what the MTA declared


def test_in_large(world, peer):
    token = new_token()
    rcpt = f"user-{token}@ms.test"
    msg = large_message(token, SENDER_IN, rcpt)
    submit_in(peer, SENDER_IN, [rcpt], msg)
    (m,) = wait_sink(peer, world.sink, token, [rcpt], timeout=150)
    hop_check(m.data, msg)


def test_in_many_recipients(world, peer):
    token = new_token()
    rcpts = [f"r{i:03d}-{token}@ms.test" for i in range(MANY)]
    msg = message(token, SENDER_IN, rcpts)
    submit_in(peer, SENDER_IN, rcpts, msg)
    for m in wait_sink(peer, world.sink, token, rcpts, timeout=120):
        hop_check(m.data, msg)


def test_in_550_for_one_recipient(world, peer):
    """Our 550 for one recipient: the MTA delivers the others and bounces
    that one to the sender (RFC 5321 §4.2.5, §6.1)."""
    token = new_token()
    sender = f"sender-{token}@far.test"
    good = [f"a-{token}@ms.test", f"b-{token}@ms.test"]
    bad = f"c-{token}@nope.test"
    msg = message(token, sender, good + [bad])
    submit_in(peer, sender, good + [bad], msg)
    ms = wait_sink(peer, world.sink, token, good, bounces=1, timeout=120)
    bounces = [m for m in ms if m.envelope["mail_from"] == ""]
    assert len(bounces) == 1 and bounces[0].envelope["rcpts"] == [sender], ms
    text = bounces[0].data
    assert bad.encode() in text, text[:3000]
    for g in good:
        assert g.encode() not in text, f"{g} bounced too:\n{text[:3000]!r}"
    for m in ms:
        if m.envelope["mail_from"] != "":
            hop_check(m.data, msg)


def ehlo_offers(port: int, keyword: str) -> bool:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.interop.test", timeout=30) as s:
        s.ehlo()
        return s.has_extn(keyword)


def log_lines(world: World, node: str, *needles: str, timeout: float = 60.0) -> List[str]:
    """Lines of our node's log (frontend-1, worker-1) holding every needle,
    once there is one."""
    path = world.sup.state_dir / f"{node}.log"
    deadline = time.monotonic() + timeout
    while True:
        found = [ln for ln in path.read_text(errors="replace").splitlines()
                 if all(n in ln for n in needles)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_in_smtputf8(world, peer):
    """UTF-8 addresses (RFC 6531): a peer that offers SMTPUTF8 relays them to
    us with SMTPUTF8 (our frontend queues the message); one that does not
    refuses them (RFC 6531 §3.4). The capture sink (smtp-sink) offers no
    SMTPUTF8, so the check is our frontend's log, not the sink."""
    token = new_token()
    sender, rcpt = f"jürgen-{token}@far.test", f"zoë-{token}@ms.test"
    msg = message(token, sender, [rcpt])
    if not ehlo_offers(peer.port, "smtputf8"):
        with pytest.raises(smtplib.SMTPException):
            submit_in(peer, sender, [rcpt], msg, mail_options=["SMTPUTF8"])
        pytest.skip(f"{peer.name} does not offer SMTPUTF8 (refused, as RFC 6531 §3.4 asks)")
    submit_in(peer, sender, [rcpt], msg, mail_options=["SMTPUTF8"])
    queued = log_lines(world, "frontend-1", "event=queued", token)
    assert queued, f"not queued by us\n{peer.log_tail(30)}"


def test_in_dsn_parameters(world, peer):
    """NOTIFY, ORCPT, ENVID and RET (RFC 3461 §4) given to the peer arrive in
    our envelope: the sink sees them on our worker's MAIL and RCPT."""
    token = new_token()
    rcpt = f"user-{token}@ms.test"
    msg = message(token, SENDER_IN, [rcpt])
    submit_in(peer, SENDER_IN, [rcpt], msg, mail_options=["RET=HDRS", f"ENVID=env-{token}"],
              rcpt_options=["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;orig-{token}@ms.test"])
    (m,) = wait_sink(peer, world.sink, token, [rcpt])
    hop_check(m.data, msg)
    check_dsn_params(m, token, "SUCCESS,FAILURE", f"orig-{token}@ms.test")


def schedule_now(peer) -> None:
    """OpenSMTPD: retry every queued envelope now (smtpctl schedule all)."""
    r = peer.ctl("schedule", "all")
    assert r.returncode == 0, f"smtpctl schedule all: {r.stdout}{r.stderr}"


def test_in_451_then_retry(world, peer):
    """Our temporary 451 (RFC 5321 §4.2.5): the MTA keeps the message,
    retries, and it arrives once. The 451 is the product's own: RCPT for a
    domain under [smtp] recipient_lists whose Redis set cannot be read (the
    key holds a string, so Redis answers WRONGTYPE) gets `451 4.3.0`, never
    250 (docs/config.md). Once the set is readable and lists the recipient,
    the MTA's next try goes through. OpenSMTPD's first retry of a relayed
    message is 400 s away, compiled in: `smtpctl schedule all` asks for it."""
    token = new_token()
    rcpt = f"user-{token}@{RETRY_DOMAIN}"
    key = f"ms:rcpts:{RETRY_DOMAIN}"
    refused = "event=ratelimit_unavailable"
    before = len(log_lines(world, "frontend-1", refused, timeout=0))
    mslocal.redis_command(world.redis_port, "DEL", key)
    mslocal.redis_command(world.redis_port, "SET", key, "not-a-set")
    try:
        msg = message(token, SENDER_IN, [rcpt])
        submit_in(peer, SENDER_IN, [rcpt], msg)
        deadline = time.monotonic() + 60
        # Two refusals: the first try and a retry of the MTA's.
        while len(log_lines(world, "frontend-1", refused, timeout=0)) < before + 2:
            assert time.monotonic() < deadline, (
                f"{peer.name} did not try us twice\n{peer.log_tail(30)}")
            if peer.name == "opensmtpd" and len(log_lines(world, "frontend-1", refused,
                                                          timeout=0)) > before:
                schedule_now(peer)
            time.sleep(0.5)
        assert not [m for m in world.sink.messages() if token.encode() in m.data]
    finally:
        mslocal.redis_command(world.redis_port, "DEL", key)
        mslocal.redis_command(world.redis_port, "SADD", key, rcpt)
    if peer.name == "opensmtpd":
        schedule_now(peer)
    try:
        (m,) = wait_sink(peer, world.sink, token, [rcpt], timeout=90)
    finally:
        mslocal.redis_command(world.redis_port, "DEL", key)
    assert m.envelope["mail_from"] == SENDER_IN
    hop_check(m.data, msg)


# ---------------------------------------------------------------------------
# We send to them
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_out_plain(world, peer, tls):
    if tls:
        xfail_opensmtpd_tls_server(peer)
    token = new_token()
    rcpt = f"user-{token}@{peer.name}.{'tls.' if tls else ''}far.test"
    msg = message(token, mslocal.DEMO_USER, [rcpt])
    submit_out(world, [rcpt], msg)
    (m,) = wait_sink(peer, world.sink, token, [rcpt])
    assert m.envelope["mail_from"] == mslocal.DEMO_USER
    fields = hop_check(m.data, msg)
    theirs = peer_received(peer, fields)
    assert peer_saw_tls(peer, theirs) == tls, f"{peer.name}'s Received field: {theirs!r}"


def test_out_8bitmime(world, peer):
    token = new_token()
    rcpt = f"user-{token}@{peer.name}.far.test"
    msg = eight_bit_message(token, mslocal.DEMO_USER, rcpt)
    submit_out(world, [rcpt], msg, mail_options=["BODY=8BITMIME"])
    (m,) = wait_sink(peer, world.sink, token, [rcpt])
    hop_check(m.data, msg)
    check_8bit_declared(peer, m)


def test_out_large(world, peer):
    token = new_token()
    rcpt = f"user-{token}@{peer.name}.far.test"
    msg = large_message(token, mslocal.DEMO_USER, rcpt)
    submit_out(world, [rcpt], msg)
    (m,) = wait_sink(peer, world.sink, token, [rcpt], timeout=150)
    hop_check(m.data, msg)


def test_out_many_recipients(world, peer):
    token = new_token()
    rcpts = [f"r{i:03d}-{token}@{peer.name}.far.test" for i in range(MANY)]
    msg = message(token, mslocal.DEMO_USER, rcpts)
    submit_out(world, rcpts, msg)
    for m in wait_sink(peer, world.sink, token, rcpts, timeout=120):
        hop_check(m.data, msg)


def test_out_550_for_one_recipient(world, peer):
    """Their 550 for one recipient: we deliver the others and bounce that one
    to our sender (a DSN, RFC 3464) — the others are neither bounced nor
    sent twice."""
    token = new_token()
    dom = f"{peer.name}.far.test"
    good = [f"a-{token}@{dom}", f"b-{token}@{dom}"]
    bad = f"refuse@{dom}"
    msg = message(token, mslocal.DEMO_USER, good + [bad])
    submit_out(world, good + [bad], msg)
    ms = wait_sink(peer, world.sink, token, good, bounces=1, timeout=120)
    bounces = [m for m in ms if m.envelope["mail_from"] == ""]
    assert len(bounces) == 1, ms
    assert bounces[0].envelope["rcpts"] == [mslocal.DEMO_USER]
    text = bounces[0].data

    def final(addr: str) -> bool:
        field = rb"(?im)^Final-Recipient:\s*rfc822;\s*" + re.escape(addr.encode()) + rb"\r?$"
        return re.search(field, text) is not None

    assert final(bad), text[:3000]
    for g in good:
        assert not final(g), text[:3000]
    for m in ms:
        if m.envelope["mail_from"] != "":
            hop_check(m.data, msg)


def test_out_smtputf8(world, peer):
    """A UTF-8 recipient: delivered to a peer that offers SMTPUTF8 (our
    worker's log says so; the sink behind the peer has no SMTPUTF8), bounced
    with 5.6.7 by us for one that does not (RFC 6531 §3.4)."""
    token = new_token()
    rcpt = f"zoë-{token}@{peer.name}.far.test"
    msg = message(token, mslocal.DEMO_USER, [rcpt])
    submit_out(world, [rcpt], msg, mail_options=["SMTPUTF8"])
    lines = log_lines(world, "worker-1", "event=delivery", token)
    assert lines, "no delivery attempt logged"
    if not ehlo_offers(peer.port, "smtputf8"):
        assert "outcome=bounced" in lines[0] and "5.6.7" in lines[0], lines
        pytest.skip(f"{peer.name} does not offer SMTPUTF8: bounced by us with 5.6.7")
    assert "outcome=delivered" in lines[0], lines


def test_out_dsn_parameters(world, peer):
    """NOTIFY, ORCPT, ENVID and RET we were given go on to the peer (RFC 3461
    §4), which passes them on to the sink (DSN offered there)."""
    token = new_token()
    rcpt = f"user-{token}@{peer.name}.far.test"
    msg = message(token, mslocal.DEMO_USER, [rcpt])
    submit_out(world, [rcpt], msg, mail_options=["RET=HDRS", f"ENVID=env-{token}"],
               rcpt_options=["NOTIFY=FAILURE", f"ORCPT=rfc822;orig-{token}@x.test"])
    (m,) = wait_sink(peer, world.sink, token, [rcpt])
    hop_check(m.data, msg)
    check_dsn_params(m, token, "FAILURE", f"orig-{token}@x.test")


def test_out_notify_success_dsn(world, peer):
    """NOTIFY=SUCCESS to a recipient the MTA relays to a host that offers no
    DSN: the MTA owes our sender a "relayed" DSN (RFC 3461 §4.2.1, RFC 3464
    §2.3.3), which it sends to demo@mailstream.test, i.e. back to our MX;
    our worker relays it to the sink. The message itself reaches the
    no-DSN sink once, unchanged."""
    token = new_token()
    rcpt = f"user-{token}@{peer.name}.nodsn.far.test"
    msg = message(token, mslocal.DEMO_USER, [rcpt])
    submit_out(world, [rcpt], msg, mail_options=["RET=HDRS", f"ENVID=env-{token}"],
               rcpt_options=["NOTIFY=SUCCESS"])
    (m,) = wait_sink(peer, world.nodsn, token, [rcpt])
    hop_check(m.data, msg)
    assert "NOTIFY" not in " ".join(m.envelope["rcpt_args"]).upper(), m.envelope
    deadline = time.monotonic() + 90
    dsns: List[mslocal.SinkMessage] = []
    while not dsns and time.monotonic() < deadline:
        dsns = [d for d in world.sink.messages() if token.encode() in d.data
                and d.envelope["mail_from"] == ""]
        time.sleep(0.5)
    assert len(dsns) == 1, f"{len(dsns)} DSNs from {peer.name}\n{peer.log_tail(30)}"
    d = dsns[0]
    assert d.envelope["rcpts"] == [mslocal.DEMO_USER], d.envelope
    text = d.data.decode("utf-8", "replace")
    # (Sendmail adds a comment: "relayed (to non-DSN-aware mailer)".)
    assert re.search(r"(?im)^Action:\s*(relayed|delivered)\b", text), text[:3000]
    assert re.search(r"(?im)^Final-Recipient:\s*rfc822;\s*" + re.escape(rcpt) + r"\s*$",
                     text), text[:3000]
    # Original-Envelope-Id (RFC 3464 §2.2.1), as each MTA does it (mta.py).
    has_envid = re.search(r"(?im)^Original-Envelope-Id:\s*env-" + token + r"\s*$", text)
    assert bool(has_envid) == peer.dsn_has_envid, text[:3000]


def test_out_connection_reuse(world, peer):
    """50 messages to one MTA, submitted back to back: the worker keeps a
    connection for the next message to the same next hop ([delivery]
    connection_cache_ms, RSET between transactions; at most
    DEST_CONCURRENCY at once), so the MTA's own log shows far fewer
    connections than messages, and each message arrives once, unchanged."""
    token = new_token()
    dom = f"{peer.name}.far.test"
    before = peer.connections()
    sent = submit_out_many(world, [f"n{i:02d}-{token}@{dom}" for i in range(REUSE_MESSAGES)],
                           token)
    ms = wait_sink(peer, world.sink, token, list(sent), timeout=180)
    for m in ms:
        hop_check(m.data, sent[m.envelope["rcpts"][0]])
    used = peer.connections() - before
    assert 1 <= used <= REUSE_MESSAGES // 5, (
        f"{peer.name} logged {used} connections for {REUSE_MESSAGES} messages")


def submit_out_many(world: World, rcpts: List[str], token: str) -> Dict[str, bytes]:
    """One message per recipient, back to back in one submission session."""
    sent = {}
    host, port = world.cluster.listener("submission")
    ctx = ssl.create_default_context(cafile=str(world.cluster.tls_cert))
    with smtplib.SMTP(host, port, local_hostname="client.interop.test", timeout=120) as s:
        s.starttls(context=ctx)
        s.login(mslocal.DEMO_USER, mslocal.DEMO_PASSWORD)
        for i, rcpt in enumerate(rcpts):
            sent[rcpt] = message(f"{token}-{i:02d}", mslocal.DEMO_USER, [rcpt])
            s.sendmail(mslocal.DEMO_USER, [rcpt], sent[rcpt])
    return sent


def test_out_their_limits(world, peer):
    """20 messages to the MTA's busy listener, which takes one connection
    at a time from a client and a few messages per 10 s (mta.py
    busy_limits; Sendmail has no message rate, busy_rate_reason): our worker, opening up to DEST_CONCURRENCY connections,
    gets their 421 at the greeting and their 450 for the messages over the
    rate, takes both as deferrals (RFC 5321 §4.2.5, §3.8), retries, and
    every message arrives once, unchanged."""
    if peer.busy_limits is None:
        pytest.skip(f"{peer.name}: {peer.busy_reason}")
    token = new_token()
    rcpts = [f"b{i:02d}-{token}@{peer.name}.busy.far.test" for i in range(BUSY_MESSAGES)]
    sent = submit_out_many(world, rcpts, token)
    ms = wait_sink(peer, world.sink, token, rcpts, timeout=240)
    for m in ms:
        hop_check(m.data, sent[m.envelope["rcpts"][0]])
    deferred = log_lines(world, "worker-1", "event=delivery", token, "outcome=deferred",
                         timeout=0)
    codes = {re.search(r" code=(\d+)", ln).group(1) for ln in deferred if " code=" in ln}
    assert "421" in codes, f"no 421 from {peer.name}'s connection limit: {deferred[:5]}"
    if not peer.busy_rate_reason:
        assert codes & {"450", "451", "452"}, \
            f"no 45x from {peer.name}'s rate limit: {deferred[:5]}"


# ---------------------------------------------------------------------------
# Found by Exim: a half-close behind a pipelined QUIT
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["BDAT", "DATA"])
def test_half_close_after_pipelined_quit(world, verb):
    """Exim pipelines QUIT behind the end of a message and shuts down its
    sending half (shutdown(SHUT_WR)) before it reads the replies. The
    frontend saw end of input while the message was being queued and
    closed without a word, though the message was queued: Exim retried and
    it arrived twice. Every command gets its reply, in order (RFC 2920
    §3.1), and QUIT its 221 before we close (RFC 5321 §4.1.1.10)."""
    token = new_token()
    rcpt = f"user-{token}@ms.test"
    msg = message(token, SENDER_IN, [rcpt])
    with socket.create_connection(world.cluster.listener("mx"), timeout=60) as sk:
        f = sk.makefile("rb")
        assert f.readline().startswith(b"220")
        sk.sendall(b"EHLO client.interop.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        head = f"MAIL FROM:<{SENDER_IN}>\r\nRCPT TO:<{rcpt}>\r\n".encode()
        if verb == "BDAT":
            sk.sendall(head + b"BDAT %d LAST\r\n" % len(msg) + msg + b"QUIT\r\n")
            want = [b"250", b"250", b"250", b"221"]
        else:
            sk.sendall(head + b"DATA\r\n")
            assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            stuffed = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln
                                   for ln in msg.split(b"\r\n"))  # RFC 5321 4.5.2
            sk.sendall(stuffed + b".\r\nQUIT\r\n")
            want = [b"250", b"221"]
        sk.shutdown(socket.SHUT_WR)
        codes = [line[:3] for line in f.read().split(b"\r\n") if line]
    assert codes == want
    (m,) = wait_sink(None, world.sink, token, [rcpt])
    hop_check(m.data, msg)
