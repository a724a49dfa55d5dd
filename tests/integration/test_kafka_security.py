"""Secured connections to Kafka (issue 14, docs/security.md).

A broker of its own (mslocal.Kafka with KafkaSecurity): SASL_SSL, SSL that
requires a client certificate, and SASL_PLAINTEXT listeners, with certificates
from a test CA made here by openssl, and one user that can log in with PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512. The frontend, the worker and mailstream-ctl
connect with the [kafka] security keys, secrets from a file or the
environment; mail goes through end to end; a wrong password leaves the
process up, not ready, saying why in its log again and again, never with the
password in it.

SCRAM: librdkafka before 2.6.1 (Debian 12 has 2.0.2) sends a nonce that
Kafka 4 brokers refuse (librdkafka PR #4895); test_scram_kafka4 expects what
the linked library can do against the Kafka 4 broker, and the programs' own
warning says which it is. Kafka 3.8.1 .. 3.9.x accept that nonce (the broker
only checks that the final nonce ends with its own), so
test_scram_end_to_end runs SCRAM-SHA-256 and -512 with the right and a wrong
password against a second, test-only broker of mslocal.KAFKA_SCRAM_VERSION
(fetched by `cluster/deps.sh kafka`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import secrets
import smtplib
import subprocess
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Dict, Tuple

import pytest

import mslocal

USER = "mailstream"


def test_librdkafka_has_tls_and_sasl():
    """The librdkafka the programs link (Debian 12: built with OpenSSL and
    Cyrus SASL) has what [kafka] security_protocol and sasl_mechanism
    offer: its own `builtin.features`."""
    lib = ctypes.CDLL(ctypes.util.find_library("rdkafka") or "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.POINTER(ctypes.c_size_t)]
    lib.rd_kafka_conf_destroy.argtypes = [ctypes.c_void_p]
    conf = lib.rd_kafka_conf_new()
    buf = ctypes.create_string_buffer(512)
    size = ctypes.c_size_t(len(buf))
    assert lib.rd_kafka_conf_get(conf, b"builtin.features", buf, ctypes.byref(size)) == 0
    lib.rd_kafka_conf_destroy(conf)
    features = set(buf.value.decode().split(","))
    assert {"ssl", "sasl_plain", "sasl_scram"} <= features, features


def _broker(tmp_path_factory, name: str, version: str):
    """Yields (Kafka, KafkaSecurity, password): a broker of that version with
    secured listeners and one user, stopped afterwards."""
    d = tmp_path_factory.mktemp(name)
    sup = mslocal.Supervisor(d)
    pki = mslocal.make_test_pki(d / "pki")
    password = "pw-" + secrets.token_hex(8)
    ports = mslocal.free_ports(5)
    sec = mslocal.KafkaSecurity(pki, {USER: password}, ports[2], ports[3], ports[4])
    k = mslocal.Kafka(sup, ports[0], ports[1], security=sec, version=version)
    try:
        k.start(timeout=180)
        yield k, sec, password
    finally:
        sup.stop_all()


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory):
    """(Kafka, KafkaSecurity, password): a broker with secured listeners."""
    yield from _broker(tmp_path_factory, "secure-kafka", mslocal.KAFKA_VERSION)


@pytest.fixture(scope="module")
def scram_kafka(tmp_path_factory):
    """The same listeners and user on a broker of mslocal.KAFKA_SCRAM_VERSION
    (3.9), which accepts the SCRAM nonce of librdkafka < 2.6.1."""
    yield from _broker(tmp_path_factory, "scram-kafka", mslocal.KAFKA_SCRAM_VERSION)


def _topics(spec: mslocal.ClusterSpec) -> Dict[str, int]:
    t = {spec.topic: 3, spec.events_topic: 1}
    for n in range(1, mslocal.WORKER_RETRY_TIERS + 1):
        t[f"{spec.topic}.retry.{n}"] = 1
    return t


def _secured(cluster_factory, kafka, kafka_sections: Dict[str, object], env=None,
             start: bool = True):
    """A cluster whose frontend and worker reach `kafka` with these keys."""
    cl = cluster_factory(start=False, env=env,
                         frontend_extra={"kafka": dict(kafka_sections)},
                         worker_extra={"kafka": dict(kafka_sections)})
    kafka.create_topics(_topics(cl.spec))
    if start:
        cl.start(timeout=60)
    return cl


def _send(cl, rcpt: str = "someone@mailstream.test") -> None:
    msg = EmailMessage()
    msg["From"] = "sender@mailstream.test"
    msg["To"] = rcpt
    msg["Subject"] = "secured " + secrets.token_hex(4)
    msg.set_content("through a secured Kafka\n")
    host, port = cl.listener("mx")
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.send_message(msg, from_addr="sender@mailstream.test", to_addrs=[rcpt])


def _readyz(node) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(node.url("/readyz"), timeout=2) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def _readyz_saying(node, text: str, timeout: float = 10) -> Tuple[int, str]:
    """/readyz once its body holds text (the first probe may still be
    under way when the first failure is logged); fails the test if never."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = _readyz(node)
        if text in body:
            return status, body
        assert time.monotonic() < deadline, f"{node.name} /readyz: {status} {body!r}"
        time.sleep(0.3)


def _assert_no_secret(cl, secret: str) -> None:
    for n in cl.nodes():
        assert secret not in n.log.read_text(errors="replace"), f"{n.name} logged the password"


def _password_file(tmp_path: Path, password: str) -> Path:
    p = tmp_path / "kafka-password"
    p.write_text(password + "\n")   # a Secret file may end with a newline
    os.chmod(p, 0o600)
    return p


def test_sasl_ssl_plain_end_to_end(cluster_factory, secure_kafka, tmp_path):
    """SASL_SSL with PLAIN, the CA from a file, the password from a file:
    both programs get ready and a message reaches the sink; the worker
    exports its consumer lag per partition."""
    kafka, sec, password = secure_kafka
    cl = _secured(cluster_factory, kafka, {
        "brokers": sec.address("sasl_ssl"), "security_protocol": "sasl_ssl",
        "sasl_mechanism": "PLAIN", "sasl_username": USER,
        "sasl_password_file": _password_file(tmp_path, password),
        "ssl_ca_file": sec.pki.ca})
    _send(cl)
    got = cl.sink.wait_for(1, timeout=60)
    assert got[0].envelope["rcpts"] == ["someone@mailstream.test"]
    # Statistics every 5 s: the queue topic's partitions this worker holds.
    pat = re.compile(r'^mailstream_worker_consumer_lag\{topic="%s",partition="(\d+)"\} (\d+)$'
                     % re.escape(cl.spec.topic), re.M)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = pat.findall(cl.workers[0].metrics_text())
        if len(found) == 3:
            break
        time.sleep(0.5)
    assert sorted(int(p) for p, _ in found) == [0, 1, 2]
    assert all(int(lag) == 0 for _, lag in found)  # everything was delivered
    _assert_no_secret(cl, password)


def test_mutual_tls_end_to_end(cluster_factory, secure_kafka):
    """SSL with a client certificate (the listener requires one)."""
    kafka, sec, _ = secure_kafka
    cl = _secured(cluster_factory, kafka, {
        "brokers": sec.address("ssl"), "security_protocol": "ssl",
        "ssl_ca_file": sec.pki.ca, "ssl_cert_file": sec.pki.client_cert,
        "ssl_key_file": sec.pki.client_key})
    _send(cl)
    cl.sink.wait_for(1, timeout=60)


def _wait_log(node, pattern: str, count: int, timeout: float) -> list:
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    found: list = []
    while time.monotonic() < deadline:
        found = [l for l in node.log.read_text(errors="replace").splitlines() if rx.search(l)]
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{node.name}: {count} lines matching {pattern!r} not seen "
                         f"within {timeout}s (saw {len(found)}):\n{mslocal.tail(node.log)}")


def test_wrong_password_not_ready_and_says_why(cluster_factory, secure_kafka):
    """A wrong password (from the environment): both programs stay up and
    not ready, /readyz says authentication failed, and the log names the
    broker and the mechanism at every retry, never the password."""
    kafka, sec, password = secure_kafka
    wrong = "wrong-" + secrets.token_hex(6)
    cl = _secured(cluster_factory, kafka, {
        "brokers": sec.address("sasl_ssl"), "security_protocol": "sasl_ssl",
        "sasl_mechanism": "PLAIN", "sasl_username": USER, "ssl_ca_file": sec.pki.ca},
        env={"MAILSTREAM_KAFKA_SASL_PASSWORD": wrong}, start=False)
    cl.add_frontend(wait=False)
    cl.add_worker(wait=False)
    for n in cl.nodes():
        lines = _wait_log(n, r"level=error .*event=kafka_auth_failed", 2, 60)
        assert f"brokers={sec.address('sasl_ssl')}" in lines[0]
        assert "mechanism=PLAIN" in lines[0] and "protocol=sasl_ssl" in lines[0]
        assert n.alive(), f"{n.name} exited"
        status, body = _readyz_saying(n, "authentication failed (sasl_ssl PLAIN)")
        assert status == 503, (status, body)
        assert n.alive(), f"{n.name} exited"
    _assert_no_secret(cl, wrong)
    _assert_no_secret(cl, password)


def test_unknown_ca_not_ready_and_says_why(cluster_factory, secure_kafka):
    """A broker certificate that does not chain to ssl_ca_file: the
    handshake fails, the worker stays up, not ready, and says TLS failed."""
    kafka, sec, _ = secure_kafka
    cl = _secured(cluster_factory, kafka, {
        "brokers": sec.address("ssl"), "security_protocol": "ssl",
        "ssl_ca_file": sec.pki.other_ca, "ssl_cert_file": sec.pki.client_cert,
        "ssl_key_file": sec.pki.client_key}, start=False)
    wk = cl.add_worker(wait=False)
    lines = _wait_log(wk, r"level=error .*event=kafka_tls_failed", 2, 60)
    assert "protocol=ssl" in lines[0] and f"brokers={sec.address('ssl')}" in lines[0]
    status, body = _readyz_saying(wk, "kafka: TLS failed (ssl)")
    assert status == 503, (status, body)
    assert wk.alive()


def test_scram_kafka4(cluster_factory, secure_kafka, tmp_path):
    """SCRAM-SHA-512 and SCRAM-SHA-256 with the right password against the
    Kafka 4 broker. Where the linked librdkafka has the nonce bug (it then
    says so at start-up: event=kafka_scram_warning) a Kafka 4 broker refuses
    the login, and the program must say so clearly and stay not ready;
    otherwise mail flows. (docs/security.md: which brokers work.)"""
    kafka, sec, password = secure_kafka
    for mech in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
        cl = _secured(cluster_factory, kafka, {
            "brokers": sec.address("sasl_ssl"), "security_protocol": "sasl_ssl",
            "sasl_mechanism": mech, "sasl_username": USER,
            "sasl_password_file": _password_file(tmp_path, password),
            "ssl_ca_file": sec.pki.ca}, start=False)
        wk = cl.add_worker(wait=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = wk.log.read_text(errors="replace")
            if "event=started" in text:
                break
            time.sleep(0.2)
        if "event=kafka_scram_warning" in wk.log.read_text(errors="replace"):
            lines = _wait_log(wk, r"event=kafka_auth_failed .*mechanism=%s" % mech, 1, 60)
            assert "hint=" in lines[0]
            assert _readyz(wk)[0] == 503
        else:
            wk.wait_ready(60)
        _assert_no_secret(cl, password)
        cl.stop()


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_end_to_end(cluster_factory, scram_kafka, tmp_path, mech):
    """SCRAM against a broker that accepts the linked librdkafka's nonce
    (Kafka 3.9): with the right password (from a file) both programs get
    ready and a message reaches the sink; with a wrong one (from the
    environment) both stay up and not ready, /readyz says authentication
    failed with the mechanism, and the log names broker and mechanism,
    never either password."""
    kafka, sec, password = scram_kafka
    keys = {"brokers": sec.address("sasl_ssl"), "security_protocol": "sasl_ssl",
            "sasl_mechanism": mech, "sasl_username": USER, "ssl_ca_file": sec.pki.ca}
    cl = _secured(cluster_factory, kafka, {**keys,
                  "sasl_password_file": _password_file(tmp_path, password)})
    rcpt = f"scram-{mech.lower()}@mailstream.test"
    _send(cl, rcpt)
    got = cl.sink.wait_for(1, timeout=60)
    assert got[0].envelope["rcpts"] == [rcpt]
    _assert_no_secret(cl, password)
    cl.stop()

    wrong = "wrong-" + secrets.token_hex(6)
    bad = _secured(cluster_factory, kafka, keys,
                   env={"MAILSTREAM_KAFKA_SASL_PASSWORD": wrong}, start=False)
    bad.add_frontend(wait=False)
    bad.add_worker(wait=False)
    for n in bad.nodes():
        lines = _wait_log(n, r"level=error .*event=kafka_auth_failed", 2, 90)
        assert f"brokers={sec.address('sasl_ssl')}" in lines[0], lines[0]
        assert f"mechanism={mech}" in lines[0] and "protocol=sasl_ssl" in lines[0], lines[0]
        status, body = _readyz_saying(n, f"authentication failed (sasl_ssl {mech})")
        assert status == 503, (status, body)
        assert n.alive(), f"{n.name} exited"
    _assert_no_secret(bad, wrong)
    _assert_no_secret(bad, password)
    bad.stop()


def _ctl(argv, env_extra: Dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTREAM_KAFKA_")}
    env.update(env_extra)
    return subprocess.run([str(mslocal.build_dir() / "mailstream-ctl"), *argv], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def test_ctl_reads_the_workers_config(secure_kafka, tmp_path):
    """mailstream-ctl -c reads the worker's file (its other sections are
    left to the worker) and the environment over it; -b and
    MAILSTREAM_KAFKA_BROKERS keep working."""
    kafka, sec, password = secure_kafka
    conf = tmp_path / "worker.ini"
    conf.write_text(mslocal.render_ini({
        "node": {"id": "wk1"},
        "kafka": {"brokers": "127.0.0.1:1", "topic": "queue",
                  "security_protocol": "sasl_ssl", "sasl_mechanism": "PLAIN",
                  "sasl_username": USER, "ssl_ca_file": sec.pki.ca},
        "delivery": {"relay_host": "127.0.0.1:25"}}))
    name = "ctl." + secrets.token_hex(4)
    # The brokers from the environment, the password too.
    r = _ctl(["-c", str(conf), "topics", "create", f"{name}:2"],
             {"MAILSTREAM_KAFKA_BROKERS": sec.address("sasl_ssl"),
              "MAILSTREAM_KAFKA_SASL_PASSWORD": password})
    assert r.returncode == 0, r.stderr
    assert password not in r.stderr
    assert kafka.describe_topics([name])[name].partitions == 2
    # -b wins over the file; the mTLS listener with a client certificate.
    conf2 = tmp_path / "mtls.ini"
    conf2.write_text(mslocal.render_ini({"kafka": {
        "brokers": "127.0.0.1:1", "security_protocol": "ssl", "ssl_ca_file": sec.pki.ca,
        "ssl_cert_file": sec.pki.client_cert, "ssl_key_file": sec.pki.client_key}}))
    r = _ctl(["-c", str(conf2), "-b", sec.address("ssl"), "topics", "create", f"{name}.b:1"],
             {})
    assert r.returncode == 0, r.stderr
    # No file: the environment alone, as before.
    r = _ctl(["topics", "create", f"{name}.c:1"], {"MAILSTREAM_KAFKA_BROKERS": kafka.bootstrap})
    assert r.returncode == 0, r.stderr
    # sasl_ssl without a password: refused before connecting, naming the key.
    r = _ctl(["-c", str(conf), "topics", "create", f"{name}.d:1"], {})
    assert r.returncode == 2 and "sasl_password" in r.stderr, r.stderr


def test_inconsistent_settings_refused_at_start(cluster_factory, secure_kafka, tmp_path):
    """A setting the protocol would ignore stops the worker at start-up
    with the key named (no silent plaintext)."""
    kafka, sec, password = secure_kafka
    cl = _secured(cluster_factory, kafka, {
        "brokers": sec.address("sasl_ssl"), "security_protocol": "plaintext",
        "sasl_username": USER, "sasl_password_file": _password_file(tmp_path, password)},
        start=False)
    wk = cl.add_worker(wait=False)
    deadline = time.monotonic() + 30
    while wk.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not wk.alive()
    text = wk.log.read_text(errors="replace")
    assert "sasl_username and sasl_password need security_protocol" in text, text
    assert password not in text
