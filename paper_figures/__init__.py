"""Paper figures 1-10 of Farhang et al., *Investigating Generalization by Controlling Normalized
Margin* (ICML 2022), one module per figure, run with ``gpmargin figure figN``.

Every figure module defines

* ``NAME``, ``TITLE`` and ``CLAIM`` (one line: what the figure shows),
* ``SCALES``: the settings per scale (``smoke``, ``quick``, ``paper``) as plain data,
* ``config(scale, dataset=None) -> dict``: the settings of one run (JSON-able),
* ``run(cfg, ctx) -> dict``: every number behind the plot; long pieces of work go through
  ``ctx.units({key: fn})`` (``fn(device)``, a picklable ``functools.partial``) so that they run in
  parallel on Dask workers under ``--workers``/``--scheduler``, are appended to
  ``DIR/.state/figure-figN/runs.jsonl`` as they finish and are skipped on a rerun
  (``ctx.unit(key, fn)`` runs ``fn()`` in this process, for work that drives other units, like
  fig6's sweep),
* ``claims(cfg, results) -> dict``: the figure's checkable claims, each ``{"holds", "detail"}``,
* ``plot(cfg, results) -> matplotlib.figure.Figure``.

:func:`paper_figures.runner.run_figure` ties them together and writes ``DIR/figN.png`` and
``DIR/figN.json`` atomically.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gpmargin.errors import GpmarginError

FIGURES: dict[str, str] = {
    "fig1": "paper_figures.fig01",
    "fig2": "paper_figures.fig02",
    "fig3": "paper_figures.fig03",
    "fig4": "paper_figures.fig04",
    "fig5": "paper_figures.fig05",
    "fig6": "paper_figures.fig06",
    "fig7": "paper_figures.fig07",
    "fig8": "paper_figures.fig08",
    "fig9": "paper_figures.fig09",
    "fig10": "paper_figures.fig10",
    # probes of trained networks (gpmargin.probes), beyond the paper
    "landscape": "paper_figures.landscape",
    "walk": "paper_figures.walk",
}

SCALES = ("smoke", "quick", "paper")


def get_figure(name: str) -> ModuleType:
    """The module defining figure ``name`` (``fig1`` ... ``fig10``); unknown -> GpmarginError."""
    key = str(name).strip().lower()
    if key.startswith("fig") and key[3:].isdigit():
        key = f"fig{int(key[3:])}"  # fig01 -> fig1
    if key not in FIGURES:
        raise GpmarginError(f"unknown figure {name!r}: available: {', '.join(FIGURES)} (see 'gpmargin figure list')")
    return importlib.import_module(FIGURES[key])


__all__ = ["FIGURES", "SCALES", "get_figure"]
