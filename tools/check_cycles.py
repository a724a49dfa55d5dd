#!/usr/bin/env python3
"""Fail when modules of the tree depend on each other in a cycle.

A module is a source file and its header taken together (frontend/fe_server.c
and frontend/fe_server.h are the module frontend/fe_server); a header without
a source file, or a program's main.c, is a module of its own.  Two graphs are
checked, and each must be free of cycles:

  includes  module A depends on module B when a file of A has
            `#include "b.h"` for a header of B.  The header is looked up
            beside the including file, then by its name anywhere in the
            tree (a name that two headers share is an error: the check
            could not tell which is meant).  Headers outside the tree
            (system, generated) do not count.

  symbols   (with --objects DIR) module A depends on module B when A's
            object file uses a symbol that B's object file defines, as nm
            reports them.  This graph also sees a header that declares
            another module's functions (a "hub" header), which the include
            graph cannot: fe_server.h once declared fe_session.c's API, so
            fe_server.c and fe_session.c called each other through it.
            Objects whose source file is gone (a stale build) are skipped.

A cycle means neither module can be understood, tested or moved without the
other; break it by moving what both need into a module below them, or by
handing a callback down (docs/architecture.md, "Folders").

Usage:
  tools/check_cycles.py [--objects DIR] [ROOT]   check ROOT (default .)
  tools/check_cycles.py --self-test              check the checker

Exit status: 0 no cycle, 1 a cycle (each printed with the edges that make
it), 2 a usage or lookup error.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
SOURCE_EXT = (".c", ".h")
# Not part of the sources: build output, version control, caches.
SKIP_DIRS = {".git", "node_modules", "__pycache__"}


def module_of(path):
    return os.path.splitext(path)[0]


def source_files(root):
    """Every .c and .h below root, as paths relative to it."""
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith("build")
                         and not x.startswith("."))
        for f in sorted(files):
            if f.endswith(SOURCE_EXT):
                out.append(os.path.normpath(os.path.join(rel, f)))
    return out


def include_graph(root, files):
    """module -> {module: "file:line"} from the #include lines."""
    present = set(files)
    by_name = {}
    for f in files:
        if f.endswith(".h"):
            by_name.setdefault(os.path.basename(f), []).append(f)
    graph = {module_of(f): {} for f in files}
    for f in files:
        with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fp:
            for lineno, line in enumerate(fp, 1):
                m = INCLUDE.match(line)
                if m is None:
                    continue
                name = m.group(1)
                target = os.path.normpath(os.path.join(os.path.dirname(f), name))
                if target not in present:
                    found = by_name.get(os.path.basename(name), [])
                    if len(found) > 1:
                        raise LookupError("%s:%d: \"%s\" could be any of %s" %
                                          (f, lineno, name, ", ".join(found)))
                    if not found:
                        continue  # system or generated header
                    target = found[0]
                src, dst = module_of(f), module_of(target)
                if src != dst:
                    graph[src].setdefault(dst, "%s:%d includes %s" % (f, lineno, target))
    return graph


def symbol_graph(root, objdir):
    """module -> {module: "uses SYMBOL"} from nm over objdir's objects."""
    defined, used = {}, {}
    for d, _, files in os.walk(objdir):
        for f in sorted(files):
            if not f.endswith(".o"):
                continue
            obj = os.path.join(d, f)
            rel = os.path.relpath(obj, objdir)[:-2]
            if not os.path.exists(os.path.join(root, rel + ".c")):
                continue  # generated code, or a source that is gone
            out = subprocess.run(["nm", "-g", obj], check=True, capture_output=True,
                                 text=True).stdout
            used[rel] = set()
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "U":
                    used[rel].add(parts[1])
                elif len(parts) == 3 and parts[1] in "TDBRCVW":
                    defined.setdefault(parts[2], set()).add(rel)
    graph = {m: {} for m in used}
    for mod, syms in used.items():
        for sym in sorted(syms):
            owners = defined.get(sym, set())
            if len(owners) == 1:  # main and the like are defined many times
                owner = next(iter(owners))
                if owner != mod:
                    graph[mod].setdefault(owner, "uses %s" % sym)
    return graph


def cycles(graph):
    """The strongly connected components with more than one module
    (Tarjan, iterative), each as a sorted list."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def report(kind, graph, quiet=False):
    bad = cycles(graph)
    for comp in bad if not quiet else []:
        members = set(comp)
        print("%s cycle between %s:" % (kind, ", ".join(comp)), file=sys.stderr)
        for src in comp:
            for dst, why in sorted(graph[src].items()):
                if dst in members:
                    print("  %s -> %s (%s)" % (src, dst, why), file=sys.stderr)
    return len(bad)


def check(root, objdir=None, quiet=False):
    files = source_files(root)
    n = report("include", include_graph(root, files), quiet)
    if objdir is not None:
        n += report("symbol", symbol_graph(root, objdir), quiet)
    if not quiet and n == 0:
        print("check_cycles: %d files, no include cycle%s" %
              (len(files), ", no symbol cycle" if objdir else ""))
    return n


def write(root, path, text):
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    with open(os.path.join(root, path), "w") as fp:
        fp.write(text)


def self_test():
    """The checker finds the cycles it exists for, and only those."""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as root:
        # a -> b -> c and a -> c: no cycle.  d <-> e across folders: a cycle.
        write(root, "x/a.c", '#include "a.h"\n#include "b.h"\n#include <stdio.h>\n')
        write(root, "x/a.h", '#include "c.h"\n')
        write(root, "x/b.c", '#include "b.h"\n#include "../y/c.h"\n')
        write(root, "x/b.h", "")
        write(root, "y/c.h", '#include "gen.pb-c.h"\n')
        write(root, "y/d.c", '#include "d.h"\n#include "e.h"\n')
        write(root, "y/d.h", "")
        write(root, "z/e.c", '#include "e.h"\n')
        write(root, "z/e.h", '#include "d.h"\n')
        graph = include_graph(root, source_files(root))
        assert cycles(graph) == [["y/d", "z/e"]], graph
        del graph["z/e"]["y/d"]
        assert cycles(graph) == [], graph
        # A name two headers share cannot be resolved.
        write(root, "z/c.h", "")
        try:
            include_graph(root, source_files(root))
            raise AssertionError("ambiguous include not reported")
        except LookupError:
            pass
        # A hub header: each source includes only hub.h, yet f.c and g.c
        # call each other.  The include graph is fine; the symbols are not.
        hub = os.path.join(root, "hub")
        write(hub, "hub.h", "void f(void);\nvoid g(void);\nvoid h(void);\n")
        write(hub, "f.c", '#include "hub.h"\nvoid f(void) { g(); h(); }\n')
        write(hub, "g.c", '#include "hub.h"\nvoid g(void) { f(); }\n')
        write(hub, "h.c", '#include "hub.h"\nvoid h(void) {}\n')
        objdir = os.path.join(hub, "obj")
        os.makedirs(objdir)
        for name in ("f", "g", "h"):
            subprocess.run([cc, "-c", "-o", os.path.join(objdir, name + ".o"),
                            os.path.join(hub, name + ".c")], check=True)
        assert cycles(include_graph(hub, source_files(hub))) == []
        graph = symbol_graph(hub, objdir)
        assert cycles(graph) == [["f", "g"]], graph
        assert check(hub, objdir, quiet=True) == 1
        os.remove(os.path.join(hub, "g.c"))  # its object is stale now
        assert check(hub, objdir, quiet=True) == 0
    print("check_cycles: self-test passed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=".")
    ap.add_argument("--objects", metavar="DIR",
                    help="also check the symbols the object files under DIR take from each other")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if shutil.which("nm") is None and args.objects:
        print("check_cycles: nm not found", file=sys.stderr)
        return 2
    try:
        return 1 if check(args.root, args.objects) else 0
    except LookupError as e:
        print("check_cycles: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
