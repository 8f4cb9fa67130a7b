"""2-D convolution in the NTK parameterisation (neural-tangents' ``stax.Conv``): its kernel map
and its finite module."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpmargin.errors import GpmarginError
from gpmargin.kernels.dense import Affine
from gpmargin.kernels.finite import AffineModule, Flow
from gpmargin.kernels.state import Spec


def _pair(v, name) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) < 1:
        raise GpmarginError(f"Conv2d {name}={v!r} must be a positive int or a pair of positive ints")
    return v


class ConvModule(AffineModule):
    """Finite ``Conv2d``: weights ``(k, out, C, k_h, k_w)``; all members in one convolution
    (ungrouped on the shared input, ``groups = k`` on per-member channel groups)."""

    def forward(self, fl: Flow) -> Flow:
        w = self.stacked_weight()
        k, o = w.shape[:2]
        x = fl.h
        _, (pt, pb), (pl, pr) = self.layer._pads(x.shape[-2], x.shape[-1])
        if pt or pb or pl or pr:
            x = F.pad(x, (pl, pr, pt, pb))
        groups = 1 if fl.layout == "shared" else k
        weight = w.reshape(k * o, *w.shape[2:])
        b = self.stacked_bias()
        if b is None:
            h = F.conv2d(x, weight, None, self.layer.stride, groups=groups)
            return Flow(h, "image", k, fl.times(self.w_mult), True)
        alpha = fl.scale() * self.w_mult
        bias = b.reshape(k * o)
        h = F.conv2d(x, weight * alpha if alpha != 1.0 else weight, bias * self.b_mult if self.b_mult != 1.0 else bias,
                     self.layer.stride, groups=groups)
        return Flow(h, "image", k, {}, True)


class Conv2d(Affine):
    r"""Convolution ``f_p = W_std / sqrt(C k_h k_w) * sum_{c,a} W_{c,a} x_{c, s p + a} + b_std * b``.

    Channels-agnostic (infinite output channels; the input channel count only enters through
    the fan-in).  With zero padding (``"same"``, neural-tangents/XLA convention: total padding
    ``max((out-1) s + k - in, 0)``, the smaller half before) and the filter average
    :math:`\mathcal{A}[K]_{p,p'} = \frac{1}{k_h k_w} \sum_a K_{s p + a,\, s p' + a}`
    (padded entries count as zeros):

    .. math::
        \Sigma_{out} = W_{std}^2 \mathcal{A}[\Sigma_{in}] + b_{std}^2, \qquad
        \Theta_{out} = W_{std}^2 \mathcal{A}[\Theta_{in}] + \Sigma_{out}.

    The input kernel of images is :math:`\Sigma_{p,p'} = \frac1C \sum_c x_{c,p} x'_{c,p'}`.
    """

    def __init__(self, kernel_size, stride=1, padding: str = "valid", W_std: float = 1.0, b_std: float | None = None):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise GpmarginError(f"Conv2d padding={padding!r} is not supported; use 'valid' or 'same'")
        self.padding = padding
        self.W_std = float(W_std)
        self.b_std = None if b_std is None else float(b_std)

    # -- geometry -----------------------------------------------------------------------
    def _pads(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """((out_h, out_w), (top, bottom), (left, right))."""
        out, pads = [], []
        for size, k, s in zip((h, w), self.kernel_size, self.stride):
            if self.padding == "valid":
                out.append((size - k) // s + 1 if size >= k else 0)
                pads.append((0, 0))
            else:
                o = -(-size // s)
                total = max((o - 1) * s + k - size, 0)
                out.append(o)
                pads.append((total // 2, total - total // 2))
        return tuple(out), pads[0], pads[1]

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind != "image":
            raise self.fail(spec, "a convolution needs images of shape (N, C, H, W)")
        (oh, ow), _, _ = self._pads(spec.shape[1], spec.shape[2])
        if oh < 1 or ow < 1:
            raise self.fail(spec, f"the {self.kernel_size} filter does not fit; use padding='same' or larger images")
        return Spec("image", (None, oh, ow))

    def fan_in(self, spec: Spec) -> int | None:
        c = spec.shape[0]
        return None if c is None else c * self.kernel_size[0] * self.kernel_size[1]

    def weight_shape(self, in_shape, units):
        return (units, in_shape[0], *self.kernel_size)

    module_class = ConvModule

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C k_h k_w, H_out, W_out)``: the inputs of a weight row at every
        output position (zero padding included), channel-major like the weights."""
        n, c, h, w = x.shape
        (oh, ow), (pt, pb), (pl, pr) = self._pads(h, w)
        if pt or pb or pl or pr:
            x = F.pad(x, (pl, pr, pt, pb))
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        shifted = [x[:, :, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw]
                   for a in range(kh) for b in range(kw)]
        return torch.stack(shifted, dim=2).reshape(n, c * kh * kw, oh, ow)

    # -- the filter average -------------------------------------------------------------
    def pool_field(self, a: torch.Tensor) -> torch.Tensor:
        """Filter average over the last two (spatial) dims of ``a``: one position per output."""
        h, w = a.shape[-2:]
        _, (pt, pb), (pl, pr) = self._pads(h, w)
        lead = a.shape[:-2]
        a = a.reshape(-1, 1, h, w)
        if pt or pb or pl or pr:
            a = F.pad(a, (pl, pr, pt, pb))
        out = F.avg_pool2d(a, self.kernel_size, self.stride)
        return out.reshape(*lead, *out.shape[-2:])

    def average(self, k: torch.Tensor, layout: str) -> torch.Tensor:
        """Filter average of a kernel tensor whose trailing dims are its spatial layout."""
        if layout == "diag":
            return self.pool_field(k)
        h, w = k.shape[-4:-2]
        (oh, ow), (pt, pb), (pl, pr) = self._pads(h, w)
        if pt or pb or pl or pr:
            k = F.pad(k, (pl, pr, pt, pb, pl, pr, pt, pb))
        return self._average_padded(k, oh, ow)

    def average_dist(self, st) -> torch.Tensor:
        """Filter average of the pair distance.  With zero padding and all position pairs kept, a
        padded position paired with a real one ``p'`` is at distance ``v2[p']`` (not 0), so the
        padded distance gets those entries before it is averaged."""
        h, w = st.dist.shape[-4:-2] if st.layout == "full" else (0, 0)
        if st.layout != "full" or self.padding == "valid":
            return self.average(st.dist, st.layout)
        (oh, ow), (pt, pb), (pl, pr) = self._pads(h, w)
        if not (pt or pb or pl or pr):
            return self._average_padded(st.dist, oh, ow)
        pads = (pl, pr, pt, pb)
        d = F.pad(st.dist, pads + pads)
        outside = 1.0 - F.pad(st.dist.new_ones(h, w), pads)  # 1 on the padding
        v1, v2 = F.pad(st.var1.clamp(min=0), pads), F.pad(st.var2.clamp(min=0), pads)
        d.add_(st.bcast1(outside.expand_as(v1)) * st.bcast2(v2)).add_(st.bcast1(v1) * st.bcast2(outside.expand_as(v2)))
        return self._average_padded(d, oh, ow)

    def _average_padded(self, k: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
        """The filter average of an already padded full-layout tensor ``(..., H', W', H', W')``."""
        kh, kw = self.kernel_size
        sh, sw = self.stride
        out = None
        for a in range(kh):
            rows = slice(a, a + sh * (oh - 1) + 1, sh)
            for b in range(kw):
                cols = slice(b, b + sw * (ow - 1) + 1, sw)
                term = k[..., rows, cols, rows, cols]
                out = term.clone() if out is None else out.add_(term)
        return out.div_(kh * kw)
