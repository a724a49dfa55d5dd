"""DKIM interoperability with an independent implementation (dkimpy).

Messages signed by lib/mail/ms_dkim verify with dkimpy, and messages signed
by dkimpy verify with ours, across canonicalization edge cases (trailing
whitespace, empty body, long folded headers, duplicate headers, 8-bit
bodies), for RSA-SHA256 and Ed25519-SHA256 and every c= combination.

No DNS server: dkimpy gets the key records through its dnsfunc argument,
and our side runs through tests/dkim_tool.c (compiled here against
$MAILSTREAM_BUILD_DIR/libmailstream.a), which takes the records on its command
line.  Keys are generated per run with the openssl command.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import pytest

dkim = pytest.importorskip("dkim", reason="dkimpy not installed (tests/integration/requirements.txt)")
pytest.importorskip("nacl", reason="PyNaCl (dkimpy[ed25519]) not installed")

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("MAILSTREAM_BUILD_DIR", REPO / "build"))
DOMAIN = "example.org"

CANONS = [("relaxed", "relaxed"), ("relaxed", "simple"), ("simple", "relaxed"), ("simple", "simple")]


def crlf(s: bytes) -> bytes:
    return s.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


LONG_SUBJECT = b"Subject: " + b" ".join(b"word%03d" % i for i in range(60)).replace(
    b"word010 ", b"word010\n\t").replace(b"word030 ", b"word030\n    ")
REFERENCES = b"References: " + b"\n ".join(b"<%d.%d@lists.example.net>" % (i, i * 7) for i in range(12))

MESSAGES = {
    "basic": crlf(b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: hello\n"
                  b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@example.org>\n\n"
                  b"Hello Bob.\n"),
    "trailing_whitespace": crlf(b"From: alice@example.org \nTo:   bob@example.net\t\n"
                                b"Subject:  spaced   out  \n\n"
                                b"line with trailing spaces   \nline with tab\t\n   \n\t\n"
                                b"  leading and   inner\t\tspaces\n\n\n\n"),
    "empty_body": crlf(b"From: alice@example.org\nTo: bob@example.net\nSubject: empty\n\n"),
    "blank_lines_only_body": crlf(b"From: alice@example.org\nSubject: blanks\n\n\n\n\n"),
    "no_final_newline": crlf(b"From: alice@example.org\nSubject: eof\n\nno newline at the end"),
    "long_folded_headers": crlf(b"From: \"A very long display name, " + b"x" * 60 +
                                b"\"\n <alice@example.org>\nTo: bob@example.net,\n carol@example.net,\n"
                                b"\tdave@example.net\n" + LONG_SUBJECT + b"\n" + REFERENCES +
                                b"\nMIME-Version: 1.0\n\nbody\n"),
    "duplicate_headers": crlf(b"Received: from a by b; Mon, 1 Jan 2024 00:00:02 +0000\n"
                              b"Received: from c by a; Mon, 1 Jan 2024 00:00:01 +0000\n"
                              b"From: alice@example.org\nTo: bob@example.net\nTo: carol@example.net\n"
                              b"Cc: dave@example.net\nCc: erin@example.net\nSubject: one\n"
                              b"Subject: two\nList-Id: <list.example.org>\n\nbody\n"),
    "8bit": crlf("From: Zoë <zoe@example.org>\nTo: bob@example.net\nSubject: Grüße\n"
                 "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                 "Content-Transfer-Encoding: 8bit\n\nGrüße aus Köln — ça va?  \n".encode()
                 + b"raw \xff\xfe\x80 octets\n"),
}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    lib = BUILD / "libmailstream.a"
    if not lib.exists():
        run(["make", "-C", str(REPO), f"BUILD={BUILD}", str(lib)])
    out = tmp_path_factory.mktemp("dkim") / "dkim_tool"
    cmd = ["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-g",
           f"-I{REPO}/lib/core", f"-I{REPO}/lib/mail", "-o", str(out), str(REPO / "tests/dkim_tool.c"),
           str(lib)]
    libs = subprocess.run(["pkg-config", "--libs", "openssl"], capture_output=True, text=True).stdout.split()
    r = subprocess.run(cmd + libs + ["-lm"], capture_output=True, text=True)
    if r.returncode != 0:  # a sanitizer build (make asan) needs the runtime too
        r = subprocess.run(cmd + ["-fsanitize=address,undefined"] + libs + ["-lm"], capture_output=True,
                           text=True)
    assert r.returncode == 0, r.stderr
    return out


class Key:
    def __init__(self, tool: Path, d: Path, kind: str, selector: str):
        self.selector = selector
        self.kind = kind
        self.pem = d / f"{selector}.pem"
        if kind == "rsa":
            run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", str(self.pem)])
            # dkimpy wants the PKCS#1 form; ours reads both.
            self.dkimpy_private = run(["openssl", "pkey", "-in", str(self.pem), "-traditional"]).stdout
            self.algo = b"rsa-sha256"
        else:
            run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", str(self.pem)])
            der = run(["openssl", "pkey", "-in", str(self.pem), "-outform", "DER"]).stdout
            self.dkimpy_private = base64.b64encode(der[-32:])  # the seed, dkimpy's form
            self.algo = b"ed25519-sha256"
        self.record = run([str(tool), "record", "--key", str(self.pem)]).stdout.decode().strip()
        self.name = f"{selector}._domainkey.{DOMAIN}"


@pytest.fixture(scope="module")
def keys(tool, tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"rsa": Key(tool, d, "rsa", "rsa2048"), "ed25519": Key(tool, d, "ed25519", "ed")}


def dnsfunc_for(*ks: Key):
    table = {k.name + ".": k.record.encode() for k in ks}

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        return table.get(name if name.endswith(".") else name + ".")
    return dnsfunc


def our_sign(tool: Path, msg: bytes, ks, canon=("relaxed", "relaxed"), now=None) -> bytes:
    args = [str(tool), "sign", "--time", str(now or int(time.time())), "--canon", "/".join(canon)]
    for k in ks:
        args += ["--key", str(k.pem), "--domain", DOMAIN, "--selector", k.selector]
    return run(args, input=msg).stdout


def our_verify(tool: Path, msg: bytes, ks, now=None) -> list[str]:
    args = [str(tool), "verify", "--time", str(now or int(time.time()))]
    for k in ks:
        args += ["--dns", f"{k.name}={k.record}"]
    out = run(args, input=msg).stdout.decode().splitlines()
    return out


def results(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines]


# ---------------------------------------------------------------------------
# ours -> dkimpy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("canon", CANONS, ids=["/".join(c) for c in CANONS])
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_we_sign_dkimpy_verifies(tool, keys, name, kind, canon):
    msg = MESSAGES[name]
    k = keys[kind]
    hdr = our_sign(tool, msg, [k], canon)
    assert all(len(line) <= 78 for line in hdr.split(b"\r\n")), hdr
    signed = hdr + msg
    assert dkim.verify(signed, dnsfunc=dnsfunc_for(k)), (name, hdr)
    # And ourselves, for symmetry.
    assert results(our_verify(tool, signed, [k])) == ["pass"]
    # A changed body fails for both.
    tampered = signed + b"tampered\r\n"
    assert not dkim.verify(tampered, dnsfunc=dnsfunc_for(k))
    assert results(our_verify(tool, tampered, [k])) == ["fail"]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_we_sign_rsa_and_ed25519_at_once(tool, keys, name):
    msg = MESSAGES[name]
    ks = [keys["rsa"], keys["ed25519"]]
    signed = our_sign(tool, msg, ks) + msg
    d = dkim.DKIM(signed)
    assert d.verify(idx=0, dnsfunc=dnsfunc_for(*ks))
    assert d.verify(idx=1, dnsfunc=dnsfunc_for(*ks))
    assert results(our_verify(tool, signed, ks)) == ["pass", "pass"]


# ---------------------------------------------------------------------------
# dkimpy -> ours
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("canon", CANONS, ids=["/".join(c) for c in CANONS])
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_dkimpy_signs_we_verify(tool, keys, name, kind, canon):
    msg = MESSAGES[name]
    k = keys[kind]
    sig = dkim.sign(msg, k.selector.encode(), DOMAIN.encode(), k.dkimpy_private,
                    canonicalize=(canon[0].encode(), canon[1].encode()), signature_algorithm=k.algo)
    signed = sig + msg
    assert dkim.verify(signed, dnsfunc=dnsfunc_for(k))
    lines = our_verify(tool, signed, [k])
    assert results(lines) == ["pass"], (name, sig, lines)
    lines = our_verify(tool, signed + b"tampered\r\n", [k])
    assert results(lines) == ["fail"], lines


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkimpy_body_length(tool, keys, kind):
    """l= covering the whole body passes; a body grown past l= is reported
    as policy by us, never pass (dkimpy accepts it)."""
    msg = MESSAGES["basic"]
    k = keys[kind]
    sig = dkim.sign(msg, k.selector.encode(), DOMAIN.encode(), k.dkimpy_private, length=True,
                    signature_algorithm=k.algo)
    assert b"l=" in sig
    assert results(our_verify(tool, sig + msg, [k])) == ["pass"]
    grown = sig + msg + b"Unsigned text appended in transit.\r\n"
    assert results(our_verify(tool, grown, [k])) == ["policy"]


def test_dkimpy_oversigned_from(tool, keys):
    """A From added above a dkimpy signature that oversigns From breaks it
    for both implementations."""
    msg = MESSAGES["basic"]
    k = keys["rsa"]
    sig = dkim.sign(msg, k.selector.encode(), DOMAIN.encode(), k.dkimpy_private,
                    include_headers=[b"from", b"from", b"to", b"subject"])
    forged = sig + b"From: mallory@evil.example\r\n" + msg
    assert not dkim.verify(forged, dnsfunc=dnsfunc_for(k))
    assert results(our_verify(tool, forged, [k])) == ["fail"]


def test_dns_outcomes(tool, keys):
    """No key record: permerror; a failing resolver: temperror."""
    msg = MESSAGES["basic"]
    k = keys["ed25519"]
    signed = our_sign(tool, msg, [k]) + msg
    assert results(our_verify(tool, signed, [])) == ["permerror"]
    out = run([str(tool), "verify", "--time", str(int(time.time())), "--tempfail", k.name],
              input=signed).stdout.decode().split()
    assert out[0] == "temperror"
