"""bench/inbound.py - the `inbound` workload of issue 19: MX traffic whose
SPF, DKIM and DMARC both systems verify, against a local authoritative DNS
through a caching resolver.

The world (InboundWorld.start):
- DOMAINS sender domains, each its own zone on a private NSD
  (tests/integration/dns_zone.Nsd): SPF `v=spf1 ip4:127.0.0.1 -all` (the
  bench client's address), a DKIM key (RSA-2048 for sender01, sender03, ...,
  Ed25519 for sender02, sender04, ...: RFC 8301, RFC 8463), DMARC `p=reject`
  with strict alignment; and SPOOFER, whose SPF passes but which has no
  DMARC record (the envelope domain of the forged message below);
- an Unbound in front of it (dns_zone.Unbound, port 53 of a 127.x.y.z):
  the caching resolver both systems ask;
- per domain one message of the workload's size, DKIM-signed once before
  any timed run with dkimpy (tests/integration/requirements.txt) -
  relaxed/relaxed, the usual header set - and written for `smtp-source -F`;
  smtp-source sends it as it is (CRLF added per line), from
  bench@<domain> with HELO <domain>, so SPF for MAIL FROM and HELO, the
  signature and DMARC all pass.

Postfix (system postfix-inbound): smtpd with `check_policy_service` to
postfix-policyd-spf-python under Postfix's spawn service (Debian's
recommended setup: Header_Type AR, an SPF Fail refused at RCPT), then
smtpd_milters = OpenDKIM in verify mode and OpenDMARC (RejectFailures,
taking SPF from the policy service's Authentication-Results field); the
master and everything it spawns run in a mount namespace whose
/etc/resolv.conf names the Unbound (dns_zone.with_resolv_conf), OpenDMARC
likewise (milters.OpenDmarc), OpenDKIM through its Nameservers setting.
Their CPU counts in Postfix's total (policyd-spf as part of the Postfix
process tree, "opendkim" and "opendmarc" apart).

Mailstream (system mailstream-inbound): the worker's `[policy] inbound =
yes` (SPF for MAIL FROM and HELO, DKIM, DMARC; worker/mailauth.h) with
`[dns] upstream` the Unbound. The checks run in the worker, after the
frontend's 250 (docs/architecture.md): Mailstream's accept rate does not
include them, Postfix's does (its milters answer before 250), so the end
to end rate is the comparison that counts.

After every timed run (InboundWorld.verify) the run fails unless
- every message the sink received (its -D dump) carries Authentication-
  Results under AUTHSERV_ID with spf=pass, dkim=pass and dmarc=pass;
- a forged message (From: a sender domain, its DKIM signature broken by a
  changed body, envelope from SPOOFER: DMARC fails, p=reject) is refused
  by Postfix (5xx from OpenDMARC) and accepted then discarded by Mailstream
  (`[policy] action_dmarc_reject` = discard, the default: the worker's
  mailstream_worker_policy_actions_total{action="discard"} goes up), and
  reaches the sink in neither case.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import mslocal
import opendkim
from smtpclient import share_out

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
from dns_zone import Nsd, Unbound, with_resolv_conf  # noqa: E402
import milters  # noqa: E402

DOMAINS = 10
TLD = "mstest"   # not under "test.": resolvers answer that name themselves
SPOOFER = f"spoofer.{TLD}"
AUTHSERV_ID = f"mx.bench.{TLD}"
CLIENT_IP = "127.0.0.1"   # smtp-source's source address: what SPF authorises
POLICYD_SPF = "/usr/bin/policyd-spf"
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
                  b"content-type"]
FORGED_SUBJECT = "inbound bench: forged"
SYSTEMS = ("postfix-inbound", "mailstream-inbound")


def domain(i: int) -> str:
    return f"sender{i + 1:02d}.{TLD}"


def algorithm(i: int) -> str:
    return "rsa" if i % 2 == 0 else "ed25519"


def _body(size: int, tag: str) -> bytes:
    """About `size` octets of text in lines of at most 76 characters (CRLF)."""
    words = (f"Inbound benchmark mail from {tag}: nothing in it but text, line after "
             "line, of the size the workload asks for.").split()
    lines: List[str] = []
    line, n, i = "", 0, 0
    while n < size:
        w = words[i % len(words)]
        i += 1
        if line and len(line) + 1 + len(w) > 76:
            lines.append(line)
            n += len(line) + 2
            line = w
        else:
            line = f"{line} {w}" if line else w
    return ("\r\n".join(lines) + "\r\n").encode()


def _message(sender: str, rcpt: str, subject: str, body: bytes) -> bytes:
    dom = sender.rpartition("@")[2]
    return (f"From: Bench Sender <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 06 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <inbound-bench.{subject.replace(' ', '.').replace(':', '')}@{dom}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode() \
        + body


def dkim_sign(msg: bytes, dom: str, selector: str, key: Path, alg: str) -> bytes:
    """msg with a DKIM-Signature by dkimpy prepended (relaxed/relaxed)."""
    import dkim  # dkimpy: tests/integration/requirements.txt (the venv make bench uses)
    if alg == "ed25519":
        # dkimpy takes the 32-octet seed in base64 (RFC 8463 §3): the tail
        # of the PKCS #8 DER openssl writes.
        der = subprocess.run(["openssl", "pkey", "-in", str(key), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        priv, salg = base64.b64encode(der[-32:]), b"ed25519-sha256"
    else:
        priv, salg = key.read_bytes(), b"rsa-sha256"
    sig = dkim.sign(msg, selector.encode(), dom.encode(), priv,
                    canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED_HEADERS,
                    signature_algorithm=salg)
    return sig + msg


def ar_results(headers: str) -> Dict[str, List[str]]:
    """{method: [result, ...]} of the Authentication-Results fields of a
    header block (unfolded) whose authserv-id is AUTHSERV_ID."""
    out: Dict[str, List[str]] = {}
    unfolded = re.sub(r"\r?\n[ \t]+", " ", headers)
    for line in unfolded.splitlines():
        name, sep, value = line.partition(":")
        if not sep or name.strip().lower() != "authentication-results":
            continue
        serv, _, rest = value.strip().partition(";")
        if serv.split()[0:1] != [AUTHSERV_ID]:
            continue
        for m in re.finditer(r"\b(spf|dkim|dmarc)=(\w+)", rest):
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def dump_messages(data: bytes) -> List[str]:
    """The header blocks of the messages in an smtp-sink -D dump: each
    begins with the sink's X-Client-Addr record; the headers end at the
    first empty line."""
    out = []
    for chunk in re.split(rb"(?m)^(?=X-Client-Addr: )", data):
        if chunk.startswith(b"X-Client-Addr: "):
            out.append(re.split(rb"\r?\n\r?\n", chunk, 1)[0].decode("utf-8", "replace"))
    return out


def _metric(text: str, name: str, **labels: str) -> float:
    return milters.metric(text, name, **labels)


def _fetch(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.read().decode("utf-8", "replace")


class InboundWorld:
    """The DNS, keys and messages of the workload, the Postfix peer's SPF
    policy service and milters, and Mailstream's settings (module doc)."""

    def __init__(self, sup: mslocal.Supervisor, size: int, rcpt: str, domains: int = DOMAINS):
        self.sup, self.size, self.rcpt, self.n = sup, size, rcpt, domains
        self.dir = sup.state_dir / "inbound"
        self.files: Dict[int, List[Path]] = {}   # by message size
        self.body: Dict[int, bytes] = {}
        self.keys: Dict[str, Path] = {}
        self.nsd: Optional[Nsd] = None
        self.unbound: Optional[Unbound] = None
        self.dkim: Optional[milters.OpenDkimVerifier] = None
        self.dmarc: Optional[milters.OpenDmarc] = None

    # -- DNS, keys, messages --
    def zones(self) -> Dict[str, List[str]]:
        z = {}
        for i in range(self.n):
            alg = algorithm(i)
            z[domain(i)] = [
                f'@ TXT "v=spf1 ip4:{CLIENT_IP} -all"',
                '_dmarc TXT "v=DMARC1; p=reject; adkim=s; aspf=s"',
                f"{alg}._domainkey TXT {milters.dkim_txt_record(self.keys[alg])}",
            ]
        z[SPOOFER] = [f'@ TXT "v=spf1 ip4:{CLIENT_IP} -all"']
        return z

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for alg in ("rsa", "ed25519"):
            self.keys[alg] = opendkim.make_key(self.dir / "keys" / f"{alg}.pem", alg)
        zones = self.zones()
        self.nsd = Nsd(self.sup, mslocal.free_port(), zones, name="inbound-nsd")
        self.nsd.start()
        self.unbound = Unbound(self.sup, self.nsd.upstream, list(zones), name="inbound-unbound")
        self.unbound.start()
        self.messages(self.size)
        # The forged message: signed, then its body changed (dkim=fail), from
        # SPOOFER's envelope (SPF pass, not aligned): DMARC fails, p=reject.
        d0 = domain(0)
        signed = dkim_sign(_message(f"bench@{d0}", self.rcpt, FORGED_SUBJECT,
                                    _body(1024, "a forger")),
                           d0, algorithm(0), self.keys[algorithm(0)], algorithm(0))
        self.forged = signed.replace(b"Inbound benchmark", b"Forged benchmark", 1)

    def messages(self, size: int) -> List[Path]:
        """The signed message files of one body size, one per domain (made
        once: the signing is never timed)."""
        if size not in self.files:
            body = _body(size, "the inbound workload")
            self.files[size] = []
            for i in range(self.n):
                d, alg = domain(i), algorithm(i)
                msg = dkim_sign(_message(f"bench@{d}", self.rcpt, f"inbound bench {d}", body),
                                d, alg, self.keys[alg], alg)
                path = self.dir / f"{d}-{size}.eml"
                path.write_bytes(msg.replace(b"\r\n", b"\n"))  # smtp-source -F adds the CRLF
                self.files[size].append(path)
        return self.files[size]

    def probe_args(self, size: int) -> Dict[str, object]:
        """smtpclient.probe's sender, HELO and message: the first domain's."""
        return {"sender": f"bench@{domain(0)}", "helo": domain(0),
                "message": self.messages(size)[0].read_bytes().replace(b"\n", b"\r\n")}

    def source_argvs(self, source: str, port: int, sessions: int, messages: int, size: int,
                     host: str = CLIENT_IP) -> List[List[str]]:
        """One smtp-source per domain (as many as there are sessions), the
        sessions and messages shared out in proportion."""
        return [[source, "-d", "-s", str(s), "-m", str(m), "-F", str(self.messages(size)[i]),
                 "-f", f"bench@{domain(i)}", "-t", self.rcpt, "-M", domain(i), f"{host}:{port}"]
                for i, (s, m) in enumerate(share_out(sessions, messages, self.n))]

    # -- Postfix's side --
    def start_postfix_side(self) -> List[str]:
        """OpenDKIM (verify) and OpenDMARC; returns smtpd_milters."""
        assert self.unbound is not None
        self.dkim = milters.OpenDkimVerifier(self.sup, mslocal.free_port(),
                                             nameserver=self.unbound.host,
                                             authserv_id=AUTHSERV_ID, name="inbound-opendkim")
        self.dkim.start()
        self.dmarc = milters.OpenDmarc(self.sup, mslocal.free_port(),
                                       nameserver=self.unbound.host, authserv_id=AUTHSERV_ID,
                                       name="inbound-opendmarc", spf_self_validate=False)
        self.dmarc.start()
        return [self.dkim.address, self.dmarc.address]

    def milter_pids(self) -> Dict[str, int]:
        return {"opendkim": self.sup.procs[self.dkim.name].pid,
                "opendmarc": self.sup.procs[self.dmarc.name].pid}

    def postfix_values(self) -> Dict[str, str]:
        """PostfixInstance extra_values: the SPF policy service as Debian's
        postfix-policyd-spf-python documents it (spawn, after
        reject_unauth_destination, a 3600 s time limit)."""
        conf = self.dir / "policyd-spf.conf"
        conf.write_text("\n".join([
            "# bench/inbound.py: postfix-policyd-spf-python for the Postfix peer",
            "debugLevel = 1",
            "TestOnly = 1",
            "HELO_reject = Fail",
            "Mail_From_reject = Fail",
            "PermError_reject = False",
            "TempError_Defer = False",
            # The default skips loopback clients: the bench's client is one.
            "skip_addresses = 192.0.2.254/32",
            "Header_Type = AR",
            f"Authserv_Id = {AUTHSERV_ID}",
        ]) + "\n")
        conf.chmod(0o644)
        return {
            "RECIPIENT_RESTRICTIONS":
                "reject_unauth_destination, check_policy_service unix:private/policyd-spf",
            "MAIN_EXTRA": "policyd-spf_time_limit = 3600",
            "MASTER_EXTRA": ("policyd-spf unix - n n - 0 spawn\n"
                             f"  user=policyd-spf argv={POLICYD_SPF} {conf}"),
        }

    def postfix_wrapper(self):
        """PostfixInstance start_wrapper: the master in a namespace whose
        resolv.conf names the Unbound (policyd-spf reads only that file)."""
        assert self.unbound is not None
        resolv = self.unbound.resolv_conf
        return lambda argv: with_resolv_conf(resolv, argv)

    # -- Mailstream's side --
    def worker_settings(self) -> Dict[str, Dict[str, object]]:
        assert self.unbound is not None
        return {"policy": {"inbound": "yes", "authserv_id": AUTHSERV_ID},
                "dns": {"upstream": self.unbound.upstream}}

    def pids(self) -> Dict[str, int]:
        """The resolver: its CPU is shared infrastructure, counted apart."""
        return {"unbound": self.unbound.pid} if self.unbound else {}

    # -- the checks --
    def verify(self, dump: Path, offset: int, port: int, expected: int,
               worker_metrics: Sequence[str] = ()) -> Dict[str, object]:
        """The checks of the module doc over the dump from `offset` on;
        raises RuntimeError when one fails."""
        with open(dump, "rb") as f:
            f.seek(offset)
            heads = dump_messages(f.read())
        bad = []
        for h in heads:
            r = ar_results(h)
            if not all("pass" in r.get(m, []) for m in ("spf", "dkim", "dmarc")):
                bad.append(r)
        out: Dict[str, object] = {"messages_checked": len(heads),
                                  "all_pass": len(heads) - len(bad),
                                  "sample": ar_results(heads[0]) if heads else None}
        if len(heads) < expected or bad:
            raise RuntimeError(f"authentication not verified: {len(heads)} messages at the sink "
                               f"(expected >= {expected}), {len(bad)} without spf, dkim and "
                               f"dmarc pass under {AUTHSERV_ID} (first: {bad[:1]})")
        before = [_fetch(a) for a in worker_metrics]
        try:
            with smtplib.SMTP(CLIENT_IP, port, local_hostname=SPOOFER, timeout=120) as s:
                s.sendmail(f"bench@{SPOOFER}", [self.rcpt], self.forged)
            reply = "250"
        except smtplib.SMTPDataError as e:
            reply = f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"
        except smtplib.SMTPRecipientsRefused as e:
            reply = str(e)
        out["forged_reply"] = reply[:200]
        if worker_metrics:
            if not reply.startswith("250"):
                raise RuntimeError(f"Mailstream refused the forged message: {reply}")

            def discarded() -> float:
                return sum(_metric(_fetch(a), "mailstream_worker_policy_actions_total",
                                   action="discard") for a in worker_metrics)
            d0 = sum(_metric(t, "mailstream_worker_policy_actions_total", action="discard")
                     for t in before)
            deadline = time.monotonic() + 60
            while discarded() <= d0 and time.monotonic() < deadline:
                time.sleep(0.2)
            if discarded() <= d0:
                raise RuntimeError("the worker did not discard the forged message (p=reject)")
            after = [_fetch(a) for a in worker_metrics]
            out["worker_auth_results"] = {
                f"{m}={r}": sum(_metric(t, "mailstream_worker_auth_results_total", method=m,
                                        result=r) for t in after)
                for m in ("spf_mailfrom", "spf_helo", "dkim", "dmarc")
                for r in ("pass", "fail")}
        elif not reply.startswith("5"):
            raise RuntimeError(f"Postfix did not refuse the forged message: {reply}")
        time.sleep(1.0)
        with open(dump, "rb") as f:
            f.seek(offset)
            if FORGED_SUBJECT.encode() in f.read():
                raise RuntimeError("the forged message reached the sink")
        return out

    def stop(self) -> None:
        for m in (self.dmarc, self.dkim, self.unbound, self.nsd):
            if m is not None:
                m.stop()
