r"""Window geometry shared by the convolutions (``Conv2d``, ``Conv1d``) and the pooling layers
(``AvgPool``, ``SumPool``): output sizes, padding, and the averages of a kernel over a window.

A window of ``k_h x k_w`` positions slides with strides ``(s_h, s_w)`` over the last two
(spatial) dims of a tensor.  Padding, neural-tangents' ``Padding`` (XLA's split of "same"):

``"valid"``     no padding; ``out = (in - k) // s + 1`` (the window must fit).
``"same"``      zeros around the image, total ``max((out - 1) s + k - in, 0)`` with
                ``out = ceil(in / s)``, the smaller half before.
``"circular"``  the same output size and split as "same", the padding taken from the opposite
                edge (periodic boundary: the image is a torus; stax's ``Padding.CIRCULAR``).

On a kernel tensor of the "full" layout ``(..., H, W, H', W')`` both positions of a pair are
padded (with zeros, or wrapped independently: ``K[p mod (H, W), p' mod (H, W)]``); on the
"diag" layout ``(..., H, W)`` the same-position entries are (``K[p mod, p mod]``).

Two averages are built on the padded tensors:

* the *filter average* of a convolution (independent weights per offset, so only equal offsets
  of the two positions pair up): :math:`\mathcal{A}[K]_{p,p'} = \frac{1}{k_h k_w} \sum_a
  K_{s p + a,\, s p' + a}` (:meth:`Window.average`; on a per-example field, :meth:`pool_field`);
* the *window average* of an average pool (one shared window, every pair of offsets):
  :math:`\mathcal{P}[K]_{p,p'} = \frac{1}{(k_h k_w)^2} \sum_{a, b} K_{s p + a,\, s p' + b}`
  (:meth:`Window.pool_pairs`), separable over the four spatial dims.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from gpmargin.errors import GpmarginError

PADDINGS = ("valid", "same", "circular")


def window_tuple(v, owner: str, name: str, length: int = 2) -> tuple:
    """``v`` (a positive int, or ``length`` positive ints) as a tuple of ``length`` ints."""
    if isinstance(v, bool):
        v = (v,)  # rejected below
    if isinstance(v, numbers.Integral):
        v = (v,) * length
    try:
        v = tuple(v)
    except TypeError:
        v = (v,)
    if (len(v) != length or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in v)
            or min(v) < 1):
        what = "a positive int" if length == 1 else f"a positive int or {length} positive ints"
        raise GpmarginError(f"{owner} {name}={v!r} must be {what}")
    return tuple(int(a) for a in v)


def parse_padding(padding, owner: str) -> str:
    p = str(padding).lower()
    if p not in PADDINGS:
        raise GpmarginError(f"{owner} padding={padding!r} is not supported; use 'valid', 'same' or 'circular'")
    return p


def _wrap(t: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """``t`` extended periodically along ``dim`` by ``before`` / ``after`` entries."""
    n = t.shape[dim]
    idx = torch.arange(-before, n + after, device=t.device).remainder_(n)
    return t.index_select(dim, idx)


class Window:
    """Mixin: a window sliding over the last two dims, with ``padding`` in :data:`PADDINGS`.

    Subclasses provide ``window`` (the ``(k_h, k_w)`` window), ``steps`` (the ``(s_h, s_w)``
    strides) and the attribute ``padding``.
    """

    padding: str

    @property
    def window(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def steps(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- geometry -------------------------------------------------------------------------
    def _pads(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """((out_h, out_w), (top, bottom), (left, right))."""
        out, pads = [], []
        for size, k, s in zip((h, w), self.window, self.steps):
            if self.padding == "valid":
                out.append((size - k) // s + 1 if size >= k else 0)
                pads.append((0, 0))
            else:
                o = -(-size // s)
                total = max((o - 1) * s + k - size, 0)
                out.append(o)
                pads.append((total // 2, total - total // 2))
        return tuple(out), pads[0], pads[1]

    def out_size(self, spec, what: str) -> tuple[int, int]:
        """``(out_h, out_w)`` for an image spec, or the layer's one-line shape error."""
        (oh, ow), _, _ = self._pads(spec.shape[1], spec.shape[2])
        if oh < 1 or ow < 1:
            field = (f"length-{spec.shape[2]} sequence" if spec.shape[1] == 1 and self.window[0] == 1
                     else f"{spec.shape[1]}x{spec.shape[2]} image")
            raise self.fail(spec, f"the {what} does not fit the {field} with padding='valid'; use "
                                  "padding='same' or 'circular', or larger inputs")
        return oh, ow

    def pad(self, x: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
        """``x`` padded as the layer pads its input, along ``dims``: pairs ``(h, w)`` of spatial
        dims, e.g. ``(-2, -1)`` (an image or a "diag" kernel) or ``(-4, -3, -2, -1)`` (both
        positions of a "full" kernel).  Returns ``x`` itself when there is nothing to pad."""
        h, w = x.shape[dims[0]], x.shape[dims[1]]
        _, (pt, pb), (pl, pr) = self._pads(h, w)
        if not (pt or pb or pl or pr):
            return x
        if self.padding == "circular":
            for i, dim in enumerate(dims):
                x = _wrap(x, dim, *((pt, pb) if i % 2 == 0 else (pl, pr)))
            return x
        if dims == (-2, -1):
            return F.pad(x, (pl, pr, pt, pb))
        assert dims == (-4, -3, -2, -1)
        return F.pad(x, (pl, pr, pt, pb, pl, pr, pt, pb))

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C k_h k_w, H_out, W_out)``: the inputs of a weight row at every
        output position (padding included), channel-major like the weights."""
        n, c, h, w = x.shape
        (oh, ow), _, _ = self._pads(h, w)
        x = self.pad(x)
        (kh, kw), (sh, sw) = self.window, self.steps
        shifted = [x[:, :, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw]
                   for a in range(kh) for b in range(kw)]
        return torch.stack(shifted, dim=2).reshape(n, c * kh * kw, oh, ow)

    # -- the filter average (matched offsets) ------------------------------------------------
    def pool_field(self, a: torch.Tensor, divisor: int | None = None) -> torch.Tensor:
        """Window average over the last two (spatial) dims of ``a``: one position per output
        (``divisor=1``: the window sum), :math:`\\frac{1}{k_h k_w} \\sum_{a,b} x_{s p + (a, b)}`.

        Separable: ``k_w`` strided column sums, then ``k_h`` row sums of those, each a whole-tensor
        add (``F.avg_pool2d`` in float64 is several times slower on these small maps)."""
        (oh, ow), _, _ = self._pads(*a.shape[-2:])
        a = self.pad(a)
        (kh, kw), (sh, sw) = self.window, self.steps
        cols = None
        for b in range(kw):
            term = a[..., :, b : b + sw * (ow - 1) + 1 : sw]
            cols = term.clone() if cols is None else cols.add_(term)
        out = None
        for r in range(kh):
            term = cols[..., r : r + sh * (oh - 1) + 1 : sh, :]
            out = term.clone() if out is None else out.add_(term)
        div = kh * kw if divisor is None else divisor
        return out if div == 1 else out.div_(div)

    def average(self, k: torch.Tensor, layout: str) -> torch.Tensor:
        """Filter average of a kernel tensor whose trailing dims are its spatial layout."""
        if layout == "diag":
            return self.pool_field(k)
        h, w = k.shape[-4:-2]
        (oh, ow), _, _ = self._pads(h, w)
        return self._average_padded(self.pad(k, (-4, -3, -2, -1)), oh, ow)

    def average_dist(self, st) -> torch.Tensor:
        """Filter average of the pair distance.  With zero padding and all position pairs kept, a
        padded position paired with a real one ``p'`` is at distance ``v2[p']`` (not 0), so the
        padded distance gets those entries before it is averaged.  (Circular padding copies
        real positions, distances included: nothing to add.)"""
        h, w = st.dist.shape[-4:-2] if st.layout == "full" else (0, 0)
        if st.layout != "full" or self.padding != "same":
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
        """The filter average of an already padded full-layout tensor ``(..., H', W', H', W')``.

        Separable: the matched column offsets first (``k_w`` strided sums), then the matched row
        offsets of that (``k_h`` sums over a tensor ``W'/ow`` times smaller): ``k_h + k_w`` passes
        instead of ``k_h k_w``."""
        kh, kw = self.window
        sh, sw = self.steps
        cols = None
        for b in range(kw):
            sl = slice(b, b + sw * (ow - 1) + 1, sw)
            term = k[..., :, sl, :, sl]
            cols = term.clone() if cols is None else cols.add_(term)
        out = None
        for a in range(kh):
            sl = slice(a, a + sh * (oh - 1) + 1, sh)
            term = cols[..., sl, :, sl, :]
            out = term.clone() if out is None else out.add_(term)
        return out.div_(kh * kw)

    # -- the window average (all pairs of offsets) -------------------------------------------
    def pool_pairs(self, k: torch.Tensor, divisor: int | None = None) -> torch.Tensor:
        """Window average of a full-layout kernel ``(..., H, W, H', W')`` over both positions:
        :math:`\\frac{1}{(k_h k_w)^2}\\sum_{a,b} K_{sp+a,\\,sp'+b}` (``divisor=1``: the sum),
        as a window average over ``(H', W')`` and then over ``(H, W)``."""
        t = self.pool_field(k, divisor)  # (..., H, W, oh, ow)
        t = self.pool_field(t.movedim((-4, -3), (-2, -1)), divisor)  # (..., oh, ow, oh, ow), p' first
        return t.movedim((-2, -1), (-4, -3))
