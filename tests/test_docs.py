"""The API reference builds from the docstrings (``make docs``), and a broken cross-reference fails it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("pdoc", reason="pdoc (extras 'test' / 'docs') not installed")


def _builder():
    spec = importlib.util.spec_from_file_location("build_api", REPO / "docs" / "build_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_reference_builds_without_problems(tmp_path):
    api = _builder()
    problems = api.build(tmp_path)
    assert problems == []
    pages = {"gpmargin/kernels.html": "paper_cnn", "gpmargin/predict.html": "margin_curve",
             "gpmargin/data.html": "make_task", "gpmargin/measures.html": "spectral",
             "validation/harness/sweep.html": "run_sweep", "validation/theory/comparison.html": "compare",
             "validation/harness/experiment.html": "Experiment"}
    for page, name in pages.items():
        assert name in (tmp_path / page).read_text(), page


def test_a_broken_cross_reference_fails_the_build(tmp_path, monkeypatch):
    (tmp_path / "ux_docs_probe.py").write_text('"""Probe."""\n\n\ndef f():\n    """See :func:`no_such_function`."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    api = _builder()
    assert api.broken_references(["ux_docs_probe"]) == ["ux_docs_probe.f: :func:`no_such_function` names nothing"]
    sys.modules.pop("ux_docs_probe", None)
