r"""Layer normalisation (neural-tangents' ``stax.LayerNorm``): its kernel map and finite module."""

from __future__ import annotations

import numbers

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer, hyperparameter
from gpmargin.kernels.finite import Flow, LayerModule
from gpmargin.kernels.state import KernelState, Spec


def _axes(axis) -> tuple[int, ...]:
    return (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)


class LayerNorm(Layer):
    r"""Normalise every example over ``axis``: ``f = (h - \mathrm{mean}(h)) / \sqrt{\mathrm{var}(h) + eps}``,
    the mean and (biased) variance taken over the units of the given axes of each example.

    Axes are those of the inputs, ``(N, d)`` or ``(N, C, H, W)`` (``(N, C, L)`` sequences are
    ``(N, C, 1, L)``): ``axis=1`` (the default; ``-1`` on vectors) normalises the features, or
    at every position the channels; ``(1, 2, 3)`` an image's channels and positions together,
    ``(1, 2)`` or ``(1, 3)`` channels and one spatial dim.  Channels must be among them (as in
    neural-tangents, whose default ``axis=-1`` is the channel axis of its ``NHWC`` images);
    the batch axis 0 must not.

    Kernel map.  At infinite width the mean over a group of units tends to the per-example
    :math:`M = \langle \mu \rangle` and the variance to :math:`V = \langle v \rangle - M^2`, with
    :math:`\mu[p], v[p]` the mean over units and the second moment (same-position variance) of
    the input at position ``p`` and :math:`\langle\cdot\rangle` the average over the spatial
    dims in ``axis`` (none for ``axis=1``).  With :math:`s_i = \sqrt{V_i + eps}`:

    .. math::
        \Sigma_{out}[p,p'] = \frac{\Sigma[p,p'] - M_1[p]\,\mu_2[p'] - \mu_1[p]\,M_2[p'] + M_1[p]\,M_2[p']}
                                  {s_1[p]\, s_2[p']}, \qquad
        \Theta_{out}[p,p'] = \frac{\Theta[p,p']}{s_1[p]\, s_2[p']}

    (the mean and variance of a group depend on each unit only through ``1/width``: they add
    nothing to the NTK).  For zero-mean inputs (after a ``Dense``/``Conv2d`` layer, a pool of
    such, or a ``LayerNorm``) :math:`M = 0`, :math:`V = \langle v \rangle`, and this is exactly
    neural-tangents' map :math:`\Sigma / \sqrt{(eps + \langle v_1 \rangle)(eps + \langle v_2
    \rangle)}`.  Neural-tangents refuses non-Gaussian inputs (the network inputs, activations);
    here the mean over units is known there (see ``Layer.out_mean``), and the map above is what
    the finite module computes in the limit (exactly, on the network inputs).  Where it is not
    known (an activation not fed by an affine layer) the layer raises.  The outputs have mean 0;
    they are Gaussian only when the inputs are, so follow a ``LayerNorm`` of activations with an
    affine layer, as activations themselves.

    The pair distance is mapped exactly: with :math:`\alpha_i = 1/s_i`, :math:`e = E[(h - M_1 -
    h' + M_2)^2]` and :math:`q_i = E[(h_i - M_i)^2]` at the pair's positions,
    :math:`d_{out} = \alpha_1\alpha_2 e + (\alpha_1 - \alpha_2)[(q_1 - q_2)\alpha_1 + q_2(\alpha_1 -
    \alpha_2)]`, :math:`\alpha_1 - \alpha_2 = (V_2 - V_1) / (s_1 s_2 (s_1 + s_2))`.
    """

    maps_dist = True

    def __init__(self, axis=1, eps: float = 1e-12):
        try:
            axes = _axes(axis)
        except TypeError:
            axes = ()
        if not axes or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
            raise GpmarginError(f"LayerNorm axis={axis!r} must be an int or a tuple of ints (axes of (N, C, H, W) "
                                "or (N, d) inputs)")
        self.axis = int(axis) if isinstance(axis, numbers.Integral) else tuple(int(a) for a in axes)
        self.eps = hyperparameter(eps, "eps", "LayerNorm")
        if not self.eps >= 0.0:
            raise GpmarginError(f"LayerNorm eps={eps!r} must be a non-negative number")

    # -- axes ---------------------------------------------------------------------------
    def resolve(self, ndim: int) -> tuple[int, ...] | str:
        """The axes of a ``(N, d)`` (``ndim`` 2) or ``(N, C, H, W)`` (4) input, sorted, or why not."""
        out = set()
        for a in _axes(self.axis):
            if not -ndim <= a < ndim:
                return f"axis {a} does not exist in a {ndim}-D input"
            out.add(a % ndim)
        if 0 in out:
            return "normalising over the batch axis 0 couples examples (no per-example kernel)"
        if 1 not in out:
            return "the channel / feature axis 1 must be among the axes (as in neural-tangents)"
        return tuple(sorted(out))

    def out_spec(self, spec: Spec) -> Spec:
        axes = self.resolve(2 if spec.kind == "vector" else 4)
        if isinstance(axes, str):
            raise self.fail(spec, axes)
        return spec

    def _reduced(self, ndim_var: int) -> tuple[int, ...]:
        """Dims of a per-example statistic ``(N,)`` / ``(N, H, W)`` averaged over the group."""
        axes = self.resolve(2 if ndim_var == 1 else 4)
        return tuple(a - 1 for a in axes if a >= 2)

    # -- kernel map -----------------------------------------------------------------------
    def precompute(self, var, mean):
        if mean is None:
            raise GpmarginError(
                f"{self!r} needs the mean over units of its input, which is known for the network inputs and after "
                "a linear layer (followed by at most one activation); put the LayerNorm after a Dense or Conv2d layer")
        red = self._reduced(var.dim())
        v = var.clamp(min=0)
        zero = not bool((mean != 0).any())
        if zero:
            m = big_m = torch.zeros_like(v)
            group = v.mean(red, keepdim=True).expand_as(v) if red else v
            q = v
        else:
            m = mean
            big_m = mean.mean(red, keepdim=True).expand_as(v) if red else mean
            second = v.mean(red, keepdim=True).expand_as(v) if red else v
            group = (second - big_m * big_m).clamp_(min=0)
            q = (v - 2.0 * big_m * m + big_m * big_m).clamp_(min=0) if red else group
        s = (group + self.eps).sqrt()
        return {"zero": zero, "mean": m, "M": big_m, "V": group, "s": s, "alpha": 1.0 / s, "q": q}

    def apply(self, st: KernelState) -> KernelState:
        a1, a2 = st.aux1, st.aux2
        k = st.nngp
        centred = not (a1["zero"] and a2["zero"])
        b1, b2 = st.bcast1, st.bcast2
        dist = None
        if st.dist is not None and st.keep_dist:
            d = st.dist
            if centred:  # e = d - 2 (M1 - M2)(mu1 - mu2) + (M1 - M2)^2
                gap_m = b1(a1["M"]) - b2(a2["M"])
                d = d - 2.0 * gap_m * (b1(a1["mean"]) - b2(a2["mean"])) + gap_m * gap_m
            s1, s2 = b1(a1["s"]), b2(a2["s"])
            al1, al2 = b1(a1["alpha"]), b2(a2["alpha"])
            dal = (b2(a2["V"]) - b1(a1["V"])) / (s1 * s2 * (s1 + s2))
            q1, q2 = b1(a1["q"]), b2(a2["q"])
            dist = (d * al1 * al2).add_(dal * ((q1 - q2) * al1 + q2 * dal)).clamp_(min=0.0)
        if centred:
            k.addcmul_(b1(a1["M"]), b2(a2["mean"]), value=-1.0).addcmul_(b1(a1["mean"]), b2(a2["M"]), value=-1.0)
            k.addcmul_(b1(a1["M"]), b2(a2["M"]))
        k.mul_(b1(a1["alpha"])).mul_(b2(a2["alpha"]))
        if st.ntk is not None:
            st.ntk.mul_(b1(a1["alpha"])).mul_(b2(a2["alpha"]))
        st.dist = dist
        return st

    def out_mean(self, mean, var, spec):
        return torch.zeros_like(var)

    # -- finite module ----------------------------------------------------------------------
    def module(self, in_shape, units, init):
        return LayerModule(self), tuple(in_shape)

    def finite(self, fl: Flow) -> Flow:
        """``(h - mean) / sqrt(var + eps)`` over the axes, per example and member (biased variance)."""
        h = fl.materialise().h  # eps breaks the scale invariance: apply pending factors first
        if fl.layout == "vector":  # (k, features, n)
            dims = (1,)
        elif fl.layout == "shared":  # (n, *features): the axes themselves
            dims = self.resolve(h.dim())
        else:  # (n, k * C, H, W) as (n, k, C, H, W)
            dims = tuple(a + 1 for a in self.resolve(4))
            n, _, hh, ww = h.shape
            h = h.reshape(n, fl.members, -1, hh, ww)
        var, mean = torch.var_mean(h, dim=dims, correction=0, keepdim=True)
        y = (h - mean) / (var + self.eps).sqrt()
        if fl.layout == "image":
            y = y.reshape(fl.h.shape)
        return Flow(y, fl.layout, fl.members, {}, True)
