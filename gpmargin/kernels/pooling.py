"""The pooling family: readouts from images to feature vectors (``Flatten``, ``GlobalAvgPool``,
``GlobalSumPool``) and the window pools of images and sequences (``AvgPool``, ``SumPool``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer
from gpmargin.kernels.finite import Flow, LayerModule
from gpmargin.kernels.state import KernelState, Spec
from gpmargin.kernels.window import Window, parse_padding, window_tuple


def _per_member_vectors(h, members):
    """``(n, k * F)`` channel groups to feature-major per-member vectors ``(k, F, n)`` (a view)."""
    return h.reshape(h.shape[0], members, -1).permute(1, 2, 0)


def _trailing_mean(t, ndim):
    return t.mean(dim=tuple(range(t.dim() - ndim, t.dim())))


class Flatten(Layer):
    r"""Reshape ``(C, H, W)`` features to a vector (neural-tangents' ``stax.Flatten``).

    A following dense layer has fan-in ``C H W``, so the kernel is the average over positions
    of the same-position covariance: :math:`\Sigma_{out} = \frac{1}{HW}\sum_p \Sigma_{p,p}`
    (likewise for the NTK).  On vectors it is the identity.
    """

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind == "vector":
            return spec
        c, h, w = spec.shape
        return Spec("vector", (None if c is None else c * h * w,))

    def _reduce(self, t, layout):
        if layout == "diag":
            return _trailing_mean(t, 2)
        lead = t.shape[:-4]
        h, w = t.shape[-2:]
        return t.reshape(*lead, h * w, h * w).diagonal(dim1=-2, dim2=-1).mean(-1)

    maps_dist = True

    def apply(self, st: KernelState) -> KernelState:
        if st.layout == "vector":
            return st
        st.nngp = self._reduce(st.nngp, st.layout)
        if st.ntk is not None:
            st.ntk = self._reduce(st.ntk, st.layout)
        if st.dist is not None:
            st.dist = self._reduce(st.dist, st.layout)
        st.layout = "vector"
        return st

    def out_mean(self, mean, var, spec):
        if mean is None or mean.dim() == 1:
            return mean
        return _trailing_mean(mean, 2)

    def module(self, in_shape, units, init):
        return LayerModule(self), (int(math.prod(in_shape)),)

    def finite(self, fl: Flow) -> Flow:
        if fl.layout == "image":  # per member, channels then positions (C, H, W), like torch.flatten
            return Flow(_per_member_vectors(fl.h, fl.members), "vector", fl.members, fl.factors, False)
        if fl.layout == "shared" and fl.h.dim() > 2:
            return Flow(fl.h.reshape(fl.h.shape[0], -1), "shared", fl.members, fl.factors, False)
        return fl


def _not_carried(coincide: torch.Tensor) -> torch.Tensor:
    """The distance of pooled features: 0 where they coincide, NaN ("not carried") elsewhere."""
    return torch.full(coincide.shape, torch.nan, dtype=torch.float64, device=coincide.device).masked_fill_(coincide, 0.0)


class _GlobalPool(Layer):
    """Shared part of ``GlobalAvgPool`` and ``GlobalSumPool``: reduce every position pair."""

    needs_full_spatial = True
    maps_dist = True

    def _reduce(self, t: torch.Tensor, ndim: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind != "image":
            raise self.fail(spec, "global pooling needs images of shape (N, C, H, W)")
        return Spec("vector", (spec.shape[0],))

    def apply(self, st: KernelState) -> KernelState:
        st.nngp = self._reduce(st.nngp, 4)
        if st.ntk is not None:
            st.ntk = self._reduce(st.ntk, 4)
        if st.dist is not None:
            d = st.dist
            same_position = d.reshape(*d.shape[:-4], d.shape[-4] * d.shape[-3], -1).diagonal(dim1=-2, dim2=-1)
            st.dist = _not_carried((same_position == 0).all(-1))
        st.layout = "vector"
        return st

    def out_mean(self, mean, var, spec):
        return None if mean is None else self._reduce(mean, 2)

    def module(self, in_shape, units, init):
        return LayerModule(self), (in_shape[0],)

    def finite(self, fl: Flow) -> Flow:
        h = self._reduce(fl.h, 2)
        if fl.layout == "image":
            return Flow(_per_member_vectors(h, fl.members), "vector", fl.members, fl.factors, False)
        return Flow(h, "shared", fl.members, fl.factors, False)


class GlobalAvgPool(_GlobalPool):
    r"""Average each channel over positions (neural-tangents' ``stax.GlobalAvgPool``).

    :math:`\Sigma_{out} = \frac{1}{(HW)^2}\sum_{p,p'} \Sigma_{p,p'}` (likewise for the NTK); it
    reads pairs of distinct positions, so networks containing it keep the full
    position-position covariance (memory ``(HW)^2`` per pair of examples).

    The distance of the pooled features is not a function of the carried position-pair
    distances, except where those vanish at every position (identical features, as for a
    duplicated image): it is exactly 0 there and not carried (NaN) elsewhere, so a later
    activation computes it as ``v1 + v2 - 2 Sigma`` -- accurate to ``eps / theta`` in the
    angle, i.e. unless the pooled features of two distinct inputs nearly coincide.
    """

    def _reduce(self, t, ndim):
        return _trailing_mean(t, ndim)


class GlobalSumPool(_GlobalPool):
    r"""Sum each channel over positions (neural-tangents' ``stax.GlobalSumPool``).

    :math:`\Sigma_{out} = \sum_{p,p'} \Sigma_{p,p'}` (likewise for the NTK): ``(HW)^2`` times
    ``GlobalAvgPool``'s, with the same full position-position layout and the same treatment of
    the pair distance.  The mean over units of the outputs is the sum of the input's over
    positions.
    """

    def _reduce(self, t, ndim):
        return t.sum(dim=tuple(range(t.dim() - ndim, t.dim())))


class AvgPool(Window, Layer):
    r"""Average pooling of images ``(N, C, H, W)`` (neural-tangents' ``stax.AvgPool`` with its
    default ``normalize_edges=False``): ``f_{c,p} = \frac{1}{k_h k_w}\sum_a x_{c, s p + a}``.

    ``window_shape`` is ``(k_h, k_w)`` (an int: square), or ``(k,)`` for sequences ``(N, C, L)``;
    ``strides`` default to 1 in every dim (stax's default, not ``torch.nn.AvgPool2d``'s
    ``stride = window``); ``padding`` is ``"valid"``, ``"same"`` (zeros, which count in the
    average) or ``"circular"`` (periodic), with the geometry of
    :class:`~gpmargin.kernels.window.Window`.  There are no weights, so every pair of offsets
    of the two positions pairs up (the window average :math:`\mathcal{P}`, over the padded
    kernel):

    .. math::
        \Sigma_{out}[p,p'] = \frac{1}{(k_h k_w)^2} \sum_{a,b} \Sigma_{in}[sp+a,\, sp'+b],
        \qquad \Theta_{out} = \mathcal{P}[\Theta_{in}].

    The output's diagonal reads distinct positions of the input, so networks containing a pool
    keep the full position-position covariance (memory ``(HW)^2`` per pair of examples).  The
    pair distance is carried like ``GlobalAvgPool``'s: exactly 0 where the two windows coincide
    (zero distance at every matched offset, padding included), not carried (NaN) elsewhere.
    The mean over units is the window average of the input's.  Channels are kept (a finite
    channel count stays finite).
    """

    needs_full_spatial = True
    maps_dist = True
    _divisor: int | None = None  # F.avg_pool2d's divisor_override: None averages, 1 sums

    def __init__(self, window_shape, strides=None, padding: str = "valid"):
        name = type(self).__name__
        if isinstance(window_shape, int) and not isinstance(window_shape, bool):
            window_shape = (window_shape, window_shape)
        try:
            n = len(window_shape)
        except TypeError:
            n = 0
        if n not in (1, 2):
            raise GpmarginError(f"{name} window_shape={window_shape!r} must be (k_h, k_w) for images or (k,) for "
                                "sequences")
        self.window_shape = window_tuple(window_shape, name, "window_shape", n)
        self.strides = (1,) * n if strides is None else window_tuple(strides, name, "strides", n)
        self.padding = parse_padding(padding, name)

    @property
    def window(self) -> tuple[int, int]:
        return self.window_shape if len(self.window_shape) == 2 else (1, self.window_shape[0])

    @property
    def steps(self) -> tuple[int, int]:
        return self.strides if len(self.strides) == 2 else (1, self.strides[0])

    @property
    def size(self) -> int:
        """Number of positions in the window."""
        return self.window[0] * self.window[1]

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind != "image":
            raise self.fail(spec, "pooling needs images (N, C, H, W) or sequences (N, C, L), not feature vectors")
        if len(self.window_shape) == 1 and spec.shape[1] != 1:
            raise self.fail(spec, f"the window {self.window_shape} pools sequences (N, C, L); give a 2-D window "
                                  "for images")
        oh, ow = self.out_size(spec, f"{self.window_shape} window")
        return Spec("image", (spec.shape[0], oh, ow))

    def apply(self, st: KernelState) -> KernelState:
        if st.layout != "full":
            raise GpmarginError(f"{self!r} needs the full position-position layout, got {st.layout!r}")
        coincide = None
        if st.dist is not None:
            coincide = self.average_dist(st) == 0
        st.nngp = self.pool_pairs(st.nngp, self._divisor)
        if st.ntk is not None:
            st.ntk = self.pool_pairs(st.ntk, self._divisor)
        st.dist = None if coincide is None else _not_carried(coincide)
        return st

    def out_mean(self, mean, var, spec):
        return None if mean is None else self.pool_field(mean, self._divisor)

    def module(self, in_shape, units, init):
        (oh, ow), _, _ = self._pads(in_shape[1], in_shape[2])
        return LayerModule(self), (in_shape[0], oh, ow)

    def finite(self, fl: Flow) -> Flow:
        h = F.avg_pool2d(self.pad(fl.h), self.window, self.steps, divisor_override=self._divisor)
        return Flow(h, fl.layout, fl.members, fl.factors, True)


class SumPool(AvgPool):
    r"""Sum pooling (neural-tangents' ``stax.SumPool``): ``f_{c,p} = \sum_a x_{c, s p + a}``,
    ``AvgPool`` times the window size ``k_h k_w`` (arguments and geometry as ``AvgPool``):

    .. math::
        \Sigma_{out}[p,p'] = \sum_{a,b} \Sigma_{in}[sp+a,\, sp'+b], \qquad
        \Theta_{out}[p,p'] = \sum_{a,b} \Theta_{in}[sp+a,\, sp'+b].
    """

    _divisor = 1
