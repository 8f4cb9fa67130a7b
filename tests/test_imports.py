"""The import graph of ``gpmargin``, ``validation`` and ``paper_figures`` has no cycles (imports
inside functions count: they are cycles a reader must untangle too).

The graph is built from the source with ``ast``; a module imports the deepest module of the three
packages that an import statement names.  The kernel layers and their engine used to form one
(``Layer.__call__`` built a ``serial``); the engine now lives in ``gpmargin.kernels.engine``, which
imports no layer, so layers, compositions and finite networks form a ladder.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("gpmargin", "validation", "paper_figures")
KNOWN_CYCLES: list[set[str]] = []  # a cycle listed here is one the next change must break


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _deepest(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # "from pkg import mod" imports pkg.mod when that is a module, else pkg
                targets = [next((f"{base}.{a.name}" for a in [alias] if f"{base}.{a.name}" in mods), base)
                           for alias in node.names]
            for t in targets:
                dep = _deepest(t, mods)
                if dep and dep != mod:
                    graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [{"a", "b", "c"}]


def test_no_import_cycles_but_the_known_ones():
    found = cycles(import_graph())
    assert all(c in KNOWN_CYCLES for c in found), [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert all(c in found for c in KNOWN_CYCLES), "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_experiment_modules_are_imported_by_the_registry_only():
    """One module per experiment: nothing but ``validation.registry`` imports one, so adding an
    experiment touches that module and one registry line."""
    graph = import_graph()
    users = {mod for mod, deps in graph.items() for d in deps if d.startswith("validation.experiments.")}
    assert users == {"validation.registry"}, sorted(users)


def test_predict_imports_nothing_above_it():
    """``gpmargin.predict`` defines the kernel-source interface a store implements; it imports no
    floor above it (the store, the harness, the figures).  Its command line opens a store's path
    (``gpmargin.predict.cli``, the one module of the command layer in that package)."""
    above = ("gpmargin.distributed", "validation", "paper_figures")
    graph = import_graph()
    bad = {mod: sorted(d for d in deps if d.startswith(above)) for mod, deps in graph.items()
           if mod.startswith("gpmargin.predict") and mod != "gpmargin.predict.cli"}
    assert not any(bad.values()), {m: d for m, d in bad.items() if d}


def test_a_subcommand_imports_only_its_own_module():
    """``gpmargin predict`` builds only its parser: the training harness, the figures, Dask,
    Zarr, GPyTorch and scikit-learn stay unimported (the predict benchmark's startup)."""
    import subprocess
    import sys

    code = ("import sys; from gpmargin.cli import build_parser; build_parser('predict'); "
            "print(sorted(m for m in ('validation', 'paper_figures', 'dask', 'zarr', 'gpytorch', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
