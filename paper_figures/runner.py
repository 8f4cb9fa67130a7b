"""The shared figure runner: output folder, resumable units, result files.

Output folder layout (several figures share ``DIR``; each keeps its own state in
``S = DIR/.state/figure-figN``, see :func:`gpmargin.io.prepare_results_folder`)::

    S/config.json     figure, scale, settings and their hash (atomic write)
    S/runs.jsonl      one line per finished unit of work (append_jsonl)
    S/.lock           held (flock) while the figure runs
    DIR/figN.png      the figure
    DIR/figN.json     every number behind the plot, the claims, the config, run metadata, wall time

A unit is any expensive, deterministic piece of a figure (training one group of networks, one
GP prediction).  :meth:`Context.unit` returns the stored result when ``S/runs.jsonl`` already
holds the unit's key, and otherwise computes it and appends it.  A rerun of a finished folder
therefore trains nothing; a run killed at any moment resumes from the last finished unit.  A
folder holding another scale or setting of the same figure is refused, naming the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from gpmargin.errors import GpmarginError
from gpmargin.io import (
    append_jsonl,
    atomic_savefig,
    atomic_write_json,
    locked_folder,
    prepare_results_folder,
    read_jsonl,
    repair_jsonl,
    resolve_device,
    run_metadata,
    state_folder,
    to_json,
)
from paper_figures import SCALES, get_figure


def config_hash(figure: str, cfg: dict) -> str:
    """SHA-256 (16 hex digits) of the canonical JSON of the figure name and its settings."""
    text = json.dumps({"figure": figure, "config": json.loads(to_json(cfg))}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Context:
    """What a figure's ``run`` gets: the device, the output folder and the unit cache."""

    def __init__(self, figure: str, out: Path, device, chash: str, progress: bool = False):
        self.figure, self.out, self.device, self.hash = figure, out, device, chash
        self.runs = state_folder(out, "figure", figure) / "runs.jsonl"
        self.progress = progress
        self.done = {r["key"]: r for r in read_jsonl(self.runs) if r.get("config_hash") == chash}
        self.units_run: list[str] = []
        self.units_reused: list[str] = []
        self.compute_s = 0.0

    def unit(self, key: str, fn: Callable[[], dict]) -> dict:
        """The result of unit ``key``: stored in ``runs.jsonl`` if finished before, else ``fn()``."""
        if key in self.done:
            self.units_reused.append(key)
            rec = self.done[key]
            self.compute_s += float(rec.get("wall_s", 0.0))
            return rec["result"]
        if self.progress:
            print(f"{self.figure}: {key} ...", flush=True)
        t0 = time.perf_counter()
        result = json.loads(to_json(fn(), indent=None))  # the same JSON form as a reused unit
        wall = time.perf_counter() - t0
        rec = {"figure": self.figure, "config_hash": self.hash, "key": key, "wall_s": wall, "result": result}
        append_jsonl(self.runs, rec)
        self.done[key] = rec
        self.units_run.append(key)
        self.compute_s += wall
        if self.progress:
            print(f"{self.figure}: {key} done in {wall:.1f} s", flush=True)
        return result


def prepare_output(figure: str, scale: str, cfg: dict, out: str | os.PathLike, device=None) -> tuple[Path, str]:
    """Create ``out`` and the figure's state folder in it, or check that it holds this figure's settings."""
    h = config_hash(figure, cfg)
    record = {"figure": figure, "scale": scale, "config": cfg}
    prepare_results_folder(out, h, record, "figure", device, name=figure)
    return Path(out), h


def run_figure(name: str, scale: str, out: str | os.PathLike, device: str = "auto", dataset: str | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Run (or resume) figure ``name`` at ``scale`` into ``out``; returns the saved JSON payload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mod = get_figure(name)
    if scale not in SCALES:
        raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    cfg = mod.config(scale, dataset)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    out, h = prepare_output(mod.NAME, scale, cfg, out, dev)
    with locked_folder(state_folder(out, "figure", mod.NAME), f"{mod.NAME} run"):
        runs = state_folder(out, "figure", mod.NAME) / "runs.jsonl"
        if repair_jsonl(runs):
            print(f"note: removed an incomplete line from {runs} left by an interrupted run")
        ctx = Context(mod.NAME, out, dev, h, progress)
        with warnings.catch_warnings():
            # data substitutions (carved splits) are recorded in the JSON, not repeated on stderr per task
            from gpmargin.data import DataSubstitutionWarning

            warnings.simplefilter("ignore", DataSubstitutionWarning)
            results = mod.run(cfg, ctx)
        claims = mod.claims(cfg, results)
        fig = mod.plot(cfg, results)
        payload = {
            "figure": mod.NAME,
            "title": mod.TITLE,
            "claim": mod.CLAIM,
            "scale": scale,
            "config": cfg,
            "config_hash": h,
            "claims": claims,
            "results": results,
            "units": {"run": ctx.units_run, "reused": ctx.units_reused},
            "compute_s": ctx.compute_s,
            "wall_s": time.perf_counter() - t0,
            "metadata": run_metadata(dev),
        }
        png = atomic_savefig(fig, out / f"{mod.NAME}.png")
        plt.close(fig)
        payload["wall_s"] = time.perf_counter() - t0
        atomic_write_json(out / f"{mod.NAME}.json", payload)
    payload["png"] = str(png)
    return payload
