"""Recipient verification at RCPT ([verify], frontend/fe_verify.h), as
Postfix's reject_unverified_recipient: the frontend asks the domain's next
hop (a scripted SMTP server, test_worker_delivery's FakeSMTP) with
MAIL FROM:<> / RCPT TO and QUIT, caches the answer in Redis
(ms:verify:<addr>) and answers the client 250, 550 5.1.1 with the next hop's
text, or 450 4.1.1 when the probe could not be made.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import mslocal
from conftest import smtp_port
from test_config_check import make_cluster, run
from test_frontend_limits import metric
from test_frontend_smtp import code, hello
from test_worker_delivery import fake_smtp  # noqa: F401


def replies(slow_s: float = 1.5):
    """RCPT replies of the scripted next hop, by local part."""
    def answer(rcpt: str, n: int) -> str:
        local = rcpt.split("@")[0]
        if local.startswith("slow"):
            time.sleep(slow_s)  # long enough for a second RCPT to join the probe
            return "250 2.1.5 Ok"
        if local.startswith("gone"):
            return f"550 5.1.1 <{rcpt}>: no such user here"
        if local.startswith("later"):
            return "451 4.3.0 mailbox busy"
        return "250 2.1.5 Ok"
    return answer


def verify_cluster(cluster_factory, next_hop: str, threads: int = 0, **verify):
    dom = f"v{uuid.uuid4().hex[:8]}.test"
    v = {"map": f"{dom} smtp:[{next_hop.rsplit(':', 1)[0]}]:{next_hop.rsplit(':', 1)[1]}",
         "positive_ttl": 600, "negative_ttl": 60, "timeout_ms": 3000, **verify}
    extra = {"verify": v, **({"node": {"threads": threads}} if threads else {})}
    cl = cluster_factory(frontends=1, workers=0, accepted_domains=[dom, "mailstream.test"],
                         trusted_networks=[], frontend_extra=extra)
    return cl, dom


def rcpt(cl, addr: str) -> bytes:
    c = hello(smtp_port(cl))
    assert code(c.cmd(b"MAIL FROM:<a@b.example>")) == b"250 2.1.0"
    r = c.cmd(f"RCPT TO:<{addr}>".encode())
    c.cmd(b"QUIT")
    return r


def cached(cl, addr: str):
    v = mslocal.redis_command(cl.redis.port, "GET", f"ms:verify:{addr.lower()}")
    ttl = int(mslocal.redis_command(cl.redis.port, "TTL", f"ms:verify:{addr.lower()}")
              .split(b"\r\n")[0][1:])
    return v, ttl


def test_verify_known_unknown_cached_and_coalesced(cluster_factory, fake_smtp):
    srv = fake_smtp(rcpt_reply=replies())
    cl, dom = verify_cluster(cluster_factory, srv.address)
    fe = cl.frontends[0]

    known, gone, later = f"known@{dom}", f"gone@{dom}", f"later@{dom}"
    assert code(rcpt(cl, known)) == b"250 2.1.5"
    r = rcpt(cl, gone)
    assert code(r) == b"550 5.1.1" and b"no such user here" in r, r
    # The probe: a null sender, the recipient, then QUIT; no message.
    assert "MAIL FROM:<>" in srv.commands and f"RCPT TO:<{known}>" in srv.commands
    assert srv.data_count == 0
    mslocal.wait_until(lambda: srv.commands.count("QUIT") >= 2, 10, "probes said QUIT")

    # The answer is written to the cache after the reply, and the Redis
    # client holds a command up to [redis] linger_ms: wait for it.
    for addr in (known, gone):
        mslocal.wait_until(lambda: not cached(cl, addr)[0].startswith(b"$-1"), 10,
                           f"{addr} cached")
    v, ttl = cached(cl, known)
    assert b"1 250 2.1.5 Ok" in v and 0 < ttl <= 600, (v, ttl)
    v, ttl = cached(cl, gone)
    assert b"0 550 5.1.1" in v and 0 < ttl <= 60, (v, ttl)

    # Cache hits: the same answers, in any case, with no second probe.
    assert code(rcpt(cl, known.upper())) == b"250 2.1.5"
    assert code(rcpt(cl, gone)) == b"550 5.1.1"
    assert srv.rcpt_counts == {known: 1, gone: 1}
    assert metric(fe, "mailstream_smtp_verify_cache_total", 'result="hit"') == 2
    assert metric(fe, "mailstream_smtp_verify_probes_total", 'result="ok"') == 1
    assert metric(fe, "mailstream_smtp_verify_probes_total", 'result="unknown"') == 1

    # A 4yz from the next hop is no answer: 450 4.1.1, never cached.
    r = rcpt(cl, later)
    assert code(r) == b"450 4.1.1" and b"mailbox busy" in r, r
    assert cached(cl, later)[0].startswith(b"$-1")
    assert code(rcpt(cl, later)) == b"450 4.1.1"
    assert srv.rcpt_counts[later] == 2

    # Two clients asking about one new address at once: one probe.
    slow = f"slow@{dom}"
    out = []
    threads = [threading.Thread(target=lambda: out.append(rcpt(cl, slow))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(30)
    assert [code(r) for r in out] == [b"250 2.1.5", b"250 2.1.5"], out
    assert srv.rcpt_counts[slow] == 1
    assert metric(fe, "mailstream_smtp_verify_coalesced_total") == 1

    # A domain not in the map is not verified.
    assert code(rcpt(cl, "anyone@mailstream.test")) == b"250 2.1.5"
    assert "RCPT TO:<anyone@mailstream.test>" not in srv.commands


def test_verify_next_hop_down_answers_450(cluster_factory):
    dead = f"127.0.0.1:{mslocal.free_port()}"
    cl, dom = verify_cluster(cluster_factory, dead)
    r = rcpt(cl, f"who@{dom}")
    assert code(r) == b"450 4.1.1" and b"unverified address" in r, r
    assert cached(cl, f"who@{dom}")[0].startswith(b"$-1")
    assert metric(cl.frontends[0], "mailstream_smtp_verify_probes_total",
                  'result="tempfail"') == 1


def test_verify_tempfail_action_accept(cluster_factory):
    """Only when configured does a probe without an answer let the
    recipient through."""
    dead = f"127.0.0.1:{mslocal.free_port()}"
    cl, dom = verify_cluster(cluster_factory, dead, tempfail_action="accept")
    assert code(rcpt(cl, f"who@{dom}")) == b"250 2.1.5"


def test_verify_bad_map_refused_at_start(tmp_path):
    """A next hop that needs an MX lookup cannot be asked: the frontend
    refuses to start rather than never verifying that domain."""
    cl = make_cluster(tmp_path, frontend_extra={"verify": {"map": "example.com smtp:mx.example"}})
    node = cl.add_frontend(start=False)
    r = run([mslocal.binary("frontend"), "-c", node.config])
    assert r.returncode != 0 and "cannot be probed" in r.stderr, r.stderr


def test_recipient_file_reloaded_on_sighup(cluster_factory, tmp_path):
    """[smtp] recipient_file: the domains of its lines are checked at RCPT
    (550 5.1.1 for an address not listed); SIGHUP reads it again, and a
    broken file then keeps the list in force."""
    dom = f"f{uuid.uuid4().hex[:8]}.test"
    f = tmp_path / "recipients"
    f.write_text(f"# staff\nJane@{dom}\n@empty.{dom}\n")
    cl = cluster_factory(frontends=1, workers=0,
                         accepted_domains=[dom, f"empty.{dom}", "mailstream.test"],
                         trusted_networks=[], frontend_extra={"smtp": {"recipient_file": str(f)}})
    fe = cl.frontends[0]
    assert code(rcpt(cl, f"jane@{dom.upper()}")) == b"250 2.1.5"
    r = rcpt(cl, f"john@{dom}")
    assert code(r) == b"550 5.1.1" and b"User unknown in relay recipient table" in r, r
    assert code(rcpt(cl, f"anyone@empty.{dom}")) == b"550 5.1.1"
    assert code(rcpt(cl, "anyone@mailstream.test")) == b"250 2.1.5"  # not covered

    # Rewritten in place (same inode, so only the signal tells): john in, jane out.
    f.write_text(f"john@{dom}\n")
    fe.send_signal(signal.SIGHUP)
    mslocal.wait_until(lambda: code(rcpt(cl, f"john@{dom}")) == b"250 2.1.5", 20,
                       "john accepted after SIGHUP")
    assert code(rcpt(cl, f"jane@{dom}")) == b"550 5.1.1"
    assert code(rcpt(cl, f"anyone@empty.{dom}")) == b"250 2.1.5"  # no longer covered

    # A broken file is refused; the last good list stays.
    f.write_text("not an address\n")
    fe.send_signal(signal.SIGHUP)
    mslocal.wait_until(lambda: "what=recipient_file" in fe.log.read_text(), 20,
                       "reload_failed logged")
    assert code(rcpt(cl, f"john@{dom}")) == b"250 2.1.5"
    assert code(rcpt(cl, f"jane@{dom}")) == b"550 5.1.1"


def test_verify_max_probes_bounds_sessions(cluster_factory, fake_smtp):
    """[verify] max_probes = 1 (per loop; one loop here): two new
    addresses at once are probed one after the other, so the second answer
    comes no sooner than two slow RCPT replies; both are answered."""
    srv = fake_smtp(rcpt_reply=replies(slow_s=1.5))
    cl, dom = verify_cluster(cluster_factory, srv.address, threads=1, max_probes=1,
                             timeout_ms=10000)
    out = {}

    def ask(local: str) -> None:
        t0 = time.monotonic()
        out[local] = (rcpt(cl, f"{local}@{dom}"), time.monotonic() - t0)

    threads = [threading.Thread(target=ask, args=(f"slow{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(code(r) == b"250 2.1.5" for r, _ in out.values()), out
    assert max(d for _, d in out.values()) >= 3.0, out
    assert srv.rcpt_counts == {f"slow0@{dom}": 1, f"slow1@{dom}": 1}
