"""Build the API reference from the docstrings with pdoc: ``python docs/build_api.py --out docs/api``
(``make docs``).

Covers :data:`MODULES`: the kernels, the predictions, the datasets, the measures, the probes and the training
harness (``validation``), each with its submodules.  The build fails (exit status 1, one line per
problem) when

* pdoc warns (a module that does not import, a docstring it cannot render), or
* a Sphinx-style cross-reference in a docstring (``:func:`name```, ``:class:``, ``:mod:``,
  ``:meth:``, ``:attr:``, ``:data:``, ``:exc:``) names nothing: the broken references a reader
  would otherwise meet as dead text.

``gpmargin.kernels.nt`` needs the optional ``nt`` extra; without it that one module is left out
(and said so).  The test suite runs :func:`build` too (``tests/test_docs.py``), so ``make test``
and CI fail on a broken reference.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
import warnings
from pathlib import Path

MODULES = ("gpmargin.kernels", "gpmargin.predict", "gpmargin.data", "gpmargin.measures", "gpmargin.probes", "validation")
OPTIONAL = {"gpmargin.kernels.nt": "jax"}  # module -> the package it needs
ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?\.?([A-Za-z_][\w.]*)`")


def _resolves(name: str, context: list[object]) -> bool:
    """Whether dotted ``name`` is an importable module or attribute path, absolutely or from ``context``."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
            return True
        except AttributeError:
            break
    for scope in context:
        obj = scope
        try:
            for p in parts:
                obj = getattr(obj, p)
            return True
        except AttributeError:
            continue
    return False


def broken_references(modules) -> list[str]:
    """``module.qualname: :role:`name``` for every cross-reference that names nothing."""
    import pdoc.doc

    problems = []

    def walk(doc, scopes):
        here = [doc.obj] + scopes if isinstance(doc, (pdoc.doc.Module, pdoc.doc.Class)) else scopes
        home = sys.modules.get(getattr(doc.obj, "__module__", None) or "")
        context = here + ([home] if home is not None else [])  # re-exported objects: their own module
        own = isinstance(doc, (pdoc.doc.Module, pdoc.doc.Variable)) or getattr(doc.obj, "__doc__", None)
        for m in ROLE.finditer((doc.docstring or "") if own else ""):  # inherited docstrings are not ours
            if not _resolves(m.group(1), context):
                problems.append(f"{doc.fullname}: {m.group(0)} names nothing")
        if isinstance(doc, pdoc.doc.Module):
            for sub in doc.submodules:
                walk(sub, [])
        if isinstance(doc, (pdoc.doc.Module, pdoc.doc.Class)):
            for member in doc.own_members:
                if isinstance(member, (pdoc.doc.Class, pdoc.doc.Function, pdoc.doc.Variable)):
                    walk(member, here)

    for name in modules:
        walk(pdoc.doc.Module(importlib.import_module(name)), [])
    return sorted(set(problems))


def build(out: Path) -> list[str]:
    """Write the HTML reference into ``out``; return the problems found (empty when it is sound)."""
    import pdoc
    import pdoc.render

    excluded = [m for m, need in OPTIONAL.items() if importlib.util.find_spec(need) is None]
    pdoc.render.configure(docformat="restructuredtext", show_source=False, search=True,
                          footer_text="gpmargin API reference (built by docs/build_api.py)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, *(f"!{m}" for m in excluded), output_directory=Path(out))
    problems = [f"pdoc: {w.message}" for w in caught]
    problems += broken_references(MODULES)
    for m in excluded:
        print(f"note: {m} left out (needs {OPTIONAL[m]}, from the 'nt' extra)")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/api", help="output folder (default docs/api)")
    args = p.parse_args(argv)
    problems = build(Path(args.out))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"API reference written to {args.out}/index.html ({', '.join(MODULES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
