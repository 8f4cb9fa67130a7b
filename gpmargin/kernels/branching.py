r"""Branched networks (neural-tangents' ``stax`` combinators): ``FanOut``, ``parallel``,
``FanInSum``, ``FanInProd``, ``FanInConcat`` and ``repeat``.

Between a ``FanOut(n)`` and a fan-in the network carries ``n`` branches; ``parallel(f_1, ..., f_n)``
applies ``f_j`` to branch ``j``.  A residual block is
``serial(FanOut(2), parallel(serial(Relu(), Conv2d(3), Relu(), Conv2d(3)), Identity()), FanInSum())``.

Kernels follow neural-tangents: the branches reaching a fan-in are taken to be *independent*
zero-mean Gaussian processes (every branch must end in an affine layer, possibly followed by
pooling, or be the network inputs: :attr:`Spec.gaussian`), so the covariance of a sum is the sum of the covariances,
that of a product the product, and that of a concatenation along channels their average
weighted by the channel counts.  The engine (:mod:`gpmargin.kernels.engine`) runs the branches
one after the other on the same tile; each branch holds its own copy of the tile's kernel.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import torch
from torch import nn

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer
from gpmargin.kernels.engine import propagate
from gpmargin.kernels.finite import Flow, build_chain, to_members
from gpmargin.kernels.serial import Serial, serial
from gpmargin.kernels.state import KernelState, Spec


def _copy(st: KernelState) -> KernelState:
    """An independent copy of a state's tensors (statistics and the ``near`` list are shared)."""
    return replace(st, nngp=st.nngp.clone(), ntk=None if st.ntk is None else st.ntk.clone(),
                   dist=None if st.dist is None else st.dist.clone())


class FanOut(Layer):
    """``n`` copies of its input, one per branch (``FanOut(2)`` starts a residual block)."""

    takes_branches = True

    def __init__(self, num: int):
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise GpmarginError(f"FanOut(num={num!r}): num must be a positive integer (the number of branches)")
        self.num = num

    def out_spec(self, spec):
        if not isinstance(spec, Spec):
            raise GpmarginError(f"{self!r} gets {len(spec)} branches; join them with a fan-in before fanning out again")
        return (spec,) * self.num

    def combine(self, st: KernelState, spec, keep_dist: bool):
        return (st,) + tuple(_copy(st) for _ in range(self.num - 1))

    def module(self, in_shape, units, init):
        return FanOutModule(self.num), (tuple(in_shape),) * self.num


class FanOutModule(nn.Module):
    def __init__(self, num: int):
        super().__init__()
        self.num = num

    def forward(self, fl: Flow):
        # the copies share one tensor: none of them may be updated in place
        return tuple(Flow(fl.h, fl.layout, fl.members, dict(fl.factors), False) for _ in range(self.num))


class Parallel(Layer):
    """``parallel(f_1, ..., f_n)``: branch ``j`` of ``n`` goes through ``f_j`` (a layer or a
    ``serial``); use after ``FanOut(n)`` or another ``parallel``."""

    takes_branches = True

    def __init__(self, branches: Iterable[Layer]):
        branches = tuple(branches)
        if not branches or not all(isinstance(b, Layer) for b in branches):
            raise GpmarginError("parallel() takes one kernel layer (or serial) per branch, at least one")
        self.branches = branches

    def __repr__(self) -> str:
        return "parallel(" + ", ".join(repr(b) for b in self.branches) + ")"

    @property
    def needs_full_spatial(self):  # type: ignore[override]
        return any(b.needs_full_spatial for b in self.branches)

    @property
    def supports_ntk(self):  # type: ignore[override]
        return all(b.supports_ntk for b in self.branches)

    def check_branches(self, specs) -> None:
        """The engine runs the branches itself; this checks it is given one input per branch."""
        n = len(self.branches)
        if isinstance(specs, Spec):
            raise GpmarginError(f"parallel() with {n} branches gets a single input; put FanOut({n}) before it")
        if len(specs) != n:
            raise GpmarginError(f"parallel() has {n} branches but gets {len(specs)} inputs")

    def out_spec(self, specs):
        self.check_branches(specs)
        return tuple(propagate(b.engine_layers(), s) for b, s in zip(self.branches, specs))

    def build(self, in_shape, units, init):
        chains, shapes = [], []
        for b, shape in zip(self.branches, in_shape):
            chain, out = build_chain(b.engine_layers(), shape, units, init)
            chains.append(chain)
            shapes.append(out)
        return ParallelModule(chains), tuple(shapes)


class ParallelModule(nn.Module):
    def __init__(self, chains):
        super().__init__()
        self.branches = nn.ModuleList(chains)

    def forward(self, flows):
        return tuple(chain(fl) for chain, fl in zip(self.branches, flows))


class FanIn(Layer):
    """Base of the fan-in combinators: joins the branches into one output."""

    takes_branches = True

    def branch_specs(self, specs) -> tuple:
        """Check the branches reaching the fan-in: more than one input, each zero-mean Gaussian."""
        if isinstance(specs, Spec):
            raise GpmarginError(f"{self!r} gets a single input; it joins the branches of a FanOut(n) / parallel(...)")
        if len(specs) > 1:
            for j, s in enumerate(specs):
                if not isinstance(s, Spec):
                    raise GpmarginError(f"{self!r}: branch {j + 1} of {len(specs)} is still split; join it first")
                if not s.gaussian:
                    raise GpmarginError(
                        f"{self!r}: branch {j + 1} of {len(specs)} ({s.describe()}) ends in a nonlinearity, so its "
                        "outputs are not zero-mean Gaussian and the kernel of the joined branches has no closed form; "
                        "end every branch with Dense/Conv2d (pooling after it is fine), as neural-tangents requires")
        return specs

    def same_shapes(self, specs) -> Spec:
        specs = self.branch_specs(specs)
        first = specs[0]
        for j, s in enumerate(specs[1:], 2):
            if (s.kind, s.shape) != (first.kind, first.shape):
                raise GpmarginError(f"{self!r}: branch {j} has shape {s.describe()} but branch 1 has "
                                    f"{first.describe()}; the branches must have the same shape")
        return Spec(first.kind, first.shape, gaussian=first.gaussian if len(specs) == 1 else self.keeps_gaussian)

    keeps_gaussian = False

    def module(self, in_shape, units, init):
        shapes = tuple(tuple(s) for s in in_shape)
        out = self.finite_shape(shapes)
        return FanInModule(self, shapes), out

    def finite_shape(self, shapes: tuple) -> tuple:
        for j, s in enumerate(shapes[1:], 2):
            if s != shapes[0]:
                raise GpmarginError(f"network(): {self!r} branch {j} has shape {s} but branch 1 has {shapes[0]}; "
                                    "give the branches the same widths")
        return shapes[0]


class FanInModule(nn.Module):
    """Finite fan-in: the layer's ``finite(flows, shapes)``, ``shapes`` the branches' per-example shapes."""

    def __init__(self, layer, shapes: tuple):
        super().__init__()
        self.layer = layer
        self.shapes = shapes

    def forward(self, flows):
        return self.layer.finite(tuple(flows), self.shapes)

    def extra_repr(self) -> str:
        return repr(self.layer)


def _common(flows) -> tuple[list[torch.Tensor], str, int]:
    """The branches' features in one layout (the shared input only if every branch has it)."""
    layouts = {fl.layout for fl in flows}
    if layouts == {"shared"}:
        return [fl.materialise().h for fl in flows], "shared", flows[0].members
    flows = [to_members(fl.materialise()) for fl in flows]
    return [fl.h for fl in flows], flows[0].layout, flows[0].members


def _all_or_none(ts):
    return None if any(t is None for t in ts) else ts


def _branch_means(states):
    """The branches' means over units, when every one is known and the states are the self pass's
    (which carries each layer's output mean; pair passes reset the means before every layer)."""
    if states[0].pair or states[0].points:
        return None
    return _all_or_none([st.mean1 for st in states])


class FanInSum(FanIn):
    r"""Sum of the branches: :math:`\Sigma = \sum_j \Sigma_j`, :math:`\Theta = \sum_j \Theta_j`
    (independent branches); the pair distance is the sum of the branches' distances."""

    keeps_gaussian = True

    def out_spec(self, specs):
        return self.same_shapes(specs)

    def combine(self, states, spec, keep_dist: bool) -> KernelState:
        out = states[0]
        for st in states[1:]:
            out.nngp = out.nngp.add_(st.nngp)
            if out.ntk is not None:
                out.ntk = out.ntk.add_(st.ntk)
        dists = _all_or_none([st.dist for st in states]) if keep_dist else None
        out.dist = None if dists is None else _add(dists)
        means = _branch_means(states)
        out.mean1 = out.mean2 = None if means is None else sum(means[1:], means[0])
        return out

    def finite(self, flows, shapes) -> Flow:
        hs, layout, k = _common(flows)
        return Flow(sum(hs[1:], hs[0]), layout, k, {}, True)


def _add(dists):
    out = dists[0]
    for d in dists[1:]:
        out = out.add_(d)
    return out


class FanInProd(FanIn):
    r"""Elementwise product of the branches (independent, zero mean):
    :math:`\Sigma = \prod_j \Sigma_j`, :math:`\Theta = \sum_j \Theta_j \prod_{i \ne j} \Sigma_i`.
    The pair distance is carried only where it is 0 in every branch (identical products); elsewhere
    a later activation uses ``v1 + v2 - 2 Sigma``."""

    def out_spec(self, specs):
        return self.same_shapes(specs)

    def combine(self, states, spec, keep_dist: bool) -> KernelState:
        out = states[0]
        nngp, ntk = out.nngp, out.ntk
        for st in states[1:]:
            if ntk is not None:
                ntk = ntk.mul_(st.nngp).addcmul_(nngp, st.ntk)
            nngp = nngp.mul_(st.nngp)
        dists = _all_or_none([st.dist for st in states]) if keep_dist else None
        if dists is not None:
            identical = torch.stack([d == 0 for d in dists]).all(0)
            dists = torch.full_like(dists[0], torch.nan).masked_fill_(identical, 0.0)
        out.nngp, out.ntk, out.dist = nngp, ntk, dists
        means = _branch_means(states)
        if means is not None:
            prod = means[0].clone()
            for m in means[1:]:
                prod.mul_(m)
            means = prod
        out.mean1 = out.mean2 = means
        return out

    def finite(self, flows, shapes) -> Flow:
        hs, layout, k = _common(flows)
        out = hs[0]
        for h in hs[1:]:
            out = out * h
        return Flow(out, layout, k, {}, True)


class FanInConcat(FanIn):
    r"""Concatenation of the branches along ``axis`` (gpmargin's layout: ``1`` is the features of
    vectors and the channels of images ``(N, C, H, W)``, neural-tangents' ``-1``; ``2``/``3`` or
    ``-2``/``-1`` are the image rows / columns).

    Channels: :math:`\Sigma = \sum_j w_j \Sigma_j` with :math:`w_j = C_j / \sum_i C_i` (equal
    weights when every branch has infinitely many channels; a mix of finite and infinite channel
    counts is refused, its limit would drop the finite branches).  Rows or columns: the covariance
    of positions of one branch is that branch's, positions of different branches are uncorrelated.
    """

    def __init__(self, axis: int = 1):
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise GpmarginError(f"FanInConcat(axis={axis!r}): axis must be an integer")
        self.axis = axis

    def _resolve(self, spec: Spec) -> int:
        """The axis as a position in ``(C, H, W)`` / ``(d,)``: 0 channels, 1 rows, 2 columns."""
        ndim = len(spec.shape)
        a = self.axis + 1 + ndim if self.axis < 0 else self.axis
        if not 1 <= a <= ndim:
            raise GpmarginError(f"{self!r}: axis {self.axis} does not exist for {spec.describe()} inputs "
                                f"(use 1 for {'channels, 2 rows, 3 columns' if ndim == 3 else 'features'})")
        return a - 1

    def weights(self, specs) -> list[float]:
        widths = [s.shape[0] for s in specs]
        if all(w is None for w in widths):
            return [1.0 / len(widths)] * len(widths)
        if any(w is None for w in widths):
            raise GpmarginError(f"{self!r} joins branches of finite and infinite widths {widths}; in the limit the "
                                "finite ones would not count: put an affine layer in every branch")
        return [w / sum(widths) for w in widths]

    def out_spec(self, specs):
        specs = self.branch_specs(specs)
        axis = self._resolve(specs[0])
        first = specs[0]
        for j, s in enumerate(specs[1:], 2):
            rest = [d for i, d in enumerate(s.shape) if i != axis]
            if s.kind != first.kind or rest != [d for i, d in enumerate(first.shape) if i != axis]:
                raise GpmarginError(f"{self!r}: branch {j} has shape {s.describe()} but branch 1 has "
                                    f"{first.describe()}; only the concatenated axis may differ")
        shape = list(first.shape)
        if axis == 0:
            self.weights(specs)
            shape[0] = None if first.shape[0] is None else sum(s.shape[0] for s in specs)
        else:
            shape[axis] = sum(s.shape[axis] for s in specs)
        return Spec(first.kind, tuple(shape), gaussian=all(s.gaussian for s in specs))

    def combine(self, states, specs, keep_dist: bool) -> KernelState:
        axis = self._resolve(specs[0])
        out = states[0]
        if axis == 0:  # weighted average over the channels
            w = self.weights(specs)
            for name in ("nngp", "ntk", "dist"):
                ts = _all_or_none([getattr(st, name) for st in states])
                if ts is not None and (name != "dist" or keep_dist):
                    acc = ts[0].mul_(w[0])
                    for t, wj in zip(ts[1:], w[1:]):
                        acc.add_(t, alpha=wj)
                    setattr(out, name, acc)
                else:
                    setattr(out, name, None)
            means = _branch_means(states)
            out.mean1 = out.mean2 = None if means is None else sum(m * wj for m, wj in zip(means, w))
            return out
        for name in ("nngp", "ntk", "dist"):
            ts = _all_or_none([getattr(st, name) for st in states])
            fill = torch.nan if name == "dist" else 0.0  # distances across branches: not carried
            joined = None if ts is None or (name == "dist" and not keep_dist) else _join_positions(
                ts, axis, out.layout, fill)
            setattr(out, name, joined)
        means = _branch_means(states)
        out.mean1 = out.mean2 = None if means is None else torch.cat(means, dim=axis)
        return out

    def finite_shape(self, shapes):
        axis = self._resolve(Spec("image" if len(shapes[0]) == 3 else "vector", shapes[0]))
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def finite(self, flows, shapes) -> Flow:
        hs, layout, k = _common(flows)
        axis = self._resolve(Spec("image" if len(shapes[0]) == 3 else "vector", shapes[0]))
        if axis == 0 and layout == "image":  # channel groups, one per member: concatenate inside each group
            n, _, h, w = hs[0].shape
            parts = [t.reshape(n, k, -1, h, w) for t in hs]
            return Flow(torch.cat(parts, 2).reshape(n, -1, h, w), layout, k, {}, True)
        dim = 1 if axis == 0 else axis + 1  # vector (k, F, n) / shared (n, d): dim 1; images: rows 2, columns 3
        return Flow(torch.cat(hs, dim), layout, k, {}, True)


def _join_positions(ts, axis: int, layout: str, fill: float) -> torch.Tensor:
    """Kernels of images concatenated along rows (``axis = 1``) or columns (``axis = 2``)."""
    if layout == "diag":
        return torch.cat(ts, dim=ts[0].dim() - 3 + axis)
    lead = ts[0].shape[:-4]
    h, w = ts[0].shape[-4:-2]
    sizes = [t.shape[-4 + axis - 1] for t in ts]
    total = sum(sizes)
    shape = (*lead, total, w, total, w) if axis == 1 else (*lead, h, total, h, total)
    out = ts[0].new_full(shape, fill)
    start = 0
    for t, size in zip(ts, sizes):
        sl = slice(start, start + size)
        if axis == 1:
            out[..., sl, :, sl, :] = t
        else:
            out[..., :, sl, :, sl] = t
        start += size
    return out


def parallel(*layers: Layer) -> Parallel:
    """One layer (or serial) per branch, applied side by side (neural-tangents' ``stax.parallel``)."""
    return Parallel(layers)


def repeat(layer: Layer, n: int) -> Serial:
    """``layer`` applied ``n`` times in a row: ``serial(layer, ..., layer)``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GpmarginError(f"repeat(n={n!r}): n must be a positive integer")
    return serial(*([layer] * n))
