"""The Helm chart, offline (issue 14): helm lint, helm template of the default
values and of every helm/mailstream/ci/*-values.yaml, each object validated
strictly (unknown fields refused) against the Kubernetes schemas bundled by
kubernetes-validate for the oldest and the newest Kubernetes the chart
supports; values.schema.json refusing wrong types and unknown keys; the unsafe
settings refused; the README's values table current.

The server-side check (a real kube-apiserver) is test_helm_apiserver.py; the
rendered pods running against Kafka and Redis is test_helm_pods.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import k8s
from k8s import CHART, CRD_APIS, find, render

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CUSTOM_KINDS = {"ScaledObject": "keda.sh/v1alpha1", "ServiceMonitor": "monitoring.coreos.com/v1",
                "PrometheusRule": "monitoring.coreos.com/v1"}


def test_ci_values_cover_the_issue():
    names = {p.name for p in CI_VALUES}
    assert {"proxy-values.yaml", "external-secrets-values.yaml", "keda-values.yaml",
            "servicemonitor-values.yaml"} <= names


def test_lint():
    k8s.helm("lint", "--strict", str(CHART))
    for v in CI_VALUES:
        k8s.helm("lint", "--strict", str(CHART), "-f", str(v))


@pytest.mark.parametrize("kube", k8s.KUBE_VERSIONS)
@pytest.mark.parametrize("values", [None] + CI_VALUES,
                         ids=["default"] + [p.stem for p in CI_VALUES])
def test_template_validates(values, kube):
    kv = _import_validate()
    objs = render([values] if values else [], api_versions=CRD_APIS,
                  sets=[f"image.tag=test"])
    assert objs
    kinds = set()
    for o in objs:
        kinds.add(o["kind"])
        if o["kind"] in CUSTOM_KINDS:
            # Not in the Kubernetes schemas; the API server test creates them.
            assert o["apiVersion"] == CUSTOM_KINDS[o["kind"]]
            continue
        try:
            kv.validate(o, kube, strict=True)
        except kv.ValidationError as e:
            raise AssertionError(f"{o['kind']}/{o['metadata']['name']} on {kube}: "
                                 f"{'.'.join(map(str, e.path))}: {e.message}") from None
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy",
            "Job", "ServiceAccount"} <= kinds
    if values and values.stem == "keda-values":
        assert "ScaledObject" in kinds
    if values and values.stem == "servicemonitor-values":
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def _import_validate():
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        k8s.missing("the kubernetes-validate package is not in the test venv")
    return sys.modules["kubernetes_validate"]


def _pod_specs(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", [None] + CI_VALUES,
                         ids=["default"] + [p.stem for p in CI_VALUES])
def test_pods_are_locked_down(values):
    objs = render([values] if values else [], api_versions=CRD_APIS)
    specs = list(_pod_specs(objs))
    assert len(specs) == 3  # frontend, worker, topic Job
    for name, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            for p in c.get("ports", []):
                assert p["containerPort"] >= 1024, (name, p)
    for comp in ("frontend", "worker"):
        d = find(objs, "Deployment", f"-{comp}")
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        # The grace period covers the preStop sleep and the drain.
        drain = 30 if comp == "frontend" else 20
        assert spec["terminationGracePeriodSeconds"] > sleep + drain
        ann = d["spec"]["template"]["metadata"]["annotations"]
        assert len(ann["checksum/config"]) == 64 and len(ann["checksum/secrets"]) == 64
        keys = {t["topologyKey"] for t in spec["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_config_change_rolls_pods():
    a = find(render(), "Deployment", "-frontend")
    b = find(render(sets=["frontend.config.smtp.max_recipients=50"]), "Deployment", "-frontend")
    c = find(render(sets=["redis.password=x"]), "Deployment", "-worker")
    d = find(render(), "Deployment", "-worker")
    ann = lambda o: o["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert ann(a)["checksum/config"] != ann(b)["checksum/config"]
    assert ann(c)["checksum/secrets"] != ann(d)["checksum/secrets"]


def test_smtp_service_keeps_client_addresses():
    objs = render(sets=["tls.enabled=true", "tls.existingSecret=mx-tls"])
    svc = find(objs, "Service", "-smtp")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    ports = {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert ports == {25: "smtp", 465: "submissions", 587: "submission"}
    fe = find(objs, "Deployment", "-frontend")["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in fe["ports"]}
    assert named["smtp"] == 2525 and named["submissions"] == 4650 and named["submission"] == 5870
    ini = find(objs, "ConfigMap", "-config")["data"]["frontend.ini"]
    assert "proxy" not in ini


def test_proxy_mode():
    objs = render([CHART / "ci" / "proxy-values.yaml"])
    svc = find(objs, "Service", "-smtp")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == \
        {"smtp-proxy", "subms-proxy", "subm-proxy"}
    internal = find(objs, "Service", "-smtp-internal")
    assert internal["spec"]["type"] == "ClusterIP"
    ini = find(objs, "ConfigMap", "-config")["data"]["frontend.ini"]
    assert "proxy_trusted_networks = 10.0.0.0/16, fd00:10::/64" in ini
    assert "[listener.mx-proxy]\nlisten = 0.0.0.0:2526\nproxy = yes\nrole = mx" in ini


@pytest.mark.parametrize("sets, why", [
    (["frontend.replicas=two"], "replicas"),
    (["frontend.bogus=1"], "bogus"),
    (["kafka.securityProtocol=SASL_SSL"], "securityProtocol"),
    (["frontend.config.smtp.relay_hots=x"], "relay_hots"),
    (["worker.config.deliverie.relay_host=x"], "deliverie"),
    (["proxyProtocol.enabled=true"], "trustedCIDRs"),
    (["proxyProtocol.enabled=true", "proxyProtocol.trustedCIDRs={0.0.0.0/0}"], "trustedCIDRs"),
    (["frontend.trustedNetworks={0.0.0.0/0}"], "trustedNetworks"),
    (["frontend.containerPorts.smtp=25"], "smtp"),
    (["tls.enabled=true"], "tls"),
    (["kafka.securityProtocol=sasl_ssl", "kafka.sasl.password=x"], "kafka.sasl.username"),
    (["kafka.securityProtocol=sasl_ssl", "kafka.sasl.username=u"], "kafka.sasl"),
    (["kafka.securityProtocol=ssl", "kafka.tls.existingSecret=ca", "kafka.tls.certKey=c"],
     "keyKey"),
    (["worker.config.transport.map=" + "a" * 200], "198"),
])
def test_unsafe_or_wrong_values_refused(sets, why):
    args = ["template", "ms", str(CHART)]
    for s in sets:
        args += ["--set", s]
    p = k8s.helm(*args, check=False)
    assert p.returncode != 0, f"{sets} rendered"
    assert why in p.stderr, p.stderr


def test_security_keys_only_when_set():
    plain = find(render(), "ConfigMap", "-config")["data"]
    for ini in plain.values():
        for key in ("security_protocol", "sasl_", "ssl_", "password", "username"):
            assert key not in ini, (key, ini)
    objs = render([CHART / "ci" / "external-secrets-values.yaml"])
    ini = find(objs, "ConfigMap", "-config")["data"]["worker.ini"]
    for line in ("security_protocol = sasl_ssl", "sasl_mechanism = SCRAM-SHA-512",
                 "sasl_username = mailstream",
                 "sasl_password_file = /etc/mailstream/kafka-sasl/password",
                 "ssl_ca_file = /etc/mailstream/kafka-tls/ca.crt",
                 "username = mailstream", "password_file = /etc/mailstream/redis/password"):
        assert line in ini, line
    # Credentials are files from Secrets, never values in the ConfigMap.
    assert not [o for o in objs if o["kind"] == "Secret" and not
                o["metadata"].get("annotations", {}).get("helm.sh/hook")]
    job = find(objs, "Job", "-topics")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][:2] == ["-c", "/etc/mailstream/config/worker.ini"]


def test_topic_job():
    objs = render(sets=["topics.replication=2", "worker.config.retry.tiers=2"])
    job = find(objs, "Job", "-topics")
    assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["/usr/local/bin/mailstream-ctl"]
    # Retention (docs/reliability.md): the queue 72 h, the tiers 4 h
    # (retry_max_ms) + 72 h, events 144 h.
    assert c["args"] == ["-b", "kafka:9092", "topics", "create", "queue:12:2@259200s",
                         "events:3:2@144h", "queue.retry.1:3:2@273600s",
                         "queue.retry.2:3:2@273600s"]
    objs = render(sets=["topics.outageHours=24", "topics.eventsHours=48",
                        "worker.config.delivery.retry_max_ms=600000"])
    args = find(objs, "Job", "-topics")["spec"]["template"]["spec"]["containers"][0]["args"]
    # A retry_max_ms under the 15 min hold recheck: the recheck bounds the delay.
    assert args[4:7] == ["queue:12:3@86400s", "events:3:3@48h", "queue.retry.1:3:3@87300s"]


def test_crd_objects_only_when_crds_exist():
    sets = ["worker.keda.enabled=true", "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true"]
    without = render(sets=sets)
    assert not {o["kind"] for o in without} & set(CUSTOM_KINDS)
    # KEDA asked for but absent: the CPU HPA still scales the workers.
    find(without, "HorizontalPodAutoscaler", "-worker")
    with_ = render(sets=sets, api_versions=CRD_APIS)
    assert set(CUSTOM_KINDS) <= {o["kind"] for o in with_}
    assert not [o for o in with_ if o["kind"] == "HorizontalPodAutoscaler"
                and o["metadata"]["name"].endswith("-worker")]
    so = find(with_, "ScaledObject")
    assert "mailstream_worker_consumer_lag" in so["spec"]["triggers"][0]["metadata"]["query"]
    rules = find(with_, "PrometheusRule")["spec"]["groups"][0]["rules"]
    exprs = " ".join(r["expr"] for r in rules)
    for metric in ("mailstream_worker_consumer_lag", "mailstream_worker_retry_queue_depth",
                   "mailstream_smtp_replies_total", "mailstream_smtp_tls_handshakes_total"):
        assert metric in exprs


def test_dashboard_is_json():
    import json
    d = json.loads((CHART / "dashboards" / "mailstream.json").read_text())
    exprs = " ".join(t["expr"] for p in d["panels"] for t in p["targets"])
    assert "mailstream_worker_consumer_lag" in exprs and "mailstream_smtp_sessions" in exprs
    cm = find(render(sets=["metrics.dashboard.enabled=true"]), "ConfigMap", "-dashboard")
    assert json.loads(cm["data"]["mailstream.json"]) == d


def test_readme_lists_every_value():
    p = subprocess.run([sys.executable, str(k8s.REPO / "tools" / "chart_readme.py"), "--check",
                        str(CHART)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_notes_say_how_to_send_mail():
    p = k8s.helm("install", "ms", str(CHART), "--dry-run=client", "--namespace", "mail")
    assert "swaks --server" in p.stdout and "postmaster@example.com" in p.stdout


# The secured-connection keys agreed for issue 14 (docs/security.md of that
# change): the schema knows them before docs/config.md lists them.
SECURITY_KEYS = {
    "kafka": {"security_protocol", "sasl_mechanism", "sasl_username", "sasl_password_file",
              "sasl_password", "ssl_ca_file", "ssl_cert_file", "ssl_key_file",
              "ssl_key_password_file"},
    "redis": {"username", "password_file", "password"},
}


def _documented_keys(program: str) -> dict:
    """{section: {keys}} of the table under `## <program>` in docs/config.md."""
    text = (k8s.REPO / "docs" / "config.md").read_text()
    part = text.split(f"## {program}\n", 1)[1]
    part = part.split("\n## ", 1)[0].split("\n### ", 1)[0]
    out: dict = {}
    # The rules of [format.*], listed in their own table (a row says "(rules)").
    rules = text.split("### Message format checks", 1)[1].split("\n## ", 1)[0]
    rule_keys = set()
    for line in rules.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"[a-z0-9_]+", cells[0]):
            rule_keys.add(cells[0])
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("section", "---"):
            continue
        if cells[1] == "security keys":
            continue  # "Secured connections", SECURITY_KEYS
        keys = rule_keys if cells[1] == "(rules)" else \
            {k.strip().strip("`") for k in cells[1].split(",")}
        for section in (x.strip() for x in cells[0].split(",")):
            out.setdefault(section, set()).update(keys)
    return out


@pytest.mark.parametrize("component, program", [("frontend", "mailstream-frontend"),
                                                ("worker", "mailstream-worker")])
def test_schema_knows_every_documented_key(component, program):
    """Every key of docs/config.md is reachable through <component>.config,
    and the schema allows no key the programs do not read."""
    import json
    import re
    schema = json.loads((CHART / "values.schema.json").read_text())
    cfg = schema["properties"][component]["properties"]["config"]
    docs = _documented_keys(program)
    assert docs
    for section, keys in docs.items():
        if section.endswith(".NAME"):
            pattern = [p for p in cfg["patternProperties"]
                       if re.match(p, section.replace("NAME", "x"))]
            assert pattern, section
            allowed = set(cfg["patternProperties"][pattern[0]]["properties"])
        else:
            assert section in cfg["properties"], section
            allowed = set(cfg["properties"][section]["properties"])
        assert keys <= allowed, (section, keys - allowed)
    for section, spec in cfg["properties"].items():
        extra = set(spec["properties"]) - docs.get(section, set()) - \
            SECURITY_KEYS.get(section, set())
        assert not extra, (section, extra)
