"""Private instances of the internet's MTAs as interoperability peers (issue 24).

Postfix, Exim, OpenSMTPD and Sendmail, each on a loopback port with a
configuration, spool and log of its own under one directory, started as a
child of mslocal.Supervisor and stopped by that pid (Postfix: by the master
pid in its own queue directory, bench/postfix_instance.py). The machine's own
MTA configuration, spool and services are never read for settings nor touched.

Where the programs come from:
  Postfix    the system package (cluster/deps.sh step apt), run with
             `postfix -c DIR` (bench/postfix_instance.PostfixInstance).
  the others their Debian packages conflict with postfix and with each other
             (each provides mail-transport-agent), so cluster/deps.sh step mta
             only unpacks their .deb files into $MAILSTREAM_CACHE/mta/root,
             and they run from there (LD_LIBRARY_PATH for the libraries the
             machine lacks).
Compiled-in users. Exim insists on user Debian-exim, OpenSMTPD on opensmtpd and
opensmtpq (Debian's names), Sendmail on smmsp/mailnull: the Debian maintainer
scripts would create system users. We do not: nss_wrapper (LD_PRELOAD, also
unpacked) gives each instance a passwd and group file of its own in which they
exist. Exim and Sendmail run from copies of their binaries without the
setuid/setgid bit (a set-id program ignores LD_PRELOAD and LD_LIBRARY_PATH).
Sendmail also gets a UTS namespace with its own host name (unshare --uts).
Everything else the tests need is in the root directory given to a peer,
which must be traversable by every uid (Exim's processes run as its user).
Compiled-in paths. Exim and Sendmail take every path from their
configuration (-C). OpenSMTPD has its spool (/var/spool/smtpd), control
socket (/var/run/smtpd.sock) and chroot (/var/lib/opensmtpd/empty) compiled
in, with no option to move them: it runs in a private mount namespace
(unshare -m) in which our directories are bind-mounted over /var/spool,
/var/run and /var/lib, so the host's directories are neither read nor written.

Every peer is configured the same way (the routes the tests rely on):
  ms.test, mailstream.test, nope.test,
  retry.ms.test                        -> [127.0.0.2]:mx_port, never TLS
  tls.ms.test                          -> [127.0.0.1]:mx_port, STARTTLS
                                          required, certificate not checked
  <name>.nodsn.far.test                -> [127.0.0.1]:nodsn_port, a sink
                                          that offers no DSN (so a
                                          NOTIFY=SUCCESS owes a "relayed" DSN)
  any other domain                     -> [127.0.0.1]:sink_port, no TLS
and accepts mail from 127.0.0.0/8 for any domain, offering STARTTLS with the
given self-signed certificate, refusing only refuse@ (550 5.1.1); temporary
failures are retried within seconds. Needs root (user switching, namespaces).
Not thread-safe; one test process drives a peer.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "cluster"))
sys.path.insert(0, str(REPO / "bench"))

import mslocal  # noqa: E402
from postfix_instance import PostfixInstance, postfix_version  # noqa: E402

CACHE = Path(os.environ.get("MAILSTREAM_CACHE") or (Path.home() / ".cache" / "mailstream"))
MTA_ROOT = CACHE / "mta" / "root"
LIBDIR = MTA_ROOT / "usr" / "lib" / "x86_64-linux-gnu"
NSS_WRAPPER = LIBDIR / "libnss_wrapper.so"

EXIM = MTA_ROOT / "usr" / "sbin" / "exim4"
SMTPD = MTA_ROOT / "usr" / "sbin" / "smtpd"
SENDMAIL = MTA_ROOT / "usr" / "libexec" / "sendmail" / "sendmail"
SENDMAIL_CF = MTA_ROOT / "usr" / "share" / "sendmail" / "cf"

# uids/gids for the users the programs insist on (in the instance's own
# passwd file only; no file on the host is owned by them outside our dirs).
PRIVATE_IDS = {"Debian-exim": 64901, "opensmtpd": 64902, "opensmtpq": 64903,
               "smmsp": 64904, "mailnull": 64905}


class MtaError(Exception):
    pass


def missing() -> Optional[str]:
    """Why the unpacked MTAs cannot run here, or None."""
    for p in (EXIM, SMTPD, SENDMAIL, NSS_WRAPPER):
        if not os.access(p, os.X_OK if p != NSS_WRAPPER else os.R_OK):
            return f"{p} missing: run `cluster/deps.sh mta` (make deps)"
    if os.geteuid() != 0:
        return "the private MTAs need root (they switch users, OpenSMTPD needs unshare -m)"
    return None


def deb_version(package: str) -> str:
    """The Debian version of an unpacked package (from its .deb's name)."""
    for deb in (CACHE / "mta" / "debs").glob(f"{package}_*.deb"):
        return deb.name.split("_")[1]
    return "?"


def wait_banner(port: int, timeout: float, host: str = mslocal.HOST) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


class Peer:
    """One MTA instance. Subclasses write the configuration and the argv."""

    name = "?"
    # Whether it declares BODY=8BITMIME when it relays a message received
    # with it (RFC 6152 §3); Exim and OpenSMTPD pass the octets on undeclared.
    relays_body_8bitmime = True
    # Whether its DSNs carry Original-Envelope-Id when the message had an
    # ENVID (RFC 3464 §2.2.1 says they must); OpenSMTPD 6.8 leaves it out.
    dsn_has_envid = True
    # The busy listener (busy_port): at most one connection at a time from a
    # client, more get a 4xx greeting; and at most a few messages per some
    # seconds, more get a 4xx. None: why the MTA has no such listener.
    busy_limits: Optional[str] = None
    busy_reason = ""
    # Why the busy listener has no message rate limit (a 45x for the
    # messages over a rate); empty: it has one.
    busy_rate_reason = ""

    def __init__(self, sup: mslocal.Supervisor, root: Path, port: int, mx_port: int,
                 sink_port: int, cert: Path, key: Path, nodsn_port: int = 0,
                 busy_port: int = 0):
        """root: the instance's directory. Its parents must be traversable by
        every uid (not pytest's 0700 temporary directories): Exim's processes
        run as its own user and re-execute the binary. nodsn_port: a sink
        that does not offer DSN, for <name>.nodsn.far.test. busy_port: a
        second listener of the MTA's with a low connection limit and a rate
        limit (BUSY_LIMITS), for test_out_their_limits."""
        self.sup, self.port, self.mx_port, self.sink_port = sup, port, mx_port, sink_port
        self.nodsn_port, self.busy_port = nodsn_port, busy_port
        self.root = Path(root) / self.name
        self.cert, self.key = Path(cert), Path(key)
        self.log = self.root / "log" / f"{self.name}.log"

    # -- private users (nss_wrapper) --
    def env(self) -> Dict[str, str]:
        passwd, group = self.root / "passwd", self.root / "group"
        if not passwd.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            pw = Path("/etc/passwd").read_text()
            gr = Path("/etc/group").read_text()
            for user, uid in PRIVATE_IDS.items():
                pw += f"{user}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
                gr += f"{user}:x:{uid}:\n"
            passwd.write_text(pw)
            group.write_text(gr)
        # Our own host name, resolvable without DNS (Sendmail otherwise
        # sleeps a minute trying to qualify the machine's short name).
        fqdn = f"{self.name}.interop.test"
        hosts = self.root / "hosts"
        hosts.write_text(f"127.0.0.1 {fqdn} localhost\n127.0.0.2 localhost2\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "NSS_"))}
        env.update(LD_LIBRARY_PATH=str(LIBDIR), LD_PRELOAD=str(NSS_WRAPPER),
                   NSS_WRAPPER_PASSWD=str(passwd), NSS_WRAPPER_GROUP=str(group),
                   NSS_WRAPPER_HOSTS=str(hosts), NSS_WRAPPER_HOSTNAME=fqdn)
        return env

    def values(self) -> Dict[str, str]:
        return {"ROOT": str(self.root), "PORT": str(self.port), "MX_PORT": str(self.mx_port),
                "SINK_PORT": str(self.sink_port), "NODSN_PORT": str(self.nodsn_port),
                "BUSY_PORT": str(self.busy_port), "TLS_CERT": str(self.cert),
                "TLS_KEY": str(self.key), "MTA_ROOT": str(MTA_ROOT)}

    def render(self, template: str) -> str:
        text = (HERE / self.name / template).read_text()
        for k, v in self.values().items():
            text = text.replace(f"@{k}@", v)
        left = re.search(r"@[A-Z][A-Z_]+@", text)
        if left:
            raise MtaError(f"unfilled placeholder {left.group(0)} in {self.name}/{template}")
        return text

    def argv(self) -> List[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        (self.root / "log").mkdir(exist_ok=True)
        self.prepare()
        self.sup.spawn(self.name, self.argv(), self.log, cwd=self.root, env=self.env())
        if not wait_banner(self.port, timeout):
            raise MtaError(f"{self.name} on 127.0.0.1:{self.port} not answering\n{self.log_tail()}")

    def stop(self) -> None:
        self.sup.stop(self.name, timeout=20)

    def alive(self) -> bool:
        p = self.sup.procs.get(self.name)
        return bool(p and p.alive())

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for p in sorted((self.root / "log").glob("*")):
            if p.is_file():
                out.append(f"--- {p} ---\n{mslocal.tail(p, lines)}")
        return "\n".join(out) or "(no log)"

    def version(self) -> str:
        raise NotImplementedError

    # A line of the MTA's own log per SMTP connection it accepted.
    CONNECTION_LINE: Optional["re.Pattern[str]"] = None

    def connections(self) -> int:
        """SMTP connections the MTA accepted so far, by its own log."""
        if self.CONNECTION_LINE is None:
            raise NotImplementedError(f"{self.name}: no connection log line known")
        try:
            text = self.connection_log().read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return len(self.CONNECTION_LINE.findall(text))

    def connection_log(self) -> Path:
        return self.log


class PostfixPeer(Peer):
    """The system's Postfix programs with a private config and queue directory."""

    name = "postfix"
    CONNECTION_LINE = re.compile(r"postfix/smtpd\[\d+\]: connect from ", re.M)

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.inst = PostfixInstance(self.root, self.port, self.sink_port,
                                    process_limit=100, dest_concurrency=20,
                                    message_size_limit=52428800, templates=HERE / "postfix",
                                    extra_values={"MX_PORT": str(self.mx_port),
                                                  "NODSN_PORT": str(self.nodsn_port),
                                                  "BUSY_PORT": str(self.busy_port),
                                                  "TLS_CERT": str(self.cert),
                                                  "TLS_KEY": str(self.key)})
        self.log = self.inst.maillog
        write_config = self.inst.write_config

        def with_busy_listener() -> None:
            # bench/postfix's master.cf plus the busy smtpd: anvil(8)
            # limits, with loopback no longer exempt (its default
            # smtpd_client_event_limit_exceptions is $mynetworks).
            write_config()
            with open(self.inst.conf_dir / "master.cf", "a") as f:
                f.write(f"127.0.0.1:{self.busy_port} inet n - n - - smtpd"
                        " -o smtpd_client_event_limit_exceptions="
                        " -o smtpd_client_connection_count_limit=1"
                        " -o smtpd_client_message_rate_limit=5\n")

        self.inst.write_config = with_busy_listener  # type: ignore[method-assign]

    busy_limits = ("smtpd_client_connection_count_limit = 1 (421 4.7.0), "
                   "smtpd_client_message_rate_limit = 5 per anvil_rate_time_unit = 10s (450 4.7.1)")

    def start(self, timeout: float = 60.0) -> None:
        self.inst.start(timeout)

    def stop(self) -> None:
        self.inst.stop()

    def alive(self) -> bool:
        return self.inst.alive()

    def log_tail(self, lines: int = 30) -> str:
        return self.inst.log_tail(lines)

    def version(self) -> str:
        return "Postfix " + postfix_version()


class EximPeer(Peer):
    """exim4 -bdf (daemon in the foreground) with -C our configuration."""

    name = "exim"
    relays_body_8bitmime = False
    busy_limits = ("smtp_accept_max_per_host = 1 on the busy port (421), ratelimit 5 "
                   "recipients per 10 s in the RCPT ACL (450)")
    # log_selector = +smtp_connection (exim.conf.in)
    CONNECTION_LINE = re.compile(r"SMTP connection from ", re.M)

    def connection_log(self) -> Path:
        return self.root / "log" / "mainlog"

    def values(self) -> Dict[str, str]:
        return {**super().values(), "EXIM": str(self.root / "bin" / "exim4"),
                "TLS_KEY": str(self.root / "key.pem")}

    def env(self) -> Dict[str, str]:
        env = super().env()
        env.update(LD_LIBRARY_PATH=str(self.root / "lib"),
                   LD_PRELOAD=str(self.root / "lib" / NSS_WRAPPER.name))
        return env

    def prepare(self) -> None:
        # Exim's processes run as Debian-exim and re-execute exim_path: the
        # binary, its libraries and the TLS key are copied where that uid can
        # read them ($MAILSTREAM_CACHE is under root's 0700 home).
        uid = PRIVATE_IDS["Debian-exim"]
        for d in ("bin", "lib", "spool"):
            (self.root / d).mkdir(exist_ok=True)
        shutil.copy2(EXIM, self.root / "bin" / "exim4")
        # Not setuid: a setuid re-execution would ignore LD_LIBRARY_PATH and
        # LD_PRELOAD (AT_SECURE); the daemon starts as root anyway.
        os.chmod(self.root / "bin" / "exim4", 0o755)
        for lib in [NSS_WRAPPER, *LIBDIR.glob("libidn.so.12*")]:
            shutil.copy2(lib, self.root / "lib" / lib.name, follow_symlinks=True)
        shutil.copy2(self.key, self.root / "key.pem")
        for p in (self.root / "spool", self.root / "log", self.root / "key.pem"):
            os.chown(p, uid, uid)
        (self.root / "exim.conf").write_text(self.render("exim.conf.in"))

    def argv(self) -> List[str]:
        return [str(self.root / "bin" / "exim4"), "-C", str(self.root / "exim.conf"),
                "-bdf", "-q2s"]

    def version(self) -> str:
        return "Exim " + deb_version("exim4-daemon-light")


class OpenSmtpdPeer(Peer):
    """smtpd -d -f our configuration, in a private mount namespace in which
    the compiled-in /var/spool/smtpd, /var/run/smtpd.sock and
    /var/lib/opensmtpd/empty are directories of ours."""

    name = "opensmtpd"
    relays_body_8bitmime = False
    dsn_has_envid = False
    busy_reason = ("OpenSMTPD 6.8 has no limit on connections per client nor a message rate "
                   "limit (smtp limit max-mails caps messages per session)")
    CONNECTION_LINE = re.compile(r" smtp connected address=", re.M)
    MOUNTS = {"spool": "/var/spool", "run": "/var/run", "varlib": "/var/lib"}

    def prepare(self) -> None:
        for d in self.MOUNTS:
            (self.root / d).mkdir(exist_ok=True)
        (self.root / "varlib" / "opensmtpd" / "empty").mkdir(parents=True, exist_ok=True)
        conf = self.root / "smtpd.conf"
        conf.write_text(self.render("smtpd.conf.in"))
        os.chmod(conf, 0o644)

    def argv(self) -> List[str]:
        mounts = " && ".join(f"mount --bind {self.root / d} {target}"
                             for d, target in self.MOUNTS.items())
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"{mounts} && exec {SMTPD} -d -f {self.root / 'smtpd.conf'}"]

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """smtpctl inside the instance's namespace (its control socket). It
        insists on running setgid opensmtpq (Debian installs it so): setpriv
        gives it that effective gid instead."""
        p = self.sup.procs[self.name]
        return subprocess.run(["nsenter", "-t", str(p.pid), "-m", "setpriv", "--regid",
                               str(PRIVATE_IDS["opensmtpq"]), "--clear-groups",
                               str(MTA_ROOT / "usr" / "sbin" / "smtpctl"), *args],
                              capture_output=True, text=True, env=self.env(), timeout=30)

    def version(self) -> str:
        return "OpenSMTPD " + deb_version("opensmtpd")


class SendmailPeer(Peer):
    """sendmail -bD (daemon in the foreground) -C a sendmail.cf made by m4 from
    our .mc and the unpacked sendmail-cf macros; -q2s runs the queue."""

    name = "sendmail"
    # A ruleset keyed on ${daemon_name} (sendmail.mc.in): its per-daemon
    # DaemonPortOptions (children=, refuseLA=, delayLA=) only close the
    # listening socket, and FEATURE conncontrol applies to every daemon.
    busy_limits = ("Local_check_relay: 421 4.3.2 when {client_connections} > 1 on the busy "
                   "daemon")
    busy_rate_reason = ("Sendmail has no message rate limit; its only rate, {client_rate} "
                        "(FEATURE ratecontrol), counts connections, refused ones too, so a "
                        "client retrying within the window never gets under it (docs/interop.md "
                        "note 10)")
    # It logs only to syslog; its -X traffic log has each greeting it sent.
    CONNECTION_LINE = re.compile(r"^\d+ >>> 220[ -]", re.M)

    def connection_log(self) -> Path:
        return self.root / "log" / "traffic"

    def values(self) -> Dict[str, str]:
        return {**super().values(), "MAILNULL": str(PRIVATE_IDS["mailnull"]),
                "TLS_CERT": str(self.root / "tls" / "cert.pem"),
                "TLS_KEY": str(self.root / "tls" / "key.pem")}

    def prepare(self) -> None:
        for d in ("queue", "tls", "bin"):
            (self.root / d).mkdir(exist_ok=True)
        # Not setgid mail: a setgid program ignores LD_LIBRARY_PATH and
        # LD_PRELOAD (AT_SECURE); it runs as root anyway.
        shutil.copy2(SENDMAIL, self.root / "bin" / "sendmail")
        os.chmod(self.root / "bin" / "sendmail", 0o755)
        # Sendmail uses a key only in a directory no other user can write.
        shutil.copy2(self.cert, self.root / "tls" / "cert.pem")
        shutil.copy2(self.key, self.root / "tls" / "key.pem")
        os.chmod(self.root / "tls" / "key.pem", 0o600)
        os.chmod(self.root / "queue", 0o700)
        (self.root / "statistics").touch()
        (self.root / "helpfile").touch()
        (self.root / "local-host-names").write_text("")
        (self.root / "trusted-users").write_text("")
        (self.root / "sendmail.mc").write_text(self.render("sendmail.mc.in"))
        r = subprocess.run([str(MTA_ROOT / "usr" / "bin" / "m4"), f"-D_CF_DIR_={SENDMAIL_CF}/",
                            str(SENDMAIL_CF / "m4" / "cf.m4"), str(self.root / "sendmail.mc")],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise MtaError(f"m4 sendmail.mc failed: {r.stderr}")
        (self.root / "sendmail.cf").write_text(r.stdout)
        makemap = MTA_ROOT / "usr" / "libexec" / "sendmail" / "makemap"
        for table in ("mailertable", "access"):
            subprocess.run([str(makemap), "-C", str(self.root / "sendmail.cf"), "hash",
                            str(self.root / table)],
                           input=self.render(f"{table}.in"), text=True, check=True,
                           capture_output=True, env=self.env(), timeout=60)

    def argv(self) -> List[str]:
        # Its own UTS namespace with its own host name: Sendmail qualifies
        # uname()'s node name before it reads sendmail.cf, and sleeps a
        # minute when it cannot.
        return ["unshare", "--uts", "sh", "-c",
                f"hostname {self.name}.interop.test && exec {self.root / 'bin' / 'sendmail'} "
                f"-C {self.root / 'sendmail.cf'} -bD -q2s -X {self.root / 'log' / 'traffic'}"]

    def version(self) -> str:
        return "Sendmail " + deb_version("sendmail-bin")
