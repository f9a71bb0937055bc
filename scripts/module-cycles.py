#!/usr/bin/env python3
"""Import cycles between the modules of one crate.

    python3 scripts/module-cycles.py [SRC]      (default daemon/src)

Reads every .rs file under SRC, takes each `crate::a::b` path (and `crate::{a, b}` groups) outside
`#[cfg(test)] mod tests` as an edge to the longest module it names, and prints each strongly
connected component of two or more modules: its size, then its members. No output: no cycle.
Issue 21's layering rule is that no service module (config, auditing, packages, policy, ...) sits
in a component with `state`, `api` or `admin`.
"""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "daemon/src"
mods = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, root)[:-3]
            name = rel.replace("/mod", "").replace("/", "::")
            if name in ("lib", "main"): continue
            mods[name] = open(p).read()
names = set(mods)
def target(path):
    parts = path.split("::")
    for i in range(len(parts), 0, -1):
        cand = "::".join(parts[:i])
        if cand in names: return cand
    return None
g = {m: set() for m in mods}
for m, text in mods.items():
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
    for ref in re.findall(r"crate::([A-Za-z_][A-Za-z0-9_:]*)", text):
        t = target(ref)
        if t and t != m and not t.startswith(m + "::") : g[m].add(t)
    # use crate::{a, b::c}
    for grp in re.findall(r"crate::\{([^}]*)\}", text):
        for ref in re.split(r"[,\s]+", grp):
            t = target(ref.strip())
            if t and t != m: g[m].add(t)
# Tarjan's algorithm
index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
sys.setrecursionlimit(10000)
def sc(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in g[v]:
        if w not in index: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
for v in g:
    if v not in index: sc(v)
big = [sorted(c) for c in sccs if len(c) > 1]
big.sort(key=len, reverse=True)
for c in big: print(len(c), " ".join(c))
