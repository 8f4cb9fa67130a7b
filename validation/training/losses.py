"""Losses and targets of margin control.

The paper sets the margin through the targets: ``alpha * Y`` with ``Y = +-1`` for binary tasks
and one-hot rows for classes (:func:`margin_targets`); networks are trained on ``||f(X) - T||``
(:func:`per_network_loss`, one loss per member of an ensemble) and probed on the scale-free
``||f(x) / alpha - t(x)||^2`` (:class:`ScaledSquareLoss`).
"""

from __future__ import annotations

import math

import torch

from gpmargin.errors import GpmarginError

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


def label_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``t(x)``: ``(n, 1)`` of +-1 for binary float labels, one-hot ``(n, C)`` for class indices."""
    return y.reshape(-1, 1) if y.is_floating_point() else torch.nn.functional.one_hot(y.long(), num_classes)


class ScaledSquareLoss:
    """Per-example ``||f(x) / alpha - t(x)||^2`` with ``t`` = +-1 or one-hot (the probes' loss)."""

    def __init__(self, alpha: float, num_classes: int):
        self.alpha, self.num_classes = float(alpha), num_classes

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = label_targets(y, self.num_classes).to(out.dtype)
        return (out / self.alpha - t).square().sum(-1)
