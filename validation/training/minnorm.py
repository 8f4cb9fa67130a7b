"""Minnorm training: minimise the weight norms subject to fitting every training example.

Bansal, Advani, Cox & Saxe (2018), *Minnorm training: an algorithm for training
over-parameterized deep neural networks*.  Written from the paper's description.  The
Lagrangian

    L(W, lambda) = sum_l n(W_l) + sum_i lambda_i c_i(W),      n(W) = ||W||_F  or  ||W||_F^2

is minimised over the weights by any torch optimiser (``SGD`` by default) and maximised over
the multipliers by projected gradient ascent, ``lambda_i <- P(lambda_i + eta_lambda c_i(W))``,
so each multiplier integrates its example's constraint violation over training.  Constraints,
from targets ``T = alpha Y`` (:func:`validation.training.losses.margin_targets`):

``regression``      ``c_i = f(x_i) - T_i`` (one per output), ``lambda`` free (``P`` = identity);
``classification``  ``c_i = alpha_i - m_i(f)`` with the margin ``m_i = y_i f(x_i)`` (binary,
                    ``y_i = sign T_i``, ``alpha_i = |T_i|``) or ``f_y - max_{c != y} f_c``
                    (``y = argmax T_i``, ``alpha_i = max T_i``); ``lambda_i >= 0`` (``P`` clamps at 0).

Examples whose multipliers stay positive at convergence are the *support vectors*
(:meth:`Minnorm.support`).  For a linear model with squared norms the problem is the
hard-margin SVM (``min ||w||^2 / 2`` s.t. ``y_i w.x_i >= alpha``): the iteration is the
Arrow-Hurwicz saddle-point method on it.

Usage (one step)::

    opt = Minnorm(model.parameters(), n_constraints=n, lr=1e-2, multiplier_lr=1e-2)
    opt.zero_grad(); opt.lagrangian(model(x[idx]), targets[idx], index=idx).backward(); opt.step()

A parameter group may set ``penalize=False`` (e.g. a bias, left out of the norm term, as an
SVM's intercept).  With ``batch_dims=1`` (stacked ensembles, outputs ``(k, n, c)``) every
member has its own norms and multipliers and members never mix.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim import Optimizer

from gpmargin.errors import GpmarginError

CONSTRAINTS = ("classification", "regression")
NORMS = ("plain", "squared")


def _positive(name: str, v) -> float:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise GpmarginError(f"Minnorm {name} must be a positive finite number, got {v!r}")
    return float(v)


def constraint_values(outputs: torch.Tensor, targets: torch.Tensor, constraint: str) -> torch.Tensor:
    """``c_i(W)`` of the module docstring: ``(..., n, c)`` for regression, ``(..., n)`` for
    classification (violations are positive, satisfied margin constraints negative)."""
    t = targets.to(outputs.dtype)
    if constraint == "regression":
        return outputs - t
    if t.shape[-1] == 1:  # binary: targets are +-alpha
        alpha = t[..., 0].abs()
        m = outputs[..., 0] * torch.sign(t[..., 0])
    else:
        alpha, y = t.max(dim=-1)
        y = y.expand(outputs.shape[:-1])
        fy = outputs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        other = outputs.scatter(-1, y.unsqueeze(-1), -math.inf)
        m = fy - other.max(dim=-1).values
    if bool((alpha <= 0).any()):
        raise GpmarginError("Minnorm classification needs positive margins alpha (targets alpha*Y with alpha > 0)")
    return alpha - m


class Minnorm(Optimizer):
    """Minnorm training (module docstring) as a ``torch.optim.Optimizer``.

    Parameters
    ----------
    params: parameters or groups (a group may set ``penalize=False``).
    n_constraints: number of training examples (the multipliers are indexed by example); ``None``:
        the number of examples of the first :meth:`lagrangian` call (full-batch training).
    constraint: ``"classification"`` (``y f >= alpha``, ``lambda >= 0``) or ``"regression"`` (``f = T``).
    lr: step size of the weights (passed to the inner optimiser).
    multiplier_lr: step size ``eta_lambda`` of the multipliers' ascent.
    norm: ``"plain"`` (``sum ||W_l||_F``) or ``"squared"`` (``sum ||W_l||_F^2``).
    norm_weight: factor ``mu`` on the norm term (``mu sum_l n(W_l)``): the constrained minimiser is the
        same for every ``mu > 0``; a small ``mu`` keeps a deep net from collapsing to ``W = 0`` (a
        stationary point of depth >= 2) before the multipliers have grown.
    penalty: ``rho >= 0`` of the augmented Lagrangian ``+ (rho / 2) sum_i v_i^2`` with ``v_i = c_i``
        (regression) or ``max(c_i, 0)`` (classification): zero at every feasible point, so the
        solution is unchanged, but it damps the oscillation of weights against multipliers
        (the method of multipliers); ``0`` is the plain Lagrangian.
    optimizer: inner optimiser for the weights: ``"sgd"``, ``"adam"`` or a ``torch.optim.Optimizer`` class;
        ``optimizer_kwargs`` are passed to it (e.g. ``momentum=0.9``).
    batch_dims: 1 for stacked ensembles (leading dimension indexes networks), else 0.
    """

    def __init__(self, params: Iterable, n_constraints: int | None = None, *, constraint: str = "classification",
                 lr: float = 0.01, multiplier_lr: float = 0.01, norm: str = "plain",
                 norm_weight: float = 1.0, penalty: float = 0.0, optimizer: str | type = "sgd", batch_dims: int = 0,
                 **optimizer_kwargs) -> None:
        lr = _positive("lr", lr)
        norm_weight = _positive("norm_weight", norm_weight)
        if not (isinstance(penalty, (int, float)) and math.isfinite(penalty) and penalty >= 0):
            raise GpmarginError(f"Minnorm penalty must be a non-negative finite number, got {penalty!r}")
        multiplier_lr = _positive("multiplier_lr", multiplier_lr)
        if constraint not in CONSTRAINTS:
            raise GpmarginError(f"Minnorm constraint={constraint!r}: use one of {', '.join(CONSTRAINTS)}")
        if norm not in NORMS:
            raise GpmarginError(f"Minnorm norm={norm!r}: use one of {', '.join(NORMS)}")
        if n_constraints is not None and not (isinstance(n_constraints, int) and n_constraints >= 1):
            raise GpmarginError(f"Minnorm n_constraints must be a positive integer, got {n_constraints!r}")
        if batch_dims not in (0, 1):
            raise GpmarginError(f"Minnorm batch_dims must be 0 or 1, got {batch_dims}")
        super().__init__(params, dict(lr=lr, penalize=True))
        if isinstance(optimizer, str):
            table = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
            if optimizer not in table:
                raise GpmarginError(f"Minnorm optimizer={optimizer!r}: use 'sgd', 'adam' or an Optimizer class")
            optimizer = table[optimizer]
        # the inner optimiser shares our group dicts, so an lr schedule applied to either is seen by both
        self.inner = optimizer(self.param_groups, lr=lr, **optimizer_kwargs)
        self.n_constraints, self.constraint, self.norm = n_constraints, constraint, norm
        self.multiplier_lr, self.batch_dims, self.norm_weight = multiplier_lr, batch_dims, norm_weight
        self.penalty = float(penalty)
        self.multipliers: torch.Tensor | None = None  # (k?, n[, c]), allocated on the first lagrangian
        self._pending: tuple[torch.Tensor | None, torch.Tensor] | None = None

    # -------------------------------------------------------------- the Lagrangian
    def norm_term(self) -> torch.Tensor:
        """``sum_l n(W_l)`` over penalised parameters, summed over ensemble members."""
        total = None
        for g in self.param_groups:
            if not g["penalize"]:
                continue
            for p in g["params"]:
                flat = p.reshape(p.shape[0], -1) if self.batch_dims else p.reshape(1, -1)
                # vector_norm's gradient at W = 0 is 0 (a subgradient), where sqrt(sum W^2) would give NaN
                term = flat.square().sum() if self.norm == "squared" else torch.linalg.vector_norm(flat, dim=-1).sum()
                total = term if total is None else total + term
        if total is None:
            raise GpmarginError("Minnorm has no penalised parameters (every group has penalize=False)")
        return total

    def lagrangian(self, outputs: torch.Tensor, targets: torch.Tensor,
                   index: torch.Tensor | None = None) -> torch.Tensor:
        """``L(W, lambda)`` on a batch: ``outputs`` ``(n_b, c)`` (or ``(k, n_b, c)``), ``targets``
        ``(n_b, c)`` (``alpha Y``), ``index`` the batch's example indices (default: all ``n``).

        Records the constraint values for the multiplier step of the next :meth:`step`."""
        c = constraint_values(outputs, targets, self.constraint)
        n_b = c.shape[self.batch_dims]
        if self.n_constraints is None and index is None:
            self.n_constraints = n_b
        if self.n_constraints is None:
            raise GpmarginError("Minnorm with minibatches (index=) needs n_constraints, the training-set size")
        if index is None and n_b != self.n_constraints:
            raise GpmarginError(f"Minnorm got {n_b} examples without index=, but n_constraints={self.n_constraints}")
        if self.multipliers is None:
            shape = list(c.shape)
            shape[self.batch_dims] = self.n_constraints
            self.multipliers = torch.zeros(shape, dtype=c.dtype, device=c.device)
        lam = self.multipliers if index is None else self.multipliers.index_select(self.batch_dims, index)
        self._pending = (index, c.detach())
        total = self.norm_weight * self.norm_term() + (lam * c).sum()
        if self.penalty:
            viol = c if self.constraint == "regression" else c.clamp_min(0)
            total = total + 0.5 * self.penalty * viol.square().sum()
        return total

    # -------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self, closure=None):
        """Descent on the weights (inner optimiser), then ascent on the multipliers of the
        examples of the last :meth:`lagrangian` call."""
        loss = self.inner.step(closure)
        if self._pending is None:
            raise GpmarginError("Minnorm.step() needs a lagrangian(...) call (and backward) before it")
        index, c = self._pending
        lam = self.multipliers
        if index is None:
            lam.add_(c, alpha=self.multiplier_lr)
            if self.constraint == "classification":
                lam.clamp_(min=0)
        else:
            new = lam.index_select(self.batch_dims, index).add_(c, alpha=self.multiplier_lr)
            if self.constraint == "classification":
                new.clamp_(min=0)
            lam.index_copy_(self.batch_dims, index, new)
        self._pending = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def kkt_residuals(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""How far the current weights and multipliers are from a KKT point of
        :math:`\min_W \mu \sum_l n(W_l)` s.t. :math:`c_i(W) \le 0` (classification) or
        :math:`= 0` (regression), on the full training set (``outputs = model(X)``, with grad).

        Returns per network (``(k,)``, or 0-d without ``batch_dims``), each scale-free:

        ``primal``         :math:`\max_i c_i^+ / \alpha` (regression: :math:`\max |c_i| / \max |T|`);
        ``dual``           :math:`\max_i (-\lambda_i)^+ / \max_i |\lambda_i|` (0 by the projection;
                           regression has free multipliers: 0);
        ``complementary``  :math:`\max_i |\lambda_i c_i| / \sum_i \lambda_i \alpha_i` (classification; 0 for
                           regression, where every constraint is active);
        ``stationarity``   :math:`\|\nabla_W L\| / (\|\mu \nabla_W \sum n\| + \|\nabla_W \sum_i \lambda_i c_i\|)`
                           (the plain Lagrangian, no augmented penalty).
        """
        if self.multipliers is None:
            raise GpmarginError("Minnorm.kkt_residuals needs the multipliers of at least one step")
        params = [p for g in self.param_groups for p in g["params"]]
        t = targets.to(outputs.dtype)
        c = constraint_values(outputs, t, self.constraint)
        lam = self.multipliers.to(c.dtype)
        g_norm = torch.autograd.grad(self.norm_weight * self.norm_term(), params, retain_graph=True, allow_unused=True)
        g_cons = torch.autograd.grad((lam * c).sum(), params, allow_unused=True)

        def per_member(tensors):  # sum of squares per network: (k,) or 0-d
            total = 0.0
            for g in tensors:
                if g is None:
                    continue
                g = g.double()
                flat = g.reshape(g.shape[0], -1) if self.batch_dims else g.reshape(1, -1)
                total = total + flat.square().sum(-1)
            return total if self.batch_dims else total[0]

        both = [None if a is None and b is None else (0 if a is None else a) + (0 if b is None else b)
                for a, b in zip(g_norm, g_cons)]
        lagr, norm_part, cons_part = (per_member(x).sqrt() for x in (both, g_norm, g_cons))
        stationarity = lagr / (norm_part + cons_part).clamp_min(1e-300)
        dims = tuple(range(self.batch_dims, c.dim()))
        c, t = c.detach().double(), t.double()  # residuals in float64 whatever the training precision
        if self.constraint == "regression":
            scale = t.abs().amax().clamp_min(1e-300)
            primal = c.abs().amax(dim=dims) / scale
            zero = torch.zeros_like(primal)
            return {"primal": primal, "dual": zero, "complementary": zero, "stationarity": stationarity.detach()}
        if t.shape[-1] == 1:
            alpha = t[..., 0].abs()
        else:
            alpha = t.max(dim=-1).values
        alpha = alpha.expand_as(c)
        primal = (c.clamp_min(0) / alpha).amax(dim=dims)
        lam = lam.detach().double()
        lam_max = lam.abs().amax(dim=dims).clamp_min(1e-300)
        dual = (-lam).clamp_min(0).amax(dim=dims) / lam_max
        complementary = (lam * c).abs().amax(dim=dims) / (lam * alpha).sum(dim=dims).clamp_min(1e-300)
        return {"primal": primal, "dual": dual, "complementary": complementary, "stationarity": stationarity.detach()}

    def support(self, threshold: float = 0.0) -> list[list[int]]:
        """Indices of the support vectors (examples with a multiplier ``> threshold``; for
        regression, any output's ``|lambda|``), one list per ensemble member."""
        if self.multipliers is None:
            return [[]]
        lam = self.multipliers.abs()
        if self.constraint == "regression":
            lam = lam.amax(dim=-1)
        if not self.batch_dims:
            lam = lam.unsqueeze(0)
        return [torch.nonzero(row > threshold).reshape(-1).tolist() for row in lam]

    def state_dict(self):
        d = super().state_dict()
        d["inner"] = self.inner.state_dict()
        d["multipliers"] = self.multipliers
        return d

    def load_state_dict(self, state_dict) -> None:
        state_dict = dict(state_dict)
        self.inner.load_state_dict(state_dict.pop("inner"))
        self.multipliers = state_dict.pop("multipliers")
        super().load_state_dict(state_dict)
