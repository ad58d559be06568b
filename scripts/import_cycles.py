#!/usr/bin/env python3
"""Import circles inside each crate (issue 21: arrows point one way inside crates too).

Module A depends on module B when A names B in a `use` or a path (`super::b::…`,
`crate::b::…`). Modules are grouped two levels deep (`service::sessions`), so a module
and its own submodules never form a circle, but two rooms that name each other do.
Prints every circle and exits 1 if there is one.

This reads the source with regular expressions, not the compiler: comment lines and
`mod tests` blocks are skipped, so doc links do not count as dependencies.

Usage: scripts/import_cycles.py [CRATE_SRC_DIR ...]   (default: every workspace crate)
"""

import glob
import re
import sys

CRATES = ["bastion", "ca", "cli", "discovery", "enroll", "os", "policies", "portcullisd", "proto", "sshcert", "tests"]
DEPTH = 2


def module_name(src: str, path: str) -> str:
    rel = path[len(src):-len(".rs")]
    if rel in ("lib", "main"):
        return ""
    if rel.endswith("/mod"):
        rel = rel[: -len("/mod")]
    return rel.replace("/", "::")


def resolve(modules: dict, current: str, path: str):
    """The module a `crate::…` or `super::…` path lands in, or None."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    else:
        here = current.split("::") if current else []
        is_dir = modules.get(current, "").endswith(("mod.rs", "lib.rs", "main.rs"))
        base = here if is_dir else here[:-1]
        rest = parts
        while rest and rest[0] == "super":
            rest = rest[1:]
            if rest and rest[0] == "super":
                base = base[:-1]
    for i in range(len(rest), 0, -1):
        candidate = "::".join(base + rest[:i])
        if candidate in modules:
            return candidate
    return None


def group(module: str) -> str:
    return "::".join(module.split("::")[:DEPTH])


def edges_of(src: str) -> dict:
    modules = {module_name(src, f): f for f in glob.glob(src + "**/*.rs", recursive=True)}
    edges: dict = {}
    for module, path in modules.items():
        text = open(path, encoding="utf-8").read()
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
        text = "\n".join(line for line in text.split("\n") if not line.strip().startswith("//"))
        targets = set()
        for prefix, names in re.findall(r"use ((?:super|crate)(?:::\w+)*)(?:::\{([^}]*)\})?", text):
            for name in re.split(r"[,\s]+", names or ""):
                name = name.split("::")[0]
                if name and name != "self":
                    targets.add(resolve(modules, module, f"{prefix}::{name}"))
            targets.add(resolve(modules, module, prefix))
        for named in re.findall(r"\b((?:super|crate)(?:::\w+)+)", text):
            targets.add(resolve(modules, module, named))
        for target in targets:
            if not target or module.startswith(target + "::"):
                continue
            a, b = group(module), group(target)
            if a and b and a != b:
                edges.setdefault(a, set()).add(b)
    return edges


def circles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    sources = sys.argv[1:] or [f"{crate}/src/" for crate in CRATES]
    failed = False
    for src in sources:
        src = src.rstrip("/") + "/"
        edges = edges_of(src)
        for component in circles(edges):
            failed = True
            print(f"import circle in {src}: {', '.join(component)}")
            for module in component:
                print(f"  {module} -> {', '.join(sorted(edges[module] & set(component)))}")
    if not failed:
        print(f"no import circles in {len(sources)} crate(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
