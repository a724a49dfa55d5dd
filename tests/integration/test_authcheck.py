"""mailstream-authcheck from the command line (issue 22), against NSD.

  * --now UNIX_TIME, the testing aid for old corpora: signatures made with
    --sign --now T carry t=T; checked at the real time, a T a month ahead is
    "t= in the future" (permerror), checked with --now T they pass.  The same
    clock decides x= (the verifier's unit tests cover that edge).
  * A HELO name longer than a domain name can be (RFC 7208 §4.3): SPF none,
    through --spf-only and through the full check (the worker's policy
    stage), and it does not stop the MAIL FROM check; past what an SMTP
    command line can carry it is a usage error.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

import mslocal
from dns_zone import Nsd

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("MAILSTREAM_BUILD_DIR") or REPO / "build")
AUTHCHECK = BUILD / "mailstream-authcheck"
DOMAIN = "signer.mstest"
MSG = (f"From: Alice <alice@{DOMAIN}>\r\nTo: bob@example.org\r\nSubject: old corpus\r\n"
       "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nHello.\r\n").encode()
# The longest EHLO argument a 512-octet SMTP command line holds is 505.
HELO_MAX = 512


def run(*args: str, stdin: bytes = b"", ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(AUTHCHECK), *args], input=stdin, capture_output=True, timeout=60)
    if ok:
        assert r.returncode == 0, f"authcheck {args} exited {r.returncode}: {r.stderr.decode()}"
    return r


def record(key: Path) -> str:
    return run("--record", "--key", str(key)).stdout.decode().strip()


def txt(rec: str) -> str:
    """A TXT RDATA in zone-file form: strings of at most 255 octets."""
    return " ".join(f'"{rec[i:i + 255]}"' for i in range(0, len(rec), 255))


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authcheck")
    keys = {}
    for sel, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                      ("ed", ["-algorithm", "ed25519"])):
        keys[sel] = tmp / f"{sel}.pem"
        subprocess.run(["openssl", "genpkey", *args, "-out", str(keys[sel])], check=True,
                       capture_output=True)
    zone = [f"{sel}._domainkey.signer TXT {txt(record(k))}" for sel, k in keys.items()]
    zone.append('signer TXT "v=spf1 ip4:192.0.2.1 -all"')
    sup = mslocal.Supervisor(tmp)
    nsd = Nsd(sup, mslocal.free_port(), {"mstest": zone})
    nsd.start()
    yield nsd.upstream, keys
    nsd.stop()
    sup.stop_all()


def check(upstream: str, msg: bytes, *extra: str) -> str:
    r = run("--dns", upstream, "--ip", "192.0.2.1", "--mail-from", f"alice@{DOMAIN}",
            "--authserv-id", "mx.mstest", *extra, "-", stdin=msg)
    return r.stdout.decode()


def dkim_results(out: str) -> List[str]:
    """(result, comment) of each dkim= resinfo of our Authentication-Results."""
    return re.findall(r"dkim=(\w+)(?: \(([^)]*)\))? header\.d=", out)


def test_now_verifies_at_the_given_time(dns):
    upstream, keys = dns
    t = int(time.time()) + 30 * 86400
    signed = run("--sign", "--now", str(t),
                 "--domain", DOMAIN, "--selector", "rsa", "--key", str(keys["rsa"]),
                 "--domain", DOMAIN, "--selector", "ed", "--key", str(keys["ed"]),
                 "-", stdin=MSG).stdout
    assert len(re.findall(rb"\bt=%d;" % t, signed)) == 2, signed

    out = check(upstream, signed)
    assert dkim_results(out) == [("permerror", "t= in the future")] * 2, out
    out = check(upstream, signed, "--now", str(t))
    assert [r for r, _ in dkim_results(out)] == ["pass", "pass"], out
    assert "verdict: pass" in out, out


def test_now_is_checked():
    for bad in ("0", "-5", "12x", "", "253402300800"):
        r = run("--now", bad, "--spf-only", "--ip", "192.0.2.1", ok=False)
        assert r.returncode == 1, (bad, r.stdout)
        assert b"--now" in r.stderr


def test_long_helo_is_spf_none(dns):
    upstream, _ = dns
    for n in (256, 300, 505):
        helo = ".".join(["a" * 9] * 60)[:n].rstrip(".")
        # The HELO identity standing in for the null reverse-path.
        r = run("--spf-only", "--dns", upstream, "--ip", "192.0.2.1", "--helo", helo)
        assert r.stdout.decode().splitlines()[:2] == ["spf: none", "problem: malformed domain"]
        # A MAIL FROM check is not stopped by it.
        r = run("--spf-only", "--dns", upstream, "--ip", "192.0.2.1", "--helo", helo,
                "--mail-from", f"alice@{DOMAIN}")
        assert r.stdout.decode().splitlines()[0] == "spf: pass"
        # The full check: both identities, through the policy stage.
        out = re.sub(r"\r?\n\t", " ", check(upstream, MSG, "--helo", helo))
        assert f"spf=none (malformed domain) smtp.helo={helo};" in out, out
        assert f"spf=pass smtp.mailfrom=alice@{DOMAIN};" in out, out

    r = run("--spf-only", "--dns", upstream, "--ip", "192.0.2.1", "--helo", "a" * (HELO_MAX + 1),
            ok=False)
    assert r.returncode == 1 and b"--helo" in r.stderr
