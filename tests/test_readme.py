"""Every ```python block of README.md and of the guides (``docs/guide/*.md``) runs as written:
each in a fresh namespace, in an empty folder, with the test data (``GPMARGIN_DATA``, set by
conftest) and no display.

A snippet that needs a name defines it; a slow snippet is made smaller in the README, not here.
"""

from __future__ import annotations

import re
import sys
import types
import warnings
from pathlib import Path

import pytest

from validation.registry import EXPERIMENTS

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def readme_snippets(path: Path = REPO / "README.md") -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python block."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs" / "guide").glob("*.md"))]
SNIPPETS = [(path.relative_to(REPO).as_posix(), line, code) for path in DOCUMENTS for line, code in readme_snippets(path)]


def test_readme_has_python_snippets():
    assert len(readme_snippets()) >= 2 and len(SNIPPETS) >= 10
    assert len((REPO / "README.md").read_text().splitlines()) <= 200  # guides hold the rest


@pytest.mark.parametrize("where,line,code", SNIPPETS, ids=[f"{w}:{n}" for w, n, _ in SNIPPETS])
def test_readme_snippet_runs(where, line, code, tmp_path, monkeypatch, mnist_test):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    script = types.ModuleType("__readme__")  # run as a user's script runs: a module in sys.modules
    monkeypatch.setitem(sys.modules, script.__name__, script)
    before = set(EXPERIMENTS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # data substitutions etc. are shown to users, not errors here
            exec(compile(code, f"{where}:{line}", "exec"), script.__dict__)
    finally:
        for name in set(EXPERIMENTS) - before:  # an experiment a guide registers lives for its snippet
            EXPERIMENTS.pop(name)
    plt.close("all")
