"""Resumable margin sweeps: train, measure, append one JSON line per finished unit.

Output folder layout (``S = DIR/.state/validate-<experiment>``, one per experiment, so several
experiments share ``DIR``; see :func:`gpmargin.io.prepare_results_folder`)::

    S/config.json       the experiment config, its hash and run metadata (atomic write)
    S/runs.jsonl        one line per finished unit (margin x seed), appended atomically
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpmargin import measures as M
from gpmargin.errors import GpmarginError
from gpmargin.io import (
    append_jsonl,
    locked_folder,
    prepare_results_folder,
    read_jsonl,
    repair_jsonl,
    resolve_device,
    state_folder,
)
from validation.experiments import ExperimentConfig
from validation.models import effective_weights, member_seed, sweep_network
from validation.train import make_optimizer, margin_targets, train

LOSS_CHECKPOINTS = (0, 1, 10, 50, 100, 200, 300, 400, 500, 1000, 2000)
#: support vectors recorded per Minnorm-trained network: the count and the examples with the largest multipliers
SUPPORT_KEPT = 64


# ----------------------------------------------------------------------------- data
def load_task(config: ExperimentConfig):
    """The experiment's data split via ``gpmargin.data.make_task``."""
    from gpmargin.data import make_task

    return make_task(dataset=config.dataset, task=config.task, n_train=config.n_train, n_test=config.n_test,
                     seed=config.data_seed, flatten=True, carve_from=config.carve_from)


def _t(a: Any, device, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


# ----------------------------------------------------------------------------- output folder
def prepare_output(config: ExperimentConfig, out: str | os.PathLike, device: torch.device | None = None,
                   execution: dict | None = None) -> Path:
    """The experiment's state folder in ``out`` (``DIR/.state/validate-<name>/``, created), checked to
    hold this config's results only.

    ``execution`` (where the units run) is saved beside the config but is not part of its hash,
    so a sweep started in one process may be resumed on a cluster and vice versa."""
    record = {"config": config.to_dict(), **({"execution": execution} if execution else {})}
    return prepare_results_folder(out, config.config_hash(), record, "validate", device, name=config.name)


def runs_path(config: ExperimentConfig, out: str | os.PathLike) -> Path:
    """``runs.jsonl`` of ``config``'s experiment in results folder ``out``."""
    return state_folder(out, "validate", config.name) / "runs.jsonl"


def output_path(config: ExperimentConfig, out: str | os.PathLike, filename: str) -> Path:
    """``out/<experiment>-<filename>``: every result file an experiment writes in its results folder
    is named after the experiment (``fig6-comparison.csv``, ``measures-tau.png``, ...), so several
    experiments share ``out``."""
    return Path(out) / f"{config.name}-{filename}"


# ----------------------------------------------------------------------------- one unit
def _chunked_forward(model: torch.nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)], dim=1)


def ensemble_groups(members: int, k: int) -> list[list[int]]:
    """Disjoint groups ``{0..k-1}, {k..2k-1}, ...`` of member indices (``members // k`` of them)."""
    return [list(range(g * k, (g + 1) * k)) for g in range(members // k)]


def train_ensemble(config: ExperimentConfig, task, margin: float, seed: int, device: torch.device) -> dict[str, Any]:
    """Train the ``config.members`` networks of one unit; outputs come back as float64 on the CPU.

    Returns ``model``, ``optimizer``, ``init`` (weights after Nero's initial projection), ``result``
    (:class:`~validation.train.TrainResult`), ``f_train``/``f_test`` ``(k, n, c)``, ``targets``,
    ``y_train``/``y_test`` and ``seconds``.
    """
    dtype = getattr(torch, config.dtype)
    x_tr = _t(task.x_train, device, dtype)
    x_te = _t(task.x_test, device, dtype)
    y_tr = _t(task.y_train, "cpu")
    y_te = _t(task.y_test, "cpu")
    binary = y_tr.is_floating_point()
    outputs = 1 if binary else int(task.num_classes)
    targets = margin_targets(y_tr, margin, None if binary else outputs).to(device=device, dtype=dtype)
    t0 = time.perf_counter()
    model = sweep_network(config.model, config.members, x_tr.shape[1], config.depth, config.width, outputs,
                          seed=seed, dtype=dtype, device=device)
    # Nero projects the initial weights here; subclass configs may pass optimizer settings
    opt = make_optimizer(model, config.optimizer, config.lr, **config.optimizer_kwargs())
    init = [w.clone() for w in effective_weights(model)]
    res = train(model, x_tr, targets, steps=config.steps, lr=config.lr, decay=config.decay, optimizer=opt,
                loss=config.loss, tol=config.tol)
    f_tr = _chunked_forward(model, x_tr).double().cpu()  # (k, n, c)
    f_te = _chunked_forward(model, x_te).double().cpu()
    if not bool(torch.isfinite(f_tr).all() and torch.isfinite(f_te).all()):
        bad = [j for j in range(f_tr.shape[0]) if not bool(torch.isfinite(f_tr[j]).all())]
        raise GpmarginError(f"training diverged at margin {margin:g} (seed {seed}, members {bad}: non-finite "
                            f"outputs after {res.steps} steps of {config.optimizer} with lr={config.lr:g}); "
                            f"lower it with --set {config.lr_key()}=...")
    return dict(model=model, optimizer=opt, init=init, result=res, f_train=f_tr, f_test=f_te,
                targets=targets.double().cpu(), x_train=x_tr, y_train=y_tr, y_test=y_te, seconds=time.perf_counter() - t0)


def run_unit(config: ExperimentConfig, task, margin: float, seed: int, device: torch.device) -> dict[str, Any]:
    """Train one ensemble of ``config.members`` networks at ``margin`` and measure it."""
    u = train_ensemble(config, task, margin, seed, device)
    model, init, res, f_tr, f_te = u["model"], u["init"], u["result"], u["f_train"], u["f_test"]
    x_tr, y_tr, y_te, train_s = u["x_train"], u["y_train"], u["y_test"], u["seconds"]
    targets = u["targets"]
    lip = M.mlp_lipschitz(config.depth)
    per_member = []
    t_norm = float(targets.norm())
    for j in range(config.members):
        ws = [w[j].double() for w in effective_weights(model)]
        w0 = [w[j].double() for w in init]
        m = M.network_measures(ws, f_tr[j], y_tr, x_tr.double(), f_te[j], y_te, init_weights=w0, lipschitz=lip)
        m["member"] = j
        m["seed"] = member_seed(seed, j)
        m["relative_error"] = float((f_tr[j] - targets).norm()) / t_norm
        # output scale relative to the target alpha: how the trained net calibrates the margin axis
        m["train_output_rms_over_margin"] = float(f_tr[j].square().mean().sqrt()) / margin
        m["test_output_rms_over_margin"] = float(f_te[j].square().mean().sqrt()) / margin
        m["test_output_rms"] = float(f_te[j].square().mean().sqrt())
        per_member.append(m)
    ens = {}
    for k in config.ensembles:
        groups = ensemble_groups(config.members, k)
        te = [M.accuracy(f_te[g].sum(0), y_te) for g in groups]
        tr = [M.accuracy(f_tr[g].sum(0), y_tr) for g in groups]
        ens[str(k)] = {"groups": groups, "test_accuracy": te, "train_accuracy": tr,
                       "test_accuracy_mean": float(np.mean(te)), "first_k_test_accuracy": te[0]}
    if hasattr(u["optimizer"], "support"):  # Minnorm: examples whose multipliers stayed positive
        lam = u["optimizer"].multipliers.detach().double().cpu()
        for j, idx in enumerate(u["optimizer"].support()):
            order = sorted(idx, key=lambda i: -float(lam[j, i]))
            per_member[j]["support_vectors"] = {"count": len(idx), "top_indices": order[:SUPPORT_KEPT],
                                                "top_multipliers": [float(lam[j, i]) for i in order[:SUPPORT_KEPT]]}
    hist = res.loss_history
    checkpoints = {str(s): hist[s].tolist() for s in LOSS_CHECKPOINTS if s < hist.shape[0]}
    checkpoints[str(res.steps)] = res.final_loss.tolist()
    return {
        "margin": float(margin),
        "seed": int(seed),
        "member_seeds": [member_seed(seed, j) for j in range(config.members)],
        "gibbs_test_accuracy": float(np.mean([m["test_accuracy"] for m in per_member])),
        "members": per_member,
        "ensembles": ens,
        "training": {"steps": res.steps, "converged": res.converged, "final_loss": res.final_loss.tolist(),
                     "loss_at_step": checkpoints, "train_wall_s": train_s},
    }


def margin_unit(config: ExperimentConfig, task, unit: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The unit function of margin sweeps (``fig6``): :func:`run_unit` at ``unit["margin"], unit["seed"]``."""
    return run_unit(config, task, unit["margin"], unit["seed"], device)


# ----------------------------------------------------------------------------- the sweep
def sweep_units(config: ExperimentConfig) -> list[tuple[int, float, int]]:
    """All (margin index, margin, seed) units, seeds outermost so partial sweeps cover all margins."""
    return [(i, float(m), int(s)) for s in config.seeds for i, m in enumerate(config.margins)]


_TASKS: dict[tuple, Any] = {}


def _task_key(config: ExperimentConfig) -> tuple:
    return (config.dataset, config.task, config.n_train, config.n_test, config.data_seed, config.carve_from)


def cached_task(config: ExperimentConfig):
    """:func:`load_task` once per process (a worker keeps the split for all its units)."""
    key = _task_key(config)
    if key not in _TASKS:
        if len(_TASKS) >= 2:  # a long-lived worker serving many sweeps keeps the latest two splits
            _TASKS.clear()
        _TASKS[key] = load_task(config)
    return _TASKS[key]


def sweep_unit(config: ExperimentConfig, unit: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """One unit of the sweep where it runs (in this process or on a worker): the experiment's
    ``config.unit_function()`` on the cached data split."""
    return config.unit_function()(config, cached_task(config), unit, device)


def _check_memory(config) -> None:
    """Refuse, before anything is written, a unit whose networks cannot fit in this machine's RAM."""
    from gpmargin.io import physical_memory

    estimate = getattr(config, "memory_estimate", None)
    need, ram = (estimate() if estimate else 0), physical_memory()
    if ram and need > ram:
        raise GpmarginError(f"width={config.width} (depth {config.depth}, {config.members} members, {config.dtype}) "
                            f"needs about {need / 2**30:.3g} GiB per unit for the networks alone, more than this "
                            f"machine's {ram / 2**30:.3g} GiB; lower width or members with --set")


def run_sweep(config: ExperimentConfig, out: str | os.PathLike, device: str | torch.device = "auto",
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
            _check_memory(config)
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
                    _TASKS[_task_key(config)] = task
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
                    print(f"budget: stopped after {time.perf_counter() - t_start:.0f} s of {budget:g} s with "
                          f"{len(units) - left} of {len(units)} unit(s) done; {left} remain (about "
                          f"{clock.estimate():.0f} s each); rerun the same command to resume")
    finally:
        if own:
            runner.close()
    return [r for r in read_jsonl(runs) if r.get("config_hash") == h]


def records_complete(config: ExperimentConfig, records: list[dict]) -> bool:
    have = {config.unit_key(r) for r in records}
    return all(config.unit_key(u) in have for u in config.units())

