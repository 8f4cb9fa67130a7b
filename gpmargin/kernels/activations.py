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

from gpmargin.kernels.base import Layer, hyperparameter
from gpmargin.kernels.finite import Flow, LayerModule
from gpmargin.kernels.inputs import differentiated as _tracked
from gpmargin.kernels.state import KernelState, Spec


def _inverse_or_zero(r: torch.Tensor) -> torch.Tensor:
    """``1 / r`` for ``r >= 0``, with 0 where ``r == 0``."""
    positive = r > 0
    return torch.where(positive, 1.0 / torch.where(positive, r, torch.ones_like(r)), torch.zeros_like(r))


def _rsqrt_or_zero(v: torch.Tensor) -> torch.Tensor:
    """1/sqrt(v), with 0 where v == 0 (then the covariance is 0 too)."""
    return _inverse_or_zero(v.clamp(min=0).sqrt())


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
    """The value of ``t`` if all its entries are equal (and autograd need not see it), else None."""
    if _tracked(t):
        return None
    lo, hi = float(t.min()), float(t.max())
    return lo if lo == hi else None


class Activation(Layer):
    """Base class: shape-preserving; the mean over units is known only after a linear layer."""

    maps_dist = True
    gaussian_out = False

    needs_gaussian = True  # the closed form is an expectation over Gaussian pre-activations

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


# 1 - cos(theta) below which the angle is taken from the carried distance (see
# gpmargin.kernels.state): elsewhere the plain arc-cosine is accurate to eps / sin(theta) < 3e-14.
NEAR_ONE = 1e-5


def near_one(cos: torch.Tensor) -> tuple:
    """The indices of the entries of ``cos`` above ``1 - NEAR_ONE`` (``nonzero(as_tuple=True)``),
    after one cheap maximum when there are none (the common case off the diagonal)."""
    if cos.numel() == 0 or float(cos.max()) <= 1.0 - NEAR_ONE:
        return tuple(torch.zeros(0, dtype=torch.long, device=cos.device) for _ in range(cos.dim()))
    return (cos > 1.0 - NEAR_ONE).nonzero(as_tuple=True)


def _sin_minus_theta_cos(theta: torch.Tensor) -> torch.Tensor:
    """``sin t - t cos t = t^3/3 - t^5/30 + t^7/840 - t^9/45360 + ...`` without cancellation, for
    the small angles ``t < 0.05`` it is used at (truncation error below 1e-17 relative)."""
    t2 = theta * theta
    return (((t2 * (-1.0 / 45360) + 1.0 / 840) * t2 - 1.0 / 30) * t2 + 1.0 / 3) * t2 * theta


class _Root(torch.autograd.Function):
    """``sqrt(x)`` of ``x >= 0`` whose derivative ``1 / (2 sqrt x)`` is taken as 0 at ``x = 0``."""

    @staticmethod
    def forward(ctx, x):
        r = x.sqrt()
        ctx.save_for_backward(r)
        ctx.save_for_forward(r)
        return r

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return grad * 0.5 * _inverse_or_zero(r)

    @staticmethod
    def jvp(ctx, tangent):
        (r,) = ctx.saved_tensors
        return tangent * 0.5 * _inverse_or_zero(r)


def root(x: torch.Tensor) -> torch.Tensor:
    r"""``sqrt(x)`` for ``x >= 0`` (in place when autograd does not record it).

    Used for the :math:`\sin\theta`-like roots of the angle of two pre-activations
    (:math:`\sqrt{v_1 v_2 - \Sigma^2}`, :math:`\sqrt{(1 - \cos\theta)/2}`), whose derivative is
    infinite where the two coincide: there it is taken as 0, so a map whose own derivative is
    finite (the infinite terms cancel) gets it, and one whose derivative is truly infinite gets its
    derivative along the moves that keep the pair coinciding (see :class:`ABRelu`)."""
    return _Root.apply(x) if _tracked(x) else x.sqrt_()


def _arc_vjp(ctx, grad_j, grad_factor, d_cos: float):
    r"""Backward of :math:`(J, F) = (f\sin\theta + (g - f\theta)\cos\theta,\ g - f\theta)` for an
    input coordinate whose derivative with respect to :math:`\cos\theta` is ``d_cos``:
    :math:`\partial J / \partial\cos\theta = F` and :math:`\partial F / \partial\cos\theta = f / \sin\theta`,
    taken as 0 where :math:`\sin\theta = 0` (see :class:`ABRelu`); :math:`\partial J/\partial f = \sin\theta -
    \theta\cos\theta`, :math:`\partial J/\partial g = \cos\theta`, :math:`\partial F/\partial f = -\theta`,
    :math:`\partial F/\partial g = 1`."""
    theta, sin, cos, factor = ctx.saved_tensors
    grad_j = torch.zeros_like(theta) if grad_j is None else grad_j
    grad_factor = torch.zeros_like(theta) if grad_factor is None else grad_factor
    grad_in = (grad_j * factor + grad_factor * _factor_slope(sin, ctx.f)) * d_cos
    grad_f = grad_g = None
    if ctx.needs_input_grad[1]:
        grad_f = (grad_j * (sin - theta * cos) - grad_factor * theta).sum()
    if ctx.needs_input_grad[2]:
        grad_g = (grad_j * cos + grad_factor).sum()
    return grad_in, grad_f, grad_g


def _factor_slope(sin: torch.Tensor, f: float) -> torch.Tensor:
    r""":math:`\partial F / \partial\cos\theta = f / \sin\theta`, 0 where :math:`\sin\theta = 0`."""
    return f * _inverse_or_zero(sin)


def _arc_jvp(ctx, tangent, f_t, g_t, d_cos: float):
    """Forward-mode twin of :func:`_arc_vjp`: the tangents of ``(J, F)``."""
    theta, sin, cos, factor = ctx.saved_tensors
    t_j = tangent * factor * d_cos if tangent is not None else torch.zeros_like(theta)
    t_f = tangent * _factor_slope(sin, ctx.f) * d_cos if tangent is not None else torch.zeros_like(theta)
    if f_t is not None:
        t_j = t_j + f_t * (sin - theta * cos)
        t_f = t_f - f_t * theta
    if g_t is not None:
        t_j = t_j + g_t * cos
        t_f = t_f + g_t
    return t_j, t_f


def _arc_cosine(k: torch.Tensor, f: float, g: float, keep: bool):
    r"""``k = cos theta`` rewritten in place into :math:`J = f\sin\theta + (g - f\theta)\cos\theta`;
    returns ``(J, F = g - f theta, saved)`` with ``saved = (theta, sin, cos, F)`` for the
    derivatives when ``keep`` (else ``None``; ``F`` then reuses the angle's memory)."""
    one = k.new_ones(())
    theta = torch.arccos(k)
    cos = k.clone() if keep else None
    # f sin(theta) = f sqrt((1 - cos)(1 + cos)): each factor is exact where it is small
    # (Sterbenz), so sin keeps its relative accuracy at cos = +-1, like the arc-cosine
    sin = torch.sub(one, k).mul_(torch.add(k, one)).sqrt_()
    factor = theta.clone() if keep else theta
    torch.add(one * g, factor, alpha=-f, out=factor)  # g - f theta = E[phi'(u) phi'(u')]
    saved = (theta, sin, cos, factor) if keep else None
    sin = sin * f if keep else sin.mul_(f)
    torch.addcmul(sin, factor, k, out=k)  # f sin + (g - f theta) cos
    return k, factor, saved


class _ArcCosine(torch.autograd.Function):
    r"""``cos theta -> (J, F)`` of the degree-1 arc-cosine map (:class:`ABRelu`), in place on
    ``cos``: :math:`J = f\sin\theta + (g - f\theta)\cos\theta`, :math:`F = g - f\theta`, with the
    backward of :func:`_arc_vjp` (finite where ``arccos'`` is not, at :math:`\cos\theta = \pm 1`)."""

    @staticmethod
    def forward(ctx, k, f, g, keep: bool):
        fv = float(f)
        k, factor, saved = _arc_cosine(k, fv, float(g), True)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.f = fv
        ctx.mark_dirty(k)
        return k, factor

    @staticmethod
    def backward(ctx, grad_j, grad_factor):
        return (*_arc_vjp(ctx, grad_j, grad_factor, 1.0), None)

    @staticmethod
    def jvp(ctx, k_t, f_t, g_t, _):
        t_j, t_f = _arc_jvp(ctx, k_t, f_t, g_t, 1.0)
        return k_t.copy_(t_j), t_f  # the tangent of the input rewritten in place, as the input


class _ArcCosineNear(torch.autograd.Function):
    r"""``1 - cos theta -> (J, F, S)`` for small angles (:func:`arccos_near_one`): ``J, F`` as
    :class:`_ArcCosine` and :math:`S = \sin\theta - \theta\cos\theta` (by its series), with
    :math:`\partial S / \partial(1 - \cos\theta) = \theta`."""

    @staticmethod
    def forward(ctx, one_minus_cos, f, g):
        fv, gv = float(f), float(g)
        theta = one_minus_cos.mul(0.5).sqrt_().arcsin_().mul_(2.0)
        cos = 1.0 - one_minus_cos
        sin = (one_minus_cos * (2.0 - one_minus_cos)).sqrt_()
        factor = gv - fv * theta
        ctx.save_for_backward(theta, sin, cos, factor)
        ctx.save_for_forward(theta, sin, cos, factor)
        ctx.f = fv
        return fv * sin + factor * cos, factor, _sin_minus_theta_cos(theta)

    @staticmethod
    def backward(ctx, grad_j, grad_factor, grad_s):
        grad_in, grad_f, grad_g = _arc_vjp(ctx, grad_j, grad_factor, -1.0)
        if grad_s is not None:
            grad_in = grad_in + grad_s * ctx.saved_tensors[0]
        return grad_in, grad_f, grad_g

    @staticmethod
    def jvp(ctx, tangent, f_t, g_t):
        t_j, t_f = _arc_jvp(ctx, tangent, f_t, g_t, -1.0)
        theta = ctx.saved_tensors[0]
        return t_j, t_f, (tangent * theta if tangent is not None else torch.zeros_like(theta))


def arccos_near_one(dist, s1, s2, f, g):
    r"""The degree-1 arc-cosine map from the distance, for pairs near correlation 1.

    With :math:`p = \sqrt{v_1 v_2}` (``s_i = \sqrt{v_i}``), :math:`\delta = (s_1 - s_2)^2` and
    :math:`1 - \cos\theta = (d - \delta) / 2p`, :math:`\theta = 2 \arcsin\sqrt{(1 - \cos\theta)/2}`;
    returns :math:`\Sigma' = p [f \sin\theta + (g - f\theta)\cos\theta]`, the NTK factor
    :math:`g - f\theta` and the output distance
    :math:`d' = g\delta + 2p\,[g (1 - \cos\theta) - f (\sin\theta - \theta\cos\theta)]`, each with its
    relative accuracy however small ``theta`` is.  Called only where ``1 - cos theta < NEAR_ONE``
    (``theta < 0.005``); ``1 - cos theta`` is clamped to 1e-3 (``theta < 0.045``), inside the
    range of the series for ``sin theta - theta cos theta``.
    """
    p = s1 * s2
    delta = (s1 - s2).square_()
    one_minus_cos = (dist - delta).mul_(0.5 * _rsqrt_or_zero(p * p)).clamp_(0.0, 1e-3)
    j, factor, s = _ArcCosineNear.apply(one_minus_cos, f, g)
    sigma = p * j
    dist_out = g * delta + 2.0 * p * (g * one_minus_cos - f * s)
    return sigma, factor, dist_out


def _expand_at(a: torch.Tensor, like: torch.Tensor, where) -> torch.Tensor:
    """Entries ``where`` of the statistic ``a`` broadcast onto ``like``."""
    return a.expand_as(like)[where]


class ABRelu(Activation):
    r"""``phi(x) = a min(x, 0) + b max(x, 0)`` (the arc-cosine kernel of degree 1).

    With :math:`\cos\theta = \Sigma / \sqrt{v_1 v_2}`, :math:`f = (a-b)^2 / 2\pi` and
    :math:`g = (a^2 + b^2)/2`:

    .. math::
        \Sigma_{out} = \sqrt{v_1 v_2}\,[f \sin\theta + (g - f\theta)\cos\theta], \qquad
        \Theta_{out} = (g - f\theta)\,\Theta_{in}.

    Where :math:`1 - \cos\theta <` ``NEAR_ONE`` the angle comes from the pair's carried distance
    (:func:`arccos_near_one`), so nearly coinciding pre-activations (identical receptive fields of
    distinct images, duplicated inputs) keep full precision; near :math:`\cos\theta = -1` (exactly
    opposite inputs) the NNGP stays exact but :math:`\theta`, hence the NTK, is accurate to
    about :math:`\sqrt{\epsilon}`.

    The mean over units is :math:`(b - a)\sqrt{v / 2\pi}`.  ``Relu(scale)`` is ``ABRelu(0, scale)``
    and ``LeakyRelu(slope)`` is ``ABRelu(slope, 1)``.

    Derivatives (autograd, reverse and forward mode; ``a``, ``b`` may be tensors): the map has its
    own, :math:`\partial\Sigma_{out}/\partial\cos\theta = \sqrt{v_1 v_2}\,(g - f\theta)`, finite at
    :math:`\cos\theta = 1` where :math:`\arccos'` is not, so the NNGP's gradient at coinciding
    pre-activations (duplicated inputs, identical receptive fields) is exact.  The NTK factor
    :math:`g - f\theta` has :math:`\partial/\partial\cos\theta = f/\sin\theta`, infinite there: the
    NTK of two coinciding inputs is not differentiable (a kink in :math:`\theta`, like :math:`|x|`),
    and the value returned is its derivative along the moves that keep the pair coinciding (the
    slope in :math:`\cos\theta` taken as 0 where :math:`\sin\theta = 0`).
    """

    uses_dist = True

    def __init__(self, a: float, b: float):
        self.a = hyperparameter(a, "a", type(self).__name__)
        self.b = hyperparameter(b, "b", type(self).__name__)

    def gaussian_mean(self, var):
        return (self.b - self.a) * (var.clamp(min=0) / (2 * math.pi)).sqrt()

    def sphere_mean(self, var, k):
        # phi is positively homogeneous: with g = r w (r = |g| independent of w), E_sphere = E_gauss
        # * sqrt(k) / E[r], E[r] = sqrt(2) Gamma((k+1)/2) / Gamma(k/2).  Second moments need no
        # correction (E[r^2] = k), so only the mean changes.
        ratio = math.sqrt(k / 2.0) * math.exp(math.lgamma(k / 2.0) - math.lgamma((k + 1) / 2.0))
        return self.gaussian_mean(var) * ratio

    def precompute(self, var, mean):
        var = var.clamp(min=0)
        sqrt, rsqrt = var.sqrt(), _rsqrt_or_zero(var)
        zero = var == 0
        zero = zero.to(var.dtype) if bool(zero.any()) else None  # z: 1 where the variance is 0
        return {"var": var, "sqrt": sqrt, "rsqrt": rsqrt, "sqrt_const": _const(sqrt), "rsqrt_const": _const(rsqrt),
                "zero": zero}

    def finite(self, fl: Flow) -> Flow:
        a, b = self.a, self.b
        if b > 0 and fl.scale() > 0:
            # phi(x) = b * leaky_relu(x, a / b) is positively homogeneous: keep b as a pending factor
            slope = a / b
            if slope == 0:
                h = fl.h.relu_() if fl.fresh else torch.relu(fl.h)
            else:
                h = F.leaky_relu(fl.h, slope, inplace=fl.fresh and slope > 0)
            return Flow(h, fl.layout, fl.members, fl.times(b), False)  # relu saved its output
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
        if st.aux1 is None or st.aux2 is None:
            st.aux1, st.aux2 = self.precompute(st.var1, None), self.precompute(st.var2, None)
        record = st.dist is None and st.near is not None  # the driver recomputes near pairs
        dist = None if record else st.pair_dist()
        _scale(k, st, "rsqrt")
        k.clamp_(-1.0, 1.0)  # cos(theta)
        # Identical pre-activations (dist == 0 exactly: identical receptive fields) have theta = 0:
        # those with nonzero variances have cos within rounding of 1, so they are among the near
        # candidates; where both variances vanish (k = 0) the NTK factor is set to g below.
        exact, both_zero = None, None
        if dist is not None and st.aux1["zero"] is not None and st.aux2["zero"] is not None:
            both_zero = (st.bcast1(st.aux1["zero"]), st.bcast2(st.aux2["zero"]))
        near = near_one(k)
        if dist is not None and near[0].numel():
            coincide = dist[near] == 0
            exact = tuple(i[coincide] for i in near)
            near = tuple(i[~coincide] for i in near)
            k[exact] = 1.0
        fix = near[0].numel() > 0
        if record and fix:
            st.near.append(near)
            fix = False
        if fix:  # the angle from the distance (see arccos_near_one)
            s1 = _expand_at(st.bcast1(st.aux1["sqrt"]), k, near)
            s2 = _expand_at(st.bcast2(st.aux2["sqrt"]), k, near)
            sigma_near, factor_near, dist_near = arccos_near_one(dist[near], s1, s2, f, g)
            ntk_near = None if st.ntk is None else st.ntk[near] * factor_near
        k = st.nngp = self._arccos_map(k, st, f, g, both_zero)
        if st.keep_dist:  # d' = g v1 + g v2 - 2 Sigma': accurate wherever 1 - cos > NEAR_ONE
            gv1, gv2 = st.bcast1(st.aux1["var"] * g), st.bcast2(st.aux2["var"] * g)
            if _tracked(dist, k, gv1, gv2):  # (autograd records no out= call)
                dist.copy_(gv1.expand_as(k)).add_(gv2)
            else:
                torch.add(gv1, gv2, out=dist)
            dist.add_(k, alpha=-2.0).clamp_(min=0.0)
            if exact is not None:
                dist[exact] = 0.0  # (where both variances vanish it is 0 already)
        if fix:
            k[near] = sigma_near
            if st.ntk is not None:
                st.ntk[near] = ntk_near
            if st.keep_dist:
                dist[near] = dist_near
        st.dist = dist if st.keep_dist else None
        return st

    @staticmethod
    def _arccos_map(k: torch.Tensor, st: KernelState, f, g, both_zero=None) -> torch.Tensor:
        """``k <- sqrt(v1 v2) [f sin(theta) + (g - f theta) cos(theta)]`` from ``k = cos(theta)``,
        and ``ntk <- (g - f theta) ntk``, in place (:class:`_ArcCosine`); ``both_zero = (z1, z2)``
        (1 where a variance is 0): the pairs where both are 0 have ``k = 0`` but theta = 0, so
        their NTK factor ``g - f pi/2`` gets ``f pi/2`` back."""
        keep = _tracked(k, f, g)
        if keep:  # (autograd: a Function may rewrite only a tensor that is not a view when it returns two)
            k, factor = _ArcCosine.apply(k.clone(), f, g, True)
        else:  # the float path: the same arithmetic without a Function call's overhead
            k, factor, _ = _arc_cosine(k, float(f), float(g), False)
        if st.ntk is not None:
            if both_zero is not None:
                back = f * (math.pi / 2)
                factor = (factor + both_zero[0] * both_zero[1] * back if keep  # (f may be a tensor)
                          else factor.addcmul_(*both_zero, value=back))
            st.ntk.mul_(factor)
        del factor
        _scale(k, st, "sqrt")
        return k


class Relu(ABRelu):
    """``phi(x) = scale * max(x, 0)``; the paper uses ``scale = sqrt(2)`` (variance preserving)."""

    def __init__(self, scale: float = 1.0):
        super().__init__(0.0, hyperparameter(scale, "scale", "Relu"))
        self.scale = self.b


class LeakyRelu(ABRelu):
    """``phi(x) = max(x, 0) + slope * min(x, 0)``."""

    def __init__(self, slope: float):
        super().__init__(hyperparameter(slope, "slope", "LeakyRelu"), 1.0)
        self.slope = self.a


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
        self.a = hyperparameter(a, "a", "Erf")
        self.b = hyperparameter(b, "b", "Erf")
        self.c = hyperparameter(c, "c", "Erf")

    def gaussian_mean(self, var):
        return torch.zeros_like(var) + self.c

    def finite(self, fl: Flow) -> Flow:
        h = fl.materialise().h
        y = torch.erf(h * self.b if self.b != 1.0 else h)
        y = y * self.a if self.a != 1.0 else y
        return Flow(y + self.c if self.c else y, fl.layout, fl.members, {}, True)

    def self_nngp(self, var: torch.Tensor) -> torch.Tensor:
        """``E[phi(u)^2]`` for ``u ~ N(0, var)``: the output variance."""
        beta = 2.0 * self.b**2
        v = var.clamp(min=0)
        return (v * beta / (v * beta + 1.0)).arcsin_().mul_(self.a**2 * 2.0 / math.pi).add_(self.c**2)

    def dist_near(self, dist, v1, v2) -> torch.Tensor:
        r"""Output distance :math:`E[(\phi(u) - \phi(u'))^2] = \frac{2a^2}{\pi}[\arcsin s_1 + \arcsin s_2
        - 2\arcsin u]` (:math:`s_i = \beta v_i / q_i`, :math:`\beta = 2b^2`) for nearly coinciding
        pairs, without cancellation: each :math:`\arcsin x - \arcsin y` is an ``atan2`` whose sine
        :math:`(x - y)(x + y) / (x\sqrt{1-y^2} + y\sqrt{1-x^2})` takes :math:`s_i - u` from the
        distance :math:`d` (1-D tensors of the pairs' ``d, v1, v2``)."""
        beta = 2.0 * self.b**2
        q1, q2 = 1.0 + beta * v1, 1.0 + beta * v2
        r1, r2 = q1.rsqrt(), q2.rsqrt()
        root_sum = q1.sqrt() + q2.sqrt()
        dv = v1 - v2
        s1, s2 = beta * v1 / q1, beta * v2 / q2
        u = beta * 0.5 * (v1 + v2 - dist) * r1 * r2
        # s1 - u = beta r1 (v1 r1 - Sigma r2), expanded so that v1 - v2 and d appear explicitly
        s1_u = beta * r1 * (dv * (0.5 * r2 - beta * v1 * r1 * r2 / root_sum) + 0.5 * dist * r2)
        s2_u = beta * r2 * (-dv * (0.5 * r1 - beta * v2 * r1 * r2 / root_sum) + 0.5 * dist * r1)
        cu = (1.0 - u * u).clamp_(min=0.0).sqrt_()

        def asin_minus_asin_u(x, x_u, one_minus_x):
            cx = (one_minus_x * (1.0 + x)).clamp_(min=0.0).sqrt_()
            same_sign = x * u > 0
            sine = torch.where(same_sign, x_u * (x + u) / torch.where(same_sign, x * cu + u * cx, 1.0),
                               x * cu - u * cx)
            return torch.atan2(sine, cx * cu + x * u)

        total = asin_minus_asin_u(s1, s1_u, 1.0 / q1) + asin_minus_asin_u(s2, s2_u, 1.0 / q2)
        return total.mul_(self.a**2 * 2.0 / math.pi).clamp_(min=0.0)

    def apply(self, st: KernelState) -> KernelState:
        b2 = self.b**2
        v1, v2 = st.bcast1(st.var1.clamp(min=0)), st.bcast2(st.var2.clamp(min=0))
        k = st.nngp
        near = None
        if st.keep_dist:
            dist = st.pair_dist()
            # pairs this close need the well-conditioned distance; elsewhere the subtraction
            # v1' + v2' - 2 Sigma' loses at most a factor 1e4 of its relative accuracy
            same = dist == 0  # identical pre-activations: identical outputs
            near = ((dist < (v1 + v2).mul_(1e-4)) & ~same).nonzero(as_tuple=True)
            if near[0].numel():
                dist_near = self.dist_near(dist[near], _expand_at(v1, k, near), _expand_at(v2, k, near))
        if st.ntk is not None:
            # q1 q2 - 4 b^4 K^2 = 1 + 2 b^2 (v1 + v2) + 4 b^4 (v1 v2 - K^2): no cancellation near |u| = 1
            den = torch.mul(k, k).neg_().addcmul_(v1, v2).clamp_(min=0.0).mul_(4.0 * b2 * b2)
            den.add_((v1 + v2) * (2.0 * b2)).add_(1.0).rsqrt_()
            st.ntk.mul_(den).mul_(self.a**2 * b2 * 4.0 / math.pi)
            del den
        r1 = (v1 * (2.0 * b2) + 1.0).rsqrt_()
        r2 = (v2 * (2.0 * b2) + 1.0).rsqrt_()
        k.mul_(2.0 * b2).mul_(r1).mul_(r2).clamp_(-1.0, 1.0)  # u
        k.arcsin_().mul_(self.a**2 * 2.0 / math.pi)
        if self.c:
            k.add_(self.c**2)
        if st.keep_dist:
            out1, out2 = st.bcast1(self.self_nngp(st.var1)), st.bcast2(self.self_nngp(st.var2))
            dist = dist.copy_(out1.expand_as(k)).add_(out2).add_(k, alpha=-2.0).clamp_(min=0.0)
            dist.masked_fill_(same, 0.0)
            if near[0].numel():
                dist[near] = dist_near
            st.dist = dist
        else:
            st.dist = None
        return st


class Identity(Activation):
    """``phi(x) = x``: the kernel passes through unchanged."""

    gaussian_out = None
    needs_gaussian = False

    def out_mean(self, mean, var, spec):
        return mean

    def gaussian_mean(self, var):
        return torch.zeros_like(var)

    def apply(self, st: KernelState) -> KernelState:
        if not st.keep_dist:
            st.dist = None
        return st

    def finite(self, fl: Flow) -> Flow:
        return fl
