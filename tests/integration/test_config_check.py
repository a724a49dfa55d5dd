"""Config typos stop the programs at start-up (issue 13, defect 3).

An unknown key or section, or a boolean that is not yes/no/true/false/1/0,
makes mailstream-frontend, mailstream-worker and mailstream-authcheck exit
non-zero with "FILE:LINE:" and the key on standard error (for an environment
override, the variable's name).  The configs are the ones cluster/mslocal.py
writes, with one mistake added; the same configs without it start (checked
here for the positive case, and by every other integration test).

No Kafka or Redis is needed: the check runs before either is used, and the
processes that start are stopped after a short while.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

import mslocal

# How long a correctly configured process must stay up to count as started
# (the check runs before the event loop; a rejected config exits at once).
STAYS_UP_S = 2.0
# A rejected config exits at once; this only bounds a process that started.
RUN_TIMEOUT_S = 10


def make_cluster(tmp_path: Path, frontend_extra=None, worker_extra=None) -> mslocal.Cluster:
    ports = mslocal.free_ports(5)
    spec = mslocal.ClusterSpec(
        kafka_brokers=f"{mslocal.HOST}:{ports[0]}", redis_port=ports[0],
        relay_host=f"{mslocal.HOST}:{ports[0]}", frontends=0, workers=0,
        listeners={"mx": (f"{mslocal.HOST}:{ports[1]}", "mx"),
                   "submission": (f"{mslocal.HOST}:{ports[2]}", "submission")},
        frontend_metrics_ports=[ports[3]], worker_metrics_ports=[ports[4]],
        frontend_extra=frontend_extra, worker_extra=worker_extra)
    return mslocal.Cluster(mslocal.Supervisor(tmp_path), spec)


def line_of(path: Path, text: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() == text:
            return i
    raise AssertionError(f"{text!r} not in {path}")


def run(argv, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run to completion; a process still running after RUN_TIMEOUT_S has
    accepted its config (the caller's assertion then fails on returncode 0)."""
    try:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, env={**os.environ, **(env or {})},
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else e.stderr
        return subprocess.CompletedProcess(e.cmd, 0, "", f"still running after {e.timeout} s\n"
                                           + (err or ""))


def stays_up(argv) -> None:
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        time.sleep(STAYS_UP_S)
        if p.poll() is not None:
            out = p.stdout.read() if p.stdout else ""
            raise AssertionError(f"{argv[0]} exited {p.returncode} with a correct config:\n{out}")
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stdout:
            p.stdout.close()


# (extra sections, the line holding the mistake, what stderr must say after "FILE:LINE: ")
FRONTEND_MISTAKES = {
    "unknown-key": ({"smtp": {"max_recipents": 3}}, "max_recipents = 3",
                    "unknown key [smtp] max_recipents"),
    "unknown-section": ({"smpt": {"max_recipients": 3}}, "[smpt]", "unknown section [smpt]"),
    "listener-key": ({"listener.mx": {"proxi": "yes"}}, "proxi = yes",
                     "unknown key [listener.mx] proxi"),
    "bad-boolean": ({"kafka": {"group_commit": "ja"}}, "group_commit = ja",
                    "[kafka] group_commit"),
    "on-is-not-a-boolean": ({"listener.mx": {"proxy": "on"}}, "proxy = on",
                            "[listener.mx] proxy"),
}

WORKER_MISTAKES = {
    "unknown-key": ({"delivery": {"relay_hots": "127.0.0.1:25"}}, "relay_hots = 127.0.0.1:25",
                    "unknown key [delivery] relay_hots"),
    "unknown-section": ({"deliverry": {"max_in_flight": 4}}, "[deliverry]",
                        "unknown section [deliverry]"),
    "frontend-section": ({"listener.mx": {"listen": "127.0.0.1:25"}}, "[listener.mx]",
                         "unknown section [listener.mx]"),
    "bad-boolean-policy": ({"policy": {"inbound": "ja"}}, "inbound = ja", "[policy] inbound"),
    "bad-boolean-delivery": ({"delivery": {"relay_auth_plaintext": "ja"}},
                             "relay_auth_plaintext = ja", "[delivery] relay_auth_plaintext"),
}


MISTAKES = [("frontend", case) for case in FRONTEND_MISTAKES] + \
    [("worker", case) for case in WORKER_MISTAKES]


@pytest.mark.parametrize("kind,case", MISTAKES, ids=[f"{k}-{c}" for k, c in MISTAKES])
def test_config_mistake_stops_the_program(tmp_path, kind, case):
    mistakes = FRONTEND_MISTAKES if kind == "frontend" else WORKER_MISTAKES
    extra, line, want = mistakes[case]
    cl = make_cluster(tmp_path, **{f"{kind}_extra": extra})
    node = cl.add_frontend(start=False) if kind == "frontend" else cl.add_worker(start=False)
    r = run([mslocal.binary(kind), "-c", node.config])
    assert r.returncode != 0, f"started with {line!r}:\n{r.stderr}"
    assert f"{node.config}:{line_of(node.config, line)}: {want}" in r.stderr, r.stderr


def test_bad_boolean_in_environment_names_the_variable(tmp_path):
    cl = make_cluster(tmp_path)
    fe, wk = cl.add_frontend(start=False), cl.add_worker(start=False)
    r = run([mslocal.binary("frontend"), "-c", fe.config],
            env={"MAILSTREAM_SMTP_REFUSE_SUPPRESSED": "ja"})
    assert r.returncode != 0
    assert "MAILSTREAM_SMTP_REFUSE_SUPPRESSED: [smtp] refuse_suppressed" in r.stderr, r.stderr
    r = run([mslocal.binary("worker"), "-c", wk.config],
            env={"MAILSTREAM_DELIVERY_RELAY_AUTH_PLAINTEXT": "nein"})
    assert r.returncode != 0
    assert "MAILSTREAM_DELIVERY_RELAY_AUTH_PLAINTEXT: [delivery] relay_auth_plaintext" \
        in r.stderr, r.stderr


def test_correct_configs_start(tmp_path):
    """The launcher's configs, with every boolean spelling the docs allow."""
    cl = make_cluster(tmp_path,
                      frontend_extra={"kafka": {"group_commit": "TRUE"},
                                      "smtp": {"refuse_suppressed": "0"},
                                      "listener.mx": {"proxy": "no"}},
                      worker_extra={"delivery": {"relay_auth_plaintext": "Yes"},
                                    "policy": {"inbound": "false", "psl": "/nonexistent"}})
    fe, wk = cl.add_frontend(start=False), cl.add_worker(start=False)
    stays_up([mslocal.binary("frontend"), "-c", fe.config])
    stays_up([mslocal.binary("worker"), "-c", wk.config])


def _authcheck(tmp_path: Path, worker_extra) -> Tuple[subprocess.CompletedProcess, Path]:
    wk = make_cluster(tmp_path, worker_extra=worker_extra).add_worker(start=False)
    msg = tmp_path / "msg.eml"
    msg.write_text("From: a@example.org\nTo: b@example.net\nSubject: x\n\nhello\n")
    dead = mslocal.free_port()
    return run([mslocal.build_dir() / "mailstream-authcheck", "-c", wk.config,
                "--dns", f"127.0.0.1@{dead}", "--ip", "192.0.2.1",
                "--mail-from", "a@example.org", msg]), wk.config


def test_authcheck_refuses_policy_typo(tmp_path):
    # The tool reads a worker's file: it checks the sections it reads in full.
    r, conf = _authcheck(tmp_path, {"policy": {"timeout_ms": 300, "action_dmarc_rejct": "discard"}})
    assert r.returncode == 1, r.stdout + r.stderr
    want = f"{conf}:{line_of(conf, 'action_dmarc_rejct = discard')}: " \
           "unknown key [policy] action_dmarc_rejct"
    assert want in r.stderr, r.stderr
    r, conf = _authcheck(tmp_path / "ok", {"policy": {"timeout_ms": 300}})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict:" in r.stdout
