r"""What every layer's finite module shares: parameterisations, member seeding, parameter draws,
and the features flowing through a batched network.

Parameterisations
-----------------
An affine layer (``Dense``, ``Conv2d``) with fan-in ``n`` (``d`` for vectors, ``C k_h k_w`` for
a convolution) and standard normal draws ``z`` (weights) and ``beta`` (biases):

``"ntk"``       the parameters are ``theta = z`` and ``beta``; the pre-activation is
                :math:`h = \frac{W_{std}}{\sqrt n}\, \theta x + b_{std}\, \beta`
                (neural-tangents' parameterisation: the NTK of ``k(..., get="ntk")`` is the
                tangent kernel of *these* parameters as the width grows).
``"standard"``  the parameters are ``W = W_std / sqrt(n) * z`` (so ``W ~ N(0, W_std^2 / n)``)
                and ``b = b_std * beta``; the pre-activation is :math:`h = W x + b`.

With the same draws both compute the same function at initialisation, and their NNGP is the
kernel's; they differ in their gradients (hence in the NTK and under training).  For a
``Centred`` (Nero-constrained) layer the rows are ``u = (z - mean z) / |z - mean z|``,
zero-mean and unit-norm, and ``W = W_std u`` ("standard", row norm ``W_std``: Nero's constraint
when ``W_std = 1``) or ``theta = sqrt(n) u`` ("ntk", same function).

Members and seeds
-----------------
A network with ``members = k`` is ``k`` independently initialised networks with stacked
parameters (leading dimension ``k``).  Member ``j`` of a network built with ``seed = s`` draws
from its own CPU ``torch.Generator`` seeded with :func:`member_seed` ``(s, j) = 1000 s + j``,
layer by layer in order (each affine layer: its weight, then its bias), in float64, before the
result is cast to the network's dtype.  So member ``j`` does not depend on ``k``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from gpmargin.errors import GpmarginError

PARAMETERIZATIONS = ("ntk", "standard")
MAX_MEMBERS = 1000


def member_seed(seed: int, j: int) -> int:
    """Seed of member ``j`` of a network (or ensemble) built with ``seed``: ``1000 * seed + j``."""
    if not 0 <= j < MAX_MEMBERS:
        raise GpmarginError(f"ensemble member index must be in [0, {MAX_MEMBERS}), got {j}")
    return MAX_MEMBERS * int(seed) + int(j)


class Init:
    """How the parameters of one network are drawn.

    parameterization : ``"ntk"`` or ``"standard"`` (see the module docstring).
    seeds : one seed per member; member ``j`` draws from ``torch.Generator().manual_seed(seeds[j])``.
    stacked : keep the member dimension (``False`` only for a single unbatched network).
    draw : ``False`` allocates zeros instead of drawing (the caller loads its own weights).
    """

    def __init__(self, parameterization: str, seeds: Sequence[int], stacked: bool, dtype: torch.dtype,
                 device, draw: bool = True):
        self.parameterization = parameterization
        self.members = len(seeds)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds] if draw else None
        self.stacked = stacked
        self.dtype = dtype
        self.device = device

    def normal(self, shape: tuple) -> torch.Tensor:
        """Standard normal draws ``(members, *shape)`` in float64, each member from its own generator."""
        if self.generators is None:
            return torch.zeros((self.members, *shape), dtype=torch.float64)
        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in self.generators])

    def parameter(self, t: torch.Tensor) -> torch.nn.Parameter:
        """A float64 ``(members, ...)`` tensor as a parameter of the network's dtype and device."""
        if not self.stacked:
            t = t[0]
        return torch.nn.Parameter(t.to(self.dtype).to(self.device))


@dataclass
class Flow:
    """Features of all members between two layers of a finite network.

    layout : ``"shared"`` the network input, common to all members, ``(n, *features)``;
             ``"vector"`` per-member feature vectors, feature-major ``(k, features, n)`` (so a
             dense layer is ``h <- W h``, one ``bmm`` with no transposed operand);
             ``"image"`` per-member images as channel groups ``(n, k * C, H, W)`` (so a
             convolution of all members is one grouped convolution).
    factors : a pending positive scalar ``c = prod(f ** count)``: the true features are
             ``c * h``.  Positively homogeneous activations (``c relu(h) = relu(c h)``) and
             bias-free linear layers commute with it, so scale factors are applied once, to the
             small output, instead of in an elementwise pass over every hidden layer.
    fresh : ``h`` is a temporary of this forward pass that no backward pass has saved (a product's
             output), so an in-place elementwise map is safe.
    """

    h: torch.Tensor
    layout: str
    members: int
    factors: dict = field(default_factory=dict)
    fresh: bool = False

    def scale(self) -> float:
        return math.prod(f**count for f, count in self.factors.items())

    def times(self, f: float) -> dict:
        """The pending factors multiplied by ``f``."""
        out = dict(self.factors)
        if f != 1.0:
            out[f] = out.get(f, 0) + 1
        return out

    def materialise(self) -> "Flow":
        """Apply the pending factor to ``h`` (out of place: ``h`` may be saved for a backward pass)."""
        c = self.scale()
        if c != 1.0:
            self.h = self.h * c
            self.fresh = True
        self.factors = {}
        return self


def positive_int(value, name: str, allow_none: bool = False) -> int | None:
    """``value`` as a positive int, or a one-line error naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise GpmarginError(f"{name}={value!r} must be a positive integer")
    return int(value)


class LayerModule(torch.nn.Module):
    """Finite module of a parameter-free layer (activation, ``Flatten``, ``GlobalAvgPool``):
    ``forward`` is the layer's own ``finite(flow)``."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, fl: Flow) -> Flow:
        return self.layer.finite(fl)

    def extra_repr(self) -> str:
        return repr(self.layer)


class AffineModule(nn.Module):
    """A finite affine layer of ``k`` members: ``weight`` ``(k, out, *row)`` (``(out, *row)`` for
    one unbatched network), optional ``bias`` ``(k, out)``; the pre-activation is
    ``w_mult * weight . x + b_mult * bias`` (``w_mult = W_std / sqrt(fan_in)``, ``b_mult = b_std``
    in the NTK parameterisation, both 1 in the standard one)."""

    def __init__(self, layer, weight: nn.Parameter, bias: nn.Parameter | None, w_mult: float,
                 b_mult: float, stacked: bool):
        super().__init__()
        self.layer = layer
        self.weight = weight
        self.bias = bias
        self.w_mult = float(w_mult)
        self.b_mult = float(b_mult)
        self.stacked = stacked

    def stacked_weight(self) -> torch.Tensor:
        """``(k, out, *row)``, a view."""
        return self.weight if self.stacked else self.weight[None]

    def stacked_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return self.bias if self.stacked else self.bias[None]

    def extra_repr(self) -> str:
        return f"{self.layer!r}, w_mult={self.w_mult:.4g}, b_mult={self.b_mult:.4g}"


def to_members(fl: Flow) -> Flow:
    """The shared input seen as every member's own features (``"vector"`` ``(k, d, n)`` or
    ``"image"`` channel groups ``(n, k C, H, W)``), so that branches can be joined; other flows as they are."""
    if fl.layout != "shared":
        return fl
    k = fl.members
    if fl.h.dim() == 2:
        return Flow(fl.h.T.unsqueeze(0).expand(k, -1, -1), "vector", k, fl.factors, False)
    return Flow(fl.h.repeat(1, k, 1, 1), "image", k, fl.factors, True)


class Chain(torch.nn.Module):
    """Finite modules applied in order (a ``serial`` or one branch of a ``parallel``)."""

    def __init__(self, mods):
        super().__init__()
        self.layers = torch.nn.ModuleList(mods)

    def forward(self, fl):
        for m in self.layers:
            fl = m(fl)
        return fl


def build_chain(layers, in_shape, units, init) -> tuple[Chain, tuple]:
    """The finite modules of ``layers`` for per-example inputs ``in_shape``: ``(Chain, out_shape)``.

    ``units()`` gives the number of units of the next affine layer, in the order the layers
    (branches included) are drawn; parameters are drawn in that same order."""
    mods = []
    for layer in layers:
        mod, in_shape = layer.build(in_shape, units, init)
        mods.append(mod)
    return Chain(mods), in_shape
