"""A real authoritative DNS server (NSD, from Debian) on loopback for tests.

    nsd = Nsd(supervisor, port, {"example.test": ["@ MX 10 mx1", "mx1 A 127.0.0.2"]})
    nsd.start()          # waits until every zone answers
    nsd.upstream         # "127.0.0.1@PORT", for the worker's [dns] upstream

Each zone gets an SOA and NS record automatically; records are zone-file
lines relative to the zone's origin. NSD runs in the foreground (-d) under
the supervisor, with every file it writes (pid, xfrd state, zone list, log)
inside its own state directory; it never reads the host's configuration.
The worker's resolver (libunbound) forwards to it and NSD answers
authoritatively for its zones (it ignores the RD bit), NXDOMAIN included.

Zones named in `signed` are signed with DNSSEC (ldns-signzone from Debian's
ldnsutils, a KSK and a ZSK made by ldns-keygen for each run); `trust_anchor`
is then a file with their DS records, for the worker's [dns] trust_anchor.
The other zones stay unsigned, so under that anchor they are insecure.

`Unbound` is a caching resolver (Debian's unbound daemon) in front of an
NSD, on port 53 of a random free 127.x.y.z (`free_loopback_dns_host`), so a
program that only reads /etc/resolv.conf (libresolv, pyspf) can be pointed
at it: `with_resolv_conf` wraps a command so that it runs in a private mount
namespace (`unshare -m`, root only) where a resolv.conf of ours naming that
address is bind-mounted over /etc/resolv.conf; the host's file is untouched.

Do not put test zones under "test.": libunbound has built-in static local
zones for the RFC 6761 names ("test", "invalid", "onion", ...) and answers
NXDOMAIN for them without asking the upstream. The worker tests use the
made-up TLD "mstest".
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

import mslocal

NSD = "/usr/sbin/nsd"
UNBOUND = "/usr/sbin/unbound"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
LDNS_SIGNZONE = shutil.which("ldns-signzone")
LDNS_KEYGEN = shutil.which("ldns-keygen")


def _query(host: str, port: int, name: str, qtype: int = 6, timeout: float = 0.5) -> Optional[int]:
    """One UDP query; returns the RCODE of the answer or None."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, (host, port))
        data, _ = s.recvfrom(4096)
    except OSError:
        return None
    finally:
        s.close()
    if len(data) < 12 or struct.unpack(">H", data[:2])[0] != qid:
        return None
    return data[3] & 0x0F


class Nsd:
    def __init__(self, sup: mslocal.Supervisor, port: int, zones: Dict[str, List[str]],
                 name: str = "nsd", host: str = mslocal.HOST, signed: tuple = ()):
        self.sup, self.port, self.zones, self.name, self.host = sup, port, zones, name, host
        self.signed = tuple(signed)
        self.dir = sup.state_dir / name
        self.log = self.dir / "nsd.log"
        self.trust_anchor: Optional[Path] = None

    def _sign(self, zone: str, path: Path) -> Path:
        """Sign path with a fresh KSK and ZSK; note the KSK's DS. Returns
        the signed file."""
        if not (LDNS_SIGNZONE and LDNS_KEYGEN):
            raise mslocal.MsLocalError("ldns-signzone not installed: run `make deps`")
        kdir = self.dir / f"keys-{zone}"
        kdir.mkdir(parents=True, exist_ok=True)

        def run(*argv: str) -> str:
            r = subprocess.run(list(argv), cwd=kdir, capture_output=True, text=True,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise mslocal.MsLocalError(f"{argv[0]} failed: {r.stderr.strip()}")
            return r.stdout.strip()
        ksk = run(LDNS_KEYGEN, "-a", "ECDSAP256SHA256", "-k", zone)
        zsk = run(LDNS_KEYGEN, "-a", "ECDSAP256SHA256", zone)
        run(LDNS_SIGNZONE, "-n", "-f", str(path) + ".signed", str(path), str(kdir / ksk),
            str(kdir / zsk))
        ta = self.dir / "trust-anchors"
        with open(ta, "a") as f:
            f.write((kdir / f"{ksk}.ds").read_text())
        self.trust_anchor = ta
        return Path(str(path) + ".signed")

    @property
    def upstream(self) -> str:
        return f"{self.host}@{self.port}"

    def _write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f"  ip-address: {self.host}@{self.port}",
            '  username: ""',
            f'  zonesdir: "{self.dir}"',
            f'  pidfile: "{self.dir}/nsd.pid"',
            f'  xfrdfile: "{self.dir}/xfrd.state"',
            f'  zonelistfile: "{self.dir}/zone.list"',
            f'  logfile: "{self.log}"',
            '  database: ""',
            "  verbosity: 1",
            "  server-count: 1",
            "  tcp-count: 16",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone, records in self.zones.items():
            path = self.dir / f"{zone}.zone"
            lines = [f"$ORIGIN {zone}.", "$TTL 30",
                     f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 30",
                     f"@ IN NS ns.{zone}.", "ns IN A 127.0.0.1"]
            lines += records
            path.write_text("\n".join(lines) + "\n")
            if zone in self.signed:
                path = self._sign(zone, path)
            conf += ["zone:", f"  name: {zone}", f'  zonefile: "{path}"']
        p = self.dir / "nsd.conf"
        p.write_text("\n".join(conf) + "\n")
        return p

    def start(self, timeout: float = 20.0) -> None:
        ta = self.dir / "trust-anchors"
        if ta.exists():
            ta.unlink()
        conf = self._write()
        proc = self.sup.spawn(self.name, [NSD, "-d", "-c", str(conf)], self.dir / "stdout.log")

        def ready() -> bool:
            return all(_query(self.host, self.port, z) == 0 for z in self.zones)
        mslocal.wait_until(ready, timeout, f"nsd on {self.upstream}", proc.alive,
                           log_path=self.log)

    def stop(self) -> None:
        self.sup.stop(self.name, 5.0)


def free_loopback_dns_host() -> str:
    """A 127.x.y.z whose UDP and TCP port 53 are free (for a resolv.conf,
    which names servers without a port)."""
    for _ in range(50):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
        ok = True
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind((host, 53))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return host
    raise mslocal.MsLocalError("no 127.x.y.z with port 53 free")


def with_resolv_conf(resolv_conf: Path, argv: Sequence[str]) -> List[str]:
    """argv run in a new mount namespace in which resolv_conf is
    bind-mounted over /etc/resolv.conf. The mount exists only there and
    disappears with the namespace's last process (argv, exec'd by sh; a
    daemon it forks keeps it). Needs root."""
    cmd = " ".join(f"'{a}'" for a in argv)
    script = f'mount --bind "{resolv_conf}" /etc/resolv.conf && exec {cmd}'
    return [UNSHARE, "-m", "--propagation", "private", "sh", "-c", script]


class Unbound:
    """A caching resolver on HOST:53 (HOST a free 127.x.y.z unless given)
    that sends the queries for `zones` to an authoritative server
    ("ip@port", e.g. Nsd.upstream) as stub zones, without DNSSEC
    validation. Nothing else is reachable: the tests have no internet.

        ub = Unbound(sup, nsd.upstream, ["example.mstest"]); ub.start()
        ub.host                       # for a resolv.conf, OpenDKIM's Nameservers
        ub.upstream                   # "HOST@53", for the worker's [dns] upstream
        ub.resolv_conf                # a resolv.conf naming it (with_resolv_conf)
    """

    def __init__(self, sup: mslocal.Supervisor, authority: str, zones: Sequence[str],
                 name: str = "unbound", host: Optional[str] = None, threads: int = 1):
        self.sup, self.authority, self.zones, self.name = sup, authority, list(zones), name
        self.host = host or free_loopback_dns_host()
        self.threads = threads
        self.dir = sup.state_dir / name
        self.log = self.dir / "unbound.log"
        self.resolv_conf = self.dir / "resolv.conf"

    @property
    def upstream(self) -> str:
        return f"{self.host}@53"

    def _write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f"  interface: {self.host}",
            "  port: 53",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.dir}"',
            f'  pidfile: "{self.dir}/unbound.pid"',
            f'  logfile: "{self.log}"',
            "  use-syslog: no",
            "  do-daemonize: no",
            "  verbosity: 1",
            f"  num-threads: {self.threads}",
            "  access-control: 127.0.0.0/8 allow",
            # The authority is on loopback, which unbound does not ask by default.
            "  do-not-query-localhost: no",
            '  module-config: "iterator"',
            "remote-control:",
            "  control-enable: no",
        ]
        for z in self.zones:
            conf += ["stub-zone:", f'  name: "{z}"', f"  stub-addr: {self.authority}"]
        p = self.dir / "unbound.conf"
        p.write_text("\n".join(conf) + "\n")
        self.resolv_conf.write_text(f"nameserver {self.host}\noptions timeout:2 attempts:2\n")
        return p

    def start(self, timeout: float = 20.0) -> None:
        conf = self._write()
        proc = self.sup.spawn(self.name, [UNBOUND, "-d", "-c", str(conf)],
                              self.dir / "stdout.log")

        def ready() -> bool:
            return all(_query(self.host, 53, z) == 0 for z in self.zones)
        mslocal.wait_until(ready, timeout, f"unbound on {self.upstream}", proc.alive,
                           log_path=self.log)

    @property
    def pid(self) -> int:
        return self.sup.procs[self.name].pid

    def stop(self) -> None:
        self.sup.stop(self.name, 5.0)


def free_port_on(addrs) -> int:
    """A port free on every one of these loopback addresses, for zones whose
    hosts each listen on their own 127.0.0.x with the same port (the
    worker's [delivery] smtp_port)."""
    for _ in range(20):
        p = mslocal.free_port()
        ok = True
        for a in addrs:
            s = socket.socket()
            try:
                s.bind((a, p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return p
    pytest.skip("no port free on the loopback addresses")


def module_nsd(zones: Dict[str, List[str]]):
    """A module-scoped fixture: NSD serving zones for the tests of one
    module, stopped after the last. In the module: `nsd = module_nsd(ZONES)`."""
    @pytest.fixture(scope="module")
    def nsd(tmp_path_factory):
        sup = mslocal.Supervisor(tmp_path_factory.mktemp("nsd"))
        n = Nsd(sup, mslocal.free_port(), zones)
        n.start()
        yield n
        sup.stop_all()
    return nsd
