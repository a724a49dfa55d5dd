"""The chart against a real Kubernetes API server (issue 14).

etcd (Debian's etcd-server, run here on free loopback ports, never through its
init script) and kube-apiserver (built from the Go module proxy by
cluster/deps.sh) start on loopback. Then, for two configurations of the chart:

1. every object `helm template` renders, hooks included, is created with
   `dryRun=All&fieldValidation=Strict`: the API server's own validation,
   admission and defaulting, unknown fields refused;
2. `helm install` (hooks skipped: there is no controller to run the Job, so
   the hook objects are created here, as Helm would, in weight order), and
   every object of the release is read back from the API (what `kubectl get`
   does), with its server-side defaults, and compared with what was rendered.

The CRDs of KEDA and the Prometheus Operator are installed first, the
projects' own (cluster/deps.sh step k8s takes them from their Go modules on
the module proxy into ~/.cache/mailstream/k8s/crds): Helm sees them through
discovery, so the chart renders its ScaledObject, ServiceMonitor and
PrometheusRule, which the API server then checks strictly against the CRDs'
schemas, and which must come back too.
No controller, scheduler or kubelet runs: that pods run is test_helm_pods.py.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import yaml

import k8s
import mslocal
from k8s import CHART

TOKEN = "mailstream-chart-test-token"
# The real CRDs (KEDA_VERSION and PROMETHEUS_OPERATOR_VERSION in
# cluster/deps.sh), with the API group/version each serves the chart's kind in.
CRD_DIR = k8s.CACHE / "k8s" / "crds"
CRDS = {"keda.sh_scaledobjects.yaml": "/apis/keda.sh/v1alpha1",
        "monitoring.coreos.com_servicemonitors.yaml": "/apis/monitoring.coreos.com/v1",
        "monitoring.coreos.com_prometheusrules.yaml": "/apis/monitoring.coreos.com/v1"}
ETCD = "/usr/bin/etcd"
START_TIMEOUT = 180


class ApiServer:
    def __init__(self, d: Path):
        self.dir = d
        self.procs: List[subprocess.Popen] = []
        self.port = 0
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname, self.ctx.verify_mode = False, ssl.CERT_NONE
        self.kubeconfig = d / "kubeconfig"

    def start(self) -> None:
        k8s.need_file(Path(ETCD), "etcd (Debian etcd-server)")
        k8s.need_file(k8s.KUBE_APISERVER, f"kube-apiserver {k8s.K8S_VERSION}")
        client, peer, self.port = mslocal.free_ports(3)
        etcd_dir = self.dir / "etcd"
        self._spawn("etcd", [ETCD, "--name", "test", "--data-dir", str(etcd_dir),
                             "--listen-client-urls", f"http://127.0.0.1:{client}",
                             "--advertise-client-urls", f"http://127.0.0.1:{client}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"test=http://127.0.0.1:{peer}",
                             "--listen-metrics-urls", "", "--log-level", "warn"],
                    env={"ETCD_UNSUPPORTED_ARCH": ""})
        mslocal.wait_until(lambda: mslocal.port_open("127.0.0.1", client), 60, "etcd",
                           alive=lambda: self.procs[0].poll() is None,
                           log_path=self.dir / "etcd.log")
        sa = self.dir / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(sa), "2048"], check=True,
                       capture_output=True)
        tokens = self.dir / "tokens.csv"
        tokens.write_text(f'{TOKEN},admin,admin,"system:masters"\n')
        self._spawn("kube-apiserver", [
            str(k8s.KUBE_APISERVER), "--etcd-servers", f"http://127.0.0.1:{client}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.port), "--cert-dir", str(self.dir / "certs"),
            "--token-auth-file", str(tokens), "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(sa),
            "--service-account-signing-key-file", str(sa),
            "--service-cluster-ip-range", "10.96.0.0/24",
            # No kubernetes Service endpoints for a loopback address.
            "--endpoint-reconciler-type", "none",
            "--enable-priority-and-fairness=false", "--v", "1"])
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": f"https://127.0.0.1:{self.port}", "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}]}))
        self.kubeconfig.chmod(0o600)

        def ready() -> bool:
            try:
                return self.request("GET", "/readyz")[0] == 200
            except OSError:
                return False
        mslocal.wait_until(ready, START_TIMEOUT, "kube-apiserver /readyz", interval=1,
                           alive=lambda: all(p.poll() is None for p in self.procs),
                           log_path=self.dir / "kube-apiserver.log")

    def _spawn(self, name: str, argv: List[str], env: Optional[Dict[str, str]] = None) -> None:
        log = open(self.dir / f"{name}.log", "wb")
        e = dict(os.environ)
        e.update(env or {})
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=e))

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def request(self, method: str, path: str, body: Optional[dict] = None) -> Tuple[int, dict]:
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def resource_path(self, obj: dict, namespace: str) -> str:
        """The collection path of obj's kind, from discovery (as kubectl finds it)."""
        api = obj["apiVersion"]
        base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
        status, disc = self.request("GET", base)
        assert status == 200, (api, disc)
        res = [r for r in disc["resources"] if r["kind"] == obj["kind"] and "/" not in r["name"]]
        assert res, f"the server does not serve {obj['kind']} in {api}"
        if res[0]["namespaced"]:
            return f"{base}/namespaces/{namespace}/{res[0]['name']}"
        return f"{base}/{res[0]['name']}"


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory):
    crds = [yaml.safe_load(k8s.need_file(CRD_DIR / name, f"the CRD {name}").read_text())
            for name in CRDS]
    srv = ApiServer(tmp_path_factory.mktemp("kube"))
    try:
        srv.start()
        for crd in crds:
            # A real schema, not one that keeps unknown fields.
            for v in crd["spec"]["versions"]:
                assert v["schema"]["openAPIV3Schema"].get("properties"), crd["metadata"]
            status, body = srv.request("POST", "/apis/apiextensions.k8s.io/v1/"
                                       "customresourcedefinitions", crd)
            assert status == 201, body

        def served() -> bool:
            return all(srv.request("GET", p)[0] == 200 for p in set(CRDS.values()))
        mslocal.wait_until(served, 60, "the CRDs served")
        yield srv
    finally:
        srv.stop()


CONFIGS = {
    "full": ["proxy-values.yaml", "keda-values.yaml", "servicemonitor-values.yaml"],
    "external": ["external-secrets-values.yaml"],
}


def _comparable(rendered, live):
    """Every field the chart set is in the live object with the same value
    (the server only adds defaults); ints may come back as strings for
    quantities, so those are compared as strings."""
    if isinstance(rendered, dict):
        assert isinstance(live, dict), (rendered, live)
        for k, v in rendered.items():
            assert k in live, f"field {k} dropped by the server"
            _comparable(v, live[k])
    elif isinstance(rendered, list):
        assert isinstance(live, list) and len(live) == len(rendered), (rendered, live)
        for a, b in zip(rendered, live):
            _comparable(a, b)
    else:
        assert rendered == live or str(rendered) == str(live), (rendered, live)


# Starting etcd and the API server (module fixtures) counts in the first test.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_install_and_read_back(apiserver, config):
    ns = f"mail-{config}"
    values = [CHART / "ci" / f for f in CONFIGS[config]]
    status, body = apiserver.request("POST", "/api/v1/namespaces",
                                     {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": ns}})
    assert status == 201, body
    kc = ["--kubeconfig", str(apiserver.kubeconfig)]

    # 1. Strict server-side validation of everything the chart renders.
    # --dry-run=server: the capabilities (the CRDs) come from the server's discovery.
    args = ["template", config, str(CHART), "--namespace", ns, "--dry-run=server", *kc]
    for v in values:
        args += ["-f", str(v)]
    rendered = [d for d in yaml.safe_load_all(k8s.helm(*args).stdout) if d]
    kinds = {o["kind"] for o in rendered}
    if config == "full":
        assert {"ScaledObject", "ServiceMonitor", "PrometheusRule"} <= kinds
    for o in rendered:
        path = apiserver.resource_path(o, ns) + "?dryRun=All&fieldValidation=Strict"
        status, body = apiserver.request("POST", path, o)
        assert status == 201, f"{o['kind']}/{o['metadata']['name']}: {body.get('message', body)}"

    # ... and the same check refuses what a chart must not render.
    bad = json.loads(json.dumps([o for o in rendered if o["kind"] == "Deployment"][0]))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    status, body = apiserver.request(
        "POST", apiserver.resource_path(bad, ns) + "?dryRun=All&fieldValidation=Strict", bad)
    assert status in (400, 422) and "runAsUsr" in body.get("message", ""), body
    # ... and, through the real CRDs' schemas, a custom resource with a
    # misspelt field.
    for kind, field in (("ScaledObject", "minReplicaCuont"), ("ServiceMonitor", "endpoint")):
        objs = [o for o in rendered if o["kind"] == kind]
        if not objs:
            continue
        bad = json.loads(json.dumps(objs[0]))
        bad["spec"][field] = 1
        status, body = apiserver.request(
            "POST", apiserver.resource_path(bad, ns) + "?dryRun=All&fieldValidation=Strict",
            bad)
        assert status in (400, 422) and field in body.get("message", ""), (kind, body)

    # 2. helm install, the hooks created as Helm would, everything read back.
    args = ["install", config, str(CHART), "--namespace", ns, "--no-hooks", *kc]
    for v in values:
        args += ["-f", str(v)]
    k8s.helm(*args, timeout=300)
    manifest = [d for d in yaml.safe_load_all(
        k8s.helm("get", "manifest", config, "--namespace", ns, *kc).stdout) if d]
    hooks = [d for d in yaml.safe_load_all(
        k8s.helm("get", "hooks", config, "--namespace", ns, *kc).stdout) if d]
    hooks.sort(key=lambda o: int(o["metadata"]["annotations"].get("helm.sh/hook-weight", "0")))
    for o in hooks:
        status, body = apiserver.request("POST", apiserver.resource_path(o, ns), o)
        assert status == 201, f"hook {o['kind']}/{o['metadata']['name']}: {body}"
    assert {(o["kind"], o["metadata"]["name"]) for o in manifest + hooks} == \
        {(o["kind"], o["metadata"]["name"]) for o in rendered}

    for o in manifest + hooks:
        path = f"{apiserver.resource_path(o, ns)}/{o['metadata']['name']}"
        status, live = apiserver.request("GET", path)
        assert status == 200, f"{o['kind']}/{o['metadata']['name']} not found: {live}"
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == config
        _comparable(o.get("spec", {}), live.get("spec", {}))
        if o["kind"] in ("ConfigMap", "Secret"):
            assert live.get("data", {}).keys() >= (o.get("data") or {}).keys()
        # Server-side defaults show the object went through the real API machinery.
        if o["kind"] == "Deployment":
            c = live["spec"]["template"]["spec"]["containers"][0]
            assert c["terminationMessagePath"] == "/dev/termination-log"
            assert live["spec"]["template"]["spec"]["dnsPolicy"] == "ClusterFirst"
        if o["kind"] == "Service" and o["spec"].get("clusterIP") != "None":
            assert live["spec"]["clusterIP"].startswith("10.96.0.")
        if o["kind"] == "Job":
            assert live["spec"]["completions"] == 1
