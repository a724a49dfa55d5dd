"""Every histogram on the frontend's and the worker's /metrics, read by the
Prometheus text-format parser of the official Python client, has exactly the
bucket bounds the C code registers it with (issue 23: `le` was printed with
%g, so the frontend's 1 MiB bound read 1.04858e+06, i.e. 1048580).

The bounds the test expects are read from the C sources, not typed here: each
`ms_histogram_new("name", ..., bounds, n)` call in the tree, with the
`bounds[] = {...}` array it names.  A call the reader cannot follow (a name or
bounds that are not literals) fails the test, so a new histogram is never
left out silently; so does a histogram on /metrics that no call registers.
"""

from __future__ import annotations

import ast
import operator
import re
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from prometheus_client.parser import text_string_to_metric_families

import mslocal

ROOT = Path(__file__).resolve().parents[2]
# Where the programs' C sources live (the library folders may move; every
# .c file outside tests/ and the build trees is read).
SKIP_DIRS = {"tests", "build", "build-asan", "build-fuzz", "bench"}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def c_sources() -> Dict[Path, str]:
    out = {}
    for p in sorted(ROOT.rglob("*.c")):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in SKIP_DIRS or rel.parts[0].startswith("."):
            continue
        out[rel] = _COMMENT.sub(" ", p.read_text(errors="replace"))
    return out


def call_args(text: str, func: str) -> Iterator[Tuple[int, List[str]]]:
    """(line, top-level arguments) of every call of func in text."""
    for m in re.finditer(r"\b" + re.escape(func) + r"\s*\(", text):
        i, depth, args, cur = m.end(), 1, [], []
        while True:
            c = text[i]
            if c == '"':
                s = _STRING.match(text, i)
                assert s, f"unterminated string at offset {i}"
                cur.append(s.group(0))
                i = s.end()
                continue
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth == 0:
                    break
            elif c == "," and depth == 1:
                args.append("".join(cur).strip())
                cur = []
                i += 1
                continue
            cur.append(c)
            i += 1
        args.append("".join(cur).strip())
        yield text.count("\n", 0, m.start()) + 1, args


# C's integer / truncates and Python's does not: left out on purpose.
BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.LShift: operator.lshift}


def c_number(expr: str) -> float:
    """A double-typed C constant expression of literals, + - * and <<."""
    expr = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expr.strip())

    def ev(n: ast.AST):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return n.value
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.BinOp) and type(n.op) in BINOPS:
            return BINOPS[type(n.op)](ev(n.left), ev(n.right))
        raise ValueError(f"cannot evaluate {expr!r}")
    return float(ev(ast.parse(expr, mode="eval").body))


def array_values(sources: Dict[Path, str], here: Path, name: str) -> List[float]:
    """The initializer of the array `name`, from the file that uses it or
    else from the one that defines it."""
    pat = re.compile(r"\b" + re.escape(name) + r"\s*\[\s*\w*\s*\]\s*=\s*\{(.*?)\}", re.S)
    for path in [here] + [p for p in sources if p != here]:
        m = pat.search(sources[path])
        if m:
            return [c_number(x) for x in m.group(1).split(",") if x.strip()]
    raise AssertionError(f"{here}: the bounds array {name} is defined nowhere")


def configured_histograms() -> Dict[str, Tuple[List[float], Path]]:
    """Histogram name -> (bounds, the file that registers it)."""
    sources = c_sources()
    found: Dict[str, Tuple[List[float], Path]] = {}
    for path, text in sources.items():
        for line, args in call_args(text, "ms_histogram_new"):
            if path.name == "ms_metrics.c" and not args[0].startswith('"'):
                continue  # the definition itself
            where = f"{path}:{line}"
            assert len(args) == 5 and args[0].startswith('"'), \
                f"{where}: ms_histogram_new without a literal name; teach this test to read it"
            name = "".join(_STRING.findall(args[0]))
            ident = args[3]
            assert re.fullmatch(r"\w+", ident), f"{where}: bounds {ident!r} is not an array name"
            values = array_values(sources, path, ident)
            n = args[4]
            if re.fullmatch(r"\d+", n):
                values = values[:int(n)]
            else:
                # The whole array: sizeof(a) / sizeof(a[0]), or a constant
                # defined as that (ms_latency_buckets_n).
                count = n if "sizeof" in n else next(
                    (m.group(1) for t in sources.values()
                     for m in [re.search(r"\b" + re.escape(n) + r"\s*=\s*([^;]*);", t)] if m), "")
                assert re.search(r"sizeof\s*\(\s*" + re.escape(ident) + r"\s*\)", count), \
                    f"{where}: cannot tell how many of {ident} the count {n!r} takes"
            assert name not in found or found[name][0] == values, \
                f"{where}: {name} registered with two sets of bounds"
            found[name] = (values, path)
    return found


def exposed_histograms(text: str) -> Dict[str, List[List[str]]]:
    """Histogram name -> the `le` values of each of its series, in order."""
    out: Dict[str, List[List[str]]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram":
            continue
        series: Dict[tuple, List[str]] = {}
        for s in fam.samples:
            if s.name == fam.name + "_bucket":
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, []).append(s.labels["le"])
        out[fam.name] = list(series.values())
    return out


def check_node(text: str, program_dir: str, configured: Dict[str, Tuple[List[float], Path]]):
    exposed = exposed_histograms(text)
    own = {n for n, (_, p) in configured.items() if p.parts[0] == program_dir}
    assert own, f"no ms_histogram_new call found under {program_dir}/"
    assert own <= set(exposed), f"registered in {program_dir}/ but not on /metrics: " \
                                f"{sorted(own - set(exposed))}"
    for name, series in exposed.items():
        assert name in configured, \
            f"{name} is on /metrics but no ms_histogram_new call registers it"
        want = configured[name][0]
        for les in series:
            assert les[-1] == "+Inf", f"{name}: last bucket is le={les[-1]!r}"
            got = [float(le) for le in les[:-1]]
            assert got == want, f"{name}: le={les[:-1]} read back as {got}, registered {want}"


def test_histogram_bounds_round_trip(cluster_factory):
    configured = configured_histograms()
    # A milter (never reached: nothing is sent here) so that the milter
    # series, registered per configured server, are on /metrics too.
    milter = {"servers": f"inet:127.0.0.1:{mslocal.free_port()}", "default_action": "accept"}
    cl = cluster_factory(frontends=1, workers=1, frontend_extra={"milter": milter})
    check_node(cl.frontends[0].metrics_text(), "frontend", configured)
    check_node(cl.workers[0].metrics_text(), "worker", configured)
