#!/usr/bin/env python3
"""Checks the pooler's module layering: no module may use a module of a lower layer.

The layers are read from the `# Layers` list in pooler/src/lib.rs. Dependencies are the
`crate::<module>` paths each file names. The upward dependencies that exist today are listed
in KNOWN below; a new one fails the check, and so does a listed one that has gone (so that
the list is kept short and true).
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "pooler" / "src"

# Upward dependencies still to be removed, with why each exists.
KNOWN = {
    ("client", "app"): "clients are handed the whole Pooler instead of a narrow context",
    ("client", "admin"): "console dispatch happens in the client login, not in a frontend",
}


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


def main():
    order = layers((ROOT / "lib.rs").read_text())
    problems = []
    modules = {module_of(p) for p in ROOT.glob("*") if p.suffix == ".rs" or p.is_dir()}
    modules -= {"lib", "main"}
    for module in sorted(modules - order.keys()):
        problems.append(f"module {module} is in no layer of pooler/src/lib.rs")
    upward = {(a, b) for a, b in edges() if a in order and b in order and order[b] > order[a]}
    for a, b in sorted(upward - KNOWN.keys()):
        problems.append(f"{a} uses {b}, a module of a lower layer")
    for a, b in sorted(KNOWN.keys() - upward):
        problems.append(f"{a} no longer uses {b}: remove it from KNOWN in {sys.argv[0]}")
    for p in problems:
        print(f"check-layering: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check-layering: {len(order)} modules, {len(KNOWN)} known upward dependencies")


if __name__ == "__main__":
    main()
