"""Resumable sweeps of any experiment: run its units, append one JSON line per finished unit.

Output folder layout (``S = DIR/.state/validate-<experiment>``, one per experiment, so several
experiments share ``DIR``; see :func:`gpmargin.io.prepare_results_folder`)::

    S/config.json       the experiment config, its hash and run metadata (atomic write)
    S/runs.jsonl        one line per finished unit, appended atomically
    S/.lock             held (flock) while a sweep runs

The units run through :class:`gpmargin.distributed.UnitRunner`: in this process (``workers=0``)
or on Dask workers; either way each record is appended here, by the client, as its unit finishes,
and the records are the same bit for bit (every unit runs with the same torch thread count).

A rerun with the same DIR and config skips finished units, so a sweep killed at any moment
(SIGKILL included) resumes to the same complete set.  A torn last line left by a kill is cut
off before anything is appended (so it can never be glued to the next record); a folder
holding another config's results is refused.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import torch

from gpmargin.errors import GpmarginError
from gpmargin.io import append_jsonl, locked_folder, read_jsonl, repair_jsonl, resolve_device
from validation.harness.experiment import Experiment
from validation.harness.folders import prepare_output

_TASKS: dict[tuple, Any] = {}


def cached_task(config: Experiment):
    """:meth:`~validation.harness.experiment.Experiment.load_task` once per process (a worker keeps the split for all its units)."""
    key = config.task_key()
    if key not in _TASKS:
        if len(_TASKS) >= 2:  # a long-lived worker serving many sweeps keeps the latest two splits
            _TASKS.clear()
        _TASKS[key] = config.load_task()
    return _TASKS[key]


def sweep_unit(config: Experiment, unit: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """One unit of the sweep where it runs (in this process or on a worker): the experiment's
    ``run_unit`` on the cached data split of that unit (:meth:`Experiment.unit_data`)."""
    return config.run_unit(cached_task(config.unit_data(unit)), unit, device)


def check_memory(config) -> None:
    """Refuse, before anything is written, a unit whose networks cannot fit in this machine's RAM."""
    from gpmargin.io import physical_memory

    need, ram = config.memory_estimate(), physical_memory()
    if ram and need > ram:
        what, remedy = config.memory_note()
        raise GpmarginError(f"{what} needs about {need / 2**30:.3g} GiB per unit for the networks alone, more than "
                            f"this machine's {ram / 2**30:.3g} GiB; {remedy}")


def run_sweep(config: Experiment, out: str | os.PathLike, device: str | torch.device = "auto",
              progress: bool = True, task=None, execution=None, runner=None,
              budget: float | None = None) -> list[dict]:
    """Run (or resume) the sweep of ``config`` into ``out``; returns all records of this config.

    ``budget``: seconds from now after which no unit is started that would not finish in time
    (by the median wall time of the finished units, earlier runs' included): the sweep then stops
    cleanly, keeps every finished unit and says how many remain; rerunning resumes.  A budget
    shorter than one unit runs nothing.

    ``execution`` (:class:`gpmargin.distributed.Execution`, default in this process) or an open
    ``runner`` (:class:`gpmargin.distributed.UnitRunner`, shared with other work) says where the
    units run; the records do not depend on it.  ``task``: ``load_task(config)`` if the caller has
    it already (saves loading it again in this process).  Each finished unit is appended to
    ``runs.jsonl`` here, in the client, as it arrives.
    """
    from gpmargin.distributed import Budget, UnitRunner

    own = runner is None
    if own:
        runner = UnitRunner(execution, device)
    try:
        here = runner.execution.scheduler is None and runner.cluster is None
        if runner.execution.scheduler is not None:
            runner.client(0)  # an unreachable --scheduler fails here, before anything is written
        dev = (device if isinstance(device, torch.device) else resolve_device(device)) if here else None
        if here:
            check_memory(config)
        out = prepare_output(config, out, dev, runner.describe())
        runs = out / "runs.jsonl"
        h = config.config_hash()
        with locked_folder(out, "sweep"):
            dropped = repair_jsonl(runs)
            if dropped:
                print(f"note: removed {dropped} incomplete line(s) from {runs} left by an interrupted run")
            previous = [r for r in read_jsonl(runs) if r.get("config_hash") == h]
            done = {config.unit_key(r) for r in previous}
            units = config.units()
            todo = [u for u in units if config.unit_key(u) not in done]
            clock = None if budget is None else Budget(budget, [r.get("wall_s") for r in previous])
            if todo and clock is not None and clock.estimate() is not None and clock.estimate() > budget:
                print(f"budget: {budget:g} s is shorter than one unit (about {clock.estimate():.0f} s from "
                      f"{len(clock.walls)} finished); nothing run, {len(todo)} of {len(units)} unit(s) remain")
                todo = []
            if todo:
                if task is not None:
                    _TASKS[config.task_key()] = task
                from tqdm import tqdm

                total = len(units)
                bar = tqdm(total=total, initial=total - len(todo), disable=not progress,
                           desc=f"{config.name}/{config.scale}", unit="unit")
                index = {",".join(map(str, config.unit_key(u))): u for u in todo}

                def finished(key: str, rec: dict, meta: dict) -> None:
                    unit = index[key]
                    rec = {"config_hash": h, "experiment": config.name, "scale": config.scale, **unit,
                           **rec, "device": meta["device"], "versions": meta["versions"],
                           "device_info": meta["device_info"], "execution": meta["execution"],
                           "wall_s": meta["wall_s"]}
                    append_jsonl(runs, rec)
                    post = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in unit.items() if k != "margin_index"}
                    if rec.get("gibbs_test_accuracy") is not None:
                        post["gibbs"] = f"{rec['gibbs_test_accuracy']:.3f}"
                    bar.set_postfix(**post)
                    bar.update(1)

                fns = {key: functools.partial(sweep_unit, config, unit) for key, unit in index.items()}
                t_start = time.perf_counter()
                try:
                    left = runner.run(fns, finished, label=f"{config.name}-{config.scale}", budget=clock)
                finally:
                    bar.close()
                if left:
                    each = "" if clock.estimate() is None else f" (about {clock.estimate():.0f} s each)"
                    print(f"budget: stopped after {time.perf_counter() - t_start:.0f} s of {budget:g} s with "
                          f"{len(units) - left} of {len(units)} unit(s) done; {left} remain{each}; rerun the same "
                          "command to resume")
    finally:
        if own:
            runner.close()
    return [r for r in read_jsonl(runs) if r.get("config_hash") == h]


def records_complete(config: Experiment, records: list[dict]) -> bool:
    have = {config.unit_key(r) for r in records}
    return all(config.unit_key(u) in have for u in config.units())

