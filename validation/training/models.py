"""The paper's networks, as single networks and as batched ensembles, built from their kernels.

Every model here is a :class:`gpmargin.kernels.Network`: the finite network of the kernel object
the theory uses (:func:`gpmargin.kernels.paper_mlp`, :func:`gpmargin.kernels.paper_cnn`), in the
standard parameterisation (weights ``W ~ N(0, W_std^2 / fan_in)``, ``f = W x``), so theory and
experiment come from one object.  Weights are stored row-major like ``torch.nn.Linear`` (a dense
layer is ``(out, in)``); an ensemble of ``k`` networks stacks them ``(k, out, in)`` and runs every
layer once for all members (one GEMM for the shared first layer, ``torch.bmm`` after, hidden
states feature-major ``(k, width, n)``; convolutions as one grouped convolution), never a
Python loop over networks.  Outputs: ``(k, n, outputs)`` (``(n, outputs)`` for :class:`MLP`).

Networks
--------
``MLP`` / ``EnsembleMLP``
    ``paper_mlp(depth)``: no biases, ``depth`` weight matrices ``d -> w -> ... -> w -> outputs``,
    activation ``sqrt(2) * relu`` between layers, 1 output for binary tasks (10 for MNIST-10).
    With Nero constraints every row has unit norm, so with inputs of norm ``sqrt(d)`` each
    pre-activation has variance about 1 at initialisation.  ReLU is positively homogeneous,
    so the forward pass computes the plain-relu chain and multiplies only the output by
    ``sqrt(2)^(depth - 1)`` (the same function, two elementwise passes fewer per layer).
``EnsembleConvNet``
    ``paper_cnn``: 5x5 "valid" convolutions (no padding, stride 1) with plain ReLU, then dense
    layers (plain ReLU) to the outputs; no biases.  ``k = 1`` is the single network.
``init="scale"`` (Fig 5 of the paper)
    First layer i.i.d. ``N(0, sigma^2)`` (``W_std = sigma sqrt(fan_in)``), all other layers
    Xavier-normal, ``std = sqrt(2 / (fan_in + fan_out))`` (``W_std = sqrt(2 fan_in / (fan_in +
    fan_out))``).  The default ``init="gaussian"`` is the kernel's ``N(0, 1/fan_in)`` (any
    isotropic choice gives the same network once Nero's constraints have projected the rows).

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

import numpy as np
import torch
from torch import nn

from gpmargin.errors import GpmarginError
from gpmargin.kernels import Network, member_seed, paper_cnn, paper_mlp
from validation.training.ghost_bn import GhostBatchNorm1d

SQRT2 = math.sqrt(2.0)
INITS = ("gaussian", "scale")

__all__ = ["MLP", "EnsembleMLP", "EnsembleConvNet", "member_seed", "mlp_shapes", "conv_shapes", "mlp_kernel",
           "conv_kernel", "f1_network", "linear_weights", "forward_chunked", "as_tensor"]


def _w_stds(shapes: Sequence[tuple[int, ...]], init: str, sigma: float) -> list[float]:
    """``W_std`` of every weight layer for ``init`` (see the module docstring)."""
    if init == "gaussian":
        return [1.0] * len(shapes)
    if init != "scale":
        raise GpmarginError(f"unknown init {init!r}: use 'gaussian' or 'scale'")
    if not (math.isfinite(sigma) and sigma > 0):
        raise GpmarginError(f"sigma={sigma!r} must be a positive number (std of the first layer's weights)")
    stds = []
    for i, s in enumerate(shapes):
        fan_in, fan_out = int(math.prod(s[1:])), s[0] * int(math.prod(s[2:]))
        stds.append(sigma * math.sqrt(fan_in) if i == 0 else math.sqrt(2.0 * fan_in / (fan_in + fan_out)))
    return stds


def _check_act_scale(scale: float) -> float:
    if not (math.isfinite(scale) and scale > 0):
        raise GpmarginError(f"act_scale must be a positive finite number, got {scale!r}")
    return float(scale)


# ----------------------------------------------------------------------------------- MLP
def mlp_shapes(in_dim: int, depth: int, width: int, outputs: int) -> list[tuple[int, int]]:
    """Weight shapes (out, in) of the paper's MLP."""
    if depth < 1:
        raise GpmarginError(f"depth must be at least 1, got {depth}")
    if width < 1 or outputs < 1 or in_dim < 1:
        raise GpmarginError("width, outputs and input dimension must be positive")
    dims = [in_dim] + [width] * (depth - 1) + [outputs]
    return [(dims[i + 1], dims[i]) for i in range(depth)]


def mlp_kernel(in_dim: int, depth: int, width: int, outputs: int = 1, init: str = "gaussian", sigma: float = 1.0,
               act_scale: float = SQRT2):
    """The kernel object (``paper_mlp``) whose finite network the MLP models are."""
    stds = _w_stds(mlp_shapes(in_dim, depth, width, outputs), init, sigma)
    return paper_mlp(depth, W_std=stds, act_scale=_check_act_scale(act_scale))


class MLP(Network):
    """One paper MLP: ``f(x) = W_L phi(... phi(W_1 x))`` with ``phi = sqrt(2) relu``; input
    ``(n, d)``, output ``(n, outputs)``, weights ``(out, in)`` (``batch_dims = 0``)."""

    def __init__(self, in_dim: int, depth: int, width: int, outputs: int = 1, *, seed: int = 0,
                 init: str = "gaussian", sigma: float = 1.0, act_scale: float = SQRT2,
                 dtype: torch.dtype = torch.float32, weights: Sequence[torch.Tensor] | None = None):
        kernel = mlp_kernel(in_dim, depth, width, outputs, init, sigma, act_scale)
        super().__init__(kernel, width, in_shape=in_dim, parameterization="standard", seeds=[seed], stacked=False,
                         outputs=outputs, dtype=dtype, draw=weights is None)
        if weights is not None:
            self.load_weights(weights)
        self.act_scale = float(act_scale)
        self.config = dict(in_dim=in_dim, depth=depth, width=width, outputs=outputs, act_scale=act_scale)


class EnsembleMLP(Network):
    """``k`` independent paper MLPs with stacked weights ``(k, out, in)``.

    ``forward(x)`` takes ``(n, d)`` (shared by all members) or ``(k, n, d)`` and returns
    ``(k, n, outputs)``; member ``j`` equals ``MLP`` with weights ``[W[j] for W in weights]``.
    """

    def __init__(self, k: int, in_dim: int, depth: int, width: int, outputs: int = 1, *, seed: int = 0,
                 init: str = "gaussian", sigma: float = 1.0, act_scale: float = SQRT2,
                 dtype: torch.dtype = torch.float32, weights: Sequence[torch.Tensor] | None = None):
        if k < 1:
            raise GpmarginError(f"ensemble size must be at least 1, got {k}")
        kernel = mlp_kernel(in_dim, depth, width, outputs, init, sigma, act_scale)
        super().__init__(kernel, width, in_shape=in_dim, parameterization="standard",
                         seeds=[member_seed(seed, j) for j in range(k)], outputs=outputs, dtype=dtype,
                         draw=weights is None)
        if weights is not None:
            self.load_weights(weights)
        self.k = k
        self.act_scale = float(act_scale)
        self.seed = seed
        self.config = dict(k=k, in_dim=in_dim, depth=depth, width=width, outputs=outputs, act_scale=act_scale)

    def member(self, j: int) -> MLP:
        """Member ``j`` as an ordinary :class:`MLP` (a copy)."""
        c = self.config
        return MLP(c["in_dim"], c["depth"], c["width"], c["outputs"], act_scale=self.act_scale,
                   weights=[w.detach()[j] for w in self.weights])


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


def conv_kernel(in_shape, channels=(32, 32), width=512, dense_layers=1, outputs=1, init="gaussian", sigma=1.0):
    """The kernel object (``paper_cnn``) whose finite network the conv nets are."""
    shapes, _ = conv_shapes(in_shape, channels, width, dense_layers, outputs)
    return paper_cnn(len(channels) + dense_layers + 1, W_std=_w_stds(shapes, init, sigma), convs=len(channels))


class EnsembleConvNet(Network):
    """``k`` paper conv nets: valid 5x5 convs + ReLU, dense ReLU layers, linear output.

    Input ``(n, C, H, W)`` shared by all members; output ``(k, n, outputs)``.  Convolutions of
    all members run as one grouped convolution.  ``k = 1`` is the single network.
    """

    def __init__(self, k: int, in_shape: Sequence[int], channels: Sequence[int] = (32, 32), width: int = 512,
                 dense_layers: int = 1, outputs: int = 1, *, seed: int = 0, init: str = "gaussian",
                 sigma: float = 1.0, dtype: torch.dtype = torch.float32,
                 weights: Sequence[torch.Tensor] | None = None):
        if k < 1:
            raise GpmarginError(f"ensemble size must be at least 1, got {k}")
        super().__init__(conv_kernel(in_shape, channels, width, dense_layers, outputs, init, sigma),
                         list(channels) + [width] * dense_layers, in_shape=tuple(in_shape),
                         parameterization="standard", seeds=[member_seed(seed, j) for j in range(k)],
                         outputs=outputs, dtype=dtype, draw=weights is None)
        if weights is not None:
            self.load_weights(weights)
        self.k, self.n_conv = k, len(channels)
        self.config = dict(k=k, in_shape=list(in_shape), channels=list(channels), width=width,
                           dense_layers=dense_layers, outputs=outputs)


# ----------------------------------------------------------------------------------- sweeps
def sweep_network(model: str, members: int, in_dim: int, depth: int, width: int, outputs: int, *, seed: int,
                  dtype: torch.dtype, device) -> Network:
    """The ensemble a validation sweep trains: ``"mlp"`` (:class:`EnsembleMLP`, standard
    parameterisation) or ``"ntk-mlp"`` (``paper_mlp(depth).network(width, parameterization="ntk")``,
    the network whose gradient-descent limit :mod:`gpmargin.predict.gradient` predicts)."""
    if model == "ntk-mlp":
        return paper_mlp(depth).network(width, in_shape=in_dim, parameterization="ntk", members=members, seed=seed,
                                        outputs=outputs, dtype=dtype, device=device)
    if model == "mlp":
        return EnsembleMLP(members, in_dim, depth, width, outputs, seed=seed, dtype=dtype).to(device)
    raise GpmarginError(f"unknown model {model!r} for a sweep: use 'mlp' or 'ntk-mlp'")


def effective_weights(net: Network) -> list[torch.Tensor]:
    """The matrices the network multiplies by, ``(k, out, *row)``: the weights in the standard
    parameterisation, ``W_std / sqrt(fan_in) * theta`` in the NTK one (for norm-based measures)."""
    return [m.weight.detach() * m.w_mult for m in net.affine_modules()]


# ----------------------------------------------------------------------------- F1 (Hoffer et al.)
def f1_network(in_dim: int, classes: int, width: int = 512, hidden: int = 5, ghost_batch_size: int | None = None,
               seed: int = 0) -> nn.Sequential:
    """F1 of Hoffer et al. (2017): ``hidden`` blocks ``Linear(no bias) -> BatchNorm1d (ghost if
    ghost_batch_size) -> ReLU``, then ``Linear`` to ``classes``; torch's default init drawn under
    ``torch.manual_seed(seed)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(hidden):
            bn = nn.BatchNorm1d(width) if ghost_batch_size is None else GhostBatchNorm1d(width, ghost_batch_size)
            layers += [nn.Linear(d, width, bias=False), bn, nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, classes))
        return nn.Sequential(*layers)


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights of every ``nn.Linear`` of ``model``, in order (detached)."""
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------- evaluation
def forward_chunked(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``model(x)`` without gradients, ``chunk`` examples at a time, joined along the examples axis
    (``-2``: ``(n, c)`` for one network, ``(k, n, c)`` for an ensemble)."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)], dim=-2)


def as_tensor(a, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An array or tensor as a tensor on ``device`` (in ``dtype`` when given)."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)
