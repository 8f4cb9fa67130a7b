"""Elementwise nonlinearities: closed-form Gaussian expectations (neural-tangents conventions).

For a layer ``phi`` with pre-activations ``(u, u')`` jointly Gaussian with variances ``v1, v2``
and covariance ``Sigma``, the output NNGP is ``E[phi(u) phi(u')]`` and the NTK is multiplied by
``E[phi'(u) phi'(u')]``.  All updates run in place on the state's tensors and clamp the
arguments of ``arccos``/``arcsin``/``sqrt`` into their domains, so rounding cannot make NaNs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpmargin.kernels.base import Layer
from gpmargin.kernels.finite import Flow, LayerModule
from gpmargin.kernels.state import KernelState, Spec


def _rsqrt_or_zero(v: torch.Tensor) -> torch.Tensor:
    """1/sqrt(v), with 0 where v == 0 (then the covariance is 0 too)."""
    r = v.clamp(min=0).sqrt()
    return torch.where(r > 0, 1.0 / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(r))


def _scale(k: torch.Tensor, st: KernelState, key: str) -> None:
    """k *= aux1[key] (first member) * aux2[key] (second member), in place; a single scalar
    multiplication (or none) when both are constant over all examples."""
    c1, c2 = st.aux1[key + "_const"], st.aux2[key + "_const"]
    if c1 is not None and c2 is not None:
        if c1 * c2 != 1.0:
            k.mul_(c1 * c2)
    else:
        k.mul_(st.bcast1(st.aux1[key])).mul_(st.bcast2(st.aux2[key]))


def _const(t: torch.Tensor) -> float | None:
    lo, hi = float(t.min()), float(t.max())
    return lo if lo == hi else None


class Activation(Layer):
    """Base class: shape-preserving; the mean over units is known only after a linear layer."""

    def out_spec(self, spec: Spec) -> Spec:
        return Spec(spec.kind, spec.shape)

    def out_mean(self, mean, var, spec):
        if mean is None or bool((mean != 0).any()):
            return None  # pre-activations are not the zero-mean Gaussians of a linear layer
        if spec.row_dof is not None:
            return self.sphere_mean(var, spec.row_dof)
        return self.gaussian_mean(var)

    def sphere_mean(self, var: torch.Tensor, k: int) -> torch.Tensor:
        """E[phi(sqrt(k v) w_1)] for w uniform on the unit sphere of R^k (finite fan-in centred rows).

        Default: the Gaussian value (error O(1/k)); positively homogeneous activations override it.
        """
        return self.gaussian_mean(var)

    def gaussian_mean(self, var: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """E[phi(u)] for u ~ N(0, var)."""
        raise NotImplementedError

    # -- the finite layer: phi applied to every unit --------------------------------------
    def module(self, in_shape, units, init):
        return LayerModule(self), tuple(in_shape)

    def finite(self, fl: Flow) -> Flow:  # pragma: no cover - abstract
        """``phi`` applied to the features of a finite network."""
        raise NotImplementedError


class ABRelu(Activation):
    r"""``phi(x) = a min(x, 0) + b max(x, 0)`` (the arc-cosine kernel of degree 1).

    With :math:`\cos\theta = \Sigma / \sqrt{v_1 v_2}`, :math:`f = (a-b)^2 / 2\pi` and
    :math:`g = (a^2 + b^2)/2`:

    .. math::
        \Sigma_{out} = \sqrt{v_1 v_2}\,[f \sin\theta + (g - f\theta)\cos\theta], \qquad
        \Theta_{out} = (g - f\theta)\,\Theta_{in}.

    The mean over units is :math:`(b - a)\sqrt{v / 2\pi}`.  ``Relu(scale)`` is ``ABRelu(0, scale)``
    and ``LeakyRelu(slope)`` is ``ABRelu(slope, 1)``.
    """

    def __init__(self, a: float, b: float):
        self.a = float(a)
        self.b = float(b)

    def gaussian_mean(self, var):
        return (self.b - self.a) * (var.clamp(min=0) / (2 * math.pi)).sqrt()

    def sphere_mean(self, var, k):
        # phi is positively homogeneous: with g = r w (r = |g| independent of w), E_sphere = E_gauss
        # * sqrt(k) / E[r], E[r] = sqrt(2) Gamma((k+1)/2) / Gamma(k/2).  Second moments need no
        # correction (E[r^2] = k), so only the mean changes.
        ratio = math.sqrt(k / 2.0) * math.exp(math.lgamma(k / 2.0) - math.lgamma((k + 1) / 2.0))
        return self.gaussian_mean(var) * ratio

    def precompute(self, var, mean):
        sqrt, rsqrt = var.clamp(min=0).sqrt(), _rsqrt_or_zero(var)
        return {"sqrt": sqrt, "rsqrt": rsqrt, "sqrt_const": _const(sqrt), "rsqrt_const": _const(rsqrt)}

    def finite(self, fl: Flow) -> Flow:
        a, b = self.a, self.b
        if b > 0 and fl.scale() > 0:
            # phi(x) = b * leaky_relu(x, a / b) is positively homogeneous: keep b as a pending factor
            slope = a / b
            if slope == 0:
                h = fl.h.relu_() if fl.fresh else torch.relu(fl.h)
            else:
                h = F.leaky_relu(fl.h, slope, inplace=fl.fresh and slope > 0)
            return Flow(h, fl.layout, fl.members, fl.times(b), True)
        h = fl.materialise().h
        return Flow(torch.where(h > 0, h * b, h * a), fl.layout, fl.members, {}, True)

    def apply(self, st: KernelState) -> KernelState:
        f = (self.a - self.b) ** 2 / (2 * math.pi)
        g = (self.a**2 + self.b**2) / 2
        k = st.nngp
        if st.is_exact_diagonal:  # theta = 0 exactly
            k.mul_(g)
            if st.ntk is not None:
                st.ntk.mul_(g)
            return st
        one = k.new_ones(())
        if st.aux1 is None or st.aux2 is None:
            st.aux1, st.aux2 = self.precompute(st.var1, None), self.precompute(st.var2, None)
        _scale(k, st, "rsqrt")
        k.clamp_(-1.0, 1.0)  # cos(theta)
        if st.self_pairs is not None and st.layout != "full":
            k[st.self_pairs] = 1.0  # an input with itself: theta = 0 exactly, not sqrt(eps)
        dot = torch.arccos(k)
        torch.add(one * g, dot, alpha=-f, out=dot)  # g - f theta = E[phi'(u) phi'(u')]
        fsin = torch.addcmul(one * f**2, k, k, value=-(f**2)).sqrt_()  # f sin(theta); |cos| <= 1
        if st.ntk is not None:
            st.ntk.mul_(dot)
        torch.addcmul(fsin, dot, k, out=k)  # f sin + (g - f theta) cos
        del dot, fsin
        _scale(k, st, "sqrt")
        return st


class Relu(ABRelu):
    """``phi(x) = scale * max(x, 0)``; the paper uses ``scale = sqrt(2)`` (variance preserving)."""

    def __init__(self, scale: float = 1.0):
        super().__init__(0.0, scale)
        self.scale = float(scale)

    def __repr__(self) -> str:
        return f"Relu(scale={self.scale!r})"


class LeakyRelu(ABRelu):
    """``phi(x) = max(x, 0) + slope * min(x, 0)``."""

    def __init__(self, slope: float):
        super().__init__(slope, 1.0)
        self.slope = float(slope)

    def __repr__(self) -> str:
        return f"LeakyRelu(slope={self.slope!r})"


class Erf(Activation):
    r"""``phi(x) = a erf(b x) + c``.  With :math:`q_i = 1 + 2 b^2 v_i` and
    :math:`u = 2 b^2 \Sigma / \sqrt{q_1 q_2}`:

    .. math::
        \Sigma_{out} = a^2 \tfrac{2}{\pi} \arcsin u + c^2, \qquad
        \Theta_{out} = \Theta_{in}\, a^2 b^2 \tfrac{4}{\pi}
            \big[1 + 2b^2(v_1 + v_2) + 4b^4(v_1 v_2 - \Sigma^2)\big]^{-1/2}.

    The mean over units is ``c``.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a = float(a)
        self.b = float(b)
        self.c = float(c)

    def gaussian_mean(self, var):
        return torch.full_like(var, self.c)

    def finite(self, fl: Flow) -> Flow:
        h = fl.materialise().h
        y = torch.erf(h * self.b if self.b != 1.0 else h)
        y = y * self.a if self.a != 1.0 else y
        return Flow(y + self.c if self.c else y, fl.layout, fl.members, {}, True)

    def apply(self, st: KernelState) -> KernelState:
        b2 = self.b**2
        v1, v2 = st.bcast1(st.var1.clamp(min=0)), st.bcast2(st.var2.clamp(min=0))
        k = st.nngp
        if st.ntk is not None:
            # q1 q2 - 4 b^4 K^2 = 1 + 2 b^2 (v1 + v2) + 4 b^4 (v1 v2 - K^2): no cancellation near |u| = 1
            den = torch.mul(k, k).neg_().addcmul_(v1, v2).clamp_(min=0.0).mul_(4.0 * b2 * b2)
            den.add_(v1, alpha=2.0 * b2).add_(v2, alpha=2.0 * b2).add_(1.0).rsqrt_()
            st.ntk.mul_(den).mul_(self.a**2 * b2 * 4.0 / math.pi)
            del den
        r1 = (v1 * (2.0 * b2) + 1.0).rsqrt_()
        r2 = (v2 * (2.0 * b2) + 1.0).rsqrt_()
        k.mul_(2.0 * b2).mul_(r1).mul_(r2).clamp_(-1.0, 1.0)  # u
        k.arcsin_().mul_(self.a**2 * 2.0 / math.pi)
        if self.c:
            k.add_(self.c**2)
        return st


class Identity(Activation):
    """``phi(x) = x``: the kernel passes through unchanged."""

    def out_mean(self, mean, var, spec):
        return mean

    def gaussian_mean(self, var):
        return torch.zeros_like(var)

    def apply(self, st: KernelState) -> KernelState:
        return st

    def finite(self, fl: Flow) -> Flow:
        return fl
