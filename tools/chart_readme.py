#!/usr/bin/env python3
"""chart_readme.py - the values table of helm/mailstream/README.md, from values.yaml.

    tools/chart_readme.py [--check] [CHART_DIR]

Every value of the chart is documented once, by a `# -- text` comment (and
the `#` lines that follow it) right above the key in values.yaml. This
writes the table between the `<!-- values:begin -->` and `<!-- values:end -->`
lines of the chart's README.md; with --check it changes nothing and exits 1
when the README differs or when a value has no comment of its own or of an
ancestor (tests/integration/test_helm.py runs the check, so the README never
drifts from values.yaml).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"
KEY = re.compile(r"^( *)([A-Za-z0-9_.-]+):(.*)$")


def documented(values_text: str) -> dict:
    """{dotted path: description} for every key with a `# --` comment."""
    docs: dict = {}
    stack: list = []  # (indent, key)
    pending: list = []
    collecting = False
    for line in values_text.splitlines():
        s = line.strip()
        if s.startswith("# --"):
            pending, collecting = [s[4:].strip()], True
            continue
        if s.startswith("#"):
            if collecting:
                pending.append(s[1:].strip())
            continue
        collecting = False
        m = KEY.match(line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending:
            docs[".".join(k for _, k in stack)] = " ".join(pending)
            pending = []
    return docs


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def lookup(values, path):
    for part in path.split("."):
        values = values[part]
    return values


def table(chart: Path) -> str:
    text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(text)
    docs = documented(text)
    rows = ["| value | default | meaning |", "| --- | --- | --- |"]
    for path, desc in docs.items():
        if any(other.startswith(path + ".") for other in docs):
            default = "(section)"  # its values have rows of their own
        else:
            default = "`" + json.dumps(lookup(values, path), separators=(", ", ": ")) + "`"
        rows.append(f"| `{path}` | {default} | {desc.replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


def undocumented(chart: Path) -> list:
    text = (chart / "values.yaml").read_text()
    docs = documented(text)
    out = []
    for leaf in leaves(yaml.safe_load(text)):
        parts = leaf.split(".")
        if not any(".".join(parts[:i]) in docs for i in range(1, len(parts) + 1)):
            out.append(leaf)
    return out


def main(argv: list) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    chart = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "helm" / "mailstream"
    readme = chart / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{readme}: no {BEGIN} ... {END} section", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table(chart)}{END}{tail}"
    missing = undocumented(chart)
    for leaf in missing:
        print(f"values.yaml: {leaf} has no `# --` comment (nor has a parent)", file=sys.stderr)
    if check:
        if new != text:
            print(f"{readme}: the values table differs from values.yaml "
                  "(run tools/chart_readme.py)", file=sys.stderr)
            return 1
        return 1 if missing else 0
    readme.write_text(new)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
