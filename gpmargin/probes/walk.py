"""Recording hooks for training runs: the walk of SGD and the trajectory of iterates.

:class:`WalkRecorder` (Xing, Arpit, Tsirigotis & Bengio 2018, *A walk with SGD*).  Call
``record()`` after every optimiser step; for step ``t`` (iterates ``theta_t -> theta_{t+1}``)
it stores

- ``segment_loss[t, j] = L(theta(a_j))``, ``theta(a) = (1 - a) theta_t + a theta_{t+1}``, the loss
  on the full training set at ``points >= 10`` values ``a_j`` evenly spaced in [0, 1];
- ``valley_floor[t] = L(theta_t) - min_j L(theta(a_j))`` (how far the step crosses above the
  valley floor along its own line) and ``argmin_a[t]``;
- ``grad_cosine[t] = cos(g_{t-1}, g_t)`` between the gradients used by consecutive steps (the
  ``.grad`` left by ``backward()``; NaN at ``t = 0``);
- ``distance[t] = ||theta_t - theta_0||``.

For gradient descent on ``L = 1/2 (a x^2 + b y^2)`` the segment loss is a parabola in ``a``; with
``y = 0`` its minimum is at ``a* = 1 / (eta a)``, inside (0.5, 1) when ``eta a`` is in (1, 2).

:class:`TrajectoryRecorder` keeps the last ``keep`` iterates (flattened, float32) and, if given
``data``, the per-example losses at each, for :mod:`gpmargin.probes.ph_dimension`.
:func:`sgd_walk` trains with plain minibatch SGD and records a walk.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np
import torch

from gpmargin.errors import GpmarginError
from gpmargin.probes.directions import flatten, get_weights, model_parameters, set_weights
from gpmargin.probes.landscape import Data, LossFn, _check_data, evaluate, per_example_losses


class WalkRecorder:
    """Per-step walk statistics (module docstring); ``results()`` returns them as numpy arrays."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, data: Data, points: int = 11):
        if not (isinstance(points, int) and points >= 10):
            raise GpmarginError(f"points must be an integer >= 10 (values of a along each step), got {points!r}")
        _check_data(data)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.a = np.linspace(0.0, 1.0, points)
        self.theta0 = get_weights(model)
        self.prev = self.theta0
        self.prev_grad: torch.Tensor | None = None
        self.rows: list[dict[str, Any]] = []

    def _loss_at(self, theta, diff, a) -> float:
        set_weights(self.model, theta, [diff], [a])
        return evaluate(self.model, self.loss_fn, self.data)["loss"]

    def record(self) -> dict[str, Any]:
        """Record the step just taken (call right after ``optimizer.step()``)."""
        params = model_parameters(self.model)
        now = get_weights(self.model)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        g = flatten(grads)
        diff = [b - a for a, b in zip(self.prev, now)]
        try:
            seg = np.array([self._loss_at(self.prev, diff, float(a)) for a in self.a])
        finally:
            set_weights(self.model, now)
        cos = float("nan")
        if self.prev_grad is not None:
            den = float(g.norm() * self.prev_grad.norm())
            cos = float(g @ self.prev_grad) / den if den > 0 else float("nan")
        j = int(np.nanargmin(seg)) if np.any(np.isfinite(seg)) else 0
        row = {"step": len(self.rows), "segment_loss": seg, "valley_floor": float(seg[0] - np.nanmin(seg))
               if np.any(np.isfinite(seg)) else float("nan"), "argmin_a": float(self.a[j]), "grad_cosine": cos,
               "distance": float(flatten([p - q for p, q in zip(self.prev, self.theta0)]).norm()),
               "loss": float(seg[0])}
        self.rows.append(row)
        self.prev, self.prev_grad = now, g
        return row

    def results(self) -> dict[str, Any]:
        """``{"a": (P,), "segment_loss": (T, P), "valley_floor", "argmin_a", "grad_cosine", "distance", "loss": (T,)}``."""
        keys = ("valley_floor", "argmin_a", "grad_cosine", "distance", "loss")
        out: dict[str, Any] = {"a": self.a, "segment_loss": np.array([r["segment_loss"] for r in self.rows])}
        out.update({k: np.array([r[k] for r in self.rows]) for k in keys})
        return out


class TrajectoryRecorder:
    """The last ``keep`` iterates of a run (call ``record()`` after each step).

    ``points()``: ``(T, P)`` float32 array of flattened parameters; with ``data``,
    ``losses()``: ``(T, n)`` per-example losses at each recorded iterate (``loss_fn`` required).
    """

    def __init__(self, model: torch.nn.Module, keep: int = 1000, loss_fn: LossFn | None = None,
                 data: Data | None = None, every: int = 1):
        if data is not None and loss_fn is None:
            raise GpmarginError("TrajectoryRecorder: per-example losses need loss_fn as well as data")
        if keep < 1 or every < 1:
            raise GpmarginError(f"keep and every must be positive integers, got keep={keep}, every={every}")
        model_parameters(model)
        self.model, self.loss_fn, self.data, self.every = model, loss_fn, data, every
        self._points: deque = deque(maxlen=keep)
        self._losses: deque = deque(maxlen=keep)
        self.calls = 0

    def record(self) -> None:
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        self._points.append(flatten(self.model.parameters()).float().numpy())
        if self.data is not None:
            self._losses.append(per_example_losses(self.model, self.loss_fn, self.data).float().numpy())

    def points(self) -> np.ndarray:
        return np.stack(list(self._points)) if self._points else np.zeros((0, 0), np.float32)

    def losses(self) -> np.ndarray | None:
        if self.data is None:
            return None
        return np.stack(list(self._losses)) if self._losses else np.zeros((0, 0), np.float32)


def sgd_walk(model: torch.nn.Module, loss_fn: LossFn, data: Data, lr: float, batch_size: int, steps: int,
             seed: int = 0, points: int = 11, callback: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Train ``model`` with plain SGD (learning rate ``lr``, minibatches of ``batch_size`` drawn
    without replacement, reshuffled each epoch from a generator seeded ``seed``) for ``steps``
    steps, recording a :class:`WalkRecorder` on the full ``data``; returns its results."""
    x, y = _check_data(data)
    if not (lr > 0 and isinstance(batch_size, int) and 1 <= batch_size <= x.shape[0] and steps >= 1):
        raise GpmarginError(f"need lr > 0, 1 <= batch_size <= {x.shape[0]} and steps >= 1; "
                            f"got lr={lr}, batch_size={batch_size}, steps={steps}")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rec = WalkRecorder(model, loss_fn, data, points)
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(x.shape[0], generator=gen)
    pos = 0
    for t in range(steps):
        if pos + batch_size > x.shape[0]:
            order, pos = torch.randperm(x.shape[0], generator=gen), 0
        idx = order[pos:pos + batch_size].to(x.device)
        pos += batch_size
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).mean().backward()
        opt.step()
        row = rec.record()
        if callback is not None:
            callback(t, row)
    return rec.results()
