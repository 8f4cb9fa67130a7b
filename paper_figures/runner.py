"""The shared figure runner: output folder, resumable units, result files.

Output folder layout (several figures share ``DIR``; each keeps its own state in
``S = DIR/.state/figure-figN``, see :func:`gpmargin.io.prepare_results_folder`)::

    S/config.json     figure, scale, settings and their hash (atomic write)
    S/runs.jsonl      one line per finished unit of work (append_jsonl)
    S/.lock           held (flock) while the figure runs
    S/...             the figure's other intermediate files (``ctx.state``: checkpoints, fig6's sweep)
    DIR/figN.png      the figure
    DIR/figN.json     every number behind the plot, the claims, the config, run metadata, wall time

A unit is any expensive, deterministic piece of a figure (training one group of networks, one
GP prediction).  :meth:`Context.units` returns the stored results of the units ``S/runs.jsonl``
already holds and computes the others through :class:`gpmargin.distributed.UnitRunner` (in this
process, or in parallel on Dask workers with ``--workers``/``--scheduler``), appending each as it
finishes.  A rerun of a finished folder
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
    """What a figure's ``run`` gets: the device, the output folder, the unit cache and the runner
    (:class:`gpmargin.distributed.UnitRunner`: in this process or on Dask workers)."""

    def __init__(self, figure: str, out: Path, device, chash: str, progress: bool = False, runner=None):
        from gpmargin.distributed import UnitRunner

        self.figure, self.out, self.device, self.hash = figure, out, device, chash
        self.state = state_folder(out, "figure", figure)  # this figure's own files (resume state, checkpoints)
        self.runs = self.state / "runs.jsonl"
        self.progress = progress
        self.runner = runner if runner is not None else UnitRunner(device=device)
        self.done = {r["key"]: r for r in read_jsonl(self.runs) if r.get("config_hash") == chash}
        self.units_run: list[str] = []
        self.units_reused: list[str] = []
        self.compute_s = 0.0

    def _reuse(self, key: str) -> dict:
        self.units_reused.append(key)
        rec = self.done[key]
        self.compute_s += float(rec.get("wall_s", 0.0))
        return rec["result"]

    def _store(self, key: str, result: Any, wall: float, meta: dict | None = None) -> dict:
        result = json.loads(to_json(result, indent=None))  # the same JSON form as a reused unit
        rec = {"figure": self.figure, "config_hash": self.hash, "key": key, "wall_s": wall, "result": result}
        if meta:
            rec.update(device=meta["device"], execution=meta["execution"])
        append_jsonl(self.runs, rec)
        self.done[key] = rec
        self.units_run.append(key)
        self.compute_s += wall
        if self.progress:
            print(f"{self.figure}: {key} done in {wall:.1f} s", flush=True)
        return result

    def units(self, fns: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
        """Results of the units ``fns`` (key -> ``fn(device)``, picklable, e.g. a
        ``functools.partial`` of a module-level function): stored ones from ``runs.jsonl``, the
        others computed through the runner (in parallel on Dask workers), each appended to
        ``runs.jsonl`` as it finishes.  Returned in the order of ``fns``."""
        todo = {k: fn for k, fn in fns.items() if k not in self.done}
        if todo and self.progress:
            print(f"{self.figure}: running {', '.join(todo)} ...", flush=True)
        self.runner.run(todo, lambda key, result, meta: self._store(key, result, meta["wall_s"], meta),
                        label=self.figure)
        return {k: (self.done[k]["result"] if k in todo else self._reuse(k)) for k in fns}

    def unit(self, key: str, fn: Callable[[], dict]) -> dict:
        """The result of unit ``key`` computed *here* by ``fn()`` (for work that drives other units,
        like fig6's sweep); stored in ``runs.jsonl`` like the others."""
        if key in self.done:
            return self._reuse(key)
        if self.progress:
            print(f"{self.figure}: {key} ...", flush=True)
        t0 = time.perf_counter()
        result = fn()
        return self._store(key, result, time.perf_counter() - t0)


def prepare_output(figure: str, scale: str, cfg: dict, out: str | os.PathLike, device=None,
                   execution: dict | None = None) -> tuple[Path, str]:
    """Create ``out`` and the figure's state folder in it (``DIR/.state/figure-<figure>/`` with
    ``config.json``), or check that it holds this figure's settings (``execution`` is saved beside
    them, outside the hash)."""
    h = config_hash(figure, cfg)
    record = {"figure": figure, "scale": scale, "config": cfg, **({"execution": execution} if execution else {})}
    prepare_results_folder(out, h, record, "figure", device, name=figure)
    return Path(out), h


def run_figure(name: str, scale: str, out: str | os.PathLike, device: str = "auto", dataset: str | None = None,
               progress: bool = False, execution=None) -> dict[str, Any]:
    """Run (or resume) figure ``name`` at ``scale`` into ``out``; returns the saved JSON payload.

    ``execution`` (:class:`gpmargin.distributed.Execution`; default: in this process) says where
    the figure's units run; the results do not depend on it, and it is recorded in the metadata
    but not in the config hash (a run may be resumed elsewhere)."""
    import matplotlib

    from gpmargin.distributed import UnitRunner

    matplotlib.use("Agg")
    mod = get_figure(name)
    if scale not in SCALES:
        raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    cfg = mod.config(scale, dataset)
    with UnitRunner(execution, device) as runner:
        return _run_with(mod, scale, cfg, out, device, progress, runner)


def _run_with(mod, scale: str, cfg: dict, out, device, progress: bool, runner) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    here = runner.execution.scheduler is None
    if not here:
        runner.client(0)  # an unreachable --scheduler fails here, before anything is written
    dev = resolve_device(device) if here else device
    t0 = time.perf_counter()
    out, h = prepare_output(mod.NAME, scale, cfg, out, dev if here else None, runner.describe())
    with locked_folder(state_folder(out, "figure", mod.NAME), f"{mod.NAME} run"):
        runs = state_folder(out, "figure", mod.NAME) / "runs.jsonl"
        if repair_jsonl(runs):
            print(f"note: removed an incomplete line from {runs} left by an interrupted run")
        ctx = Context(mod.NAME, out, dev, h, progress, runner)
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
            "metadata": run_metadata(dev if here else None, execution=runner.describe()),
        }
        png = atomic_savefig(fig, out / f"{mod.NAME}.png")
        plt.close(fig)
        payload["wall_s"] = time.perf_counter() - t0
        atomic_write_json(out / f"{mod.NAME}.json", payload)
    payload["png"] = str(png)
    return payload
