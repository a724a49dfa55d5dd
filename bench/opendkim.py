"""bench/opendkim.py - a private OpenDKIM signer for the `sign` workload's
Postfix peer (issue 19), and the keys both systems sign with.

Debian's opendkim package is installed with its service disabled
(cluster/deps.sh); this starts /usr/sbin/opendkim in the foreground with a
config file of its own, listening on a loopback port as a milter, and the
harness stops it by its pid (mslocal.Supervisor).  /etc/opendkim.conf is
never read.  tests/integration (branch mltx) runs OpenDKIM the same way for
the milter tests; the bench keeps its own, smaller runner so it needs no
test fixture.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mslocal

OPENDKIM = "/usr/sbin/opendkim"


def make_key(path: Path, algorithm: str) -> Path:
    """A private key in PEM: "rsa" (2048 bits, the floor RFC 8301 §3.2 sets
    for signers) or "ed25519" (RFC 8463).  Mode 0600: OpenDKIM refuses a
    key other users can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if algorithm == "rsa"
            else ["-algorithm", "ed25519"])
    subprocess.run(["openssl", "genpkey", *opts, "-out", str(path)], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    os.chmod(path, 0o600)
    return path


class OpenDkimSigner:
    """opendkim -f in sign mode (Mode s): mail whose From: domain is `domain`
    from a client in InternalHosts (loopback) gets a DKIM-Signature by `key`
    under `selector`, relaxed/simple as the worker signs."""

    def __init__(self, sup: mslocal.Supervisor, port: int, domain: str, selector: str,
                 key: Path, name: str = "opendkim"):
        self.sup, self.port, self.name = sup, port, name
        self.domain, self.selector, self.key = domain, selector, key
        self.dir = sup.state_dir / name

    @property
    def milter(self) -> str:
        """The address in Postfix's smtpd_milters syntax."""
        return f"inet:{mslocal.HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "opendkim.conf"
        conf.write_text("\n".join([
            "# bench/opendkim.py: a private signer for the bench's Postfix",
            "Background no", "Syslog no", "Mode s",
            f"Domain {self.domain}", f"Selector {self.selector}", f"KeyFile {self.key}",
            "RequireSafeKeys false",   # the state directory is below /var/tmp
            "Canonicalization relaxed/simple", "SignatureAlgorithm rsa-sha256",
            "InternalHosts 127.0.0.0/8",
            f"Socket inet:{self.port}@{mslocal.HOST}",
            f"PidFile {self.dir / 'opendkim.pid'}", "UMask 077", ""]))
        p = self.sup.spawn(self.name, [OPENDKIM, "-f", "-x", str(conf)], self.dir / "log")
        # Listening is enough: Postfix connects per SMTP session.
        mslocal.wait_until(lambda: mslocal.port_open(mslocal.HOST, self.port), timeout,
                           "opendkim", p.alive, log_path=self.dir / "log")

    @property
    def pid(self) -> int:
        return self.sup.procs[self.name].pid

    def stop(self) -> None:
        self.sup.stop(self.name, 10)


