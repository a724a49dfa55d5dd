"""A private Postfix instance for the benchmark (the peer Mailstream is compared with).

Everything lives under one directory: config (main.cf, master.cf rendered from
bench/postfix/*.in), queue, data and the mail log. It is started with
`postfix -c DIR start` and stopped with `postfix -c DIR stop`; the system
Postfix configuration (/etc/postfix, /var/spool/postfix, port 25) is never
read for settings nor touched. Only the master process found in this
instance's own pid file is ever signalled.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "postfix"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"


class PostfixError(Exception):
    pass


def postfix_version() -> str:
    try:
        r = subprocess.run([POSTCONF, "-d", "-h", "mail_version"], capture_output=True,
                           text=True, timeout=30)
        return r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


class PostfixInstance:
    """One Postfix relay: smtpd on 127.0.0.1:smtp_port, relayhost the sink."""

    def __init__(self, root: Path, smtp_port: int, sink_port: int, *,
                 process_limit: int = 500, dest_concurrency: int = 50,
                 smtpd_maxproc: str = "-", message_size_limit: int = 26214400,
                 templates: Optional[Path] = None,
                 extra_values: Optional[Dict[str, str]] = None,
                 milters: Sequence[str] = (),
                 start_wrapper: Optional[Callable[[List[str]], List[str]]] = None):
        """templates: a directory whose main.cf.in / master.cf.in replace
        bench/postfix's (a file it lacks is taken from bench/postfix);
        extra_values: more @PLACEHOLDER@ values for them (tests/interop;
        RECIPIENT_RESTRICTIONS, MAIN_EXTRA, MASTER_EXTRA: bench/inbound.py);
        milters: smtpd_milters, in order ("inet:127.0.0.1:PORT", ...);
        start_wrapper: turns the `postfix start` command into the one run
        (bench/inbound.py: in a mount namespace with a resolv.conf of its
        own, which the master and every daemon it starts inherit)."""
        self.root = Path(root)
        self.templates = Path(templates) if templates else TEMPLATES
        self.conf_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "maillog"
        self.smtp_port = smtp_port
        self.sink_port = sink_port
        self.values: Dict[str, str] = {
            "QUEUE_DIR": str(self.queue_dir),
            "DATA_DIR": str(self.data_dir),
            "MAILLOG": str(self.maillog),
            "SINK_PORT": str(sink_port),
            "SMTP_PORT": str(smtp_port),
            "PROCESS_LIMIT": str(process_limit),
            "DEST_CONCURRENCY": str(dest_concurrency),
            "SMTPD_MAXPROC": smtpd_maxproc,
            "MESSAGE_SIZE_LIMIT": str(message_size_limit),
            "SMTPD_MILTERS": ", ".join(milters),
            "RECIPIENT_RESTRICTIONS": "",
            "MAIN_EXTRA": "",
            "MASTER_EXTRA": "",
            **(extra_values or {}),
        }
        self.start_wrapper = start_wrapper
        self.master_pid: Optional[int] = None

    # -- configuration --
    def _render(self, name: str) -> str:
        path = self.templates / f"{name}.in"
        if not path.is_file():
            path = TEMPLATES / f"{name}.in"
        text = path.read_text()
        for k, v in self.values.items():
            text = text.replace(f"@{k}@", v)
        left = re.search(r"@[A-Z][A-Z_]+@", text)
        if left:
            raise PostfixError(f"unfilled placeholder {left.group(0)} in {name}.in")
        return text

    def write_config(self) -> None:
        # Postfix daemons run as user postfix: every parent directory must be
        # traversable by it, and the queue must not be world-writable.
        for d in (self.root, self.conf_dir, self.data_dir, self.queue_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.conf_dir, 0o755)
        os.chmod(self.queue_dir, 0o755)
        (self.conf_dir / "main.cf").write_text(self._render("main.cf"))
        (self.conf_dir / "master.cf").write_text(self._render("master.cf"))
        subprocess.run(["chown", "postfix:postfix", str(self.data_dir)], check=True)

    def settings(self) -> Dict[str, str]:
        """The non-default main.cf settings in effect (postconf -n) plus
        master.cf, for the report."""
        r = subprocess.run([POSTCONF, "-c", str(self.conf_dir), "-n"], capture_output=True,
                           text=True, timeout=60)
        out = {}
        for line in r.stdout.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                out[k.strip()] = v.strip()
        for key in ("in_flow_delay", "smtpd_client_connection_count_limit",
                    "qmgr_message_active_limit", "smtp_connection_cache_time_limit"):
            r2 = subprocess.run([POSTCONF, "-c", str(self.conf_dir), "-h", key],
                                capture_output=True, text=True, timeout=60)
            out.setdefault(key, r2.stdout.strip() + " (default)")
        return out

    # -- start / stop --
    def _postfix(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [POSTFIX, "-c", str(self.conf_dir), *args]
        if args == ("start",) and self.start_wrapper is not None:
            argv = self.start_wrapper(argv)
        return subprocess.run(argv,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        r = self._postfix("start")
        if r.returncode != 0:
            raise PostfixError(f"postfix -c {self.conf_dir} start failed:\n{r.stdout}{r.stderr}"
                               f"\n{self.log_tail()}")
        pidfile = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text().split()[0])
                if Path(f"/proc/{pid}").exists():
                    self.master_pid = pid
                    break
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.1)
        if self.master_pid is None:
            raise PostfixError(f"postfix master did not write {pidfile}\n{self.log_tail()}")
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise PostfixError(f"postfix smtpd on 127.0.0.1:{self.smtp_port} not answering\n"
                           f"{self.log_tail()}")

    def alive(self) -> bool:
        return self.master_pid is not None and Path(f"/proc/{self.master_pid}").exists()

    def queue_count(self) -> int:
        """Messages in this instance's queue (files under incoming/active/deferred)."""
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _dirpath, _dirs, files in os.walk(self.queue_dir / sub):
                n += len(files)
        return n

    def stop(self, timeout: float = 30.0) -> None:
        if self.master_pid is None:
            return
        pid = self.master_pid
        self._postfix("stop", timeout=timeout)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.master_pid = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no maillog)"
