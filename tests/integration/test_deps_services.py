"""cluster/deps.sh leaves the machine's own services alone (issue 23).

`make deps` (run by `make run` and `make test`) once stopped and disabled the
system's redis-server, postfix, nsd, haproxy and dovecot on every run, even
when it installed nothing.  Here the test starts the system redis-server
through its init script and enables it at boot, runs the package step of
cluster/deps.sh on a machine where every package is present, and checks that
the same redis-server process still runs, that it is still enabled, that no
boot link of any service changed and that every system daemon of a package
deps.sh installs which ran before still runs.  The service's original state
(running or not, enabled or not) is put back afterwards.

Only the package step (`deps.sh apt`) runs: it is the one that deals with
system services; the Kafka and virtualenv steps write to the user's cache,
which other runs share.  The test needs root (or password-less sudo) and an
init script for redis-server, and is skipped where `deps.sh --check apt` says
packages are missing (it would install them: not this test's business).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPS = ROOT / "cluster" / "deps.sh"
# The service the test starts: a daemon whose package deps.sh installs, quick
# to start and stop, and whose init script writes this pid file.
SERVICE = "redis-server"
SERVICE_PIDFILE = Path("/run/redis/redis-server.pid")
# System services of packages deps.sh installs (the ones it used to stop).
DAEMONS = ("redis-server", "redis-sentinel", "postfix", "nsd", "haproxy", "dovecot")
SYSTEMD = Path("/run/systemd/system").is_dir()


def as_root() -> Optional[List[str]]:
    """The prefix that runs a command as root, or None if there is none."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                               capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


ROOT_PREFIX = as_root()
pytestmark = [
    pytest.mark.skipif(ROOT_PREFIX is None, reason="needs root or password-less sudo"),
    pytest.mark.skipif(not Path(f"/etc/init.d/{SERVICE}").exists(),
                       reason=f"no /etc/init.d/{SERVICE}"),
]


def root_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run((ROOT_PREFIX or []) + list(args), capture_output=True, text=True,
                          timeout=120)


def running(svc: str) -> bool:
    return root_run("service", svc, "status").returncode == 0


def enabled(svc: str) -> bool:
    """Starts at boot: the unit is enabled (systemd), or there is a start
    link in a multi-user runlevel (sysvinit, update-rc.d)."""
    if SYSTEMD:
        return root_run("systemctl", "is-enabled", "--quiet", svc).returncode == 0
    return any(re.fullmatch(r"S\d\d" + re.escape(svc), name)
               for n in "2345" for name in os.listdir(f"/etc/rc{n}.d"))


def set_enabled(svc: str, on: bool) -> None:
    cmd = (["systemctl", "enable" if on else "disable", svc] if SYSTEMD
           else ["update-rc.d", svc, "enable" if on else "disable"])
    r = root_run(*cmd)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stdout}{r.stderr}"


def boot_links() -> Dict[str, str]:
    """Every runlevel link and every symlink under /etc/systemd/system (where
    `systemctl enable` puts them), with its target: what enabling or
    disabling any service changes."""
    links = {}
    for d in sorted(Path("/etc").glob("rc?.d")):
        for p in d.iterdir():
            links[str(p)] = os.readlink(p) if p.is_symlink() else ""
    sd = Path("/etc/systemd/system")
    if sd.is_dir():
        for p in sd.rglob("*"):
            if p.is_symlink():
                links[str(p)] = os.readlink(p)
    return links


def service_pid() -> int:
    return int(SERVICE_PIDFILE.read_text().split()[0])


@pytest.fixture
def system_service():
    """SERVICE running and enabled at boot for the test; afterwards as it was."""
    was_enabled, was_running = enabled(SERVICE), running(SERVICE)
    links = boot_links()
    try:
        if not was_enabled:
            set_enabled(SERVICE, True)
        if not was_running:
            # The init script itself, as an operator's `service` would:
            # invoke-rc.d would ask policy-rc.d, which may forbid it.
            r = root_run("service", SERVICE, "start")
            assert r.returncode == 0, f"could not start the system {SERVICE}: {r.stdout}{r.stderr}"
        deadline = time.monotonic() + 20
        while not (running(SERVICE) and SERVICE_PIDFILE.exists()):
            assert time.monotonic() < deadline, f"the system {SERVICE} did not come up"
            time.sleep(0.2)
        yield SERVICE
    finally:
        if not was_running:
            root_run("service", SERVICE, "stop")
        if not was_enabled:
            set_enabled(SERVICE, False)
    assert boot_links() == links, "the test did not put the boot links back as they were"


def test_deps_leaves_running_service_alone(system_service):
    check = subprocess.run(["bash", str(DEPS), "--check", "apt"], capture_output=True,
                           text=True, timeout=120)
    if check.returncode != 0:
        pytest.skip("deps.sh would install packages here:\n" + check.stdout + check.stderr)
    assert running(SERVICE), f"deps.sh --check stopped the system {SERVICE}:\n{check.stdout}"
    pid = service_pid()
    links = boot_links()
    daemons_up = [d for d in DAEMONS if Path(f"/etc/init.d/{d}").exists() and running(d)]
    assert SERVICE in daemons_up

    t0 = time.monotonic()
    r = subprocess.run(["bash", str(DEPS), "apt"], capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "deps: apt: all packages present" in r.stdout, out
    print(f"deps.sh apt: {took:.1f} s")

    assert running(SERVICE), f"deps.sh stopped the system {SERVICE}:\n{out}"
    assert service_pid() == pid, f"deps.sh restarted the system {SERVICE}:\n{out}"
    assert enabled(SERVICE), f"deps.sh disabled the system {SERVICE}:\n{out}"
    assert boot_links() == links, f"deps.sh changed boot links:\n{out}"
    assert [d for d in daemons_up if not running(d)] == [], out
