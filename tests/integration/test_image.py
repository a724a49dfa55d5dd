"""The container image of `make image` (issue 14): the OCI archive loads into
a fresh podman storage, every program answers --version with the release and
commit of this build, it runs as 65532 with a read-only root and every
capability dropped, and there is no shell (nor any other program) inside.

podman runs with images/containers.conf (runc, ulimits): the machine's own
configuration is not changed.
"""

from __future__ import annotations

import json
from pathlib import Path
import subprocess

import pytest

import k8s
from k8s import image, podman  # noqa: F401 (image is a fixture)
import mslocal

# Loading the image (a module fixture) counts in whichever test runs first.
pytestmark = pytest.mark.timeout(600)

PROGRAMS = ("mailstream-frontend", "mailstream-worker", "mailstream-ctl", "mailstream-authcheck")
LOCKED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
          "--network", "none"]


def _version_of_build(prog):
    p = subprocess.run([str(k8s.BUILD / prog), "--version"], capture_output=True, text=True)
    assert p.returncode == 0
    return p.stdout


def test_tagged_with_version_and_commit(image):
    root, name = image
    want = _version_of_build("mailstream-frontend").split()  # name, version, (commit X)
    version, commit = want[1], want[3].rstrip(")")
    assert name.endswith(f":{version}-{commit}"), name
    info = json.loads(podman(root, "image", "inspect", name).stdout)[0]
    labels = info["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == commit
    assert info["Config"]["User"] == "65532:65532"


@pytest.mark.parametrize("prog", PROGRAMS)
def test_version(image, prog):
    root, name = image
    p = podman(root, "run", "--rm", *LOCKED, name, prog, "--version")
    assert p.stdout == _version_of_build(prog), "the image is older than the build: make image"


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash", "/usr/bin/sh", "/bin/busybox",
                                   "sh", "env", "ls", "perl"])
def test_no_shell(image, shell):
    root, name = image
    p = podman(root, "run", "--rm", *LOCKED, name, shell, "-c", "true", check=False)
    assert p.returncode in (126, 127), (shell, p.returncode, p.stderr)
    assert "not found" in p.stderr or "no such file" in p.stderr.lower()


def test_runs_read_only_as_65532(image, tmp_path):
    """A frontend started as the image says (no --user) runs as 65532 with no
    capabilities, and cannot write to its root file system."""
    root, name = image
    metrics = mslocal.free_port()
    cfg = tmp_path / "frontend.ini"
    cfg.write_text(f"[node]\nmetrics = 127.0.0.1:{metrics}\n[kafka]\nbrokers = 127.0.0.1:1\n"
                   f"[listener.mx]\nlisten = 127.0.0.1:{mslocal.free_port()}\n")
    cfg.chmod(0o644)
    cname = f"ms-image-test-{metrics}"
    podman(root, "run", "-d", "--name", cname, "--read-only", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--network", "host",
           "-v", f"{cfg}:/etc/mailstream/frontend.ini:ro", name,
           "mailstream-frontend", "-c", "/etc/mailstream/frontend.ini")
    try:
        mslocal.wait_until(lambda: mslocal.port_open("127.0.0.1", metrics), 30,
                           "the frontend's metrics listener in the container")
        pid = json.loads(podman(root, "inspect", cname).stdout)[0]["State"]["Pid"]
        status = open(f"/proc/{pid}/status").read()
        uid = [ln.split()[1:] for ln in status.splitlines() if ln.startswith("Uid:")][0]
        gid = [ln.split()[1:] for ln in status.splitlines() if ln.startswith("Gid:")][0]
        cap = [ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")][0]
        assert set(uid) == {"65532"} and set(gid) == {"65532"}
        assert int(cap, 16) == 0
        mounts = open(f"/proc/{pid}/mounts").read().splitlines()
        rootfs = [m.split() for m in mounts if m.split()[1] == "/"][-1]
        assert "ro" in rootfs[3].split(","), rootfs
    finally:
        podman(root, "rm", "-f", "-t", "2", cname, check=False)


def test_ships_the_rule_files(image):
    """The shaping and bounce rules of etc/ are in the image, the same bytes,
    where docs/operations.md says (/usr/share/mailstream/)."""
    root, name = image
    mnt = podman(root, "image", "mount", name).stdout.strip()
    try:
        for f in ("shaping.yaml", "bounce-rules.yaml"):
            shipped = Path(mnt) / "usr/share/mailstream" / f
            assert shipped.read_bytes() == (k8s.REPO / "etc" / f).read_bytes(), f
    finally:
        podman(root, "image", "unmount", name, check=False)
