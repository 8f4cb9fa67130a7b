"""Resumable margin sweeps: train, measure, append one JSON line per finished unit.

Output folder layout (``S = DIR/.state/validate-<experiment>``, one per experiment, so several
experiments share ``DIR``; see :func:`gpmargin.io.prepare_results_folder`)::

    S/config.json       the experiment config, its hash and run metadata (atomic write)
    S/runs.jsonl        one line per finished unit (margin x seed), appended atomically
    S/.lock             held (flock) while a sweep runs

A rerun with the same DIR and config skips finished units, so a sweep killed at any moment
(SIGKILL included) resumes to the same complete set.  A torn last line left by a kill is cut
off before anything is appended (so it can never be glued to the next record); a folder
holding another config's results is refused.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpmargin import measures as M
from gpmargin.io import (
    append_jsonl,
    locked_folder,
    prepare_results_folder,
    read_jsonl,
    repair_jsonl,
    resolve_device,
    run_metadata,
    state_folder,
)
from validation.experiments import ExperimentConfig
from validation.models import EnsembleMLP, member_seed
from validation.train import make_optimizer, margin_targets, train

LOSS_CHECKPOINTS = (0, 1, 10, 50, 100, 200, 300, 400, 500, 1000, 2000)


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
def prepare_output(config: ExperimentConfig, out: str | os.PathLike, device: torch.device | None = None) -> Path:
    """The experiment's state folder in ``out`` (created), checked to hold this config's results only."""
    return prepare_results_folder(out, config.config_hash(), {"config": config.to_dict()}, "validate", device,
                                  name=config.name)


def runs_path(config: ExperimentConfig, out: str | os.PathLike) -> Path:
    """``runs.jsonl`` of ``config``'s experiment in results folder ``out``."""
    return state_folder(out, "validate", config.name) / "runs.jsonl"


def unit_key(margin: float, seed: int) -> tuple[str, int]:
    return (repr(float(margin)), int(seed))


# ----------------------------------------------------------------------------- one unit
def _chunked_forward(model: torch.nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)], dim=1)


def ensemble_groups(members: int, k: int) -> list[list[int]]:
    """Disjoint groups ``{0..k-1}, {k..2k-1}, ...`` of member indices (``members // k`` of them)."""
    return [list(range(g * k, (g + 1) * k)) for g in range(members // k)]


def train_ensemble(config: ExperimentConfig, task, margin: float, seed: int, device: torch.device) -> dict[str, Any]:
    """Train the ``config.members`` networks of one unit; outputs come back as float64 on the CPU.

    Returns ``model``, ``init`` (weights after Nero's initial projection), ``result``
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
    model = EnsembleMLP(config.members, x_tr.shape[1], config.depth, config.width, outputs, seed=seed,
                        dtype=dtype).to(device)
    opt = make_optimizer(model, config.optimizer, config.lr)  # Nero projects the initial weights here
    init = [w.detach().clone() for w in model.weights]
    res = train(model, x_tr, targets, steps=config.steps, lr=config.lr, decay=config.decay, optimizer=opt,
                loss=config.loss, tol=config.tol)
    f_tr = _chunked_forward(model, x_tr).double().cpu()  # (k, n, c)
    f_te = _chunked_forward(model, x_te).double().cpu()
    return dict(model=model, init=init, result=res, f_train=f_tr, f_test=f_te, targets=targets.double().cpu(),
                x_train=x_tr, y_train=y_tr, y_test=y_te, seconds=time.perf_counter() - t0)


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
        ws = [w.detach()[j].double() for w in model.weights]
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


# ----------------------------------------------------------------------------- the sweep
def sweep_units(config: ExperimentConfig) -> list[tuple[int, float, int]]:
    """All (margin index, margin, seed) units, seeds outermost so partial sweeps cover all margins."""
    return [(i, float(m), int(s)) for s in config.seeds for i, m in enumerate(config.margins)]


def run_sweep(config: ExperimentConfig, out: str | os.PathLike, device: str | torch.device = "auto",
              progress: bool = True, task=None) -> list[dict]:
    """Run (or resume) the sweep of ``config`` into ``out``; returns all records of this config."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    out = prepare_output(config, out, dev)
    runs = out / "runs.jsonl"
    h = config.config_hash()
    with locked_folder(out, "sweep"):
        dropped = repair_jsonl(runs)
        if dropped:
            print(f"note: removed {dropped} incomplete line(s) from {runs} left by an interrupted run")
        done = {unit_key(r["margin"], r["seed"]) for r in read_jsonl(runs)}
        todo = [u for u in sweep_units(config) if unit_key(u[1], u[2]) not in done]
        if todo:
            if task is None:
                task = load_task(config)
            from tqdm import tqdm

            total = len(sweep_units(config))
            bar = tqdm(total=total, initial=total - len(todo), disable=not progress,
                       desc=f"{config.name}/{config.scale}", unit="unit")
            meta = run_metadata(dev)
            for i, margin, seed in todo:
                t0 = time.perf_counter()
                rec = run_unit(config, task, margin, seed, dev)
                rec = {"config_hash": h, "experiment": config.name, "scale": config.scale, "margin_index": i,
                       **rec, "device": str(dev), "versions": meta["versions"], "device_info": meta["device"],
                       "wall_s": time.perf_counter() - t0}
                append_jsonl(runs, rec)
                bar.set_postfix(margin=f"{margin:.3g}", seed=seed, gibbs=f"{rec['gibbs_test_accuracy']:.3f}")
                bar.update(1)
            bar.close()
    return [r for r in read_jsonl(runs) if r.get("config_hash") == h]


def records_complete(config: ExperimentConfig, records: list[dict]) -> bool:
    have = {unit_key(r["margin"], r["seed"]) for r in records}
    return all(unit_key(m, s) in have for _, m, s in sweep_units(config))


def isfinite(v) -> bool:
    return v is not None and math.isfinite(v)
