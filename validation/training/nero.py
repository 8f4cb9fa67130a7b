"""Nero: per-neuron normalised updates with optional per-neuron constraints.

Liu, Bernstein, Meister & Yue (2021), *Learning by Turning: Neural Architecture Aware
Optimisation*.  Written from the paper's description:

* A **neuron** is one output row of a weight tensor: for a matrix ``(out, in)`` row ``i``;
  for a conv kernel ``(out, in, kh, kw)`` the slice ``[i]``.  A 1-D parameter (a bias, a
  gain) is treated as a *single* neuron and is never centred.
* For every neuron the optimiser keeps a running average of the squared gradient norm,
  ``v <- beta * v + (1 - beta) * ||g_neuron||^2`` (``beta = 0.999``), bias-corrected by
  ``1 - beta^t``.
* Update: ``w <- w - lr * scale * g / sqrt(v_hat)`` where ``scale`` is the layer's mean
  neuron norm at initialisation (after the constraint is applied, so 1 for constrained
  layers; 0.01 if the layer starts at zero).  A neuron whose running average is still 0
  (it never had a gradient) does not move.
* With ``constraints=True`` every neuron of every parameter with more than one dimension
  (output layer included) is re-centred to mean zero and rescaled to unit norm, once when
  the optimiser is built and again after every step.

**Batched ensembles.**  A parameter group with ``batch_dims=1`` holds stacked parameters of
independent networks, shape ``(k, out, in)`` (or ``(k, out, in, kh, kw)``, or ``(k, n)`` for
per-network 1-D parameters): the leading dimension indexes networks, and all statistics
(running averages, the init scale, centring and normalisation) are per (network, row).
Member ``j`` of such a group is updated exactly as a single network with those weights
would be by this optimiser with ``batch_dims=0``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch.optim import Optimizer

from gpmargin.errors import GpmarginError


def _neuron_view(p: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """View ``p`` as (batch..., neurons, fan) where a 1-D (per network) param is one neuron."""
    lead = p.shape[:batch_dims]
    rest = p.shape[batch_dims:]
    if len(rest) > 1:
        return p.reshape(*lead, rest[0], -1)
    return p.reshape(*lead, 1, -1)


def neuron_norm(p: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """Per-neuron 2-norms, shape ``(batch..., neurons, 1)``."""
    return _neuron_view(p, batch_dims).norm(dim=-1, keepdim=True)


def _is_matrix_like(p: torch.Tensor, batch_dims: int) -> bool:
    return p.dim() - batch_dims > 1


@torch.no_grad()
def project_(p: torch.Tensor, batch_dims: int = 0, eps: float = 1e-12) -> None:
    """In place: centre every neuron (row) to mean zero and scale it to unit norm.

    Parameters with a single dimension per network are left alone (Nero does not constrain
    biases).
    """
    if not _is_matrix_like(p, batch_dims):
        return
    v = _neuron_view(p, batch_dims)
    if not v.is_contiguous() or v.data_ptr() != p.data_ptr():
        v = v.contiguous()
    mean = v.mean(dim=-1, keepdim=True)
    v.sub_(mean)
    v.mul_(v.norm(dim=-1, keepdim=True).clamp_min(eps).reciprocal())
    if v.data_ptr() != p.data_ptr():
        p.copy_(v.reshape(p.shape))


class Nero(Optimizer):
    """Nero optimiser (see module docstring).

    Parameters
    ----------
    params:
        parameters or parameter groups; a group may set ``batch_dims`` (0 or 1) and
        ``constraints`` to override the defaults.
    lr:
        step size; the update of each neuron has relative size about ``lr``.
    beta:
        decay of the running average of squared per-neuron gradient norms.
    constraints:
        centre and normalise the rows of every matrix-like parameter.
    batch_dims:
        number of leading dimensions that index independent networks (0 or 1).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        beta: float = 0.999,
        constraints: bool = True,
        batch_dims: int = 0,
    ) -> None:
        if not lr > 0:
            raise GpmarginError(f"Nero learning rate must be positive, got {lr}")
        if not 0.0 <= beta < 1.0:
            raise GpmarginError(f"Nero beta must lie in [0, 1), got {beta}")
        if batch_dims not in (0, 1):
            raise GpmarginError(f"Nero batch_dims must be 0 or 1, got {batch_dims}")
        defaults = dict(lr=lr, beta=beta, constraints=constraints, batch_dims=batch_dims)
        super().__init__(params, defaults)
        for group in self.param_groups:
            b = group["batch_dims"]
            for p in group["params"]:
                if group["constraints"]:
                    project_(p.data, b)
                state = self.state[p]
                state["step"] = 0
                state["exp_avg_sq"] = torch.zeros_like(neuron_norm(p.data, b))
                # mean neuron norm per network, shape (batch..., 1, 1)
                scale = neuron_norm(p.data, b).mean(dim=(-2, -1), keepdim=True)
                state["scale"] = torch.where(scale > 0, scale, torch.full_like(scale, 0.01))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b, lr, beta = group["batch_dims"], group["lr"], group["beta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                bias_correction = 1.0 - beta ** state["step"]
                g = p.grad
                gn2 = neuron_norm(g, b).square()
                avg = state["exp_avg_sq"]
                avg.mul_(beta).add_(gn2, alpha=1.0 - beta)
                denom = (avg / bias_correction).sqrt()
                # per-neuron factor scale / sqrt(v_hat); a neuron with v_hat = 0 has g = 0 and stays put
                factor = torch.where(denom > 0, state["scale"] / denom.clamp_min(torch.finfo(g.dtype).tiny),
                                     torch.zeros_like(denom))
                if p.is_contiguous() and g.is_contiguous():
                    _neuron_view(p, b).addcmul_(_neuron_view(g, b), factor, value=-lr)
                else:
                    p.add_((_neuron_view(g, b) * factor).reshape(p.shape), alpha=-lr)
                if group["constraints"]:
                    project_(p, b)
        return loss
