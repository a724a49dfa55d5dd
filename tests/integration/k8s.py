"""Helpers for the chart and image tests (test_helm*.py, test_image.py).

The tools come from `make deps` (cluster/deps.sh): helm and kube-apiserver
built from the Go module proxy into $MAILSTREAM_CACHE/k8s (step k8s), etcd,
podman, runc and mmdebstrap from Debian (step apt), kubernetes-validate from
PyPI (step venv); the image from `make image`. A missing tool skips the test
with the reason, except under CI=true, where it fails: CI installs them all,
so a missing one there is a broken install, not a reason to pass.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mailstream"
CACHE = Path(os.environ.get("MAILSTREAM_CACHE") or Path.home() / ".cache" / "mailstream")
BUILD = Path(os.environ.get("MAILSTREAM_BUILD_DIR") or REPO / "build")
# Keep in sync with HELM_VERSION and K8S_VERSION in cluster/deps.sh.
HELM_VERSION = "4.3.2"
K8S_VERSION = "1.37.2"
HELM = CACHE / "k8s" / f"helm-{HELM_VERSION}"
KUBE_APISERVER = CACHE / "k8s" / f"kube-apiserver-{K8S_VERSION}"
IMAGE_ARCHIVE = BUILD / "images" / "mailstream.tar"
CONTAINERS_CONF = REPO / "images" / "containers.conf"
# The oldest and newest Kubernetes the chart supports (Chart.yaml kubeVersion;
# the preStop sleep action is GA from 1.30).
KUBE_VERSIONS = ("1.30.0", "1.37.0")
# API versions of the optional CRDs, as `helm template --api-versions` takes them.
CRD_APIS = ("keda.sh/v1alpha1/ScaledObject", "monitoring.coreos.com/v1/ServiceMonitor",
            "monitoring.coreos.com/v1/PrometheusRule")


def missing(what: str) -> None:
    """Skip (or, under CI=true, fail) because a tool is not installed."""
    msg = f"{what} (run `make deps`, or `make image` for the image)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {msg}")
    pytest.skip(msg)


def need_file(path: Path, what: str) -> Path:
    if not (path.is_file() and os.access(path, os.R_OK)):
        missing(f"{what} not found at {path}")
    return path


def need_tool(name: str) -> str:
    p = shutil.which(name)
    if p is None:
        missing(f"{name} not installed")
    return p  # type: ignore[return-value]


def helm(*args: str, check: bool = True, env: Optional[Dict[str, str]] = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    need_file(HELM, f"helm {HELM_VERSION}")
    e = dict(os.environ)
    # Helm's own state (repositories, cache) stays out of $HOME.
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"),
                     ("HELM_DATA_HOME", "data")):
        e.setdefault(var, str(CACHE / "k8s" / "helm-home" / sub))
    e.update(env or {})
    p = subprocess.run([str(HELM), *args], capture_output=True, text=True, env=e,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def render(values: Sequence[Path] = (), sets: Iterable[str] = (), *,
           api_versions: Iterable[str] = (), release: str = "ms",
           namespace: str = "mail") -> List[dict]:
    """`helm template` of the chart: the objects, hooks included (a fresh
    copy; the same arguments render once per test run)."""
    return copy.deepcopy(_render(tuple(str(v) for v in values), tuple(sets),
                                 tuple(api_versions), release, namespace))


@functools.lru_cache(maxsize=None)
def _render(values: Tuple[str, ...], sets: Tuple[str, ...], api_versions: Tuple[str, ...],
            release: str, namespace: str) -> List[dict]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    for a in api_versions:
        args += ["--api-versions", a]
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objs: List[dict], kind: str, suffix: str = "") -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(hits) == 1, f"want one {kind} *{suffix}, got {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def secret_data(secret: dict) -> Dict[str, bytes]:
    out = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    out.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return out


def podman_cmd(root: Path) -> List[str]:
    """podman with private storage under root, runc and the test ulimits."""
    return [need_tool("podman"), "--root", str(root / "root"), "--runroot", str(root / "run"),
            "--storage-driver", "vfs"]


def podman_env() -> Dict[str, str]:
    e = dict(os.environ)
    e["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return e


def load_image(root: Path) -> str:
    """Load the OCI archive of `make image` into podman storage at root; the
    image's name."""
    need_file(IMAGE_ARCHIVE, "the image archive (make image)")
    p = subprocess.run(podman_cmd(root) + ["load", "-i", str(IMAGE_ARCHIVE)],
                       capture_output=True, text=True, env=podman_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    names = [ln.split("Loaded image:", 1)[1].strip() for ln in p.stdout.splitlines()
             if "Loaded image:" in ln]
    assert names, p.stdout
    return names[0]


def podman(root: Path, *args: str, check: bool = True,
           timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(podman_cmd(root) + list(args), capture_output=True, text=True,
                       env=podman_env(), timeout=timeout)
    if check:
        assert p.returncode == 0, f"podman {' '.join(args[:3])}...: {p.stderr}"
    return p


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(podman root, image name): the image of `make image` loaded into a
    storage of the test module's own, removed afterwards."""
    root = tmp_path_factory.mktemp("podman")
    name = load_image(root)
    yield root, name
    # Only this storage: `podman system reset` would also touch the machine's
    # network configuration.
    podman(root, "rm", "--all", "--force", check=False)
    podman(root, "rmi", "--all", "--force", check=False)
    shutil.rmtree(root, ignore_errors=True)
