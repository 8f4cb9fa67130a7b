"""``Network``: the finite, batched torch network a kernel object is the infinite-width limit of.

``k.network(width, in_shape=..., parameterization="ntk", members=1, seed=0, outputs=1)`` builds
``members`` independently initialised networks with the kernel's layers, activation scales,
``W_std`` and ``b_std``, drawn from the distribution the kernel assumes (parameterisations,
seeding and the stacked layout are described in :mod:`gpmargin.kernels.finite`).  Every affine
layer of the kernel becomes ``width`` units (channels for a convolution), except the last one,
which has ``outputs`` units.  The forward pass takes inputs ``(n, *in_shape)`` shared by all
members (or ``(members, n, *in_shape)``) and returns ``(members, n, out_features)``; each layer
is one matrix product / ``bmm`` / grouped convolution for all members, never a loop over them.
"""

from __future__ import annotations

import copy
import numbers
from typing import Sequence

import torch
from torch import nn

from gpmargin.errors import GpmarginError
from gpmargin.kernels.engine import compile_steps, plan
from gpmargin.kernels.finite import (MAX_MEMBERS, PARAMETERIZATIONS, AffineModule, Flow, Init, build_chain, member_seed,
                                     positive_int)
from gpmargin.kernels.state import Spec


def parse_in_shape(in_shape) -> tuple:
    """``d`` or ``(d,)`` (vectors), ``(C, L)`` (sequences) or ``(C, H, W)`` (images) as a tuple of positive ints."""
    shape = (in_shape,) if isinstance(in_shape, numbers.Integral) else in_shape
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if (shape is None or len(shape) not in (1, 2, 3)
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise GpmarginError(
            f"in_shape={in_shape!r} must be the shape of one example: d (or (d,)) for vectors, (C, L) for sequences, "
            "(C, H, W) for images")
    return tuple(int(s) for s in shape)


def parse_widths(width, hidden: int) -> list[int]:
    """``width`` (one int for every hidden affine layer, or one int per hidden affine layer)."""
    if isinstance(width, numbers.Integral) and not isinstance(width, bool):
        return [positive_int(width, "width")] * hidden
    if isinstance(width, (str, bytes)):
        raise GpmarginError(f"width={width!r} is text; give a positive integer (e.g. width=64) or a list of "
                            f"{hidden} positive integers")
    try:
        widths = list(width)
    except TypeError:
        widths = None
    if widths is None or len(widths) != hidden:
        raise GpmarginError(f"width={width!r} must be a positive integer or a list of {hidden} positive integers "
                            "(one per affine layer before the readout)")
    return [positive_int(w, "width") for w in widths]


def _check(parameterization, dtype, seeds):
    if parameterization not in PARAMETERIZATIONS:
        raise GpmarginError(f"parameterization={parameterization!r} is not supported; use 'ntk' or 'standard'")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise GpmarginError(f"dtype={dtype!r} must be a floating torch dtype such as torch.float32 or torch.float64")
    if not seeds:
        raise GpmarginError("a network needs at least one member seed")


class Network(nn.Module):
    """Finite networks of one kernel object, stacked over members (see the module docstring).

    Attributes: ``kernel`` (the kernel object), ``in_shape``, ``out_shape``, ``members`` (``None``
    for one unbatched network), ``parameterization``, ``batch_dims`` (1 stacked, 0 unbatched:
    what :class:`validation.training.nero.Nero` needs), ``weights``/``biases`` (the parameters in layer order).

    Build it with ``kernel.network(...)``; the constructor's ``seeds`` are the per-member seeds
    themselves, ``stacked=False`` gives a single network with unstacked parameters and outputs
    ``(n, out_features)``, and ``draw=False`` leaves the parameters zero (to be loaded).
    """

    def __init__(self, kernel, width, *, in_shape, parameterization: str = "ntk", seeds: Sequence[int],
                 stacked: bool = True, outputs: int = 1, dtype: torch.dtype = torch.float32, device="cpu",
                 draw: bool = True):
        super().__init__()
        _check(parameterization, dtype, seeds)
        in_shape = parse_in_shape(in_shape)
        outputs = positive_int(outputs, "outputs")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise GpmarginError(f"device={device!r} is not a torch device: {exc}") from None
        layers = kernel.engine_layers()
        layer_shape = (in_shape[0], 1, in_shape[1]) if len(in_shape) == 2 else in_shape  # a sequence: H = 1
        plan(layers, Spec("image" if len(layer_shape) == 3 else "vector", layer_shape, gaussian=True), kernel=False)
        affine = sum(1 for step in compile_steps(layers) if not step.check and step.layer.has_units)
        units = iter(parse_widths(width, max(affine - 1, 0)) + [outputs])
        init = Init(parameterization, seeds, stacked, dtype, device, draw)
        chain, shape = build_chain(layers, layer_shape, lambda: next(units), init)
        self.layers = chain.layers
        self.kernel = kernel
        self.in_shape, self.out_shape = in_shape, shape
        self.members = len(seeds) if stacked else None
        self.batch_dims = 1 if stacked else 0
        self.parameterization = parameterization

    # -- parameters -------------------------------------------------------------------------
    @property
    def weights(self) -> list[nn.Parameter]:
        """Weight of every affine layer in order: ``(k, out, *row)`` (``(out, *row)`` unbatched)."""
        return [m.weight for m in self.affine_modules()]

    @property
    def biases(self) -> list[nn.Parameter]:
        return [m.bias for m in self.affine_modules() if m.bias is not None]

    def affine_modules(self) -> list[AffineModule]:
        """The affine layers in the order their parameters are drawn (branches included)."""
        return [m for m in self.layers.modules() if isinstance(m, AffineModule)]

    def load_weights(self, weights: Sequence[torch.Tensor]) -> None:
        """Replace the weights (one tensor per affine layer, shapes as :attr:`weights`) by copies."""
        mods = self.affine_modules()
        if len(weights) != len(mods):
            raise GpmarginError(f"weights has {len(weights)} tensors; this network has {len(mods)} weight layers")
        for m, w in zip(mods, weights):
            if tuple(w.shape) != tuple(m.weight.shape):
                raise GpmarginError(f"weights: got shape {tuple(w.shape)} where {tuple(m.weight.shape)} was expected")
            m.weight = nn.Parameter(w.detach().clone())

    def weight_matrices(self) -> list[list[torch.Tensor]]:
        """Per member, its weights as matrices ``(out, fan_in)`` (convolution filters flattened)."""
        ws = [w.detach() for w in self.weights]
        if self.members is None:
            return [[w.reshape(w.shape[0], -1) for w in ws]]
        return [[w[j].reshape(w.shape[1], -1) for w in ws] for j in range(self.members)]

    def member(self, j: int) -> "Network":
        """Member ``j`` as an unbatched network (a copy)."""
        if self.members is None or not 0 <= j < self.members:
            raise GpmarginError(f"member j={j!r} must be in [0, {self.members}) of a stacked network")
        memo = {id(p): None for p in self.parameters()}  # do not copy every member's parameters
        single = copy.deepcopy(self, memo)
        for old, new in zip(self.affine_modules(), single.affine_modules()):
            new.weight = nn.Parameter(old.weight.detach()[j].clone())
            new.bias = None if old.bias is None else nn.Parameter(old.bias.detach()[j].clone())
            new.stacked = False
        single.members, single.batch_dims = None, 0
        return single

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, *in_shape)`` or ``(members, n, *in_shape)`` -> ``(members, n, out)`` (``(n, out)`` unbatched)."""
        k = self.members or 1
        d = len(self.in_shape)
        if x.dim() == d + 1 and tuple(x.shape[1:]) == self.in_shape:
            fl = Flow(x.unsqueeze(-2) if d == 2 else x, "shared", k)  # a sequence (C, L) is an image (C, 1, L)
        elif self.members is not None and x.dim() == d + 2 and x.shape[0] == k and tuple(x.shape[2:]) == self.in_shape:
            if d == 2:
                x = x.unsqueeze(-2)
            if d == 1:
                fl = Flow(x.transpose(1, 2), "vector", k)
            else:
                fl = Flow(x.transpose(0, 1).reshape(x.shape[1], k * x.shape[2], *x.shape[3:]), "image", k)
        else:
            shape = ", ".join(map(str, self.in_shape))
            per = "" if self.members is None else f" or (members={k}, n, {shape}) per member"
            raise GpmarginError(f"x has shape {tuple(x.shape)}; this network takes (n, {shape}) inputs{per}")
        n = x.shape[0] if fl.layout == "shared" else x.shape[1]
        if n == 0:  # no examples: no outputs (the layers' reshapes cannot infer a size from nothing)
            empty = x.new_zeros((0, *self.out_shape), dtype=next(self.parameters()).dtype)
            return empty if self.members is None else empty.expand(k, 0, *self.out_shape)
        for m in self.layers:
            fl = m(fl)
        if fl.layout == "shared":  # no weights at all: every member computes the same function
            fl.materialise()
            out = fl.h.reshape(1, fl.h.shape[0], -1).expand(k, -1, -1)
        else:
            h = fl.h
            c = fl.scale()
            h = h * c if c != 1.0 else h
            out = h.transpose(1, 2)
        return out if self.members is not None else out[0]


def network(kernel, width, *, in_shape, parameterization: str = "ntk", members: int = 1, seed: int = 0,
            outputs: int = 1, dtype: torch.dtype = torch.float32, device="cpu") -> Network:
    """``members`` finite networks of ``kernel`` (member ``j`` seeded with ``member_seed(seed, j)``)."""
    members = positive_int(members, "members")
    if members > MAX_MEMBERS:
        raise GpmarginError(f"members={members} must be at most {MAX_MEMBERS} (member seeds are 1000 * seed + j)")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise GpmarginError(f"seed={seed!r} must be a non-negative integer")
    from gpmargin.io import resolve_device

    seeds = [member_seed(seed, j) for j in range(members)]
    return Network(kernel.with_floats(), width, in_shape=in_shape, parameterization=parameterization, seeds=seeds,
                   outputs=outputs, dtype=dtype, device=resolve_device(device))
