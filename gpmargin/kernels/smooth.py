r"""Closed-form smooth activations (neural-tangents' ``Gelu``, ``Sin``, ``Cos``, ``Rbf``, ``Exp``,
``Gaussian``), on the base class :class:`ExpectationActivation` shared by every activation given
by its two Gaussian expectations.

For pre-activations ``(u, u')`` jointly Gaussian with variances ``v1, v2`` and covariance
``Sigma``, a layer maps ``Sigma`` to ``E[phi(u) phi(u')]`` and multiplies the NTK by
``E[phi'(u) phi'(u')]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpmargin.errors import GpmarginError
from gpmargin.kernels.activations import Activation
from gpmargin.kernels.base import hyperparameter
from gpmargin.kernels.finite import Flow
from gpmargin.kernels.state import KernelState


class ExpectationActivation(Activation):
    r"""An activation given by its two Gaussian expectations as functions of
    ``(Sigma, v1, v2)`` (tensors broadcast onto the kernel's layout):

    * :meth:`nngp_map` :math:`\to E[\phi(u)\phi(u')]`, the new NNGP;
    * :meth:`ntk_factor` :math:`\to E[\phi'(u)\phi'(u')]`, which multiplies the NTK.

    Neither may modify its arguments.  On a self state of exact diagonal entries both are called
    with ``Sigma = v1 = v2 = v``, the same tensor (exact there: every ``v1 v2 - Sigma^2`` is 0).
    The pair distance is mapped where it is exact without a closed form: identical
    pre-activations (distance 0: duplicated inputs, identical receptive fields) have identical
    outputs, distance 0; elsewhere it is not carried (NaN) and a later layer that needs it
    recomputes ``v1 + v2 - 2 Sigma`` (:class:`~gpmargin.kernels.monomials.Sign` maps it everywhere).  Subclasses also give ``phi`` itself (:meth:`phi`, the finite
    layer) and the mean :meth:`gaussian_mean`.
    """

    maps_dist = True

    def nngp_map(self, k: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def ntk_factor(self, k: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def phi(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The activation applied to a tensor of pre-activations."""
        raise NotImplementedError

    def check_variances(self, var: torch.Tensor) -> None:
        """Raise a one-line error when the expectations diverge for these variances (default: never)."""

    def apply(self, st: KernelState) -> KernelState:
        if not st.pair and not st.points:  # a self state holds every example's variances
            self.check_variances(st.var1)
        if st.is_exact_diagonal:
            k = v1 = v2 = st.var1.clamp(min=0)
        else:
            k, v1, v2 = st.nngp, st.bcast1(st.var1.clamp(min=0)), st.bcast2(st.var2.clamp(min=0))
        if st.ntk is not None:
            st.ntk.mul_(self.ntk_factor(k, v1, v2))
        out = self.nngp_map(k, v1, v2)
        st.nngp.copy_(torch.as_tensor(out, dtype=st.nngp.dtype, device=st.nngp.device))
        st.dist = identical_only(st.dist) if st.keep_dist else None
        return st

    def finite(self, fl: Flow) -> Flow:
        return Flow(self.phi(fl.materialise().h), fl.layout, fl.members, {}, True)


def identical_only(dist: torch.Tensor | None) -> torch.Tensor | None:
    """The output distance of an elementwise map known only for identical inputs: 0 where ``dist``
    is 0, not carried (NaN) elsewhere (see :meth:`KernelState.pair_dist`)."""
    if dist is None:
        return None
    return torch.full_like(dist, torch.nan).masked_fill_(dist == 0, 0.0)


def _cos(x):
    return torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x)


def _sin(x):
    return torch.sin(x) if isinstance(x, torch.Tensor) else math.sin(x)


def _gap(k, v1, v2):
    """``v1 v2 - Sigma^2 >= 0`` (clamped: rounding can make it slightly negative)."""
    return (v1 * v2 - k * k).clamp_(min=0.0)


class Gelu(ExpectationActivation):
    r"""``phi(x) = x Phi(x)`` (``Phi`` the standard normal CDF; ``approximate=True`` uses the tanh
    approximation in the finite network only, as in stax).  With
    :math:`\delta^2 = (1 + v_1)(1 + v_2) - \Sigma^2 = 1 + v_1 + v_2 + (v_1 v_2 - \Sigma^2)` and
    :math:`\alpha = \operatorname{atan2}(\Sigma, \delta)`:

    .. math::
        \Sigma_{out} = \frac{\Sigma}{4} + \frac{1}{2\pi}\Big[\Sigma\alpha
            + \frac{\Sigma^2 + v_1 v_2 \delta^2}{(1 + v_1)(1 + v_2)\,\delta}\Big], \qquad
        \frac{\Theta_{out}}{\Theta_{in}} = \frac14 + \frac{\alpha}{2\pi}
            + \frac{\Sigma}{2\pi\delta}\Big[\frac{1}{\delta^2} + \frac{1 - v_1 v_2}{(1 + v_1)(1 + v_2)} + 1\Big].

    The mean over units is :math:`v / \sqrt{2\pi(1 + v)}`.
    """

    def __init__(self, approximate: bool = False):
        self.approximate = bool(approximate)

    @staticmethod
    def _parts(k, v1, v2):
        p = v1 * v2
        q = (1.0 + v1) * (1.0 + v2)
        d2 = _gap(k, v1, v2).add_(v1).add_(v2).add_(1.0)
        d = d2.sqrt()
        return p, q, d2, d, torch.atan2(k, d)

    def nngp_map(self, k, v1, v2):
        p, q, d2, d, alpha = self._parts(k, v1, v2)
        return k * 0.25 + (k * alpha + (k * k + p * d2) / (q * d)) / (2 * math.pi)

    def ntk_factor(self, k, v1, v2):
        p, q, d2, d, alpha = self._parts(k, v1, v2)
        return 0.25 + alpha / (2 * math.pi) + k / (2 * math.pi * d) * (1.0 / d2 + (1.0 - p) / q + 1.0)

    def gaussian_mean(self, var):
        v = var.clamp(min=0)
        return v / (2 * math.pi * (1.0 + v)).sqrt()

    def phi(self, h):
        return F.gelu(h, approximate="tanh" if self.approximate else "none")


class Sin(ExpectationActivation):
    r"""``phi(x) = a sin(b x + c)``.  With :math:`e_\pm = \exp(-\tfrac{b^2}{2}(v_1 + v_2 \mp 2\Sigma))`:

    .. math::
        \Sigma_{out} = \frac{a^2}{2}\,[e_+ - \cos(2c)\, e_-], \qquad
        \frac{\Theta_{out}}{\Theta_{in}} = \frac{a^2 b^2}{2}\,[e_+ + \cos(2c)\, e_-].

    The mean over units is :math:`a \sin(c)\, e^{-b^2 v / 2}`.
    """

    _shift = 0.0  # phase added to c (Cos)

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a = hyperparameter(a, "a", type(self).__name__)
        self.b = hyperparameter(b, "b", type(self).__name__)
        self.c = hyperparameter(c, "c", type(self).__name__)

    def _terms(self, k, v1, v2):
        b2 = self.b**2
        total = v1 + v2
        plus = torch.exp((total - 2.0 * k).mul_(-0.5 * b2))
        minus = torch.exp((total + 2.0 * k).mul_(-0.5 * b2)).mul_(_cos(2.0 * (self.c + self._shift)))
        return plus, minus

    def nngp_map(self, k, v1, v2):
        plus, minus = self._terms(k, v1, v2)
        return (plus - minus).mul_(self.a**2 / 2.0)

    def ntk_factor(self, k, v1, v2):
        plus, minus = self._terms(k, v1, v2)
        return (plus + minus).mul_(self.a**2 * self.b**2 / 2.0)

    def gaussian_mean(self, var):
        return (var.clamp(min=0) * (-0.5 * self.b**2)).exp_().mul_(self.a * _sin(self.c + self._shift))

    def phi(self, h):
        return torch.sin(h * self.b + self.c) * self.a


class Cos(Sin):
    r"""``phi(x) = a cos(b x + c)``: :class:`Sin` with the phase ``c + pi/2`` (as stax's ``Cos``)."""

    _shift = math.pi / 2

    def phi(self, h):
        return torch.cos(h * self.b + self.c) * self.a


class Rbf(ExpectationActivation):
    r"""``phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4)``, whose NNGP is the RBF kernel of the
    pre-activations:

    .. math::
        \Sigma_{out} = e^{-\gamma (v_1 + v_2 - 2\Sigma)}, \qquad
        \frac{\Theta_{out}}{\Theta_{in}} = 2\gamma\, \Sigma_{out}.

    The mean over units is :math:`e^{-\gamma v}`.
    """

    def __init__(self, gamma: float = 1.0):
        self.gamma = hyperparameter(gamma, "gamma", "Rbf")

    def nngp_map(self, k, v1, v2):
        return (v1 + v2 - 2.0 * k).clamp_(min=0.0).mul_(-self.gamma).exp_()

    def ntk_factor(self, k, v1, v2):
        return self.nngp_map(k, v1, v2).mul_(2.0 * self.gamma)

    def gaussian_mean(self, var):
        return (var.clamp(min=0) * -self.gamma).exp_()

    def phi(self, h):
        return torch.sin(h * math.sqrt(2.0 * self.gamma) + math.pi / 4).mul_(math.sqrt(2.0))


class Exp(ExpectationActivation):
    r"""``phi(x) = a exp(b x)``:

    .. math::
        \Sigma_{out} = a^2 e^{b^2 ((v_1 + v_2)/2 + \Sigma)}, \qquad
        \frac{\Theta_{out}}{\Theta_{in}} = b^2\, \Sigma_{out}.

    The mean over units is :math:`a e^{b^2 v / 2}`.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a = hyperparameter(a, "a", "Exp")
        self.b = hyperparameter(b, "b", "Exp")

    def nngp_map(self, k, v1, v2):
        return ((v1 + v2).mul_(0.5).add_(k)).mul_(self.b**2).exp_().mul_(self.a**2)

    def ntk_factor(self, k, v1, v2):
        return self.nngp_map(k, v1, v2).mul_(self.b**2)

    def gaussian_mean(self, var):
        return (var.clamp(min=0) * (0.5 * self.b**2)).exp_().mul_(self.a)

    def phi(self, h):
        return torch.exp(h * self.b) * self.a


class Gaussian(ExpectationActivation):
    r"""``phi(x) = a exp(b x^2)``.  With
    :math:`D = (1 - 2b v_1)(1 - 2b v_2) - 4b^2\Sigma^2 = 1 - 2b(v_1 + v_2) + 4b^2(v_1 v_2 - \Sigma^2)`:

    .. math::
        \Sigma_{out} = \frac{a^2}{\sqrt D}, \qquad
        \frac{\Theta_{out}}{\Theta_{in}} = \frac{4 a^2 b^2\, \Sigma}{D^{3/2}}.

    For ``b > 0`` the expectations exist only for variances ``v < 1/(4b)`` (larger ones raise).
    The mean over units is :math:`a / \sqrt{1 - 2 b v}`.
    """

    def __init__(self, a: float = 1.0, b: float = -1.0):
        self.a = hyperparameter(a, "a", "Gaussian")
        self.b = hyperparameter(b, "b", "Gaussian")

    def check_variances(self, var):
        if self.b > 0 and var.numel() and float(var.detach().max()) * 4.0 * self.b >= 1.0:
            raise GpmarginError(
                f"{self!r}: E[phi(u)^2] is infinite for pre-activation variances v >= 1/(4b) = {0.25 / self.b:.4g}, "
                f"and the largest here is {float(var.max()):.4g}; use b <= 0 or smaller weights before this layer")

    def _det(self, k, v1, v2):
        b = self.b
        return _gap(k, v1, v2).mul_(4.0 * b * b).sub_((v1 + v2) * (2.0 * b)).add_(1.0).clamp_(min=0.0)

    def nngp_map(self, k, v1, v2):
        return self._det(k, v1, v2).rsqrt_().mul_(self.a**2)

    def ntk_factor(self, k, v1, v2):
        return self._det(k, v1, v2).pow_(-1.5).mul_(k).mul_(4.0 * self.a**2 * self.b**2)

    def gaussian_mean(self, var):
        return (var.clamp(min=0) * (-2.0 * self.b)).add_(1.0).rsqrt_().mul_(self.a)

    def phi(self, h):
        return torch.exp(h * h * self.b) * self.a
