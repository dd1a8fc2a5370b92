#!/usr/bin/env python3
"""Checks the pooler's module layering: no module may use a module of a lower layer.

The layers are read from the `# Layers` list in pooler/src/lib.rs. Dependencies are the
`crate::<module>` paths each file names; any that points to a lower layer fails the check,
and so does a cycle among modules of one layer.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "pooler" / "src"


def layers(lib_text):
    order = {}
    section = re.search(r"^//! # Layers\n(.*?)^//! `app`", lib_text, re.S | re.M)
    if not section:
        sys.exit("check-layering: no '# Layers' list in pooler/src/lib.rs")
    for rank, line in enumerate(re.findall(r"^//! - \w+: (.*)$", section.group(1), re.M)):
        for module in line.split():
            order[module] = rank
    return order


def module_of(path):
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".rs")


def edges():
    found = set()
    for path in ROOT.rglob("*.rs"):
        module = module_of(path)
        if module in ("lib", "main"):
            continue
        text = path.read_text()
        for used in set(re.findall(r"\bcrate::([a-z_]+)", text)):
            if used != module:
                found.add((module, used))
    return found


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    order = layers((ROOT / "lib.rs").read_text())
    problems = []
    modules = {module_of(p) for p in ROOT.glob("*") if p.suffix == ".rs" or p.is_dir()}
    modules -= {"lib", "main"}
    for module in sorted(modules - order.keys()):
        problems.append(f"module {module} is in no layer of pooler/src/lib.rs")
    found = edges()
    upward = {(a, b) for a, b in found if a in order and b in order and order[b] > order[a]}
    for a, b in sorted(upward):
        problems.append(f"{a} uses {b}, a module of a lower layer")
    graph = {}
    for a, b in found:
        graph.setdefault(a, set()).add(b)
    for component in cycles(graph):
        problems.append(f"these modules use one another: {' '.join(component)}")
    for p in problems:
        print(f"check-layering: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check-layering: {len(order)} modules, no dependency points down, no cycle")


if __name__ == "__main__":
    main()
