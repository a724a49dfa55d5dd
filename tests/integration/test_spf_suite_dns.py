"""The OpenSPF RFC 7208 suite through a real DNS server (issue 5).

Every scenario's zonedata is served by NSD on loopback (dns_zone.Nsd, one
instance per scenario, started when its first test runs) and every test is
evaluated by `mailstream-authcheck --spf-only`, i.e. lib/mail/ms_spf driven
through lib/io/ms_resolver (libunbound forwarding to that NSD), the same
resolver the worker uses.  The unit run (tests/unit/test_ms_spf_suite.c) serves
the same data from memory; the conventions here mirror it:

  * TXT entries are served as TXT; an SPF entry (type 99) is served as type
    SPF and, when the name has no TXT entry at all, also as TXT.  "TXT: NONE"
    serves nothing.  Several strings stay separate character-strings; a string
    over 255 octets is split (the evaluator joins them without separator);
    the empty string list ("SPF: [ ]": no strings, illegal in DNS, and NSD
    refuses zero-length TXT RDATA) is served as one empty string, which the
    evaluator joins to the same empty text the unit run gives it.  YAML text is served as
    its UTF-8 bytes, as libyaml hands it to the unit run.
  * Two identical records at one name (one RRset cannot hold duplicates) are
    served with their text split into character-strings differently: two
    distinct records with the same joined text, which is what the evaluator
    sees in the unit run.
  * Zones: one per top-level label (com, net, arpa, ...) and an empty root
    zone for everything else (a single-label HELO name); NSD answers NXDOMAIN
    and NODATA itself.  Empty non-terminals get NODATA from DNS where
    the unit run says NXDOMAIN; both are void lookups.
  * TIMEOUT.  An authoritative server cannot time out on purpose, and NSD has
    no per-name SERVFAIL; a referral to a dead server does not help either
    (libunbound forwards with RD set and treats a referral from its forwarder
    as an empty answer).  So a name whose TIMEOUT comes before any record
    that would be served is made the apex of a zone that NSD is configured
    for but cannot load (its zone file does not exist): NSD answers SERVFAIL
    for it and everything under it, libunbound reports a DNS failure and the
    evaluator sees what a timeout gives it, a DNS error (temperror where
    RFC 7208 says so), immediately rather than after the resolver timeout.
    Names with data below such a name get their own zone.  A name with
    records before its TIMEOUT (spftimeout) is served with those records;
    other types there are NODATA instead of a timeout.  Both approximations
    (NODATA for other types there, SERVFAIL for absent names under a TIMEOUT
    name) are checked against the queries actually asked (authcheck --trace):
    a test asking such a query fails, naming it.
  * libunbound answers its built-in local zones (RFC 6303's 168.192.in-addr
    .arpa, the documentation prefixes 2.0.192.in-addr.arpa and
    8.b.d.0.1.0.0.2.ip6.arpa, ...) NXDOMAIN itself; the ones holding suite
    names are removed with authcheck --dns-nodefault, so NSD is asked.

MAILSTREAM_TESTDATA names the test data directory (default ../shared/testdata
next to the repository); without the suite the one test left is skipped,
saying so, or fails with CI=true (conftest.need_testdata).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

import mslocal
from conftest import TESTDATA, need_testdata
from dns_zone import Nsd

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (tests/integration/requirements.txt)")

REPO = Path(__file__).resolve().parents[2]
AUTHCHECK = Path(os.environ.get("MAILSTREAM_BUILD_DIR") or REPO / "build") / "mailstream-authcheck"
SUITE_REL = "spf/rfc7208-tests.yml"
SUITE = TESTDATA / SUITE_REL

# Per-query resolver timeout given to authcheck (TIMEOUT names fail at once
# with SERVFAIL; this only bounds a misbehaving run).
QUERY_TIMEOUT_MS = 3000

# Tests we believe wrong, or that the DNS path cannot reproduce: name -> reason
# (run as xfail with that reason).  None so far.
BELIEVED_WRONG: Dict[str, str] = {}

# libunbound's built-in local zones (unbound.conf(5), "local-zone" defaults).
UNBOUND_DEFAULT_ZONES = [
    "localhost", "127.in-addr.arpa", "onion", "test", "invalid", "home.arpa",
    "resolver.arpa", "service.arpa",
    "10.in-addr.arpa", *[f"{i}.172.in-addr.arpa" for i in range(16, 32)],
    "168.192.in-addr.arpa", "0.in-addr.arpa", "254.169.in-addr.arpa",
    "2.0.192.in-addr.arpa", "100.51.198.in-addr.arpa", "113.0.203.in-addr.arpa",
    "255.255.255.255.in-addr.arpa", "64.100.in-addr.arpa",
    *[f"{i}.100.in-addr.arpa" for i in range(65, 128)],
    "d.f.ip6.arpa", "8.e.f.ip6.arpa", "9.e.f.ip6.arpa", "a.e.f.ip6.arpa", "b.e.f.ip6.arpa",
    "8.b.d.0.1.0.0.2.ip6.arpa",
]

QTYPES = {1: "A", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA"}


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------

def _load_suite() -> List[dict]:
    if not SUITE.is_file():
        return []
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # every scalar a string, as libyaml
    with open(SUITE, "rb") as f:
        return [d for d in yaml.load_all(f, Loader=loader) if d]


SCENARIOS = _load_suite()


def _params():
    if not SCENARIOS:  # the test says why: skipped, or failed under CI
        return [pytest.param(None, None, id="suite-absent")]
    out = []
    for i, sc in enumerate(SCENARIOS):
        for name in sc.get("tests") or {}:
            marks = []
            if name in BELIEVED_WRONG:
                marks.append(pytest.mark.xfail(reason=BELIEVED_WRONG[name], strict=False))
            out.append(pytest.param(i, name, marks=marks, id=name))
    return out


# ---------------------------------------------------------------------------
# Zone data -> zone files
# ---------------------------------------------------------------------------

def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _under(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _dname(name: str) -> str:
    """Absolute presentation-form name, every unusual byte escaped."""
    name = name.rstrip(".")
    if name == "":
        return "."
    out = []
    for b in name.encode("utf-8"):
        c = chr(b)
        out.append(c if (c.isascii() and (c.isalnum() or c in "-_.")) else f"\\{b:03d}")
    return "".join(out) + "."


def _cstrings(chunks: List[bytes]) -> str:
    """TXT RDATA: each chunk one quoted character-string."""
    def one(b: bytes) -> str:
        s = []
        for x in b:
            if x in (0x22, 0x5C):
                s.append("\\" + chr(x))
            elif 0x20 <= x <= 0x7E:
                s.append(chr(x))
            else:
                s.append(f"\\{x:03d}")
        return '"' + "".join(s) + '"'
    return " ".join(one(c) for c in chunks)


def _chunks(value) -> List[bytes]:
    """Character-strings of a TXT/SPF entry, each at most 255 octets."""
    strings = value if isinstance(value, list) else [value]
    out: List[bytes] = []
    for s in strings:
        b = str(s).encode("utf-8")
        out += [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
    return out or [b""]


class Scenario:
    """One scenario's zonedata as NSD zones, plus what the DNS path changes."""

    def __init__(self, zonedata: dict):
        self.records: Dict[str, List[Tuple[str, object]]] = {}
        for raw, entries in (zonedata or {}).items():
            name = _norm(str(raw))
            entries = entries if isinstance(entries, list) else [entries]
            recs = self.records.setdefault(name, [])
            for e in entries:
                if isinstance(e, dict):
                    ((t, v),) = e.items()
                    recs.append((str(t).upper(), v))
                else:
                    recs.append((str(e).upper(), None))
        self.broken: Set[str] = set()                 # every type SERVFAILs
        self.partial: Dict[str, Set[str]] = {}        # name -> types served
        self.lines: Dict[str, List[str]] = {}         # owner -> zone-file lines
        for name, recs in self.records.items():
            self._convert(name, recs)
        self.zones = self._zones()

    def _convert(self, name: str, recs: List[Tuple[str, object]]) -> None:
        has_txt = any(t == "TXT" for t, _ in recs)
        timeout = next((i for i, (t, _) in enumerate(recs) if t == "TIMEOUT"), None)
        served = recs if timeout is None else recs[:timeout]
        lines: List[str] = []
        seen: Dict[Tuple[str, bytes], int] = {}
        types: Set[str] = set()
        owner = _dname(name)

        def text(rtype: str, value) -> None:
            chunks = _chunks(value)
            joined = b"".join(chunks)
            k = seen.get((rtype, joined), 0)
            seen[(rtype, joined)] = k + 1
            if k:                                 # a duplicate: split differently
                assert k < len(joined), f"{name}: cannot make {k + 1} distinct {rtype} records"
                chunks = [joined[:k], joined[k:]]
            lines.append(f"{owner} IN {rtype} {_cstrings(chunks)}")
            types.add(rtype)

        cname = [v for t, v in recs if t == "CNAME"]
        if cname:
            lines.append(f"{owner} IN CNAME {_dname(str(cname[0]))}")
            types.update(QTYPES.values())
        for t, v in ([] if cname else served):
            if t == "TXT":
                if not (isinstance(v, str) and v == "NONE"):
                    text("TXT", v)
            elif t == "SPF":
                text("SPF", v)
                if not has_txt:
                    text("TXT", v)
            elif t in ("A", "AAAA"):
                lines.append(f"{owner} IN {t} {v}")
                types.add(t)
            elif t == "MX":
                pref, host = v
                lines.append(f"{owner} IN MX {int(pref)} {_dname(str(host))}")
                types.add(t)
            elif t == "PTR":
                lines.append(f"{owner} IN PTR {_dname(str(v))}")
                types.add(t)
            else:
                raise AssertionError(f"{name}: record type {t} not handled")
        if timeout is not None:
            if not (types & set(QTYPES.values())):
                self.broken.add(name)
                return
            self.partial[name] = types
        self.lines[name] = lines

    def _zones(self) -> Dict[str, str]:
        """Zone of every zone apex: a TLD, a TIMEOUT name (broken) or the
        child of a TIMEOUT name on the way to a served name."""
        apexes = {n.rsplit(".", 1)[-1] for n in self.records}
        apexes |= self.broken
        for n in self.records:
            if n in self.broken:
                continue
            for b in self.broken:
                if n != b and _under(n, b):
                    labels = n[: -len(b) - 1].split(".")
                    apexes.add(f"{labels[-1]}.{b}")
        for a in apexes:
            assert "/" not in a and a not in self.partial, f"unsupported zone apex {a!r}"
        return {a: a for a in apexes}

    def zone_of(self, name: str) -> str:
        return max((z for z in self.zones if _under(name, z)), key=len, default="")

    def nsd_zones(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {z: [] for z in self.zones if z not in self.broken}
        for name, lines in self.lines.items():
            z = self.zone_of(name)
            if z == name and any(" CNAME " in ln for ln in lines):
                raise AssertionError(f"{name}: a CNAME cannot be a zone apex")
            out[z] += lines
        return out

    def nodefault(self) -> List[str]:
        return [z for z in UNBOUND_DEFAULT_ZONES if any(_under(n, z) for n in self.records)]

    def deviation(self, qname: str, qtype: int) -> Optional[str]:
        """Why the DNS path answers this query unlike the unit run, or None."""
        n = _norm(qname)
        t = QTYPES.get(qtype, str(qtype))
        if n in self.partial and t not in self.partial[n]:
            return f"{qname} {t}: the unit run times out, NSD answers NODATA"
        z = self.zone_of(n)
        if z in self.broken and n != z and n not in self.records:
            return f"{qname} {t}: the unit run answers NXDOMAIN, NSD SERVFAIL (under TIMEOUT {z})"
        return None


class SuiteNsd(Nsd):
    """dns_zone.Nsd plus an empty root zone, so that names outside every
    suite zone (single labels such as a bad HELO name) are NXDOMAIN rather
    than REFUSED, and zones configured without a zone file: NSD answers
    SERVFAIL for everything in those."""

    def __init__(self, *a, broken=(), **kw):
        super().__init__(*a, **kw)
        self.broken = sorted(broken)

    def _write(self) -> Path:
        conf = super()._write()
        root = self.dir / "root.zone"
        root.write_text("$ORIGIN .\n$TTL 30\n"
                        ". IN SOA ns.root-servers.invalid. hostmaster.invalid. 1 3600 600 86400 30\n"
                        ". IN NS ns.root-servers.invalid.\n")
        extra = f'zone:\n  name: "."\n  zonefile: "{root}"\n'
        extra += "".join(f'zone:\n  name: "{z}"\n  zonefile: "{self.dir}/absent-{i}.zone"\n'
                         for i, z in enumerate(self.broken))
        conf.write_text(conf.read_text() + extra)
        return conf


class Servers:
    """One NSD at a time: the current scenario's."""

    def __init__(self, tmp: Path):
        self.sup = mslocal.Supervisor(tmp)
        self.current: Optional[int] = None
        self.nsd: Optional[Nsd] = None
        self.scenario: Optional[Scenario] = None

    def get(self, i: int) -> Tuple[Nsd, Scenario]:
        if self.current != i:
            self.close()
            sc = Scenario(SCENARIOS[i].get("zonedata"))
            nsd = SuiteNsd(self.sup, mslocal.free_port(), sc.nsd_zones(),
                                 name=f"nsd-scenario{i}", broken=sc.broken)
            self.current, self.scenario = i, sc
            nsd.start()
            self.nsd = nsd
        assert self.nsd is not None and self.scenario is not None
        return self.nsd, self.scenario

    def close(self) -> None:
        if self.nsd is not None:
            self.nsd.stop()
        self.nsd, self.current, self.scenario = None, None, None


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("spf-dns"))
    yield s
    s.close()
    s.sup.stop_all()


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

def _authcheck(upstream: str, nodefault: List[str], t: dict) -> Tuple[Dict[str, str], str]:
    cmd = [str(AUTHCHECK), "--spf-only", "--trace", "--dns", upstream,
           "--timeout", str(QUERY_TIMEOUT_MS), "--ip", str(t["host"]),
           "--mail-from", str(t.get("mailfrom") or "")]
    if t.get("helo") is not None:
        cmd += ["--helo", str(t["helo"])]
    for z in nodefault:
        cmd += ["--dns-nodefault", z]
    r = subprocess.run(cmd, capture_output=True, timeout=60)
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, f"authcheck exited {r.returncode}: {err}"
    fields: Dict[str, str] = {}
    for line in out.splitlines():
        k, _, v = line.partition(": ")
        fields[k] = v
    return fields, err


@pytest.mark.parametrize("scenario,test", _params())
def test_rfc7208(servers, scenario, test):
    need_testdata(SUITE_REL)
    assert AUTHCHECK.exists(), f"{AUTHCHECK} missing: run make"
    t = SCENARIOS[scenario]["tests"][test]
    nsd, sc = servers.get(scenario)
    got, trace = _authcheck(nsd.upstream, sc.nodefault(), t)

    deviations = []
    for line in trace.splitlines():
        m = re.fullmatch(r"query (.*) type (\d+)", line)
        if m and (why := sc.deviation(m.group(1), int(m.group(2)))):
            deviations.append(why)
    assert not deviations, ("the DNS path cannot serve this test as the suite means it: "
                            + "; ".join(deviations))

    want = t["result"] if isinstance(t["result"], list) else [t["result"]]
    detail = (f"got {got.get('spf')} (explanation {got.get('explanation')!r}, mechanism "
              f"{got.get('mechanism')!r}, problem {got.get('problem')!r}); want {'|'.join(want)}"
              f"\n{SCENARIOS[scenario].get('description', '')}: {t.get('description', '')}"
              f"\nqueries:\n{trace}")
    assert got.get("spf") in want, detail
    exp = t.get("explanation")
    if exp is not None:
        if exp == "DEFAULT":
            assert "explanation" not in got, detail
        else:
            assert got.get("explanation") == exp, detail
