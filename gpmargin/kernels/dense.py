"""Fully connected layer in the NTK parameterisation (neural-tangents' ``stax.Dense``): its
kernel map and its finite module."""

from __future__ import annotations

import math

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer, hyperparameter
from gpmargin.kernels.finite import AffineModule, Flow, Init
from gpmargin.kernels.state import KernelState, Spec


class Affine(Layer):
    """Shared part of Dense and Conv2d: the affine kernel map after the spatial averaging."""

    W_std: float
    b_std: float | None

    maps_dist = True
    gaussian_out = True

    def linear(self, st: KernelState, nngp: torch.Tensor, dist: torch.Tensor | None = None) -> KernelState:
        """Finish the layer from the input covariance ``nngp`` averaged over a weight row's inputs.

        ``nngp <- W_std^2 nngp + b_std^2``, ``ntk <- W_std^2 ntk + nngp`` and ``dist <- W_std^2
        dist`` (the bias cancels in ``E[(u - u')^2]``); in place, ``st.ntk`` and ``dist`` already
        averaged over the row's inputs the same way.
        """
        w2 = self.W_std**2
        scale = isinstance(w2, torch.Tensor) or w2 != 1.0  # a tensor W_std is always applied (autograd)
        if dist is not None and scale:
            dist.mul_(w2)
        st.dist = dist
        if scale:
            nngp.mul_(w2)
        if self.b_std is not None:
            nngp.add_(self.b_std**2)
        if st.ntk is not None:
            if scale:
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
        dist = None if st.dist is None else self.average_dist(st)
        return self.linear(st, nngp, dist)

    def average_dist(self, st: KernelState) -> torch.Tensor:
        """``st.dist`` averaged over the inputs of one weight row (as ``average``)."""
        return self.average(st.dist, st.layout)

    def out_mean(self, mean, var, spec):
        # zero-mean weights and biases: the mean over units of the outputs is 0
        return torch.zeros_like(self.pool_field(var))

    def pool_field(self, a: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Average a per-example statistic over the inputs of one weight row."""
        raise NotImplementedError

    def fan_in(self, spec: Spec) -> int | None:  # pragma: no cover - abstract
        """Number of inputs of one weight row, or None if infinite (hidden layer)."""
        raise NotImplementedError

    # -- the finite layer -------------------------------------------------------------------
    has_units = True

    def weight_shape(self, in_shape: tuple, units: int) -> tuple:  # pragma: no cover - abstract
        """Shape of one member's weight, output units first."""
        raise NotImplementedError

    def module(self, in_shape, units, init: Init, centred: bool = False):
        """Draw the layer's parameters (see :mod:`gpmargin.kernels.finite` for the equations)."""
        spec = Spec("image" if len(in_shape) == 3 else "vector", tuple(in_shape))
        out_shape = tuple(units if s is None else s for s in self.out_spec(spec).shape)
        n = self.fan_in(spec)
        z = init.normal(self.weight_shape(in_shape, units))
        ntk = init.parameterization == "ntk"
        if centred:
            if n < 2:
                raise GpmarginError(
                    f"network(): Centred({self!r}) has fan-in {n}; a zero-mean unit-norm row needs at least 2 inputs "
                    "(use a width of at least 2)")
            rows = z.reshape(z.shape[0], units, -1)
            rows = rows - rows.mean(-1, keepdim=True)
            u = (rows / rows.norm(dim=-1, keepdim=True)).reshape(z.shape)  # zero-mean unit-norm rows
            weight, w_mult = (u * math.sqrt(n), self.W_std / math.sqrt(n)) if ntk else (u * self.W_std, 1.0)
        else:
            weight, w_mult = (z, self.W_std / math.sqrt(n)) if ntk else (z * (self.W_std / math.sqrt(n)), 1.0)
        bias, b_mult = None, 1.0
        if self.b_std is not None:
            beta = init.normal((units,))
            bias, b_mult = (beta, self.b_std) if ntk else (beta * self.b_std, 1.0)
        mod = self.module_class(self, init.parameter(weight), None if bias is None else init.parameter(bias),
                                w_mult, b_mult, init.stacked)
        return mod, out_shape

    module_class: type  # the AffineModule subclass of the layer


class DenseModule(AffineModule):
    """Finite ``Dense``: ``(k, out, in)`` weights, one GEMM for a shared input, one ``bmm`` otherwise."""

    def forward(self, fl: Flow) -> Flow:
        w = self.stacked_weight()
        k, o, i = w.shape
        b = self.stacked_bias()
        factors = fl.times(self.w_mult)
        alpha = fl.scale() * self.w_mult
        if fl.layout == "shared":  # (n, d): one GEMM (k*out, d) @ (d, n) for all members
            x = fl.h.T
            if b is None:
                h = w.reshape(k * o, i) @ x
            else:
                h = torch.addmm(b.reshape(k * o, 1), w.reshape(k * o, i), x, beta=self.b_mult, alpha=alpha)
            h = h.reshape(k, o, x.shape[1])
            fresh = False  # a view of the product: elementwise maps stay out of place
        else:
            if b is None:
                h = torch.bmm(w, fl.h)
            else:
                h = torch.baddbmm(b[..., None], w, fl.h, beta=self.b_mult, alpha=alpha)
            fresh = True
        return Flow(h, "vector", k, {} if b is not None else factors, fresh)


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
        self.W_std = hyperparameter(W_std, "W_std", "Dense")
        self.b_std = None if b_std is None else hyperparameter(b_std, "b_std", "Dense")

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

    def weight_shape(self, in_shape, units):
        return (units, in_shape[0])

    module_class = DenseModule
