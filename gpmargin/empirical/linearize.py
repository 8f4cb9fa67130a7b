r"""``linearize(model)``: the first-order Taylor expansion of a model in its parameters,

.. math::
    f^{lin}_\theta(x) = f_{\theta_0}(x) + J_{\theta_0}(x)\,(\theta - \theta_0),

a ``torch.nn.Module`` whose parameters ``theta`` start at ``theta_0`` (copies) and train like any
other (its NTK is the model's empirical NTK at ``theta_0``, constant in training: gradient descent
on it is the kernel regression of :mod:`gpmargin.predict.gradient`).  The forward pass is one
``torch.func.jvp`` (forward-mode product with ``theta - theta_0``).
"""

from __future__ import annotations

import copy

import torch

from gpmargin.errors import GpmarginError


class Linearized(torch.nn.Module):
    """``model`` linearised around its parameters at construction (module docstring); ``base`` is a
    frozen copy of the model at ``theta_0``, ``params`` the trainable ``theta``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise GpmarginError(f"linearize() takes a torch.nn.Module, got {type(model).__name__}")
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not names:
            raise GpmarginError(f"{type(model).__name__} has no parameters that require grad: nothing to linearise")
        self.base = copy.deepcopy(model).requires_grad_(False)
        self._names = names
        self.params = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone())
                                              for n, p in model.named_parameters() if p.requires_grad])
        for attr in ("members", "batch_dims"):  # a stacked gpmargin Network stays one (for Nero, empirical_ntk)
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, jvp

        theta0 = dict(self.base.named_parameters())
        primals = {n: theta0[n] for n in self._names}
        tangents = {n: p - primals[n] for n, p in zip(self._names, self.params)}
        out, change = jvp(lambda p: functional_call(self.base, p, (x,)), (primals,), (tangents,))
        return out + change


def linearize(model: torch.nn.Module) -> Linearized:
    """The first-order Taylor model of ``model`` around its current parameters (module docstring)."""
    return Linearized(model)
