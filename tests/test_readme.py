"""Every ```python block of README.md runs as written: each in a fresh namespace, in an empty
folder, with the test data (``GPMARGIN_DATA``, set by conftest) and no display.

A snippet that needs a name defines it; a slow snippet is made smaller in the README, not here.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def readme_snippets(path: Path = REPO / "README.md") -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python block."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_readme_has_python_snippets():
    assert len(readme_snippets()) >= 3


@pytest.mark.parametrize("line,code", readme_snippets(), ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_readme_snippet_runs(line, code, tmp_path, monkeypatch, mnist_test):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # data substitutions etc. are shown to users, not errors here
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    plt.close("all")
