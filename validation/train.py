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
import math
import time
from typing import Callable

import torch

from gpmargin.errors import GpmarginError
from validation.nero import Nero

OPTIMIZERS = ("nero", "nero-free", "sgd", "adam")
LOSSES = ("norm", "mse", "half_mse")


def margin_targets(y: torch.Tensor, alpha: float, num_classes: int | None = None) -> torch.Tensor:
    """``alpha * Y``: ``(n, 1)`` of ``+-alpha`` for binary labels, ``(n, C)`` one-hot otherwise."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise GpmarginError(f"margin must be a positive finite number, got {alpha!r}")
    if y.is_floating_point():
        vals = torch.unique(y)
        if not bool(torch.all((vals == 1) | (vals == -1))):
            raise GpmarginError("binary labels must be +-1 floats; pass int64 class indices for multi-class")
        return (alpha * y).reshape(-1, 1)
    c = int(num_classes if num_classes is not None else int(y.max()) + 1)
    return alpha * torch.nn.functional.one_hot(y.long(), c).to(torch.get_default_dtype())


def per_network_loss(out: torch.Tensor, targets: torch.Tensor, loss: str = "norm") -> torch.Tensor:
    """Loss of every network: ``(k,)`` for outputs ``(k, n, c)``, a 0-d tensor for ``(n, c)``.

    ``"norm"``: ``||f(X) - T||_F`` (the paper's margin-control loss);
    ``"mse"``: ``mean((f(X) - T)^2)``;
    ``"half_mse"``: ``mean((f(X) - T)^2) / 2`` (neural-tangents' loss: gradient descent on it with
    step ``lr`` is NT's gradient flow with ``learning_rate = lr``, one step = one unit of time).
    """
    diff = out - targets.to(out.dtype)
    dims = (-2, -1)
    if loss == "norm":
        return diff.square().sum(dim=dims).sqrt()
    if loss == "mse":
        return diff.square().mean(dim=dims)
    if loss == "half_mse":
        return 0.5 * diff.square().mean(dim=dims)
    raise GpmarginError(f"unknown loss {loss!r}: use one of {LOSSES}")


def make_optimizer(model: torch.nn.Module, name: str, lr: float, **kwargs) -> torch.optim.Optimizer:
    """``"nero"`` (with constraints), ``"nero-free"`` (no constraints), ``"sgd"`` or ``"adam"``."""
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
        losses.sum().backward()
        opt.step()
    for g, base in zip(opt.param_groups, base_lrs):
        g["lr"] = base
    hist = torch.stack(history).cpu() if history else torch.zeros(0, final.numel())
    return TrainResult(model=model, loss_history=hist, final_loss=final, steps=len(history),
                       converged=converged, wall_s=time.perf_counter() - t0)
