"""Redis AUTH (issue 14, docs/security.md).

A Redis of its own with `requirepass` and the ACL user of docs/security.md
(read from that file, so the documented list is the tested one): keys
`~ms:*` only, and exactly the commands the programs use. The frontend and
the worker run every path that touches Redis (rate limits, delivered
markers, a deferral and its retry state, a hard bounce and the suppression
list, destination leases and rates); Redis's own ACL LOG must stay empty,
and every command of the list must have been used (INFO commandstats):
the list is both enough and no more than needed. A wrong password leaves
the process up, saying why again and again, never with the password in it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import smtplib
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Set

import pytest

import mslocal
from test_worker_delivery import fake_smtp  # noqa: F401  (fixture)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ACL_USER = "mailstream"
CTL_USER = "mailstream-ctl"


def documented_acl(user: str = ACL_USER) -> str:
    """The `user NAME ...` line of docs/security.md (the programs' user, or
    mailstream-ctl's)."""
    m = re.search(rf"^user {re.escape(user)} on .*$", DOCS.read_text(), re.M)
    assert m, f"{DOCS}: no `user {user} on ...` line"
    return m.group(0)


def documented_commands(user: str = ACL_USER) -> Set[str]:
    return {w[1:].lower() for w in documented_acl(user).split() if w.startswith("+")}


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth-redis")
    sup = mslocal.Supervisor(d)
    admin_pw = "admin-" + secrets.token_hex(8)
    user_pw = "user-" + secrets.token_hex(8)
    acl = documented_acl().replace(">PASSWORD", ">" + user_pw)
    # The operator's user has the same password here: the test tells them
    # apart by name.
    ctl_acl = documented_acl(CTL_USER).replace(">PASSWORD", ">" + user_pw)
    r = mslocal.Redis(sup, mslocal.free_port(), password=admin_pw, acl=[acl, ctl_acl])
    r.start()
    try:
        yield r, admin_pw, user_pw
    finally:
        sup.stop_all()


def _admin(r, admin_pw: str, *args: str) -> bytes:
    return mslocal.redis_auth_command(r.port, [admin_pw], *args)


def _file(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content + "\n")
    return p


def _send(cl, rcpts, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = subject
    msg.set_content("redis auth test\n")
    host, port = cl.listener("mx")
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.send_message(msg, from_addr="sender@example.org", to_addrs=list(rcpts))


def _no_secret(cl, *secrets_: str) -> None:
    for n in cl.nodes():
        text = n.log.read_text(errors="replace")
        for s in secrets_:
            assert s not in text, f"{n.name} logged a password"


def _wait_log(node, pattern: str, count: int = 1, timeout: float = 60) -> list:
    rx = re.compile(pattern)
    found: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [l for l in node.log.read_text(errors="replace").splitlines() if rx.search(l)]
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{node.name}: {count}x {pattern!r} not seen:\n{mslocal.tail(node.log)}")


def _redis_sections(port: int, **auth) -> dict:
    return {"redis": {"host": mslocal.HOST, "port": port, **auth}}


def test_requirepass_default_user(cluster_factory, auth_redis, tmp_path):
    """The default user's password: from MAILSTREAM_REDIS_PASSWORD for the
    frontend (rate limits on, so it needs Redis), from a file for the
    worker; mail flows and the worker's delivered marker is in this Redis."""
    r, admin_pw, _ = auth_redis
    cl = cluster_factory(
        start=False,
        frontend_extra={**_redis_sections(r.port),
                        "ratelimit": {"connections_per_ip": "1000/1m", "redis_failure": "closed"}},
        worker_extra=_redis_sections(r.port, password_file=_file(tmp_path, "pw", admin_pw)))
    cl.spec.env = {"MAILSTREAM_REDIS_PASSWORD": admin_pw}
    fe = cl.add_frontend()
    cl.spec.env = None
    wk = cl.add_worker()
    _send(cl, ["one@mailstream.test"], "requirepass")
    cl.sink.wait_for(1, timeout=60)
    for n in (fe, wk):
        _wait_log(n, r"event=redis_connected .*user=default")
    keys = _admin(r, admin_pw, "KEYS", "ms:delivered:*")
    assert b"one@mailstream.test" in keys, keys
    _no_secret(cl, admin_pw)


# What the test's own admin connection sends (never a command of the list).
OWN = {"auth", "info", "acl|log", "config|resetstat", "keys", "type", "sadd"}


def _commandstats(r, admin_pw: str) -> Set[str]:
    """Commands called at least once since the last CONFIG RESETSTAT, less
    the test's own (commands run by scripts count too)."""
    raw = _admin(r, admin_pw, "INFO", "commandstats").decode()
    return {m.group(1) for m in re.finditer(r"^cmdstat_([a-z|_-]+):calls=(\d+)", raw, re.M)
            if int(m.group(2)) > 0} - OWN


def _type(r, admin_pw: str, key: str) -> bytes:
    return _admin(r, admin_pw, "TYPE", key).strip()


def test_acl_user_limited_to_ms_keys_and_our_commands(cluster_factory, auth_redis, fake_smtp,
                                                      tmp_path):
    r, admin_pw, user_pw = auth_redis
    # The ACL is in force: the user cannot touch another key.
    denied = mslocal.redis_auth_command(r.port, [ACL_USER, user_pw], "SET", "other", "1")
    assert denied.startswith(b"-NOPERM"), denied
    _admin(r, admin_pw, "ACL", "LOG", "RESET")
    _admin(r, admin_pw, "CONFIG", "RESETSTAT")
    srv = fake_smtp(rcpt_reply=lambda rc, n:
                    "451 4.7.1 Greylisted" if rc.startswith("grey") and n == 1 else
                    "550 5.1.1 User unknown" if rc.startswith("dead") else "250 2.1.5 Ok")
    auth = {"username": ACL_USER, "password_file": _file(tmp_path, "pw", user_pw)}
    host, port = srv.address.rsplit(":", 1)
    cl = cluster_factory(
        start=False, accepted_domains=["mailstream.test", "verified.test"],
        frontend_extra={**_redis_sections(r.port, **auth),
                        "smtp": {"refuse_suppressed": "yes",
                                 "recipient_lists": "mailstream.test"},
                        # Recipient verification: its cache and lock.
                        "verify": {"map": f"verified.test smtp:[{host}]:{port}"},
                        "ratelimit": {"connections_per_ip": "1000/1m",
                                      "messages_per_domain": "1000/1m",
                                      "redis_failure": "closed"}},
        worker_extra={**_redis_sections(r.port, **auth),
                      "delivery": {"relay_host": srv.address, "retry_min_ms": 500,
                                   "retry_max_ms": 1000, "dest_concurrency": 4,
                                   "dest_rate": 100}})
    cl.start(timeout=60)
    tag = secrets.token_hex(3)
    # The frontend's recipient list (SISMEMBER in its RCPT script).
    _admin(r, admin_pw, "SADD", "ms:rcpts:mailstream.test",
           *[f"{u}.{tag}@mailstream.test" for u in ("ok", "grey", "dead")])
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        _send(cl, [f"typo.{tag}@mailstream.test"], "not on the list")
    assert e.value.recipients[f"typo.{tag}@mailstream.test"][0] == 550
    _send(cl, [f"ok.{tag}@mailstream.test"], "plain")
    with smtplib.SMTP(*cl.listener("mx"), timeout=30) as s:
        s.ehlo()
        s.mail("sender@example.org")
        assert s.rcpt(f"ok.{tag}@verified.test")[0] == 250
        assert s.rcpt(f"dead.{tag}@verified.test")[0] == 550
    assert _type(r, admin_pw, f"ms:verify:ok.{tag}@verified.test") == b"+string"
    _send(cl, [f"grey.{tag}@mailstream.test"], "deferred once")
    _send(cl, [f"dead.{tag}@mailstream.test"], "bounced")
    wk = cl.workers[0]
    mslocal.wait_until(lambda: len(srv.delivered) >= 2, 90, "two deliveries at the fake server")
    # The bounce put the recipient on the suppression list.
    mslocal.wait_until(lambda: _type(r, admin_pw, f"ms:suppress:dead.{tag}@mailstream.test")
                       == b"+string", 30, "suppression entry")
    # ... which the frontend now refuses at RCPT (refuse_suppressed).
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        _send(cl, [f"dead.{tag}@mailstream.test"], "suppressed")
    assert e.value.recipients[f"dead.{tag}@mailstream.test"][0] == 550
    # The deferred one's retry state is gone once it is delivered.
    mslocal.wait_until(lambda: b"grey" not in _admin(r, admin_pw, "KEYS", "ms:retry:*"),
                       60, "retry state removed")
    listed = documented_commands()
    # The retry statistics (ZCARD, ZRANGE of the retry queue) and the PING
    # run on timers: wait until everything listed has been seen.
    try:
        mslocal.wait_until(lambda: listed <= _commandstats(r, admin_pw), 30,
                           "every listed command used")
    except mslocal.MsLocalError:
        pass  # reported below with the difference
    used = _commandstats(r, admin_pw)
    log = _admin(r, admin_pw, "ACL", "LOG")
    assert log == b"*0\r\n", f"commands or keys refused by the ACL: {log[:2000]!r}"
    for n in cl.nodes():
        text = n.log.read_text(errors="replace")
        assert "NOPERM" not in text, f"{n.name}: {text[-3000:]}"
        _wait_log(n, rf"event=redis_connected .*user={ACL_USER}")
    # Enough (every command the programs sent is listed; the ACL log says
    # the same from Redis's side) and no more than needed (each was used).
    assert used == listed, f"used, not listed: {used - listed}; listed, unused: {listed - used}"
    _no_secret(cl, user_pw, admin_pw)


def test_wrong_password_logged_and_retried(cluster_factory, auth_redis, tmp_path):
    """A wrong password: the worker stays up, logs event=redis_auth_failed
    with Redis's answer (WRONGPASS) every MS_REDIS_AUTH_RETRY_MS (5 s), never
    the password; a frontend that needs Redis (redis_failure = closed) is
    not ready and says why."""
    r, admin_pw, _ = auth_redis
    wrong = "wrong-" + secrets.token_hex(6)
    auth = {"username": ACL_USER, "password_file": _file(tmp_path, "pw", wrong)}
    cl = cluster_factory(
        start=False,
        frontend_extra={**_redis_sections(r.port, **auth),
                        "ratelimit": {"connections_per_ip": "1000/1m",
                                      "redis_failure": "closed"}},
        worker_extra=_redis_sections(r.port, **auth))
    fe = cl.add_frontend(wait=False)
    wk = cl.add_worker(wait=False)
    for n in (fe, wk):
        lines = _wait_log(n, r"level=error .*event=redis_auth_failed", 2, timeout=30)
        assert f"user={ACL_USER}" in lines[0] and "WRONGPASS" in lines[0], lines[0]
        assert n.alive()
    status = mslocal.http_status(fe.url("/readyz"))
    assert status == 503
    _no_secret(cl, wrong, admin_pw)


CTL = Path(os.environ.get("MAILSTREAM_BUILD_DIR", "build")) / "mailstream-ctl"


def test_ctl_authenticates_from_the_worker_file(auth_redis, kafka_broker, tmp_path):
    """mailstream-ctl -c WORKER.ini reads [redis] as the programs do: the
    password from its file; a wrong one is a one-line error without it."""
    r, admin_pw, _ = auth_redis
    wrong = "wrong-" + secrets.token_hex(8)
    ini = tmp_path / "worker.ini"
    for pw, expect in ((admin_pw, 0), (wrong, 3)):
        pwfile = _file(tmp_path, "ctl-pw", pw)
        ini.write_text(f"[kafka]\nbrokers = {kafka_broker.bootstrap}\n"
                       f"[redis]\nhost = {mslocal.HOST}\nport = {r.port}\n"
                       f"password_file = {pwfile}\n")
        p = subprocess.run([str(CTL), "-c", str(ini), "--json", "status"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
        if expect == 0:
            assert json.loads(p.stdout)["redis"]["ok"] is True
        else:
            assert "AUTH as default refused" in p.stderr, p.stderr
        assert pw not in p.stdout + p.stderr


def test_ctl_acl_user(cluster_factory, auth_redis, fake_smtp, tmp_path):
    """Every mailstream-ctl subcommand that touches Redis, as the documented
    mailstream-ctl user: nothing refused (ACL LOG empty, exit 0), and every
    command of its line used. A worker (as the programs' user) defers one
    message to a destination answering 451 and is then stopped, so that the
    command statistics are the CLI's alone."""
    from test_worker_delivery import envelope, message, new_qid, produce
    r, admin_pw, user_pw = auth_redis
    srv = fake_smtp(rcpt_reply=lambda rc, n: "451 4.3.0 try again later")
    pw = _file(tmp_path, "pw", user_pw)
    cl = cluster_factory(frontends=0, workers=1, worker_extra={
        **_redis_sections(r.port, username=ACL_USER, password_file=pw),
        "delivery": {"relay_host": srv.address, "retry_min_ms": 60000, "retry_max_ms": 120000}})
    q = new_qid()
    produce(cl, [(q, envelope(q, [f"who@{q.lower()}.example"], message(q)))])
    mslocal.wait_until(lambda: _type(r, admin_pw, f"ms:qinfo:{q}") == b"+string", 60,
                       "the message deferred and listed")
    cl.workers[0].stop()
    _admin(r, admin_pw, "ACL", "LOG", "RESET")
    _admin(r, admin_pw, "CONFIG", "RESETSTAT")

    ini = tmp_path / "ctl.ini"
    ini.write_text(f"[kafka]\nbrokers = {cl.kafka.bootstrap}\n[redis]\nhost = {mslocal.HOST}\n"
                   f"port = {r.port}\nusername = {CTL_USER}\npassword_file = {pw}\n")
    dest = srv.address.lower()
    listf = _file(tmp_path, "list", "imp@example.com some reason")
    rcptf = _file(tmp_path, "rcpts", "imp@list.example")

    def run_ctl(*args: str) -> str:
        p = subprocess.run([str(CTL), "-c", str(ini), *args], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
        return p.stdout

    assert q in run_ctl("queue", "list", "--dest", dest)
    time.sleep(1)
    run_ctl("queue", "list", "--older-than", "1s")
    run_ctl("queue", "shape")
    run_ctl("queue", "show", q)
    for verb in ("hold", "release", "retry", "bounce", "delete"):
        run_ctl("queue", verb, q)
    run_ctl("queue", "retry", "--dest", dest)
    run_ctl("dest", "suspend", dest, "--for", "1h", "--reason", "acl test")
    run_ctl("dest", "list")
    run_ctl("dest", "resume", dest)
    run_ctl("suppress", "add", "jane@example.com", "--for", "1d")
    run_ctl("suppress", "import", str(listf))
    assert "jane@example.com" in run_ctl("suppress", "list")
    run_ctl("suppress", "export")
    run_ctl("suppress", "remove", "jane@example.com")
    run_ctl("recipients", "add", "a@list.example")
    run_ctl("recipients", "import", str(rcptf))
    assert "a@list.example" in run_ctl("recipients", "list", "list.example")
    run_ctl("recipients", "remove", "a@list.example")
    run_ctl("status")

    log = _admin(r, admin_pw, "ACL", "LOG")
    assert log == b"*0\r\n", f"commands or keys refused by the ACL: {log[:2000]!r}"
    # Since RESETSTAT (counted itself) the test sent only AUTH, ACL LOG and INFO (so
    # INFO counts as used by the CLI's `status` on the strength of its exit
    # code and the empty ACL log).
    raw = _admin(r, admin_pw, "INFO", "commandstats").decode()
    used = {m.group(1) for m in re.finditer(r"^cmdstat_([a-z|_-]+):calls=(\d+)", raw, re.M)
            if int(m.group(2)) > 0} - {"auth", "acl|log", "config|resetstat", "info"}
    listed = documented_commands(CTL_USER) - {"info"}
    assert used == listed, f"used, not listed: {used - listed}; listed, unused: {listed - used}"
    _no_secret(cl, user_pw, admin_pw)
