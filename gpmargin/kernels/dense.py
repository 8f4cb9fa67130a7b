"""Fully connected layer in the NTK parameterisation (neural-tangents' ``stax.Dense``)."""

from __future__ import annotations

import torch

from gpmargin.kernels.base import Layer
from gpmargin.kernels.state import KernelState, Spec


class Affine(Layer):
    """Shared part of Dense and Conv2d: the affine kernel map after the spatial averaging."""

    W_std: float
    b_std: float | None

    def linear(self, st: KernelState, nngp: torch.Tensor) -> KernelState:
        """Finish the layer from the input covariance ``nngp`` averaged over a weight row's inputs.

        ``nngp <- W_std^2 nngp + b_std^2`` and ``ntk <- W_std^2 ntk + nngp`` (in place; ``st.ntk``
        must already be averaged over the row's inputs the same way).
        """
        w2 = self.W_std**2
        if w2 != 1.0:
            nngp.mul_(w2)
        if self.b_std is not None:
            nngp.add_(self.b_std**2)
        if st.ntk is not None:
            if w2 != 1.0:
                st.ntk.mul_(w2)
            st.ntk.add_(nngp)
        st.nngp = nngp
        return st

    def average(self, k: torch.Tensor, layout: str) -> torch.Tensor:  # pragma: no cover - abstract
        """Average a kernel tensor over the inputs of one weight row (identity for Dense)."""
        raise NotImplementedError

    def apply(self, st: KernelState) -> KernelState:
        nngp = self.average(st.nngp, st.layout)
        if st.ntk is not None:
            st.ntk = self.average(st.ntk, st.layout)
        return self.linear(st, nngp)

    def out_mean(self, mean, var, spec):
        # zero-mean weights and biases: the mean over units of the outputs is 0
        return torch.zeros_like(self.pool_field(var))

    def pool_field(self, a: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Average a per-example statistic over the inputs of one weight row."""
        raise NotImplementedError

    def fan_in(self, spec: Spec) -> int | None:  # pragma: no cover - abstract
        """Number of inputs of one weight row, or None if infinite (hidden layer)."""
        raise NotImplementedError


class Dense(Affine):
    r"""Fully connected layer ``f = W_std / sqrt(n) * W x + b_std * b`` with standard normal ``W, b``.

    ``n`` is the fan-in (width of the previous layer; input dimension ``d`` for the first layer,
    where the input kernel is ``x . x' / d``).  Kernel map, in the infinite-width limit:

    .. math::
        \Sigma_{out} = W_{std}^2 \Sigma_{in} + b_{std}^2, \qquad
        \Theta_{out} = W_{std}^2 \Theta_{in} + \Sigma_{out}.

    ``b_std=None`` means no bias.  Dense acts on feature vectors only: put ``Flatten()`` or
    ``GlobalAvgPool()`` between a convolution and a dense layer.
    """

    def __init__(self, W_std: float = 1.0, b_std: float | None = None):
        self.W_std = float(W_std)
        self.b_std = None if b_std is None else float(b_std)

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind != "vector":
            raise self.fail(spec, "a dense layer needs feature vectors; insert Flatten() or GlobalAvgPool() before it")
        return Spec("vector", (None,))

    def average(self, k, layout):
        return k

    def pool_field(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def fan_in(self, spec: Spec) -> int | None:
        return spec.shape[0]
