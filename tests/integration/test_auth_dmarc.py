"""Inbound email authentication through the whole cluster (issue 5).

frontend (MX listener) -> Kafka -> worker policy stage (SPF, DKIM, DMARC with
every query through its resolver to a real NSD on loopback) -> smtp-sink.

One cluster serves the whole matrix (the machine is shared): DMARC pass
through SPF and through DKIM (signed here by dkimpy), fail with p=none,
p=quarantine and p=reject, the subdomain policy (sp=), relaxed against
strict alignment, a missing record, pct=0 sampling; each case asserts the
action taken (delivered, quarantine header, or discarded with an `events`
record and no bounce) and the Authentication-Results field delivered.  A
forged Authentication-Results claiming our authserv-id is removed, one for
another authserv-id is kept.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

import mslocal
from dns_zone import Nsd

AUTHSERV = "mx.mailstream.test"
RCPT = "user@mailstream.test"
KCAT = "kcat"


def _rsa_key(tmp: Path):
    key = tmp / "dkim.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(key)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    p = base64.b64encode(der).decode()
    chunks = " ".join(f'"{p[i:i + 200]}"' for i in range(0, len(p), 200))
    return key.read_bytes(), f'( "v=DKIM1; k=rsa; p=" {chunks} )'


def zone_records(dkim_txt: str) -> List[str]:
    spf_ok = '"v=spf1 ip4:127.0.0.1 -all"'
    spf_fail = '"v=spf1 -all"'
    return [
        # pass through SPF (aligned MAIL FROM)
        f"pass TXT {spf_ok}",
        '_dmarc.pass TXT "v=DMARC1; p=reject"',
        # pass through DKIM only (SPF fails)
        f"signed TXT {spf_fail}",
        '_dmarc.signed TXT "v=DMARC1; p=reject"',
        f"sel._domainkey.signed TXT {dkim_txt}",
        # fail with each policy
        f"none TXT {spf_fail}",
        '_dmarc.none TXT "v=DMARC1; p=none"',
        f"quarantine TXT {spf_fail}",
        '_dmarc.quarantine TXT "v=DMARC1; p=quarantine"',
        f"reject TXT {spf_fail}",
        '_dmarc.reject TXT "v=DMARC1; p=reject"',
        # subdomain policy: the Organizational Domain's record, sp=
        f"a.sp TXT {spf_fail}",
        '_dmarc.sp TXT "v=DMARC1; p=reject; sp=quarantine"',
        # alignment: MAIL FROM in a subdomain, SPF passes
        f"bounce.relaxed TXT {spf_ok}",
        '_dmarc.relaxed TXT "v=DMARC1; p=reject"',
        f"bounce.strict TXT {spf_ok}",
        '_dmarc.strict TXT "v=DMARC1; p=reject; aspf=s"',
        # no DMARC record at all
        f"nodmarc TXT {spf_fail}",
        # pct=0: never sampled, reject becomes quarantine
        f"sampled TXT {spf_fail}",
        '_dmarc.sampled TXT "v=DMARC1; p=reject; pct=0"',
    ]


def message(from_addr: str, subject: str, extra: str = "") -> bytes:
    return (f"{extra}From: Sender <{from_addr}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\n"
            f"Body of {subject}.\r\n").encode()


def send(cl, helo: str, mail_from: str, data: bytes) -> None:
    host, port = cl.listener("mx")
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=30) as s:
        s.sendmail(mail_from, [RCPT], data)


def events(cl) -> List[dict]:
    r = subprocess.run([KCAT, "-b", cl.kafka.bootstrap, "-C", "-t", cl.spec.events_topic,
                        "-o", "beginning", "-e", "-q", "-f", "%s\n"], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]


def headers(data: bytes) -> Dict[str, List[str]]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    out: Dict[str, List[str]] = {}
    for field in re.split(r"\r\n(?![ \t])", head):
        name, _, value = field.partition(":")
        out.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
    return out


def metric(node, series: str) -> float:
    for line in node.metrics_text().splitlines():
        if line.split(" ", 1)[0] == series:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def dns(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth-dns")
    key, dkim_txt = _rsa_key(tmp)
    sup = mslocal.Supervisor(tmp)
    nsd = Nsd(sup, mslocal.free_port(), {"mstest": zone_records(dkim_txt)})
    nsd.start()
    nsd.dkim_key = key  # type: ignore[attr-defined]
    yield nsd
    sup.stop_all()


def test_inbound_dmarc_matrix(cluster_factory, dns):
    dkim = pytest.importorskip("dkim", reason="dkimpy not installed")
    cl = cluster_factory(worker_extra={
        "dns": {"upstream": dns.upstream, "timeout_ms": 5000},
        "policy": {"inbound": "yes", "authserv_id": AUTHSERV},
    })

    forged = (f"Authentication-Results: {AUTHSERV}; dmarc=pass header.from=reject.mstest\r\n"
              "Authentication-Results: other.example; spf=pass\r\n")
    signed = message("alice@signed.mstest", "dkim-pass")
    signed = dkim.sign(signed, b"sel", b"signed.mstest", dns.dkim_key,
                       include_headers=[b"from", b"to", b"subject", b"date"]) + signed
    # subject -> (helo, MAIL FROM, message)
    cases = {
        "spf-pass": ("mx.pass.mstest", "bounce@pass.mstest", message("alice@pass.mstest", "spf-pass",
                                                                  forged)),
        "dkim-pass": ("mx.signed.mstest", "bounce@signed.mstest", signed),
        "fail-none": ("mx.none.mstest", "x@none.mstest", message("a@none.mstest", "fail-none")),
        "fail-quarantine": ("mx.quarantine.mstest", "x@quarantine.mstest",
                            message("a@quarantine.mstest", "fail-quarantine")),
        "fail-reject": ("mx.reject.mstest", "x@reject.mstest",
                        message("a@reject.mstest", "fail-reject", forged)),
        "subdomain-sp": ("mx.sp.mstest", "x@a.sp.mstest", message("a@a.sp.mstest", "subdomain-sp")),
        "relaxed": ("mx.relaxed.mstest", "b@bounce.relaxed.mstest",
                    message("a@relaxed.mstest", "relaxed")),
        "strict": ("mx.strict.mstest", "b@bounce.strict.mstest", message("a@strict.mstest", "strict")),
        "missing": ("mx.nodmarc.mstest", "x@nodmarc.mstest", message("a@nodmarc.mstest", "missing")),
        "pct-zero": ("mx.sampled.mstest", "x@sampled.mstest", message("a@sampled.mstest", "pct-zero")),
    }
    discarded = {"fail-reject", "strict"}
    for subject, (helo, mail_from, data) in cases.items():
        send(cl, helo, mail_from, data)

    want = len(cases) - len(discarded)
    msgs = cl.sink.wait_for(want, timeout=90)
    got = {}
    for m in msgs:
        h = headers(m.data)
        got[h["subject"][0]] = (m, h)
    assert set(got) == set(cases) - discarded

    def ar(subject: str) -> str:
        h = got[subject][1]
        ours = [v for v in h.get("authentication-results", []) if v.split(";")[0] == AUTHSERV]
        assert len(ours) == 1, h.get("authentication-results")
        return ours[0]

    # Our field is the first one, above the frontend's Received field.
    for subject in got:
        first = got[subject][0].data.split(b"\r\n", 1)[0]
        assert first.startswith(b"Authentication-Results: " + AUTHSERV.encode()), first

    a = ar("spf-pass")
    assert "spf=pass smtp.mailfrom=bounce@pass.mstest" in a and "dmarc=pass" in a, a
    assert "header.from=pass.mstest" in a and "dkim=none" in a, a
    # the forged field claiming our id is gone, the other one stays
    assert "other.example; spf=pass" in got["spf-pass"][1]["authentication-results"]
    assert not any("header.from=reject.mstest" in v
                   for v in got["spf-pass"][1]["authentication-results"])

    a = ar("dkim-pass")
    assert "spf=fail" in a and "dkim=pass header.d=signed.mstest" in a and "dmarc=pass" in a, a

    a = ar("fail-none")
    assert "dmarc=fail (p=none dis=none) header.from=none.mstest" in a, a
    assert "x-mailstream-quarantine" not in got["fail-none"][1]

    a = ar("fail-quarantine")
    assert "dmarc=fail (p=quarantine dis=quarantine)" in a, a
    assert got["fail-quarantine"][1]["x-mailstream-quarantine"] == ["dmarc_quarantine"]

    a = ar("subdomain-sp")
    assert "dmarc=fail (sp=quarantine dis=quarantine) header.from=a.sp.mstest" in a, a
    assert got["subdomain-sp"][1]["x-mailstream-quarantine"] == ["dmarc_quarantine"]

    a = ar("relaxed")
    assert "spf=pass smtp.mailfrom=b@bounce.relaxed.mstest" in a and "dmarc=pass" in a, a

    a = ar("missing")
    assert "spf=fail" in a and "dmarc=none header.from=nodmarc.mstest" in a, a
    assert "x-mailstream-quarantine" not in got["missing"][1]

    a = ar("pct-zero")
    assert "dmarc=fail (p=reject dis=quarantine pct)" in a, a
    assert got["pct-zero"][1]["x-mailstream-quarantine"] == ["dmarc_quarantine"]

    # Discarded: an event each, nothing delivered, no bounce (no DSN went
    # to the sink and nothing was addressed to the forged senders).
    deadline = time.monotonic() + 30
    while True:
        evs = [e for e in events(cl) if e.get("event") == "discarded"]
        if len(evs) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(evs) == 2, evs
    assert {e["verdict"] for e in evs} == {"dmarc_reject"}
    reasons = " ".join(e["reason"] for e in evs)
    assert "from=reject.mstest" in reasons and "from=strict.mstest" in reasons, evs
    time.sleep(1)
    assert len(cl.sink.messages()) == want
    assert all(m.envelope["rcpts"] == [RCPT] for m in cl.sink.messages())

    # Metrics: results per method and verdict, actions taken.
    wk = cl.workers[0]
    assert metric(wk, 'mailstream_worker_policy_actions_total{verdict="dmarc_reject",'
                      'action="discard"}') == 2
    assert metric(wk, 'mailstream_worker_policy_actions_total{verdict="dmarc_quarantine",'
                      'action="quarantine"}') == 3
    assert metric(wk, 'mailstream_worker_auth_results_total{method="dmarc",result="pass"}') == 3
    assert metric(wk, 'mailstream_worker_auth_results_total{method="dkim",result="pass"}') == 1


def test_slow_dns_does_not_stall_other_mail(cluster_factory):
    """No DNS server answers: the inbound message waits for its lookups (and
    is then delivered with temperror, the default action), while a message
    that needs no DNS (outbound, submitted with AUTH) overtakes it."""
    dead = mslocal.free_port()
    cl = cluster_factory(worker_extra={
        "dns": {"upstream": f"127.0.0.1@{dead}", "timeout_ms": 4000},
        "policy": {"inbound": "yes", "authserv_id": AUTHSERV, "timeout_ms": 6000},
    })
    send(cl, "mx.pass.mstest", "x@pass.mstest", message("a@pass.mstest", "slow"))
    host, port = cl.listener("submission")
    ctx = __import__("ssl").create_default_context(cafile=str(cl.tls_cert))
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=30) as s:
        s.starttls(context=ctx)
        s.login(mslocal.DEMO_USER, mslocal.DEMO_PASSWORD)
        s.sendmail(mslocal.DEMO_USER, ["bob@example.org"],
                   message(mslocal.DEMO_USER, "fast").replace(RCPT.encode(), b"bob@example.org"))
    first = cl.sink.wait_for(1, timeout=30)
    # Sent second, delivered first: the worker kept going while the
    # inbound message waited for DNS.
    assert headers(first[0].data)["subject"] == ["fast"]
    msgs = cl.sink.wait_for(2, timeout=60)
    slow = [m for m in msgs if headers(m.data)["subject"] == ["slow"]][0]
    a = [v for v in headers(slow.data)["authentication-results"] if v.startswith(AUTHSERV)][0]
    assert "spf=temperror" in a and "dmarc=temperror" in a, a
    assert "x-mailstream-quarantine" not in headers(slow.data)
