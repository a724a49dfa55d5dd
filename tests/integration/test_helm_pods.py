"""The chart's pods really run (issue 14): the frontend and worker pod specs
and the topic Job that `helm template` renders are run as podman containers
of the `make image` image, against the test Kafka and Redis, and mail sent
through the frontend container arrives at the sink.

From the rendered objects, each container gets: its image, command and args,
env (a fieldRef to metadata.name becomes the pod's name), the files of the
ConfigMap and Secret volumes it mounts (written from the rendered objects,
items, paths and all; emptyDir as tmpfs), its securityContext (user and
group, read-only root, capabilities dropped, no new privileges, the default
seccomp profile) and its ports, which must be listening once the readiness
probe answers. Host networking: Kafka, Redis and the sink are on loopback, so
the test picks free ports for every container port. SIGTERM (what the kubelet
sends after preStop) must end each container within its
terminationGracePeriodSeconds, with exit status 0.

The values turn on what the programs must understand: STARTTLS and implicit
TLS with a certificate Secret, AUTH with a password file, PROXY listeners, a
Redis-backed rate limit, a DKIM key, a relay host. A second test turns
security on: Kafka SASL_SSL with the broker's CA from an existing Secret and
Redis AUTH, the chart's Secrets mounted as files (docs/kubernetes.md).
"""

from __future__ import annotations

import base64
import json
import os
import smtplib
import socket
import ssl
import struct
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

import k8s
from k8s import image, podman  # noqa: F401 (image is a fixture)
import mslocal
from k8s import find

PASSWORD = "chart-test-password"


def container_ports(p: List[int]) -> Dict[str, int]:
    """The frontend's containerPorts: host networking, so free ports for
    every listener, used or not (p: 7 of them)."""
    return {"smtp": p[0], "submission": p[1], "submissions": p[2], "smtpProxy": p[3],
            "submissionProxy": p[4], "submissionsProxy": p[5], "metrics": p[6]}


def values_for(tmp: Path, image: str, kafka, redis, sink, tag: str) -> Path:
    cert, key = mslocal.ensure_tls(tmp / "tls")
    dkim_key = tmp / "dkim.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(dkim_key)], check=True, capture_output=True)
    repo, _, itag = image.rpartition(":")
    p = mslocal.free_ports(8)
    values = {
        "image": {"repository": repo, "tag": itag, "pullPolicy": "Never"},
        "kafka": {"brokers": kafka.bootstrap, "topic": f"queue.{tag}",
                  "eventsTopic": f"events.{tag}", "group": f"workers.{tag}"},
        "redis": {"host": mslocal.HOST, "port": redis.port},
        "topics": {"replication": 1, "queuePartitions": 2, "eventsPartitions": 1,
                   "retryPartitions": 1},
        "tls": {"enabled": True, "cert": cert.read_text(), "key": key.read_text()},
        "auth": {"enabled": True,
                 "passwd": f"alice:{mslocal.crypt_sha512(PASSWORD)}:@example.com\n"},
        "proxyProtocol": {"enabled": True, "trustedCIDRs": ["127.0.0.1/32"]},
        "dkim": {"keys": [{"name": "main", "domain": "example.com", "selector": "s1",
                           "key": dkim_key.read_text()}]},
        "frontend": {
            "hostname": "mx.example.com", "acceptedDomains": ["example.com"],
            "containerPorts": container_ports(p),
            "config": {"node": {"threads": 1},
                       "ratelimit": {"connections_per_ip": "1000/1h"}},
        },
        "worker": {"metricsPort": p[7],
                   "config": {"delivery": {"relay_host": sink.address},
                              "retry": {"tiers": 1}}},
    }
    f = tmp / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    return f


class Pod:
    """One rendered pod spec run as podman containers (one per container)."""

    def __init__(self, root: Path, objs: List[dict], name: str, spec: dict, workdir: Path):
        self.root, self.objs, self.name, self.spec = root, objs, name, spec
        self.dir = workdir / name
        self.containers: List[str] = []

    def _files(self, vol: dict) -> Path:
        d = self.dir / "volumes" / vol["name"]
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        if "configMap" in vol:
            src = find(self.objs, "ConfigMap", vol["configMap"]["name"])
            data = {k: v.encode() for k, v in src["data"].items()}
            items = vol["configMap"].get("items")
        else:
            src = find(self.objs, "Secret", vol["secret"]["secretName"])
            data = k8s.secret_data(src)
            items = vol["secret"].get("items")
        for it in items or [{"key": k, "path": k} for k in data]:
            f = d / it["path"]
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data[it["key"]])
            f.chmod(0o644)  # the API's defaultMode, 0644
        return d

    def run_args(self, c: dict, detach: bool) -> List[str]:
        vols = {v["name"]: v for v in self.spec.get("volumes", [])}
        psc, sc = self.spec.get("securityContext", {}), c.get("securityContext", {})
        args = ["run", "--name", f"{self.name}-{c['name']}", "--network", "host",
                "--hostname", self.name, "--pull", "never"]
        args += ["-d"] if detach else ["--rm"]
        uid, gid = sc.get("runAsUser", psc.get("runAsUser")), sc.get("runAsGroup", psc.get("runAsGroup"))
        assert uid and uid != 0, "the chart must name a non-root user"
        args += ["--user", f"{uid}:{gid}"]
        if psc.get("fsGroup"):
            args += ["--group-add", str(psc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        assert not sc.get("capabilities", {}).get("add")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        assert sc.get("seccompProfile", psc.get("seccompProfile"))["type"] == "RuntimeDefault"
        for e in c.get("env", []):
            if "value" in e:
                val = e["value"]
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                val = self.name
            else:
                raise AssertionError(f"env {e} cannot be run here")
            args += ["-e", f"{e['name']}={val}"]
        for m in c.get("volumeMounts", []):
            v = vols[m["name"]]
            if "emptyDir" in v:
                args += ["--tmpfs", f"{m['mountPath']}:rw,size=16m,mode=1777"]
            else:
                ro = ":ro" if m.get("readOnly") else ""
                args += ["-v", f"{self._files(v)}:{m['mountPath']}{ro}"]
        return args + [c["image"], *c.get("command", []), *c.get("args", [])]

    def start(self) -> None:
        for c in self.spec["containers"]:
            podman(self.root, *self.run_args(c, detach=True))
            self.containers.append(f"{self.name}-{c['name']}")

    def port(self, c: dict, ref) -> int:
        if isinstance(ref, int):
            return ref
        return [p["containerPort"] for p in c["ports"] if p["name"] == ref][0]

    def probe(self, c: dict, which: str) -> bool:
        g = c[which]["httpGet"]
        url = f"http://127.0.0.1:{self.port(c, g['port'])}{g['path']}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90) -> None:
        for c in self.spec["containers"]:
            cname = f"{self.name}-{c['name']}"

            def ready() -> bool:
                state = json.loads(podman(self.root, "inspect", cname).stdout)[0]["State"]
                if not state["Running"]:
                    raise AssertionError(f"{cname} exited ({state['ExitCode']}):\n{self.logs()}")
                return self.probe(c, "readinessProbe")
            try:
                mslocal.wait_until(ready, timeout, f"{cname} ready", interval=0.5)
            except mslocal.MsLocalError:
                raise AssertionError(f"{cname} not ready:\n{self.logs()}") from None
            assert self.probe(c, "livenessProbe")
            for p in c.get("ports", []):
                assert mslocal.port_open("127.0.0.1", p["containerPort"]), \
                    f"{cname}: port {p['name']} ({p['containerPort']}) is not listening"

    def logs(self) -> str:
        return "\n".join(podman(self.root, "logs", n, check=False).stderr[-4000:]
                         for n in self.containers)

    def terminate(self) -> None:
        """SIGTERM as the kubelet sends it; each must exit 0 within its grace period."""
        grace = self.spec.get("terminationGracePeriodSeconds", 30)
        for n in self.containers:
            t0 = time.monotonic()
            podman(self.root, "stop", "-t", str(grace), n, timeout=grace + 30)
            state = json.loads(podman(self.root, "inspect", n).stdout)[0]["State"]
            assert state["ExitCode"] == 0, f"{n} exited {state['ExitCode']}:\n{self.logs()}"
            assert time.monotonic() - t0 < grace

    def remove(self) -> None:
        for n in self.containers:
            podman(self.root, "rm", "-f", "-t", "0", n, check=False)


def start_release(root: Path, objs: List[dict], tag: str, workdir: Path, pods: List[Pod],
                  prefix: str = "", ready_timeout: float = 90) -> dict:
    """Run the topic Job (the hook, first: the topics the workers consume),
    then start the worker and frontend pods (appended to pods, for the
    caller to remove) and wait until ready. The frontend's pod spec."""
    job = find(objs, "Job", "-topics")["spec"]["template"]["spec"]
    fe_dep = find(objs, "Deployment", "-frontend")["spec"]["template"]["spec"]
    wk_dep = find(objs, "Deployment", "-worker")["spec"]["template"]["spec"]
    topics = Pod(root, objs, f"{prefix}topics-{tag}", job, workdir)
    p = podman(root, *topics.run_args(job["containers"][0], detach=False), check=False,
               timeout=180)
    assert p.returncode == 0, f"the topic Job failed: {p.stderr}"
    for spec, name in ((wk_dep, "worker"), (fe_dep, "frontend")):
        pod = Pod(root, objs, f"{prefix}{name}-{tag}", spec, workdir)
        pods.append(pod)
        pod.start()
    for pod in pods:
        pod.wait_ready(ready_timeout)
    return fe_dep


def proxy_v2_header(src: str, src_port: int, dst_port: int) -> bytes:
    """A PROXY protocol v2 header for a TCP over IPv4 connection."""
    addrs = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + \
        struct.pack("!HH", src_port, dst_port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


# Loading the image (module fixtures) counts in the first test.
@pytest.mark.timeout(600)
def test_rendered_pods_deliver_mail(image, kafka_broker, redis_server, sink, tmp_path):
    root, image_name = image
    tag = uuid.uuid4().hex[:10]
    values = values_for(tmp_path, image_name, kafka_broker, redis_server, sink, tag)
    objs = k8s.render([values], release=f"t{tag[:6]}")
    pods: List[Pod] = []
    try:
        fe_dep = start_release(root, objs, tag, tmp_path, pods)

        ports = fe_dep["containers"][0]["ports"]
        port = {p["name"]: p["containerPort"] for p in ports}
        # Port 25's plain listener: inbound mail for an accepted domain.
        with smtplib.SMTP(mslocal.HOST, port["smtp"], timeout=30) as s:
            s.ehlo("client.example.net")
            s.sendmail("sender@example.net", ["user@example.com"],
                       b"From: sender@example.net\r\nTo: user@example.com\r\n"
                       b"Subject: chart inbound\r\n\r\nthrough the chart's frontend\r\n")
        # Submission with STARTTLS and AUTH: outbound, DKIM-signed by the worker.
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP(mslocal.HOST, port["submission"], timeout=30) as s:
            s.starttls(context=ctx)
            s.login("alice", PASSWORD)
            s.sendmail("alice@example.com", ["bob@elsewhere.example.net"],
                       b"From: alice@example.com\r\nTo: bob@elsewhere.example.net\r\n"
                       b"Subject: chart outbound\r\n\r\nsigned by the chart's worker\r\n")
        # The PROXY listener: the client address is the one the header names.
        with socket.create_connection((mslocal.HOST, port["smtp-proxy"]), timeout=30) as raw:
            raw.sendall(proxy_v2_header("198.51.100.7", 40000, 25))
            f = raw.makefile("rb")
            assert f.readline().startswith(b"220")

            def cmd(line: bytes) -> bytes:
                raw.sendall(line + b"\r\n")
                reply = f.readline()
                while reply[3:4] == b"-":
                    reply = f.readline()
                return reply
            assert cmd(b"EHLO proxied.example.net").startswith(b"250")
            assert cmd(b"MAIL FROM:<far@example.net>").startswith(b"250")
            assert cmd(b"RCPT TO:<user@example.com>").startswith(b"250")
            assert cmd(b"DATA").startswith(b"354")
            assert cmd(b"Subject: chart proxied\r\n\r\nvia PROXY v2\r\n.").startswith(b"250")
            cmd(b"QUIT")

        msgs = sink.wait_for(3, timeout=90)
        by_subject = {}
        for m in msgs:
            for line in m.data.split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    by_subject[line[9:].decode()] = m
        assert set(by_subject) == {"chart inbound", "chart outbound", "chart proxied"}
        assert b"DKIM-Signature:" in by_subject["chart outbound"].data
        assert b"d=example.com" in by_subject["chart outbound"].data
        assert b"198.51.100.7" in by_subject["chart proxied"].data
        assert by_subject["chart inbound"].envelope["rcpts"] == ["user@example.com"]

        # SIGTERM drains and exits 0 within the grace period (frontend first,
        # as a rollout would, then the worker).
        for pod in reversed(pods):
            pod.terminate()
    finally:
        for pod in pods:
            pod.remove()


# ---------------------------------------------------------------------------
# Security on: Kafka SASL_SSL and Redis AUTH, the chart's Secrets as files
# ---------------------------------------------------------------------------

KAFKA_USER = "mailstream"


@pytest.fixture(scope="module")
def secured_backends(tmp_path_factory):
    """(Kafka, KafkaSecurity, kafka password, Redis, redis password): a broker
    with secured listeners (test_kafka_security.py's) and a Redis with
    requirepass, both on loopback, of this module's own."""
    d = tmp_path_factory.mktemp("secured-backends")
    sup = mslocal.Supervisor(d)
    pki = mslocal.make_test_pki(d / "pki")
    kafka_pw, redis_pw = "k-" + uuid.uuid4().hex[:12], "r-" + uuid.uuid4().hex[:12]
    ports = mslocal.free_ports(6)
    sec = mslocal.KafkaSecurity(pki, {KAFKA_USER: kafka_pw}, ports[2], ports[3], ports[4])
    kafka = mslocal.Kafka(sup, ports[0], ports[1], security=sec)
    redis = mslocal.Redis(sup, ports[5], password=redis_pw)
    try:
        redis.start()
        kafka.start(timeout=180)
        yield kafka, sec, kafka_pw, redis, redis_pw
    finally:
        sup.stop_all()


@pytest.mark.timeout(600)
def test_rendered_pods_secured_backends(image, secured_backends, sink, tmp_path):
    """The chart with Kafka SASL_SSL (PLAIN: Debian 12's librdkafka cannot
    log in to a Kafka 4 broker with SCRAM, docs/security.md), the broker's CA
    from an existing Secret, and Redis AUTH with a password: the chart's
    Secrets are mounted as files into the topic Job, the worker and the
    frontend, which all get through (the Job creates the topics over
    SASL_SSL, both programs get ready, a rate limit needs Redis), and a
    message reaches the sink. The passwords appear in no container log."""
    root, image_name = image
    kafka, sec, kafka_pw, redis, redis_pw = secured_backends
    tag = uuid.uuid4().hex[:10]
    repo, _, itag = image_name.rpartition(":")
    p = mslocal.free_ports(8)
    values = {
        "image": {"repository": repo, "tag": itag, "pullPolicy": "Never"},
        "kafka": {"brokers": sec.address("sasl_ssl"), "topic": f"queue.{tag}",
                  "eventsTopic": f"events.{tag}", "group": f"workers.{tag}",
                  "securityProtocol": "sasl_ssl",
                  "sasl": {"mechanism": "PLAIN", "username": KAFKA_USER, "password": kafka_pw},
                  "tls": {"existingSecret": "kafka-ca", "caKey": "ca.crt"}},
        "redis": {"host": mslocal.HOST, "port": redis.port, "password": redis_pw},
        "topics": {"replication": 1, "queuePartitions": 1, "eventsPartitions": 1,
                   "retryPartitions": 1},
        "frontend": {
            "hostname": "mx.example.com", "acceptedDomains": ["example.com"],
            "containerPorts": container_ports(p),
            "config": {"node": {"threads": 1},
                       # Redis-backed, and Redis is a must: a wrong password
                       # would keep the frontend from getting ready.
                       "ratelimit": {"connections_per_ip": "1000/1h",
                                     "redis_failure": "closed"}},
        },
        "worker": {"metricsPort": p[7],
                   "config": {"delivery": {"relay_host": sink.address},
                              "retry": {"tiers": 1}}},
    }
    vf = tmp_path / "values.yaml"
    vf.write_text(yaml.safe_dump(values))
    objs = k8s.render([vf], release=f"s{tag[:6]}")
    # The existing Secret the values name (what an operator or cert-manager
    # would have created), as the API would hand it to the kubelet.
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-ca"},
                 "data": {"ca.crt": base64.b64encode(sec.pki.ca.read_bytes()).decode()}})
    job = find(objs, "Job", "-topics")["spec"]["template"]["spec"]
    fe_dep = find(objs, "Deployment", "-frontend")["spec"]["template"]["spec"]
    wk_dep = find(objs, "Deployment", "-worker")["spec"]["template"]["spec"]
    for spec in (job, fe_dep, wk_dep):
        mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert "/etc/mailstream/kafka-sasl" in mounts and "/etc/mailstream/kafka-tls" in mounts, \
            mounts
    for spec in (fe_dep, wk_dep):
        mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert "/etc/mailstream/redis" in mounts, mounts

    pods: List[Pod] = []
    try:
        start_release(root, objs, tag, tmp_path, pods, prefix="s", ready_timeout=120)
        port = {q["name"]: q["containerPort"] for q in fe_dep["containers"][0]["ports"]}
        with smtplib.SMTP(mslocal.HOST, port["smtp"], timeout=30) as s:
            s.ehlo("client.example.net")
            s.sendmail("sender@example.net", ["user@example.com"],
                       f"From: sender@example.net\r\nTo: user@example.com\r\n"
                       f"Subject: secured {tag}\r\n\r\nthrough SASL_SSL and Redis AUTH\r\n")
        got = [m for m in sink.wait_for(1, timeout=90) if tag.encode() in m.data]
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.5)
            got = [m for m in sink.messages() if tag.encode() in m.data]
        assert len(got) == 1 and got[0].envelope["rcpts"] == ["user@example.com"], got
        logs = "".join(pod.logs() for pod in pods)
        assert kafka_pw not in logs and redis_pw not in logs
        for pod in reversed(pods):
            pod.terminate()
    finally:
        for pod in pods:
            pod.remove()
