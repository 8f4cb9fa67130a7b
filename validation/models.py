"""The paper's networks, as single networks and as batched ensembles.

All weight tensors are stored row-major like ``torch.nn.Linear``: a dense layer is a matrix
``(out, in)`` and ``f = W x``.  An ensemble of ``k`` networks is ONE module whose weights are
stacked ``(k, out, in)``; its forward pass is batched (one GEMM for the shared first layer,
``torch.bmm`` afterwards, hidden states stored feature-major ``(k, width, n)``), never a
Python loop over networks.  Its output has shape
``(k, n, outputs)``.

Networks
--------
``MLP`` / ``EnsembleMLP``
    The paper's MLP: no biases, ``depth`` weight matrices ``d -> w -> ... -> w -> outputs``,
    activation ``sqrt(2) * relu`` between layers, 1 output for binary tasks (10 for
    MNIST-10).  With Nero constraints every row has unit norm, so with inputs of norm
    ``sqrt(d)`` each pre-activation has variance about 1 at initialisation.
``ConvNet`` / ``EnsembleConvNet``
    Two 5x5 "valid" convolutions (no padding, stride 1) with plain ReLU, then dense layers
    (plain ReLU) to the outputs; no biases.
``init="scale"`` (Fig 5 of the paper)
    First layer i.i.d. ``N(0, sigma^2)``, all other layers Xavier-normal
    (``std = sqrt(2 / (fan_in + fan_out))``).  The default ``init="gaussian"`` draws
    ``N(0, 1/fan_in)`` entries (any isotropic choice gives the same network once Nero's
    constraints have projected the rows).

Seeding
-------
Member ``j`` of an ensemble built with seed ``s`` is initialised from its own CPU
``torch.Generator`` seeded with :func:`member_seed` ``(s, j) = 1000 * s + j``; it draws its
layers in order, first to last.  A single network built with ``seed=member_seed(s, j)``
therefore has exactly the same initial weights as member ``j``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from gpmargin.errors import GpmarginError

SQRT2 = math.sqrt(2.0)


def member_seed(seed: int, j: int) -> int:
    """Seed of member ``j`` of an ensemble built with ``seed`` (``1000 * seed + j``)."""
    if not 0 <= j < 1000:
        raise GpmarginError(f"ensemble member index must be in [0, 1000), got {j}")
    return 1000 * int(seed) + int(j)


def _draw(shape: Sequence[int], fan_in: int, fan_out: int, layer: int, gen: torch.Generator,
          init: str, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    if init == "gaussian":
        std = 1.0 / math.sqrt(fan_in)
    elif init == "scale":
        std = sigma if layer == 0 else math.sqrt(2.0 / (fan_in + fan_out))
    else:
        raise GpmarginError(f"unknown init {init!r}: use 'gaussian' or 'scale'")
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype)


def mlp_shapes(in_dim: int, depth: int, width: int, outputs: int) -> list[tuple[int, int]]:
    """Weight shapes (out, in) of the paper's MLP."""
    if depth < 1:
        raise GpmarginError(f"depth must be at least 1, got {depth}")
    if width < 1 or outputs < 1 or in_dim < 1:
        raise GpmarginError("width, outputs and input dimension must be positive")
    dims = [in_dim] + [width] * (depth - 1) + [outputs]
    return [(dims[i + 1], dims[i]) for i in range(depth)]


def init_mlp_weights(seed: int, in_dim: int, depth: int, width: int, outputs: int,
                     init: str = "gaussian", sigma: float = 1.0,
                     dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Initial weights of one MLP from ``torch.Generator().manual_seed(seed)`` (CPU)."""
    gen = torch.Generator().manual_seed(int(seed))
    return [_draw(s, s[1], s[0], i, gen, init, sigma, dtype)
            for i, s in enumerate(mlp_shapes(in_dim, depth, width, outputs))]


def _check_act_scale(scale: float) -> float:
    if not (math.isfinite(scale) and scale > 0):
        raise GpmarginError(f"act_scale must be a positive finite number, got {scale!r}")
    return float(scale)


def _output_scale(scale: float, depth: int) -> float:
    """``c^(L-1)``: relu is positively homogeneous, ``c relu(z) = relu(c z)`` for ``c > 0``,
    so ``W_L c relu(... W_2 c relu(W_1 x))`` equals ``c^(L-1) W_L relu(... relu(W_1 x))``.
    The networks compute the plain-relu chain and scale only the (small) output, which
    saves two elementwise passes over every hidden layer."""
    return scale ** (depth - 1)


class MLP(nn.Module):
    """One paper MLP: ``f(x) = W_L phi(... phi(W_1 x))`` with ``phi = sqrt(2) relu``
    (computed as ``sqrt(2)^(L-1) W_L relu(... relu(W_1 x))``, the same function)."""

    batch_dims = 0

    def __init__(self, in_dim: int, depth: int, width: int, outputs: int = 1, *, seed: int = 0,
                 init: str = "gaussian", sigma: float = 1.0, act_scale: float = SQRT2,
                 dtype: torch.dtype = torch.float32, weights: Sequence[torch.Tensor] | None = None):
        super().__init__()
        if weights is None:
            weights = init_mlp_weights(seed, in_dim, depth, width, outputs, init, sigma, dtype)
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in weights])
        self.act_scale = _check_act_scale(act_scale)
        self.config = dict(in_dim=in_dim, depth=depth, width=width, outputs=outputs, act_scale=act_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.weights[0].T
        for w in self.weights[1:]:
            h = h.relu_() @ w.T  # in place: h is a fresh product, not needed by autograd
        c = _output_scale(self.act_scale, len(self.weights))
        return h * c if c != 1.0 else h

    def weight_matrices(self) -> list[list[torch.Tensor]]:
        """Weights as ``[[W_1, ..., W_L]]`` (a list with one network, like ensembles)."""
        return [[w.detach() for w in self.weights]]


class EnsembleMLP(nn.Module):
    """``k`` independent paper MLPs with stacked weights ``(k, out, in)``.

    ``forward(x)`` takes ``(n, d)`` (shared by all members) or ``(k, n, d)`` and returns
    ``(k, n, outputs)``; member ``j`` equals ``MLP`` with weights ``[W[j] for W in weights]``.
    """

    batch_dims = 1

    def __init__(self, k: int, in_dim: int, depth: int, width: int, outputs: int = 1, *, seed: int = 0,
                 init: str = "gaussian", sigma: float = 1.0, act_scale: float = SQRT2,
                 dtype: torch.dtype = torch.float32, weights: Sequence[torch.Tensor] | None = None):
        super().__init__()
        if k < 1:
            raise GpmarginError(f"ensemble size must be at least 1, got {k}")
        if weights is None:
            members = [init_mlp_weights(member_seed(seed, j), in_dim, depth, width, outputs, init, sigma, dtype)
                       for j in range(k)]
            weights = [torch.stack([m[i] for m in members]) for i in range(depth)]
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in weights])
        self.k = k
        self.act_scale = _check_act_scale(act_scale)
        self.seed = seed
        self.config = dict(k=k, in_dim=in_dim, depth=depth, width=width, outputs=outputs, act_scale=act_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature-major: hidden states are kept as ``(k, width, n)``, so every layer is
        ``h <- W phi(h)`` with no transposed operand (one GEMM ``(k*out, d) @ (d, n)`` for the
        shared first layer, ``torch.bmm`` after); only the small output is transposed."""
        w0 = self.weights[0]
        k, o, i = w0.shape
        if x.dim() == 2:  # shared input: one GEMM for all members
            h = (w0.reshape(k * o, i) @ x.T).reshape(k, o, x.shape[0])
        else:
            h = torch.bmm(w0, x.transpose(1, 2))
        for layer, w in enumerate(self.weights[1:]):
            # relu in place on bmm outputs; the first layer's output is a view, so out of place
            h = torch.bmm(w, torch.relu(h) if layer == 0 else h.relu_())
        c = _output_scale(self.act_scale, len(self.weights))
        h = h * c if c != 1.0 else h
        return h.transpose(1, 2)

    def member(self, j: int) -> MLP:
        """Member ``j`` as an ordinary :class:`MLP` (a copy)."""
        c = self.config
        return MLP(c["in_dim"], c["depth"], c["width"], c["outputs"], act_scale=self.act_scale,
                   weights=[w.detach()[j] for w in self.weights])

    def weight_matrices(self) -> list[list[torch.Tensor]]:
        """Per member, the list of its weight matrices ``[[W_1, ..., W_L] for each member]``."""
        return [[w.detach()[j] for w in self.weights] for j in range(self.k)]


# ----------------------------------------------------------------------------- conv net
def conv_shapes(in_shape: Sequence[int], channels: Sequence[int], width: int, dense_layers: int,
                outputs: int, kernel: int = 5) -> tuple[list[tuple[int, ...]], int]:
    """Weight shapes of the paper's conv net and the flattened feature size."""
    c, h, w = in_shape
    shapes: list[tuple[int, ...]] = []
    for ch in channels:
        shapes.append((ch, c, kernel, kernel))
        c, h, w = ch, h - kernel + 1, w - kernel + 1
        if h < 1 or w < 1:
            raise GpmarginError(f"image {tuple(in_shape)} too small for {len(channels)} valid {kernel}x{kernel} convs")
    flat = c * h * w
    dims = [flat] + [width] * dense_layers + [outputs]
    shapes += [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]
    return shapes, flat


def init_conv_weights(seed: int, in_shape, channels=(32, 32), width=512, dense_layers=1, outputs=1,
                      init="gaussian", sigma=1.0, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(int(seed))
    shapes, _ = conv_shapes(in_shape, channels, width, dense_layers, outputs)
    out = []
    for i, s in enumerate(shapes):
        fan_in = int(math.prod(s[1:]))
        fan_out = s[0] * int(math.prod(s[2:]))
        out.append(_draw(s, fan_in, fan_out, i, gen, init, sigma, dtype))
    return out


class EnsembleConvNet(nn.Module):
    """``k`` paper conv nets: two valid 5x5 convs + ReLU, dense ReLU layers, linear output.

    Input ``(n, C, H, W)`` shared by all members; output ``(k, n, outputs)``.  Convolutions of
    all members run as one grouped convolution.  ``k = 1`` is the single network.
    """

    batch_dims = 1

    def __init__(self, k: int, in_shape: Sequence[int], channels: Sequence[int] = (32, 32), width: int = 512,
                 dense_layers: int = 1, outputs: int = 1, *, seed: int = 0, init: str = "gaussian",
                 sigma: float = 1.0, dtype: torch.dtype = torch.float32,
                 weights: Sequence[torch.Tensor] | None = None):
        super().__init__()
        if weights is None:
            members = [init_conv_weights(member_seed(seed, j), in_shape, channels, width, dense_layers, outputs,
                                         init, sigma, dtype) for j in range(k)]
            weights = [torch.stack([m[i] for m in members]) for i in range(len(members[0]))]
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in weights])
        self.k, self.n_conv = k, len(channels)
        self.config = dict(k=k, in_shape=list(in_shape), channels=list(channels), width=width,
                           dense_layers=dense_layers, outputs=outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.k, x.shape[0]
        h = x
        for i in range(self.n_conv):
            w = self.weights[i]  # (k, out, in, kh, kw)
            h = torch.nn.functional.conv2d(h, w.reshape(-1, *w.shape[2:]), groups=1 if i == 0 else k)
            h = torch.relu(h)
        h = h.reshape(n, k, -1).transpose(0, 1)  # (k, n, flat)
        dense = list(self.weights)[self.n_conv:]
        for j, w in enumerate(dense):
            h = torch.bmm(h, w.transpose(1, 2))
            if j < len(dense) - 1:
                h = torch.relu(h)
        return h

    def weight_matrices(self) -> list[list[torch.Tensor]]:
        """Per member, weights as matrices (conv kernels reshaped to ``(out, in*kh*kw)``)."""
        return [[w.detach()[j].reshape(w.shape[1], -1) for w in self.weights] for j in range(self.k)]
