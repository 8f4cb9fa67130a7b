"""Full-batch training of (ensembles of) networks to controlled outputs.

The paper controls the normalized margin by fixing every layer's norm (Nero with
constraints) and training on the loss ``||f(X) - alpha * Y||`` (Frobenius norm over examples
and outputs), with ``Y = +-1`` for binary tasks and one-hot rows for 10 classes; the margin
``alpha`` then sets the scale of the outputs.

For an ensemble module (``batch_dims = 1``, outputs ``(k, n, c)``) the loss of each member is
computed separately and the losses are **summed**, so the gradients of different members
never mix and member ``j`` follows the same trajectory as a single network trained alone
(Nero's statistics are per (network, neuron); SGD and Adam act per entry).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from gpmargin.errors import GpmarginError
from validation.training.losses import per_network_loss
from validation.training.minnorm import Minnorm
from validation.training.nero import Nero

OPTIMIZERS = ("nero", "nero-free", "sgd", "adam", "minnorm")
#: Minnorm's settings in the harness (``optimizer="minnorm"``): classification constraints
#: ``y f(x) >= alpha`` at the experiment's margin, squared norms, Adam underneath, augmented penalty
MINNORM_DEFAULTS = dict(constraint="classification", norm="squared", optimizer="adam", multiplier_lr=0.01,
                        penalty=1.0, norm_weight=0.1)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, **kwargs) -> torch.optim.Optimizer:
    """``"nero"`` (with constraints), ``"nero-free"`` (no constraints), ``"sgd"``, ``"adam"`` or
    ``"minnorm"`` (:class:`~validation.training.minnorm.Minnorm`, :data:`MINNORM_DEFAULTS` updated by ``kwargs``)."""
    params = list(model.parameters())
    b = getattr(model, "batch_dims", 0)
    if name == "nero":
        return Nero(params, lr=lr, constraints=True, batch_dims=b, **kwargs)
    if name == "nero-free":
        return Nero(params, lr=lr, constraints=False, batch_dims=b, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **kwargs)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **kwargs)
    if name == "minnorm":
        return Minnorm(params, lr=lr, batch_dims=b, **{**MINNORM_DEFAULTS, **kwargs})
    raise GpmarginError(f"unknown optimizer {name!r}: use one of {OPTIMIZERS}")


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    ``loss_history``: ``(steps_run, k)`` per-network loss before each step (``k = 1`` for a
    single network).  ``final_loss``: ``(k,)`` loss after the last step.  ``converged``:
    whether every network met the tolerance.
    """

    model: torch.nn.Module
    loss_history: torch.Tensor
    final_loss: torch.Tensor
    steps: int
    converged: bool
    wall_s: float


def train(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, *, steps: int = 500,
          lr: float = 0.01, decay: float = 1.0, optimizer: str | torch.optim.Optimizer = "nero",
          loss: str = "norm", tol: float | None = None,
          callback: Callable[[int, torch.Tensor], None] | None = None) -> TrainResult:
    """Full-batch training of ``model`` so that ``model(x)`` approaches ``targets``.

    ``targets``: ``(n, c)`` shared by all ensemble members, or ``(k, n, c)`` per member (any
    values, not only ``alpha * Y``).  Learning rate at step ``t`` (0-based) is
    ``lr * decay**t``.  Stops after ``steps`` steps, or earlier once every network's
    relative error ``||f(X) - T||_F / ||T||_F`` is at most ``tol``.

    With a :class:`~validation.training.minnorm.Minnorm` optimiser the gradient step is on its Lagrangian
    (norms subject to the constraints set by ``targets``); ``loss`` is still what is recorded.
    """
    if steps < 0:
        raise GpmarginError(f"steps must be non-negative, got {steps}")
    if not (lr > 0 and 0 < decay <= 1):
        raise GpmarginError(f"need lr > 0 and 0 < decay <= 1, got lr={lr}, decay={decay}")
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else make_optimizer(model, optimizer, lr)
    base_lrs = [g["lr"] for g in opt.param_groups]
    targets = targets.to(device=x.device)
    t_norm = targets.square().sum(dim=(-2, -1)).sqrt().clamp_min(1e-30)
    history = []
    converged = False
    t0 = time.perf_counter()
    step = 0
    for step in range(steps + 1):
        out = model(x)
        if out.dim() == 2 and targets.dim() == 3:
            raise GpmarginError("per-member targets (k, n, c) need an ensemble model")
        losses = per_network_loss(out, targets, loss)
        if tol is not None:  # (a host sync per step, so only when asked for)
            with torch.no_grad():
                rel = per_network_loss(out, targets, "norm") / t_norm
                converged = bool(torch.all(rel <= tol))
        if step == steps or converged:
            final = losses.detach().reshape(-1).cpu()
            break
        history.append(losses.detach().reshape(-1))  # stays on the device: no sync per step
        if callback is not None:
            callback(step, losses.detach())
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * decay**step
        opt.zero_grad(set_to_none=True)
        objective = opt.lagrangian(out, targets) if isinstance(opt, Minnorm) else losses.sum()
        objective.backward()
        opt.step()
    for g, base in zip(opt.param_groups, base_lrs):
        g["lr"] = base
    hist = torch.stack(history).cpu() if history else torch.zeros(0, final.numel())
    return TrainResult(model=model, loss_history=hist, final_loss=final, steps=len(history),
                       converged=converged, wall_s=time.perf_counter() - t0)
