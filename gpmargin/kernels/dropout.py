r"""Dropout (neural-tangents' ``stax.Dropout``): its kernel map and finite module."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer, hyperparameter
from gpmargin.kernels.finite import Flow, LayerModule
from gpmargin.kernels.state import KernelState, Spec

MODES = ("train", "test")


def _scale_position_diagonal(t, f: float):
    """``t[n, p, p] *= f`` for a self state's ``(N, H, W, H, W)`` tensor (made contiguous)."""
    t = t.contiguous()
    n, h, w = t.shape[:3]
    t.view(n, h * w, h * w).diagonal(dim1=-2, dim2=-1).mul_(f)
    return t


class DropoutModule(LayerModule):
    """Finite ``Dropout``: applies the layer's dropout while the module is in training mode
    (``net.train()``, torch's default), the identity after ``net.eval()``."""

    def forward(self, fl: Flow) -> Flow:
        return self.layer.finite(fl, training=self.training)


class Dropout(Layer):
    r"""Dropout with keep probability ``rate`` (neural-tangents' meaning of ``rate``, as in
    ``jax.example_libraries.stax.Dropout``: ``rate=1`` keeps every unit; *not* torch's drop
    probability ``p = 1 - rate``), ``0 < rate <= 1``.

    ``mode="train"``: every unit is kept with probability ``rate`` and scaled by ``1/rate``
    (inverted dropout), a mask drawn independently per unit, position and example, so
    :math:`E[m m'] / rate^2` is ``1/rate`` for a unit with itself and 1 otherwise:

    .. math::
        \Sigma_{out}[x,p;\,x',p'] = \Sigma_{in}[x,p;\,x',p']\;
            \big(1 + (1/rate - 1)\,\delta_{xx'}\delta_{pp'}\big),

    likewise for the NTK: only an input with itself at the same position changes (the diagonal
    of ``k(x)`` -- ``x2=None``, or ``x2`` equal to ``x1`` -- and ``k.diag``); distinct inputs, and
    the rows of two different input sets ``x1, x2``, are distinct examples with independent masks
    (as neural-tangents' ``x1_is_x2``).  The mean over
    units is unchanged, the pair distance grows by :math:`(1/rate - 1)(v_1 + v_2)` (exactly).
    ``mode="test"``: the identity.

    The masks make the outputs non-Gaussian: put ``Dropout`` before an affine layer (as usual,
    after an activation).  Like neural-tangents, it refuses the network inputs (features of
    finite width, whose masked kernel is random, not a Gaussian-process limit).

    Finite module: ``torch.nn.functional.dropout(h, p=1 - rate)`` (torch's global generator, a
    fresh mask at every forward pass; ``torch.manual_seed`` makes it reproducible) while the
    network is in training mode (the default), the identity after ``net.eval()`` or with
    ``mode="test"``.
    """

    maps_dist = True

    def __init__(self, rate: float, mode: str = "train"):
        if isinstance(rate, bool) or not isinstance(rate, (numbers.Real, torch.Tensor)):
            raise GpmarginError(f"Dropout rate={rate!r} is the keep probability and must be in (0, 1]")
        value = hyperparameter(rate, "rate", "Dropout")
        if not 0.0 < float(torch.as_tensor(value).detach()) <= 1.0:
            raise GpmarginError(f"Dropout rate={rate!r} is the keep probability and must be in (0, 1]")
        if mode not in MODES:
            raise GpmarginError(f"Dropout mode={mode!r} must be 'train' or 'test'")
        self.rate = value
        self.mode = mode

    @property
    def active(self) -> bool:
        return self.mode == "train" and self.rate != 1.0

    def out_spec(self, spec: Spec) -> Spec:
        if self.active and spec.shape[0] is not None:
            raise self.fail(spec, "dropout applies to hidden features (infinite width), not to the network inputs")
        return spec

    def apply(self, st: KernelState) -> KernelState:
        if not self.active:
            if not st.keep_dist:
                st.dist = None
            return st
        f = 1.0 / self.rate
        if st.is_exact_diagonal:  # every entry: an input with itself at one position
            st.nngp.mul_(f)
            if st.ntk is not None:
                st.ntk.mul_(f)
            return st
        self_full = not st.pair and not st.points  # one image's position pairs ("full" layout)
        if self_full:
            st.nngp = _scale_position_diagonal(st.nngp, f)
            if st.ntk is not None:
                st.ntk = _scale_position_diagonal(st.ntk, f)
        if st.dist is not None and st.keep_dist:
            # distinct units: E[(m u / r - m' u' / r)^2] = (v1 + v2) / r - 2 Sigma = dist + (1/r - 1)(v1 + v2)
            v1, v2 = st.bcast1(st.var1.clamp(min=0)), st.bcast2(st.var2.clamp(min=0))
            extra = (v1 + v2).mul_(f - 1.0)
            if self_full:  # the same unit at the same position has the same mask: no change
                extra = _scale_position_diagonal(extra.expand_as(st.dist).clone(), 0.0)
            st.dist = st.dist.add_(extra)
        else:
            st.dist = None
        return st

    def module(self, in_shape, units, init):
        return DropoutModule(self), tuple(in_shape)

    def finite(self, fl: Flow, training: bool = True) -> Flow:
        if not (training and self.active):
            return fl
        h = F.dropout(fl.h, p=1.0 - self.rate, training=True, inplace=fl.fresh)
        return Flow(h, fl.layout, fl.members, fl.factors, True)  # the mask commutes with pending factors
