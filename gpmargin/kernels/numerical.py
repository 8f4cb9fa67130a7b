r"""Activations given as functions: any torch callable by quadrature (:class:`ElementwiseNumerical`),
or a user's closed form of the expectations (:class:`Elementwise`).

Quadrature in polar coordinates.  With the pair written as :math:`u = \sqrt{v_1}\, r\cos\psi`,
:math:`u' = \sqrt{v_2}\, r\cos(\psi - \theta)`, :math:`\cos\theta = \Sigma / \sqrt{v_1 v_2}`
(clamped to ``[-1, 1]``; 0 where ``v1 v2 = 0``), ``r`` of density :math:`r e^{-r^2/2}` on
:math:`[0, \infty)` and :math:`\psi` uniform, the expectation is

.. math::
    E[f(u) f(u')] = \frac{1}{2\pi} \int_0^{2\pi} \!\! d\psi \int_0^\infty \! r e^{-r^2/2}\,
        f(\sqrt{v_1}\, r\cos\psi)\, f(\sqrt{v_2}\, r\cos(\psi - \theta))\, dr.

The lines :math:`u = 0` and :math:`u' = 0` cut the circle at four angles, into two arcs of length
:math:`\ell_1 = \theta` and two of length :math:`\ell_2 = \pi - \theta` (the second pair the first
with :math:`r \to -r`); on each arc both signs are fixed.  With :math:`\delta = \ell t,\ \epsilon =
\ell (1 - t)` the arc's offsets from its two ends,

.. math::
    (\cos\psi, \cos(\psi - \theta)) = (\sin\delta, -\sin\epsilon) \text{ on arc 1}, \qquad
    (\sin\epsilon, \sin\delta) \text{ on arc 2},

exactly (so every node gets the right signs however short the arc); with :math:`(c_{a,i}, c'_{a,i})`
these two cosines at the node :math:`t_i` of arc :math:`a`,

.. math::
    E[f(u) f(u')] \approx \sum_{a = 1, 2} \sum_i \frac{\ell_a w_i}{2\pi} \sum_j \omega_j
        \sum_\pm f(\pm\sqrt{v_1}\, r_j c_{a,i})\, f(\pm\sqrt{v_2}\, r_j c'_{a,i}),

with :math:`(t_i, w_i)` a Gauss-Legendre rule on ``[0, 1]`` (:math:`\sum_i w_i = 1`): ``deg`` nodes on
the longer arc, ``ceil(0.6 deg)`` on the shorter (where :math:`\cos\theta < 0` the rule runs on
:math:`(u, -u')`, so that arc 1 is the shorter, :math:`\theta \le \pi/2`), and :math:`(r_j, \omega_j)`
the ``deg``-point Gauss rule of the weight :math:`r e^{-r^2/2}` on :math:`[0, \infty)`
(:math:`\sum_j \omega_j = 1`; built once by a discretised Stieltjes procedure).
An activation smooth except at 0 is smooth on every ray and on every arc: for a positively
homogeneous one (``relu``, ``abs``, leaky ``relu``, and their derivatives) the radial integrand is
a polynomial times the weight (exact) and the angular one trigonometric on each arc (exponential
convergence); for smooth ones both converge exponentially (measurements in
:class:`ElementwiseNumerical`).  The NTK factor is the same sum with ``f'``, obtained from torch
autograd.  The diagonal is the same formula at :math:`\theta = 0`, so a pair of coinciding
pre-activations gets its diagonal value bit for bit.

The mean over units splits the line at 0:
:math:`E[f(u)] = \sum_j \omega^0_j\, [f(\sqrt{v}\, z_j) + f(-\sqrt{v}\, z_j)] / 2`, with the Gauss
rule :math:`(z_j, \omega^0_j)` of the weight :math:`e^{-z^2/2}` on :math:`[0, \infty)`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from gpmargin.errors import GpmarginError
from gpmargin.kernels.activations import root
from gpmargin.kernels.finite import positive_int
from gpmargin.kernels.smooth import ExpectationActivation

_BLOCK = 2**20  # function evaluations per vectorised call (memory: a few of these in float64)
_MEAN_DEG = 64  # nodes of the 1-D rule for the mean over units of Elementwise (used by Centred)
_SHORT = 0.6  # nodes on the shorter arc per node on the longer
_PANEL = 0.25  # width of the Gauss-Legendre panels discretising the radial weight


@functools.lru_cache(maxsize=None)
def _half_line_rule(n: int, power: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) of the ``n``-point Gauss rule of the weight
    ``r**power * exp(-r**2 / 2)`` on ``[0, inf)``: the recurrence of its orthonormal polynomials by
    the Stieltjes procedure on a fine discretisation (24-point Gauss-Legendre panels of width 1/4 up
    to where the weight times any polynomial of degree ``< 2n`` is negligible), then the
    eigenvalues of the Jacobi matrix (Golub-Welsch)."""
    length = 12.0 + 2.0 * math.sqrt(2.0 * n)
    panels = int(math.ceil(length / _PANEL))
    g, gw = np.polynomial.legendre.leggauss(24)
    h = length / panels
    x = (np.arange(panels)[:, None] * h + (g + 1.0) * (h / 2)).ravel()
    m = np.tile(gw * (h / 2), panels) * x**power * np.exp(-0.5 * x * x)
    m /= m.sum()
    alpha, beta = np.zeros(n), np.zeros(n)
    prev, cur = np.zeros_like(x), np.ones_like(x)
    for j in range(n):  # orthonormal p_{j+1} = ((x - alpha_j) p_j - beta_{j-1} p_{j-1}) / beta_j
        alpha[j] = m @ (x * cur * cur)
        nxt = (x - alpha[j]) * cur - (beta[j - 1] * prev if j else 0.0)
        beta[j] = math.sqrt(m @ (nxt * nxt))
        prev, cur = cur, nxt / beta[j]
    nodes, vec = np.linalg.eigh(np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1))
    w = vec[0] ** 2
    return nodes, w / w.sum()


@functools.lru_cache(maxsize=None)
def _arc_rule(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n``-point Gauss-Legendre rule on ``[0, 1]``: nodes ``t``, ``1 - t`` (each accurate near
    its own 0), weights summing to 1."""
    x, w = np.polynomial.legendre.leggauss(n)
    return (1.0 + x) / 2, (1.0 - x) / 2, w / 2


def _tensor(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64, device=like.device)


def gaussian_expectation(f, var: torch.Tensor, deg: int) -> torch.Tensor:
    """``E[f(u)]`` for ``u ~ N(0, var)``: the line split at 0, ``deg`` nodes on each half (module docstring)."""
    z, w = (_tensor(a, var) for a in _half_line_rule(deg, 0))
    z = torch.cat([z, -z])
    w = torch.cat([w, w]) / 2
    s = var.clamp(min=0).sqrt().reshape(-1)
    out = torch.empty_like(s)
    step = max(1, _BLOCK // (2 * deg))
    for r0 in range(0, s.numel(), step):  # in blocks of entries, so temporaries stay small
        out[r0 : r0 + step] = (f(s[r0 : r0 + step, None] * z) * w).sum(-1)
    return out.view_as(var)


def _cosines(k: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``cos(theta) = Sigma / sqrt(v1 v2)`` (1 exactly for ``Sigma = v1 = v2``); 0 where ``v1 v2 = 0``."""
    root = (v1 * v2).sqrt_()
    return torch.where(root > 0, k / torch.where(root > 0, root, torch.ones_like(root)), torch.zeros_like(root))


def _short_arc_nodes(deg: int) -> int:
    """Nodes on the shorter arc (length ``<= pi/2``), ``deg`` on the longer one."""
    return max(1, math.ceil(_SHORT * deg))


def pair_expectation(f, k: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, deg: int) -> torch.Tensor:
    """``E[f(u) f(u')]`` for the pairs of ``k`` (variances ``v1, v2`` broadcast onto it), by the polar
    rule of the module docstring, in blocks of entries so temporaries stay small.  Where
    ``cos theta < 0`` the rule runs on ``(u, -u')`` (``cos -> -cos``, ``sqrt(v2) -> -sqrt(v2)``), so
    that arc 1 is always the shorter one and gets fewer nodes."""
    t1, tb1, w1 = (_tensor(a, k) for a in _arc_rule(_short_arc_nodes(deg)))
    t2, tb2, w2 = (_tensor(a, k) for a in _arc_rule(deg))
    r, om = (_tensor(a, k) for a in _half_line_rule(deg, 1))
    r, om = torch.cat([r, -r]), torch.cat([om, om])  # r -> -r: the arcs 3 and 4
    v1, v2 = v1.clamp(min=0).expand_as(k), v2.clamp(min=0).expand_as(k)
    cos = _cosines(k, v1, v2).clamp_(-1.0, 1.0).reshape(-1)
    s1, s2 = v1.sqrt().reshape(-1), v2.sqrt().reshape(-1)
    s2 = torch.where(cos < 0, -s2, s2)
    cos = cos.abs()
    out = torch.empty_like(cos)
    step = max(1, _BLOCK // (2 * r.numel() * (t1.numel() + t2.numel())))
    for r0 in range(0, cos.numel(), step):
        c = cos[r0 : r0 + step, None]
        # arc lengths theta <= pi/2 and pi - theta (theta by atan2 of a root whose derivative is
        # taken as 0 at cos = 1, where the integrand's dependence on theta vanishes)
        l1 = torch.atan2(root((1.0 - c) * (1.0 + c)), c)
        l2 = math.pi - l1
        c1 = torch.cat([torch.sin(l1 * t1), torch.sin(l2 * tb2)], 1)  # cos(psi) at the nodes of arcs 1, 2
        c2 = torch.cat([torch.sin(l1 * tb1).neg_(), torch.sin(l2 * t2)], 1)  # cos(psi - theta)
        arc_w = torch.cat([l1 * w1, l2 * w2], 1).div_(2 * math.pi)
        f1 = f((c1 * s1[r0 : r0 + step, None])[:, :, None] * r)
        f2 = f((c2 * s2[r0 : r0 + step, None])[:, :, None] * r)
        # row-wise sums (not matrix products): their order of summation does not depend on how many
        # rows there are, so a pair equal to its diagonal entry gets the diagonal's value bit for bit
        out[r0 : r0 + step] = (f1 * f2).mul_(om).sum(-1).mul_(arc_w).sum(-1)  # f's outputs are not written
    return out.view_as(k)


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class ElementwiseNumerical(ExpectationActivation):
    r"""``phi = fn``, any elementwise torch function (``torch.tanh``, ``torch.nn.functional.silu``,
    ``softplus``...), its kernel by the polar quadrature of the module docstring:

    .. math::
        \Sigma_{out} \approx \sum_{a, i, j, \pm} W_{aij}\, \phi(\pm u_{aij})\phi(\pm u'_{aij}), \qquad
        \frac{\Theta_{out}}{\Theta_{in}} \approx \sum_{a, i, j, \pm} W_{aij}\, \phi'(\pm u_{aij})\phi'(\pm u'_{aij}),

    with :math:`W_{aij} = \ell_a w_i \omega_j / (2\pi)` and the nodes of the module docstring,

    ``phi'`` by torch autograd (``fn`` must be differentiable by torch for the NTK).  ``deg`` is
    the number of radial nodes and of Gauss-Legendre nodes on the longer arc (length
    ``pi - theta >= pi/2``; the shorter gets ``ceil(0.6 deg)``): ``6.4 deg^2`` evaluations of ``fn``
    per entry (the Gauss-Hermite rule of ``stax.ElementwiseNumerical`` costs ``deg^2``).  Exact to
    rounding for activations positively homogeneous on each side of a kink at 0 (``relu``, leaky
    ``relu``, ``abs``: 1e-15 at any ``deg >= 16``), exponentially convergent for smooth ones.
    Measured (NNGP, NTK) relative errors against the closed forms, MLP of pre-activation variance
    1.73 (MNIST), at ``deg`` = 16, 20, 24 and the default 26: ``erf`` (3e-8, 2e-8), (4e-10, 3e-9),
    (4e-12, 4e-11), (5e-13, 2e-12); ``gelu`` (8e-11, 7e-9), (2e-11, 1e-11), (1e-13, 1e-12),
    (1e-14, 6e-14); ``tanh`` against ``deg = 48``: (8e-13, 1e-11) at 26.  Larger variances need
    a larger ``deg`` for smooth activations (their angular integrand varies on the scale
    ``1 / sqrt(v)`` near the four cut angles).
    """

    def __init__(self, fn, deg: int = 26):
        if not callable(fn):
            raise GpmarginError(f"ElementwiseNumerical(fn={fn!r}): fn must be a callable mapping a torch tensor "
                                "elementwise")
        self.fn = fn
        self.deg = positive_int(deg, "ElementwiseNumerical deg")

    def _value(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(x.requires_grad and torch.is_grad_enabled()):
            return torch.as_tensor(self.fn(x), dtype=x.dtype, device=x.device)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``fn'(x)`` elementwise, by torch autograd (a one-line error when torch cannot differentiate fn)."""
        if fwAD.unpack_dual(x).tangent is not None:
            raise GpmarginError(
                f"ElementwiseNumerical({_fn_name(self.fn)}): the NTK has no forward-mode derivative (fn' comes from "
                "reverse-mode autograd); differentiate it in reverse mode (backward), or use get='nngp'")
        tracked = x.requires_grad and torch.is_grad_enabled()  # a differentiable kernel: fn'' too
        try:
            with torch.enable_grad():
                x = x if tracked else x.detach().requires_grad_(True)
                y = self.fn(x)
                (grad,) = torch.autograd.grad(y.sum(), x, create_graph=tracked)
        except (RuntimeError, TypeError, AttributeError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GpmarginError(
                f"ElementwiseNumerical({_fn_name(self.fn)}): the NTK needs fn's derivative, but torch autograd "
                f"cannot differentiate fn ({why}); pass a torch-differentiable fn, or use get='nngp'") from None
        return grad

    def nngp_map(self, k, v1, v2):
        return pair_expectation(self._value, k, v1, v2, self.deg)

    def ntk_factor(self, k, v1, v2):
        return pair_expectation(self.derivative, k, v1, v2, self.deg)

    def gaussian_mean(self, var):
        return gaussian_expectation(self._value, var, self.deg)

    def phi(self, h):
        return self.fn(h)


class Elementwise(ExpectationActivation):
    r"""An activation ``fn`` (a torch callable for the finite network, or ``None``) with the user's
    closed form of its expectations, as tensors (broadcast onto the kernel's layout):

    .. math::
        \Sigma_{out} = \texttt{nngp\_fn}(\Sigma, v_1, v_2) = E[\phi(u)\phi(u')], \qquad
        \frac{\Theta_{out}}{\Theta_{in}} = \texttt{d\_nngp\_fn}(\Sigma, v_1, v_2) = E[\phi'(u)\phi'(u')].

    Without ``d_nngp_fn`` only the NNGP is available (``get="ntk"`` raises; use
    :class:`ElementwiseNumerical` for an NTK by quadrature).  The mean over units (needed only by
    a following ``Centred``) is ``E[fn(u)]`` by the 1-D rule of the module docstring, 64 nodes on
    each side of 0.
    """

    def __init__(self, fn, nngp_fn, d_nngp_fn=None):
        for name, f in (("fn", fn), ("nngp_fn", nngp_fn), ("d_nngp_fn", d_nngp_fn)):
            if f is not None and not callable(f):
                raise GpmarginError(f"Elementwise({name}={f!r}): {name} must be a callable or None")
        if nngp_fn is None:
            raise GpmarginError("Elementwise(nngp_fn=None): the kernel needs nngp_fn(cov12, var1, var2) = "
                                "E[phi(u) phi(u')]; without a closed form use ElementwiseNumerical(fn)")
        self.fn = fn
        self.nngp_fn = nngp_fn
        self.d_nngp_fn = d_nngp_fn

    @property
    def supports_ntk(self) -> bool:  # type: ignore[override]
        return self.d_nngp_fn is not None

    def ntk_unsupported_reason(self) -> str:
        return (f"Elementwise({_fn_name(self.nngp_fn)}): get='ntk' needs d_nngp_fn(cov12, var1, var2) = "
                "E[phi'(u) phi'(u')], which was not given; pass it, or use ElementwiseNumerical(fn) "
                "(quadrature, derivative by torch autograd)")

    def _call(self, f, name, k, v1, v2):
        out = torch.as_tensor(f(k, v1, v2), dtype=k.dtype, device=k.device)
        try:
            return out.expand_as(k)
        except RuntimeError:
            raise GpmarginError(f"Elementwise: {name} returned shape {tuple(out.shape)} for covariances of shape "
                                f"{tuple(k.shape)}; it must work elementwise on broadcast tensors") from None

    def nngp_map(self, k, v1, v2):
        return self._call(self.nngp_fn, "nngp_fn", k, v1, v2)

    def ntk_factor(self, k, v1, v2):
        if self.d_nngp_fn is None:  # the engine checks first; reached only by a direct apply()
            raise GpmarginError(self.ntk_unsupported_reason())
        return self._call(self.d_nngp_fn, "d_nngp_fn", k, v1, v2)

    def out_mean(self, mean, var, spec):
        return None if self.fn is None else super().out_mean(mean, var, spec)

    def gaussian_mean(self, var):
        with torch.no_grad():
            return gaussian_expectation(self.fn, var, _MEAN_DEG)

    def phi(self, h):
        if self.fn is None:
            raise GpmarginError(f"{self!r} was given no fn, so it has no finite network; pass fn (a torch callable)")
        return self.fn(h)
