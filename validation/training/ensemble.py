"""One unit of a margin sweep: an ensemble trained to ``alpha * y`` together, then measured.

:func:`train_ensemble` trains the ``members`` networks of one (margin, seed) as one batched
module (:mod:`validation.training.models`; member ``j`` seeded ``1000 * seed + j``);
:func:`margin_record` measures every member (:func:`gpmargin.measures.network_measures`) and the
ensembles of each size on disjoint groups of members (:func:`ensemble_groups`).  ``config`` is a
:class:`~validation.harness.margin_sweep.MarginSweep`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from gpmargin import measures as M
from gpmargin.errors import GpmarginError
from validation.training.fullbatch import make_optimizer, train
from validation.training.losses import margin_targets
from validation.training.models import as_tensor, effective_weights, forward_chunked, member_seed, sweep_network

LOSS_CHECKPOINTS = (0, 1, 10, 50, 100, 200, 300, 400, 500, 1000, 2000)
#: support vectors recorded per Minnorm-trained network: the count and the examples with the largest multipliers
SUPPORT_KEPT = 64


def ensemble_groups(members: int, k: int) -> list[list[int]]:
    """Disjoint groups ``{0..k-1}, {k..2k-1}, ...`` of member indices (``members // k`` of them)."""
    return [list(range(g * k, (g + 1) * k)) for g in range(members // k)]


def train_ensemble(config, task, margin: float, seed: int, device: torch.device) -> dict[str, Any]:
    """Train the ``config.members`` networks of one unit; outputs come back as float64 on the CPU.

    Returns ``model``, ``optimizer``, ``init`` (weights after Nero's initial projection), ``result``
    (:class:`~validation.training.fullbatch.TrainResult`), ``f_train``/``f_test`` ``(k, n, c)``, ``targets``,
    ``y_train``/``y_test`` and ``seconds``.
    """
    dtype = getattr(torch, config.dtype)
    x_tr = as_tensor(task.x_train, device, dtype)
    x_te = as_tensor(task.x_test, device, dtype)
    y_tr = as_tensor(task.y_train, "cpu")
    y_te = as_tensor(task.y_test, "cpu")
    binary = y_tr.is_floating_point()
    outputs = 1 if binary else int(task.num_classes)
    targets = margin_targets(y_tr, margin, None if binary else outputs).to(device=device, dtype=dtype)
    t0 = time.perf_counter()
    if getattr(config, "arch", "mlp") == "mlp":
        model = sweep_network(config.model, config.members, x_tr.shape[1], config.depth, config.width, outputs,
                              seed=seed, dtype=dtype, device=device)
    else:  # the finite networks of the architecture's kernel
        model = config.kernel().network(config.width, in_shape=tuple(x_tr.shape[1:]), members=config.members,
                                        parameterization="ntk" if config.model == "ntk-mlp" else "standard",
                                        seed=seed, outputs=outputs, dtype=dtype, device=device)
    # Nero projects the initial weights here; subclass configs may pass optimizer settings
    opt = make_optimizer(model, config.optimizer, config.lr, **config.optimizer_kwargs())
    init = [w.clone() for w in effective_weights(model)]
    res = train(model, x_tr, targets, steps=config.steps, lr=config.lr, decay=config.decay, optimizer=opt,
                loss=config.loss, tol=config.tol)
    f_tr = forward_chunked(model, x_tr, 2048).double().cpu()  # (k, n, c)
    f_te = forward_chunked(model, x_te, 2048).double().cpu()
    if not bool(torch.isfinite(f_tr).all() and torch.isfinite(f_te).all()):
        bad = [j for j in range(f_tr.shape[0]) if not bool(torch.isfinite(f_tr[j]).all())]
        raise GpmarginError(f"training diverged at margin {margin:g} (seed {seed}, members {bad}: non-finite "
                            f"outputs after {res.steps} steps of {config.optimizer} with lr={config.lr:g}); "
                            f"lower it with --set {config.lr_key()}=...")
    return dict(model=model, optimizer=opt, init=init, result=res, f_train=f_tr, f_test=f_te,
                targets=targets.double().cpu(), x_train=x_tr, y_train=y_tr, y_test=y_te, seconds=time.perf_counter() - t0)


def margin_record(config, task, margin: float, seed: int, device: torch.device) -> dict[str, Any]:
    """Train one ensemble of ``config.members`` networks at ``margin`` and measure it."""
    u = train_ensemble(config, task, margin, seed, device)
    model, init, res, f_tr, f_te = u["model"], u["init"], u["result"], u["f_train"], u["f_test"]
    x_tr, y_tr, y_te, train_s = u["x_train"], u["y_train"], u["y_test"], u["seconds"]
    targets = u["targets"]
    mlp = getattr(config, "arch", "mlp") == "mlp"
    lip = M.mlp_lipschitz(config.depth)
    per_member = []
    t_norm = float(targets.norm())
    for j in range(config.members):
        if mlp:  # norm-based measures are those of a chain of weight matrices
            ws = [w[j].double() for w in effective_weights(model)]
            w0 = [w[j].double() for w in init]
            m = M.network_measures(ws, f_tr[j], y_tr, x_tr.double(), f_te[j], y_te, init_weights=w0, lipschitz=lip)
        else:
            m = {"train_accuracy": M.accuracy(f_tr[j], y_tr), "test_accuracy": M.accuracy(f_te[j], y_te)}
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
        # how far each member is from a KKT point of its min-norm problem (the report judges them)
        kkt = u["optimizer"].kkt_residuals(model(x_tr), targets.to(x_tr))
        for j in range(config.members):
            per_member[j]["kkt_residuals"] = {name: float(v.reshape(-1)[j]) for name, v in kkt.items()}
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
