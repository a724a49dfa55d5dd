"""Real milters from Debian, started privately for the milter tests (issue 18).

    rs = Rspamd(sup, mslocal.free_port()); rs.start()   # rs.address == "inet:127.0.0.1:PORT"
    dk = OpenDkim(sup, port, domain="signer.mstest", selector="sel", key=PEM); dk.start()
    dm = OpenDmarc(sup, port, zones={...}); dm.start()  # with its own NSD on 127.x.y.z:53

Every instance lives in its own directory under the supervisor's state
directory (config, pid file, database/run directories, log) and is started in
the foreground under mslocal.Supervisor, so it is stopped by its pid; the
system services (/etc/rspamd, /etc/opendkim.conf, /etc/opendmarc.conf, their
systemd units, which cluster/deps.sh leaves stopped and disabled) are never
read for settings nor touched. Everything listens on 127.0.0.1 only.

`address` is the milter's socket in the form both Postfix's `smtpd_milters`
and Mailstream's `[milter] servers` take (`inet:HOST:PORT`).

Readiness is a milter option negotiation (SMFIC_OPTNEG, `milter_handshake`):
a port that accepts connections is not yet a milter that answers (rspamd's
main process binds the socket long before its proxy worker is ready).

rspamd: the stock rule set (/etc/rspamd's common.conf: modules, scores,
actions) with a private local config directory that turns off every module
that looks things up on the network (RBLs, SURBL, SPF, DKIM, DMARC, fuzzy,
the maps fetched from maps.rspamd.com, ...), and a resolver pointed at a
closed loopback port, so no test ever reaches the internet. Its proxy worker
runs in milter mode with self_scan (no normal worker, no Redis). GTUBE is a
core check (no module), enabled explicitly (`enable_test_patterns`).
milter_headers adds X-Spamd-Result, X-Rspamd-Server, X-Rspamd-Queue-Id and
X-Spam-Status to every message, loopback clients included.

OpenDMARC has no option naming its DNS server: it asks the resolver of
/etc/resolv.conf (libresolv), which takes no port. It is therefore started
in a private mount namespace (`unshare -m`) in which a resolv.conf of ours,
naming an NSD on a random 127.x.y.z port 53, is bind-mounted over
/etc/resolv.conf; the host's file is untouched. That needs root (the harness
runs as root, like the Postfix benchmark peer).
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

import mslocal
from dns_zone import Nsd, free_loopback_dns_host, with_resolv_conf

RSPAMD = "/usr/bin/rspamd"
RSPAMD_CONFDIR = Path("/etc/rspamd")     # the stock rules, read only
OPENDKIM = "/usr/sbin/opendkim"
OPENDMARC = "/usr/sbin/opendmarc"

# Milter protocol (libmilter's mfdef.h): the negotiation we probe with.
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFI_PROT_VERSION = 6
SMFI_ALL_ACTIONS = 0x1FF
SMFI_ALL_PROTOCOL = 0x1FFFFF  # every SMFIP_ flag libmilter 8.14+ knows

# rspamd modules that query DNS, fetch maps over HTTP or need Redis: off.
RSPAMD_NETWORK_MODULES = (
    "rbl", "surbl", "emails", "spf", "dkim", "dmarc", "arc", "asn", "bimi", "dcc",
    "fuzzy_check", "phishing", "mx_check", "multimap", "whitelist", "rspamd_update",
    "neural", "reputation", "greylist", "ratelimit", "replies", "history_redis",
    "url_redirector", "dkim_signing", "once_received", "p0f", "external_services",
    "antivirus", "clickhouse", "elastic", "metadata_exporter", "metric_exporter",
)

# rspamd compiles its regexp and TLD tables at its first start (60 s seen on
# the loaded 2-core machine); a test module's first test waits for that.
START_TIMEOUT = 180.0
MODULE_TIMEOUT = 480  # pytest-timeout for the tests of a module that starts milters


class MilterError(mslocal.MsLocalError):
    pass


def milter_handshake(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a milter on host:port answers an option negotiation
    (SMFIC_OPTNEG, version 6) with its own SMFIC_OPTNEG."""
    body = SMFIC_OPTNEG + struct.pack(">III", SMFI_PROT_VERSION, SMFI_ALL_ACTIONS,
                                      SMFI_ALL_PROTOCOL)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">I", len(body)) + body)
            head = b""
            while len(head) < 5:
                chunk = s.recv(5 - len(head))
                if not chunk:
                    return False
                head += chunk
            ok = head[4:5] == SMFIC_OPTNEG
            try:
                s.sendall(struct.pack(">I", 1) + SMFIC_QUIT)
            except OSError:
                pass
            return ok
    except OSError:
        return False


def _wait_milter(proc, host: str, port: int, what: str, log: Path,
                 timeout: float = START_TIMEOUT) -> None:
    mslocal.wait_until(lambda: milter_handshake(host, port), timeout, what, proc.alive,
                       interval=0.3, log_path=log)


class _Milter:
    name = "milter"

    def __init__(self, sup: mslocal.Supervisor, port: int, name: Optional[str] = None,
                 host: str = mslocal.HOST):
        self.sup, self.port, self.host = sup, port, host
        if name:
            self.name = name
        self.dir = sup.state_dir / self.name
        self.log = self.dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"inet:{self.host}:{self.port}"

    def stop(self, timeout: float = 20.0) -> None:
        self.sup.stop(self.name, timeout)


class Rspamd(_Milter):
    """rspamd's proxy worker in milter mode on host:port (see the module doc)."""

    name = "rspamd"

    def __init__(self, sup: mslocal.Supervisor, port: int, name: Optional[str] = None,
                 host: str = mslocal.HOST, hs_cache: Optional[Path] = None,
                 workers: int = 1):
        """hs_cache: a directory for the compiled Hyperscan databases, shared
        between instances to save the compile on later starts; workers:
        proxy worker processes (the benchmark may want more than one)."""
        super().__init__(sup, port, name, host)
        self.hs_cache = Path(hs_cache) if hs_cache else self.dir / "db"
        self.workers = workers

    def _write(self) -> Path:
        local = self.dir / "local"
        for d in (self.dir, local / "local.d", local / "override.d", self.dir / "db",
                  self.dir / "run", self.hs_cache):
            d.mkdir(parents=True, exist_ok=True)
        for m in RSPAMD_NETWORK_MODULES:
            (local / "local.d" / f"{m}.conf").write_text("enabled = false;\n")
        (local / "local.d" / "milter_headers.conf").write_text(
            'use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", '
            '"x-spam-status"];\n'
            "skip_local = false;\nskip_authenticated = false;\n")
        conf = self.dir / "rspamd.conf"
        conf.write_text(f"""# Generated by tests/integration/milters.py: a private rspamd milter.
.include "$CONFDIR/common.conf"
options {{
  pidfile = "$RUNDIR/rspamd.pid";
  .include "$CONFDIR/options.inc"
  hs_cache_dir = "{self.hs_cache}/";
  control_socket = "$RUNDIR/rspamd.sock mode=0600";
  enable_test_patterns = true;
  # No lookups leave the machine: the only resolver is a closed port.
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }}
}}
logging {{
  type = "file";
  filename = "{self.log}";
  level = "notice";
}}
worker "rspamd_proxy" {{
  bind_socket = "{self.host}:{self.port}";
  milter = yes;
  timeout = 120s;
  count = {self.workers};
  upstream "local" {{ default = yes; self_scan = yes; }}
  reject_message = "Spam message rejected";
}}
""")
        return conf

    def argv(self) -> List[str]:
        conf = self.dir / "rspamd.conf"
        # -f: foreground (the supervisor owns the pid); -i: we run as root,
        # which rspamd refuses without it (its workers would otherwise drop
        # to -u/-g, which could not enter pytest's 0700 temp directories).
        return [RSPAMD, "-f", "-i", "-c", str(conf),
                "--var", f"CONFDIR={RSPAMD_CONFDIR}",
                "--var", f"LOCAL_CONFDIR={self.dir / 'local'}",
                "--var", f"DBDIR={self.dir / 'db'}",
                "--var", f"RUNDIR={self.dir / 'run'}",
                "--var", f"LOGDIR={self.dir}"]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self._write()
        p = self.sup.spawn(self.name, self.argv(), self.dir / "stdout.log",
                           ready={"port": self.port}, kind="rspamd")
        _wait_milter(p, self.host, self.port, f"rspamd milter on {self.address}", self.log,
                     timeout)


def make_dkim_key(path: Path, bits: int = 2048) -> Path:
    """An RSA private key in PEM, mode 0600 (OpenDKIM refuses a key others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    f"rsa_keygen_bits:{bits}", "-out", str(path)], check=True,
                   capture_output=True)
    os.chmod(path, 0o600)
    return path


# The DER SubjectPublicKeyInfo of an Ed25519 key up to the key itself (RFC 8410 §4).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def dkim_txt_record(key: Path) -> str:
    """The key's DKIM TXT record as zone-file strings: v=DKIM1; k=rsa; p=
    the SubjectPublicKeyInfo (RFC 6376 §3.6.1), or for an Ed25519 key
    k=ed25519; p= the bare 32-octet public key (RFC 8463 §4.2)."""
    der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if der.startswith(ED25519_SPKI_PREFIX):
        rec = "v=DKIM1; k=ed25519; p=" + base64.b64encode(der[len(ED25519_SPKI_PREFIX):]).decode()
    else:
        rec = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    return " ".join(f'"{rec[i:i + 255]}"' for i in range(0, len(rec), 255))


class OpenDkim(_Milter):
    """OpenDKIM in sign mode: signs mail whose From: domain is `domain` with
    `key` under `selector`, for clients in InternalHosts (loopback)."""

    name = "opendkim"

    def __init__(self, sup: mslocal.Supervisor, port: int, *, domain: str, selector: str,
                 key: Path, name: Optional[str] = None, host: str = mslocal.HOST):
        super().__init__(sup, port, name, host)
        self.domain, self.selector, self.key = domain, selector, Path(key)

    def _settings(self) -> List[str]:
        """The settings of the mode (the rest of the file is common)."""
        return [
            "Mode s",
            f"Domain {self.domain}",
            f"Selector {self.selector}",
            f"KeyFile {self.key}",
            # The key sits below /tmp (world-writable, sticky): OpenDKIM's
            # safe-key check would refuse it for that alone.
            "RequireSafeKeys false",
            "Canonicalization relaxed/simple",
            "SignatureAlgorithm rsa-sha256",
            "InternalHosts 127.0.0.0/8",
        ]

    def _write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "opendkim.conf"
        conf.write_text("\n".join([
            f"# Generated by tests/integration/milters.py: a private OpenDKIM ({self.name}).",
            "Background no",
            "Syslog no",
            *self._settings(),
            f"Socket inet:{self.port}@{self.host}",
            f"PidFile {self.dir / 'opendkim.pid'}",
            "UMask 077",
        ]) + "\n")
        return conf

    def start(self, timeout: float = START_TIMEOUT) -> None:
        conf = self._write()
        # -f: foreground; -l would log to syslog, which a test has none of:
        # errors go to stderr, into the log.
        p = self.sup.spawn(self.name, [OPENDKIM, "-f", "-x", str(conf)], self.log,
                           ready={"port": self.port}, kind="opendkim")
        _wait_milter(p, self.host, self.port, f"opendkim on {self.address}", self.log, timeout)


class OpenDkimVerifier(OpenDkim):
    """OpenDKIM in verify mode (Mode v): checks every DKIM signature and
    adds an Authentication-Results field (dkim=...) under authserv_id,
    asking the DNS server `nameserver` (an address answering on port 53:
    an Unbound's or port53_nsd's host). No client is internal (InternalHosts
    would otherwise default to 127.0.0.1, and loopback mail would be
    treated as outbound), none is skipped (PeerList empty)."""

    name = "opendkim-verify"

    def __init__(self, sup: mslocal.Supervisor, port: int, *, nameserver: str,
                 authserv_id: str = "mx.mstest", name: Optional[str] = None,
                 host: str = mslocal.HOST):
        _Milter.__init__(self, sup, port, name, host)
        self.nameserver, self.authserv_id = nameserver, authserv_id

    def _settings(self) -> List[str]:
        (self.dir / "internal-hosts").write_text("192.0.2.254\n")
        return [
            "Mode v",
            f"AuthservID {self.authserv_id}",
            f"InternalHosts {self.dir / 'internal-hosts'}",
            # OpenDKIM resolves through libunbound: without this it would
            # recurse from the root servers.
            f"Nameservers {self.nameserver}",
        ]


def port53_nsd(sup: mslocal.Supervisor, zones: Dict[str, Sequence[str]],
               name: str = "nsd53") -> Nsd:
    """NSD serving zones on port 53 of a random free 127.x.y.z, started:
    reachable through a resolv.conf (OpenDMARC) as well as through
    `nsd.upstream` (mailstream-authcheck --dns, the worker's [dns] upstream)."""
    nsd = Nsd(sup, 53, {z: list(r) for z, r in zones.items()}, name=name,
              host=free_loopback_dns_host())
    nsd.start()
    return nsd


class OpenDmarc(_Milter):
    """OpenDMARC that rejects DMARC failures (RejectFailures) and resolves
    through `nameserver` (an address answering on port 53, e.g.
    port53_nsd's host; see the module doc). SPF: by default it checks SPF
    itself (SPFSelfValidate) and ignores SPF results in the message; with
    spf_self_validate=False it takes them from the Authentication-Results
    (or Received-SPF) field an SPF policy service under the same
    authserv_id added (postfix-policyd-spf-python, Header_Type AR), as a
    Postfix MX with both runs them."""

    name = "opendmarc"

    def __init__(self, sup: mslocal.Supervisor, port: int, *, nameserver: str,
                 authserv_id: str = "mx.mstest", name: Optional[str] = None,
                 host: str = mslocal.HOST, spf_self_validate: bool = True):
        super().__init__(sup, port, name, host)
        self.nameserver, self.authserv_id = nameserver, authserv_id
        self.spf_self_validate = spf_self_validate

    def _write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "resolv.conf").write_text(
            f"nameserver {self.nameserver}\noptions timeout:1 attempts:2\n")
        # OpenDMARC's IgnoreHosts defaults to 127.0.0.1: every test client
        # would be skipped. A documentation address stands in.
        (self.dir / "ignore-hosts").write_text("192.0.2.254\n")
        conf = self.dir / "opendmarc.conf"
        conf.write_text("\n".join([
            "# Generated by tests/integration/milters.py: a private OpenDMARC.",
            "Background false",
            "Syslog false",
            f"AuthservID {self.authserv_id}",
            "RejectFailures true",
            f"SPFSelfValidate {str(self.spf_self_validate).lower()}",
            f"SPFIgnoreResults {str(self.spf_self_validate).lower()}",
            f"IgnoreHosts {self.dir / 'ignore-hosts'}",
            "RequiredHeaders false",
            "FailureReports false",
            f"Socket inet:{self.port}@{self.host}",
            f"PidFile {self.dir / 'opendmarc.pid'}",
            "UMask 077",
            "DNSTimeout 5",
        ]) + "\n")
        return conf

    def start(self, timeout: float = START_TIMEOUT) -> None:
        conf = self._write()
        p = self.sup.spawn(self.name, with_resolv_conf(self.dir / "resolv.conf",
                                                       [OPENDMARC, "-f", "-c", str(conf)]),
                           self.log, ready={"port": self.port}, kind="opendmarc")
        _wait_milter(p, self.host, self.port, f"opendmarc on {self.address}", self.log, timeout)


# ---------------------------------------------------------------------------
# The test world shared by tests/integration/test_*milter*.py
# ---------------------------------------------------------------------------

TLD = "mstest"                 # not under "test.": see dns_zone.py
SIGNER = f"signer.{TLD}"       # OpenDKIM signs From: @signer.mstest
SELECTOR = "sel"
DMARC_REJECT = f"reject.{TLD}"  # p=reject, SPF -all for everyone: DMARC fails
DMARC_PASS = f"pass.{TLD}"      # p=reject, SPF passes for loopback: DMARC passes
AUTHSERV_ID = "mx.mstest"
# OpenDMARC's own SPF check (libspf2, SPFSelfValidate) passes every loopback
# client whatever the record says ("localhost is always allowed"), so a DMARC
# failure is made by alignment: the envelope sender of a spoofed From:
# @reject.mstest is in this other domain (SPF pass, not aligned, no DKIM).
SPOOFER = f"spoofer.{TLD}"

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def mstest_zones(dkim_key: Path) -> Dict[str, List[str]]:
    """The one test zone: the signer's DKIM key, and DMARC/SPF records for
    a domain whose mail fails DMARC and one whose mail passes."""
    return {TLD: [
        f"{SELECTOR}._domainkey.signer TXT {dkim_txt_record(dkim_key)}",
        'signer TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        '_dmarc.reject TXT "v=DMARC1; p=reject"',
        'reject TXT "v=spf1 -all"',
        'spoofer TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        '_dmarc.pass TXT "v=DMARC1; p=reject"',
        'pass TXT "v=spf1 ip4:127.0.0.0/8 -all"',
    ]}


def message(sender: str, rcpt: str, subject: str, body: str = "Hello.\r\n",
            extra_headers: str = "") -> bytes:
    mid = f"<{random.getrandbits(64):016x}@{sender.rpartition('@')[2]}>"
    return (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 06 Dec 2026 08:00:00 +0000\r\nMessage-ID: {mid}\r\n"
            f"{extra_headers}\r\n{body}").encode()


def gtube_message(sender: str, rcpt: str, subject: str = "gtube") -> bytes:
    return message(sender, rcpt, subject, f"This is spam.\r\n{GTUBE}\r\n")


def header_values(data: bytes, name: str) -> List[str]:
    """The values of every header field called name (unfolded), in order."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields: List[List[str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1] += " " + line.strip()
            continue
        k, sep, v = line.partition(":")
        if sep:
            fields.append([k.strip().lower(), v.strip()])
    return [v for k, v in fields if k == name.lower()]


BUILD = Path(os.environ.get("MAILSTREAM_BUILD_DIR")
             or Path(__file__).resolve().parents[2] / "build")
AUTHCHECK = BUILD / "mailstream-authcheck"


def dkim_verdicts(upstream: str, data: bytes, mail_from: str) -> List[tuple]:
    """mailstream-authcheck's DKIM results for data, resolving through
    upstream ("HOST@PORT"): [(result, header.d), ...]."""
    r = subprocess.run([str(AUTHCHECK), "--dns", upstream, "--ip", "127.0.0.1",
                        "--mail-from", mail_from, "--authserv-id", AUTHSERV_ID, "-"],
                       input=data, capture_output=True, timeout=60)
    assert r.returncode == 0, f"authcheck exited {r.returncode}: {r.stderr.decode()}"
    return re.findall(r"dkim=(\w+)(?: \([^)]*\))? header\.d=([\w.-]+)", r.stdout.decode())


@pytest.fixture(scope="module")
def milter_sup():
    """A supervisor for the module's milters, in a 0755 directory under
    /var/tmp, outside pytest's 0700 temp tree: a Postfix instance kept there
    must be enterable by Postfix's daemons (user postfix), and its
    maillog_file must lie under /var (Postfix's maillog_file_prefixes).
    Removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="ms-milter-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    sup = mslocal.Supervisor(root)
    try:
        yield sup
    finally:
        sup.stop_all()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dkim_key(milter_sup) -> Path:
    return make_dkim_key(milter_sup.state_dir / "keys" / f"{SELECTOR}.pem")


@pytest.fixture(scope="module")
def mstest_dns(milter_sup, dkim_key) -> Nsd:
    """NSD with mstest_zones() on 127.x.y.z:53."""
    nsd = port53_nsd(milter_sup, mstest_zones(dkim_key))
    yield nsd
    nsd.stop()


@pytest.fixture(scope="session")
def rspamd_hs_cache(tmp_path_factory) -> Path:
    """rspamd's compiled Hyperscan databases, shared by every rspamd of the
    run: the compile takes most of a start (about 60 s against 25 s on the
    loaded 2-core machine), and rspamd reuses databases that match its rules."""
    # A fixed name under the run's base directory: each test module that
    # imports this fixture gets its own instance of it, all the same place.
    d = tmp_path_factory.getbasetemp() / "rspamd-hs-cache"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def rspamd(milter_sup, rspamd_hs_cache) -> Rspamd:
    r = Rspamd(milter_sup, mslocal.free_port(), hs_cache=rspamd_hs_cache)
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def opendkim(milter_sup, dkim_key) -> OpenDkim:
    d = OpenDkim(milter_sup, mslocal.free_port(), domain=SIGNER, selector=SELECTOR, key=dkim_key)
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def opendmarc(milter_sup, mstest_dns) -> OpenDmarc:
    d = OpenDmarc(milter_sup, mslocal.free_port(), nameserver=mstest_dns.host,
                  authserv_id=AUTHSERV_ID)
    d.start()
    yield d
    d.stop()


# ---------------------------------------------------------------------------
# Mailstream's side: a cluster whose frontend calls milters, and its replies
# ---------------------------------------------------------------------------

RCPT = "bob@mailstream.test"


def milter_cluster(cluster_factory, milters: Sequence[_Milter], **keys):
    """A cluster (one frontend, one worker, its own sink) whose frontend has
    `[milter] servers` = the milters' addresses in order, plus keys (e.g.
    default_action="accept"); the timeouts are kept short so a test that
    waits out a stalled milter stays short."""
    conf = {"servers": ", ".join(m.address for m in milters), "connect_timeout": 5,
            "command_timeout": 30, "content_timeout": 60, **keys}
    return cluster_factory(frontends=1, workers=1, frontend_extra={"milter": conf})


def replies_of(port: int, sender: str, msg: bytes, rcpt: str = RCPT,
               helo: str = "client.mstest") -> List[bytes]:
    """One SMTP transaction, a command at a time: the replies to the
    greeting, EHLO, MAIL, RCPT, DATA and the end of the message, stopping at
    the first refusal (a 4xx/5xx reply) or a closed connection."""
    from test_frontend_smtp import Client  # the raw client the frontend tests use
    out: List[bytes] = []
    c = Client(port)
    try:
        steps = [None, f"EHLO {helo}", f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>", "DATA"]
        for step in steps + [msg.replace(b"\r\n.", b"\r\n..") + b".\r\n"]:
            if isinstance(step, str):
                c.send(step.encode() + b"\r\n")
            elif step is not None:
                c.send(step)
            try:
                r = c.reply()
            except ConnectionError:
                r = b""
            out.append(r)
            if not r or r[:1] in (b"4", b"5"):
                break
        else:
            c.send(b"QUIT\r\n")
    finally:
        c.close()
    return out


def refusal(replies: List[bytes]) -> bytes:
    """The refusal that ended a transaction (replies_of), or b"" when it was queued."""
    last = replies[-1] if replies else b""
    return last if last[:1] in (b"4", b"5") or not last else b""


def queued(replies: List[bytes]) -> bool:
    return len(replies) == 6 and replies[-1].startswith(b"250 2.0.0 Ok: queued as ")


def delivered(sink: mslocal.Sink, subject: str, timeout: float = 60.0) -> bytes:
    """The one message with this Subject at the sink (waits for it)."""
    def mine():
        return [m for m in sink.messages() if f"\r\nSubject: {subject}\r\n".encode()
                in b"\r\n" + m.data]
    mslocal.wait_until(lambda: len(mine()) == 1, timeout, f"sink: message {subject!r}")
    return mine()[0].data


def not_delivered(sink: mslocal.Sink, subject: str) -> bool:
    return not [m for m in sink.messages() if f"Subject: {subject}\r\n".encode() in m.data]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric name whose labels include labels
    (0 when there is none)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
