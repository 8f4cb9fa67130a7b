"""Readouts from images to feature vectors: ``Flatten`` and ``GlobalAvgPool``."""

from __future__ import annotations

import math

import torch

from gpmargin.kernels.base import Layer
from gpmargin.kernels.finite import Flow, LayerModule
from gpmargin.kernels.state import KernelState, Spec


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


class GlobalAvgPool(Layer):
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

    needs_full_spatial = True
    maps_dist = True

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind != "image":
            raise self.fail(spec, "global average pooling needs images of shape (N, C, H, W)")
        return Spec("vector", (spec.shape[0],))

    def apply(self, st: KernelState) -> KernelState:
        st.nngp = _trailing_mean(st.nngp, 4)
        if st.ntk is not None:
            st.ntk = _trailing_mean(st.ntk, 4)
        if st.dist is not None:
            d = st.dist
            same_position = d.reshape(*d.shape[:-4], d.shape[-4] * d.shape[-3], -1).diagonal(dim1=-2, dim2=-1)
            coincide = (same_position == 0).all(-1)
            st.dist = torch.full(coincide.shape, torch.nan, dtype=d.dtype, device=d.device).masked_fill_(coincide, 0.0)
        st.layout = "vector"
        return st

    def out_mean(self, mean, var, spec):
        return None if mean is None else _trailing_mean(mean, 2)

    def module(self, in_shape, units, init):
        return LayerModule(self), (in_shape[0],)

    def finite(self, fl: Flow) -> Flow:
        h = fl.h.mean(dim=(-2, -1))
        if fl.layout == "image":
            return Flow(_per_member_vectors(h, fl.members), "vector", fl.members, fl.factors, False)
        return Flow(h, "shared", fl.members, fl.factors, False)
