#!/usr/bin/env python3
"""The layout rules of docs/ARCHITECTURE.md, checked: no import cycle between modules (top-level
modules of a crate, or sibling modules inside one folder), and no source file over LIMIT lines
unless ALLOWED says why. Reads each crate's src/ as text; exits 1 on a violation."""
import os
import re
import sys

LIMIT = 600
# Files allowed over the limit, with the reason (keep this list short and honest).
ALLOWED = {
}


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def imports(root):
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".rs")]
    mods = {module_of(root, f): f for f in files}
    edges = {}
    for m, f in mods.items():
        text = open(f, encoding="utf-8").read()
        # Unit tests may reach anywhere in their module; comments say nothing.
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
        text = re.sub(r"//.*", "", text)
        paths = {tuple(p.split("::")[1:]) for p in re.findall(r"\bcrate((?:::\w+)+)", text)}
        for ups, rest in re.findall(r"\b((?:super::)+)((?:\w+::)*\w+)", text):
            base = list(m)[: len(m) - ups.count("super::")]
            paths.add(tuple(base + rest.split("::")))
        found = set()
        for p in paths:
            for k in range(len(p), 0, -1):
                if p[:k] in mods:
                    if p[:k] != m:
                        found.add(p[:k])
                    break
        edges[m] = found
    return mods, edges


def level(a, b):
    """The two modules an import between a and b joins: the children of their common parent."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n >= len(a) or n >= len(b):
        return None  # one is inside the other
    return a[: n + 1], b[: n + 1]


def main():
    bad = []
    for crate in ("src", "ingest/src", "bert/src"):
        if not os.path.isdir(crate):
            continue
        mods, edges = imports(crate)
        graph = {}
        for a, bs in edges.items():
            for b in bs:
                pair = level(a, b)
                if pair:
                    graph.setdefault(pair[0], set()).add(pair[1])
        seen = set()
        for a in graph:
            for b in graph[a]:
                if a in graph.get(b, ()) and (b, a) not in seen:
                    seen.add((a, b))
                    bad.append(f"{crate}: import cycle {'::'.join(a)} <-> {'::'.join(b)}")
        for m, f in sorted(mods.items()):
            n = sum(1 for _ in open(f, encoding="utf-8"))
            if n > LIMIT and f not in ALLOWED:
                bad.append(f"{f}: {n} lines (over {LIMIT}; split it, or say why in ALLOWED)")
    for line in bad:
        print(line)
    print(f"layout: {len(bad)} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
