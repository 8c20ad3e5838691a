"""The shape of the code, counted: what issue "one round loop" asks to shrink.

Reads the package's source with ``ast`` (nothing is imported or run) and prints
functions over --max-lines lines, function-local imports, imports of another
module's private names, module import circles (counting function-local imports,
which hide a circle from Python but not from a reader), core modules that
import the CLI, and the largest modules.

    python benchmarks/code_shape.py [--max-lines 60] [--list]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The installed package layout (pyproject's package-dir): folder -> package.
PACKAGES = {"synthfed": "synthfed", "privacy": "synthfed.privacy", "fairness": "synthfed.fairness",
            "cli": "synthfed.cli"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _resolve(module: str, node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, str, bool]]:
    """(imported module, imported name or "", inside a function) for each synthfed import."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, "", in_function) for a in child.names if a.name.startswith("synthfed"))
            elif isinstance(child, ast.ImportFrom):
                module = _resolve(name, child, name, path.name == "__init__.py")
                if not module.startswith("synthfed"):
                    continue
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    out.append((full, "", in_function) if full in known else (module, alias.name, in_function))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # typing-only imports are no dependency at run time
            visit(child, inner)

    visit(tree, False)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def long_functions(path: Path, limit: int) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lines", type=int, default=60)
    parser.add_argument("--list", action="store_true", help="list every finding, not only the counts")
    args = parser.parse_args()
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    local_imports, private, cli_from_core, long = [], [], [], []
    for name, path in mods.items():
        for module, alias, in_function in imports(name, path, known):
            target = module if module in known else None
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                graph.setdefault(name, set()).add(target)
            if in_function:
                local_imports.append(f"{name}: {module}{'.' + alias if alias else ''}")
            if alias.startswith("_") and not alias.startswith("__") and module != name:
                private.append(f"{name}: {module}.{alias}")
            if target and target.startswith("synthfed.cli") and not name.startswith("synthfed.cli"):
                cli_from_core.append(f"{name}: {target}")
        long += [f"{name}.{fn}: {n} lines" for fn, n in long_functions(path, args.max_lines)]
    found = circles(graph)
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in mods.items()), reverse=True)[:5]
    rows = [(f"functions over {args.max_lines} lines", long), ("function-local imports of synthfed", local_imports),
            ("imports of another module's private name", private),
            ("import circles (modules in one)", [" <-> ".join(c) for c in found]),
            ("core modules importing the CLI", cli_from_core)]
    for title, items in rows:
        print(f"{title:45s} {len(items):5d}")
        if args.list:
            for item in items:
                print(f"    {item}")
    print("largest modules: " + ", ".join(f"{n} ({lines})" for lines, n in sizes))


if __name__ == "__main__":
    main()
