"""Where an experiment keeps its results in a results folder ``DIR`` (shared by experiments and figures).

``DIR/.state/validate-<name>/config.json`` and ``runs.jsonl`` (:func:`prepare_output`,
:func:`runs_path`: the sweep's state) and ``DIR/<name>-<file>`` (:func:`output_path`: every file
a report writes, named after the experiment).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gpmargin.io import prepare_results_folder, state_folder


def prepare_output(config, out: str | os.PathLike, device: torch.device | None = None,
                   execution: dict | None = None) -> Path:
    """The experiment's state folder in ``out`` (``DIR/.state/validate-<name>/``, created), checked to
    hold this config's results only.

    ``execution`` (where the units run) is saved beside the config but is not part of its hash,
    so a sweep started in one process may be resumed on a cluster and vice versa."""
    record = {"config": config.to_dict(), **({"execution": execution} if execution else {})}
    return prepare_results_folder(out, config.config_hash(), record, "validate", device, name=config.name)


def runs_path(config, out: str | os.PathLike) -> Path:
    """``runs.jsonl`` of ``config``'s experiment in results folder ``out``."""
    return state_folder(out, "validate", config.name) / "runs.jsonl"


def output_path(config, out: str | os.PathLike, filename: str) -> Path:
    """``out/<experiment>-<filename>``: every result file an experiment writes in its results folder
    is named after the experiment (``fig6-comparison.csv``, ``measures-tau.png``, ...), so several
    experiments share ``out``."""
    return Path(out) / f"{config.name}-{filename}"
