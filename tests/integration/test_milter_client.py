"""The frontend's milter client (issue 18) against a scripted milter.

The milter is written here: a small threaded server speaking the milter
protocol (version 6, as libmilter does), answering each command from a
per-test script, and recording what it was sent.  It is the misbehaving
peer too: slow, garbage, oversized packets, a close in the middle of the
message, not listening at all.  What reaches Kafka is read back with kcat
(the record is the protobuf envelope; its strings and the message are in it
as they are, so substring checks suffice).  No timing is asserted beyond
the configured timeouts.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from conftest import smtp_port
from test_frontend_smtp import QUEUED, Client, code, hello

import mslocal

# Packets ------------------------------------------------------------------


def pkt(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


CONTINUE = pkt(b"c")
ACCEPT = pkt(b"a")
REJECT = pkt(b"r")
TEMPFAIL = pkt(b"t")
DISCARD = pkt(b"d")


def replycode(text: bytes) -> bytes:
    return pkt(b"y", text + b"\0")


def addheader(name: bytes, value: bytes) -> bytes:
    return pkt(b"h", name + b"\0" + value + b"\0")


def insheader(index: int, name: bytes, value: bytes) -> bytes:
    return pkt(b"i", struct.pack(">I", index) + name + b"\0" + value + b"\0")


def chgheader(index: int, name: bytes, value: bytes) -> bytes:
    return pkt(b"m", struct.pack(">I", index) + name + b"\0" + value + b"\0")


class Sleep:
    def __init__(self, secs: float):
        self.secs = secs


class Close:
    pass


Reply = List[object]  # packets (bytes), Sleep, Close
Script = Dict[bytes, object]  # command -> Reply, or callable(data) -> Reply


class Milter:
    """A milter on a free loopback port.  script maps a command octet to
    what is answered (default: continue); SMFIC_MACRO and SMFIC_ABORT get
    no answer, as in libmilter.  Every packet received is recorded, per
    connection, as (command, data)."""

    def __init__(self, script: Optional[Script] = None, protocol: int = 0,
                 actions: int = 0x1FF):
        self.script: Script = script or {}
        self.protocol = protocol
        self.actions = actions
        self.conns: List[List[Tuple[bytes, bytes]]] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((mslocal.HOST, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.spec = f"inet:{mslocal.HOST}:{self.port}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            rec: List[Tuple[bytes, bytes]] = []
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    @staticmethod
    def _read(c: socket.socket, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = c.recv(n - len(out))
            if not chunk:
                raise ConnectionError
            out += chunk
        return out

    def _serve(self, c: socket.socket, rec: List[Tuple[bytes, bytes]]) -> None:
        try:
            while True:
                (n,) = struct.unpack(">I", self._read(c, 4))
                body = self._read(c, n)
                cmd, data = body[:1], body[1:]
                rec.append((cmd, data))
                if cmd == b"O":
                    c.sendall(pkt(b"O", struct.pack(">III", 6, self.actions, self.protocol)))
                    continue
                if cmd in (b"D", b"A"):
                    continue
                if cmd == b"Q":
                    return
                what = self.script.get(cmd, [CONTINUE])
                if callable(what):
                    what = what(data)
                for item in what:
                    if isinstance(item, Sleep):
                        time.sleep(item.secs)
                    elif isinstance(item, Close):
                        return
                    else:
                        c.sendall(item)
        except (ConnectionError, OSError):
            pass
        finally:
            c.close()

    def commands(self, conn: int = -1) -> List[bytes]:
        with self.lock:
            return [cmd for cmd, _ in self.conns[conn]]

    def packets(self, conn: int = -1) -> List[Tuple[bytes, bytes]]:
        with self.lock:
            return list(self.conns[conn])

    def macros(self, conn: int = -1) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for cmd, data in self.packets(conn):
            if cmd == b"D":
                parts = data[1:].split(b"\0")
                for i in range(0, len(parts) - 1, 2):
                    out[parts[i].decode()] = parts[i + 1].decode()
        return out

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


@pytest.fixture
def milter():
    made: List[Milter] = []

    def make(script: Optional[Script] = None, **kw) -> Milter:
        m = Milter(script, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


def frontend(cluster_factory, servers: List[str], **milter_keys):
    keys = {"servers": ", ".join(servers), **{k: str(v) for k, v in milter_keys.items()}}
    return cluster_factory(frontends=1, workers=0, frontend_extra={"milter": keys})


# Kafka -----------------------------------------------------------------------


def kafka_records(cl) -> Dict[bytes, bytes]:
    out = subprocess.run(
        ["kcat", "-C", "-b", cl.kafka.bootstrap, "-t", cl.spec.topic, "-o", "beginning", "-e",
         "-q", "-f", "%k\n%s\n--END--\n"],
        capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    recs = {}
    for r in out.stdout.split(b"--END--\n"):
        if b"\n" in r:
            k, v = r.split(b"\n", 1)
            recs[k] = v
    return recs


def record(cl, qid: bytes) -> bytes:
    recs = kafka_records(cl)
    assert qid in recs, f"{qid!r} not in Kafka"
    return recs[qid]


MSG = b"From: a@b.example\r\nTo: u@mailstream.test\r\nSubject: hello\r\n\r\nbody line\r\n"


def send(c: Client, msg: bytes = MSG, rcpts=(b"u@mailstream.test",),
         sender: bytes = b"a@b.example") -> bytes:
    """One transaction, step by step; the reply to the end of data (or the
    first refusal)."""
    r = c.cmd(b"MAIL FROM:<" + sender + b">")
    if not r.startswith(b"250"):
        return r
    ok = 0
    for rc in rcpts:
        if c.cmd(b"RCPT TO:<" + rc + b">").startswith(b"250"):
            ok += 1
    if ok == 0:
        c.cmd(b"RSET")
        return b"no recipient"
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(msg + b".\r\n")
    return c.reply()


def qid_of(reply: bytes) -> bytes:
    m = QUEUED.match(reply)
    assert m, reply
    return m.group(1)


def healthy(cl) -> None:
    """The frontend still answers, and a new session still gets a banner."""
    node = cl.frontends[0]
    assert node.ready()
    c = Client(smtp_port(cl))
    assert c.reply().startswith(b"220 ")
    c.cmd(b"QUIT")


# Tests -----------------------------------------------------------------------


def test_every_stage_and_macros(cluster_factory, milter):
    m = milter()
    cl = frontend(cluster_factory, [m.spec])
    c = hello(smtp_port(cl))
    qid = qid_of(send(c))
    c.cmd(b"QUIT")
    cmds = m.commands()
    # Negotiation, then every stage in order; macros before the commands.
    assert cmds[0] == b"O"
    order = [x for x in cmds if x not in (b"D", b"L", b"B")]
    assert order[:8] == [b"O", b"C", b"H", b"M", b"R", b"T", b"N", b"E"], cmds
    headers = [d for cmd, d in m.packets() if cmd == b"L"]
    assert headers[0].startswith(b"Received\0from client.example")
    assert b"Subject\0hello\0" in headers
    body = b"".join(d for cmd, d in m.packets() if cmd == b"B")
    assert body == b"body line\r\n"
    conn = [d for cmd, d in m.packets() if cmd == b"C"][0]
    assert conn == b"[127.0.0.1]\x004" + struct.pack(">H", conn_port(conn)) + b"127.0.0.1\0"
    mac = m.macros()
    assert mac["{client_addr}"] == "127.0.0.1"
    assert mac["i"] == qid.decode()
    assert mac["{mail_addr}"] == "a@b.example"
    assert mac["{rcpt_addr}"] == "u@mailstream.test"
    assert mac["j"]
    assert b"body line" in record(cl, qid)
    metrics = cl.frontends[0].metrics_text()
    assert f'mailstream_frontend_milter_calls_total{{milter="{m.spec}",stage="eom"}} 1' in metrics
    assert 'mailstream_frontend_milter_latency_seconds_count{milter="' + m.spec + '"}' in metrics


def conn_port(data: bytes) -> int:
    i = data.index(b"\0") + 2
    return struct.unpack(">H", data[i:i + 2])[0]


def test_refusals_at_each_stage(cluster_factory, milter):
    state: Dict[bytes, object] = {}

    def at(stage: bytes) -> Callable[[bytes], Reply]:
        def f(data: bytes) -> Reply:
            v = state.get(stage, [CONTINUE])
            return v(data) if callable(v) else v
        return f

    m = milter({k: at(k) for k in (b"C", b"H", b"M", b"R", b"E")})
    cl = frontend(cluster_factory, [m.spec])
    port = smtp_port(cl)

    # Connect refused: as Postfix, MAIL gets it; HELO still works.
    state[b"C"] = [REJECT]
    c = hello(port)
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"550 5.7.1"
    c.cmd(b"QUIT")
    state[b"C"] = [CONTINUE]

    # HELO refused with the milter's text.
    state[b"H"] = [replycode(b"554 5.7.1 Bad HELO")]
    c = Client(port)
    assert c.reply().startswith(b"220 ")
    assert c.cmd(b"EHLO bad.example") == b"554 5.7.1 Bad HELO\r\n"
    state[b"H"] = [CONTINUE]
    assert c.cmd(b"EHLO good.example").startswith(b"250-")

    # MAIL tempfail; RCPT: one refused, the other taken.
    state[b"M"] = [TEMPFAIL]
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"451 4.7.1"
    state[b"M"] = [CONTINUE]
    state[b"R"] = lambda data: [replycode(b"550 5.1.1 No such user")] if b"nobody" in data \
        else [CONTINUE]
    r = send(c, rcpts=(b"nobody@mailstream.test", b"u@mailstream.test"))
    qid = qid_of(r)
    rec = record(cl, qid)
    assert b"u@mailstream.test" in rec and b"nobody@mailstream.test" not in rec
    state[b"R"] = [CONTINUE]

    # End of message: the milter's reply and enhanced code (GTUBE-like).
    state[b"E"] = [replycode(b"554 5.7.1 Gtube pattern")]
    assert send(c) == b"554 5.7.1 Gtube pattern\r\n"
    # Without a text: ours.
    state[b"E"] = [REJECT]
    assert send(c) == b"550 5.7.1 Command rejected\r\n"
    state[b"E"] = [TEMPFAIL]
    assert code(send(c)) == b"451 4.7.1"
    c.cmd(b"QUIT")
    healthy(cl)
    metrics = cl.frontends[0].metrics_text()
    assert f'mailstream_frontend_milter_actions_total{{milter="{m.spec}",action="reject"}}' \
        in metrics


def test_discard_never_reaches_kafka(cluster_factory, milter):
    m = milter({b"E": [DISCARD]})
    cl = frontend(cluster_factory, [m.spec])
    c = hello(smtp_port(cl))
    qid = qid_of(send(c))  # the client is told it was queued
    # A later message (continue) reaches Kafka; the discarded one never does.
    m.script[b"E"] = [CONTINUE]
    qid2 = qid_of(send(c))
    c.cmd(b"QUIT")
    recs = kafka_records(cl)
    assert qid2 in recs and qid not in recs
    log = cl.frontends[0].log.read_text()
    assert f"event=discarded qid={qid.decode()}" in log


def test_edits_reach_kafka(cluster_factory, milter):
    eom = [
        addheader(b"X-Spam-Status", b"No, score=0.1"),
        insheader(0, b"X-Top", b"first"),
        chgheader(1, b"Subject", b"[filtered] hello"),
        chgheader(1, b"To", b""),  # delete
        pkt(b"b", b"replaced body\r\n"),
        pkt(b"e", b"<new-sender@b.example>\0"),
        pkt(b"+", b"<added@mailstream.test>\0"),
        pkt(b"-", b"<u@mailstream.test>\0"),
        pkt(b"p"),
        pkt(b"q", b"looks odd\0"),
        CONTINUE,
    ]
    m = milter({b"E": eom})
    cl = frontend(cluster_factory, [m.spec])
    c = hello(smtp_port(cl))
    qid = qid_of(send(c, rcpts=(b"u@mailstream.test", b"v@mailstream.test")))
    c.cmd(b"QUIT")
    rec = record(cl, qid)
    assert b"X-Top: first\r\nReceived: from client.example" in rec
    assert b"Subject: [filtered] hello\r\n" in rec
    assert b"To: u@mailstream.test" not in rec
    assert b"X-Spam-Status: No, score=0.1\r\n\r\nreplaced body\r\n" in rec
    assert b"body line" not in rec
    assert b"new-sender@b.example" in rec and b"a@b.example>" not in rec
    assert b"added@mailstream.test" in rec and b"v@mailstream.test" in rec
    assert b"\x12\x11u@mailstream.test" not in rec  # no recipient u any more
    assert b"looks odd" in rec  # the quarantine reason, in the envelope
    log = cl.frontends[0].log.read_text()
    line = [ln for ln in log.splitlines() if f"event=queued qid={qid.decode()}" in ln][0]
    assert f"milter_action=continue" in line or "milter_edits=" in line
    assert "quarantine=" in line


def test_edit_not_negotiated_is_a_protocol_error(cluster_factory, milter):
    # The milter did not ask for SMFIF_ADDHDRS, then adds a header.
    m = milter({b"E": [addheader(b"X-A", b"1"), CONTINUE]}, actions=0)
    cl = frontend(cluster_factory, [m.spec], default_action="reject")
    c = hello(smtp_port(cl))
    assert send(c) == b"550 5.7.1 Command rejected\r\n"
    c.cmd(b"QUIT")
    healthy(cl)


def test_accept_skips_the_rest_and_milters_run_in_order(cluster_factory, milter):
    first = milter({b"M": [ACCEPT]})
    second = milter({b"E": [addheader(b"X-Second", b"yes"), CONTINUE]})
    cl = frontend(cluster_factory, [first.spec, second.spec])
    c = hello(smtp_port(cl))
    qid = qid_of(send(c))
    c.cmd(b"QUIT")
    assert b"R" not in first.commands() and b"E" not in first.commands()
    assert b"E" in second.commands()
    assert b"X-Second: yes\r\n" in record(cl, qid)


@pytest.mark.parametrize("default,expect", [("tempfail", b"451 4.7.1"),
                                            ("reject", b"550 5.7.1"),
                                            ("accept", b"250 2.0.0")])
def test_slow_milter_gets_default_action(cluster_factory, milter, default, expect):
    m = milter({b"E": [Sleep(4), CONTINUE]})
    cl = frontend(cluster_factory, [m.spec], default_action=default, content_timeout=1,
                  command_timeout=1)
    c = hello(smtp_port(cl))
    t0 = time.monotonic()
    assert code(send(c)) == expect
    assert time.monotonic() - t0 < 4
    # The milter is gone for this session: the next message gets the same.
    assert code(send(c)) == expect
    c.cmd(b"QUIT")
    healthy(cl)
    metrics = cl.frontends[0].metrics_text()
    assert f'mailstream_frontend_milter_errors_total{{milter="{m.spec}",reason="timeout"}} 1' \
        in metrics


@pytest.mark.parametrize("case", ["garbage", "oversized", "close_mid_message", "unexpected",
                                  "bad_replycode"])
def test_misbehaving_milter(cluster_factory, milter, case):
    script: Script = {
        "garbage": {b"M": [b"\x00\x00\x00\x05zzzzz"]},
        "oversized": {b"B": [struct.pack(">I", 1 << 30) + b"b" + b"x" * 1000]},
        "close_mid_message": {b"B": [Close()]},
        # SMFIR_SKIP answers a body chunk only (and was not negotiated).
        "unexpected": {b"N": [pkt(b"s")]},
        "bad_replycode": {b"E": [replycode(b"250 all fine")]},
    }[case]
    m = milter(script)
    cl = frontend(cluster_factory, [m.spec], default_action="tempfail")
    c = hello(smtp_port(cl))
    r = send(c)
    assert code(r) == b"451 4.7.1", (r, b"".join(m.commands()))
    c.cmd(b"QUIT")
    healthy(cl)
    assert "event=milter_error" in cl.frontends[0].log.read_text()


@pytest.mark.parametrize("default,expect", [("tempfail", b"451 4.7.1"),
                                            ("accept", b"250 2.0.0")])
def test_milter_not_listening(cluster_factory, default, expect):
    port = mslocal.free_port()
    cl = frontend(cluster_factory, [f"inet:127.0.0.1:{port}"], default_action=default)
    c = hello(smtp_port(cl))
    r = send(c)
    assert code(r) == expect, r
    c.cmd(b"QUIT")
    healthy(cl)


def test_bdat_and_pipelining_through_a_milter(cluster_factory, milter):
    m = milter({b"E": [addheader(b"X-Checked", b"yes"), CONTINUE],
                b"R": lambda d: [REJECT] if b"nobody" in d else [CONTINUE]})
    cl = frontend(cluster_factory, [m.spec])
    c = hello(smtp_port(cl))
    # PIPELINING: everything in one write, DATA included.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@mailstream.test>\r\n"
           b"RCPT TO:<u@mailstream.test>\r\nDATA\r\n")
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"550 5.7.1"
    assert code(c.reply()) == b"250 2.1.5"
    assert c.reply().startswith(b"354")
    c.send(MSG + b".\r\nNOOP\r\n")
    qid = qid_of(c.reply())
    assert code(c.reply()) == b"250 2.0.0"
    # BDAT in two chunks, pipelined with the envelope.
    part1, part2 = MSG[:30], MSG[30:]
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<u@mailstream.test>\r\n"
           b"BDAT %d\r\n%sBDAT %d LAST\r\n%s" % (len(part1), part1, len(part2), part2))
    assert code(c.reply()) == b"250 2.1.0"
    assert code(c.reply()) == b"250 2.1.5"
    assert code(c.reply()) == b"250 2.0.0"
    qid2 = qid_of(c.reply())
    c.cmd(b"QUIT")
    for q in (qid, qid2):
        rec = record(cl, q)
        assert b"X-Checked: yes\r\n" in rec and b"body line" in rec
    healthy(cl)


def test_listener_without_milters(cluster_factory, milter):
    m = milter({b"E": [REJECT]})
    port = mslocal.free_ports(1)[0]
    cl = cluster_factory(
        frontends=1, workers=0,
        listeners={"mx": (f"{mslocal.HOST}:{port}", "mx", {"milters": "no"})},
        frontend_extra={"milter": {"servers": m.spec}})
    c = hello(smtp_port(cl))
    qid_of(send(c))
    c.cmd(b"QUIT")
    assert m.conns == []


def test_quarantine_is_held_until_released(cluster_factory, milter):
    """A quarantined message reaches Kafka, the worker holds it (listed as
    held with the milter's reason), and `queue release` delivers it, with
    the milter's edits, to the sink."""
    from test_ctl_queue import ctl

    m = milter({b"E": [addheader(b"X-Quarantined", b"yes"), pkt(b"q", b"suspicious link\0"),
                       CONTINUE]})
    cl = cluster_factory(frontends=1, workers=1, frontend_extra={"milter": {"servers": m.spec}})
    c = hello(smtp_port(cl))
    qid = qid_of(send(c)).decode()
    c.cmd(b"QUIT")
    mslocal.wait_until(lambda: any(x["qid"] == qid and x["state"] == "held"
                                   for x in ctl(cl, "queue", "list")), 60,
                       f"{qid} listed as held", interval=0.5)
    log = cl.workers[0].log.read_text()
    assert f"event=queue_control qid={qid} action=hold" in log
    shown = ctl(cl, "queue", "show", qid)
    assert shown["control"]["action"] == "hold"
    assert shown["control"]["reason"] == "quarantine: suspicious link"
    assert cl.sink.messages() == []
    assert ctl(cl, "queue", "release", qid)["applied"] == 1
    got = cl.sink.wait_for(1, timeout=60)
    assert len(got) == 1
    assert b"X-Quarantined: yes" in got[0].data


def test_no_reply_steps_and_foreign_protocol_bits(cluster_factory, milter):
    """A milter that, like rspamd, answers the negotiation with its own
    mask: every step unanswered (SMFIP_NR_*) plus bits we never offered
    (SMFIP_RCPT_REJ, SMFIP_MDS_256K), which are left out.  Only the end of
    the body is answered; a body of several chunks streams without
    answers."""
    nr = 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x80 | 0x40000 | 0x80000
    silent: Reply = []
    m = milter({b"C": silent, b"H": silent, b"M": silent, b"R": silent, b"T": silent,
                b"L": silent, b"N": silent, b"B": silent,
                b"E": [addheader(b"X-Scanned", b"quietly"), CONTINUE]},
               protocol=nr | 0x800 | 0x10000000)
    cl = frontend(cluster_factory, [m.spec], command_timeout=5, content_timeout=5)
    c = hello(smtp_port(cl))
    body = b"".join(b"line %06d of a long body\r\n" % i for i in range(12000))  # ~300 KB
    qid = qid_of(send(c, msg=MSG.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body))
    c.cmd(b"QUIT")
    got = b"".join(d for cmd, d in m.packets() if cmd == b"B")
    assert got == body
    assert max(len(d) for cmd, d in m.packets() if cmd == b"B") <= 65535
    rec = record(cl, qid)
    assert b"X-Scanned: quietly\r\n" in rec and body[-40:] in rec


def test_accept_lasts_one_transaction(cluster_factory, milter):
    """An accept at MAIL skips that milter for the rest of the transaction
    only, also when a later milter refused the MAIL: the next MAIL is
    shown to it again, after an ABORT."""
    first = milter({b"M": [ACCEPT]})
    second = milter({b"M": lambda d: [REJECT] if b"bad@" in d else [CONTINUE]})
    cl = frontend(cluster_factory, [first.spec, second.spec])
    c = hello(smtp_port(cl))
    assert code(c.cmd(b"MAIL FROM:<bad@b.example>")) == b"550 5.7.1"
    qid_of(send(c))
    c.cmd(b"QUIT")
    cmds = b"".join(first.commands())
    assert cmds.count(b"M") == 2 and b"A" in cmds[cmds.index(b"M") + 1:], cmds
