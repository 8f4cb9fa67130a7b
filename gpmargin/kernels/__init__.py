"""NNGP and NTK kernels of infinitely wide networks, as composable layers (stax-style).

Every kernel object ``k`` (a layer, or ``serial(...)`` of layers) is called as
``k(x1, x2=None, get="nngp")`` with ``get`` in ``"nngp"``, ``"ntk"`` or ``("nngp", "ntk")``,
and ``k.diag(x, get=...)`` gives the diagonal without forming the matrix.  Inputs are numpy
arrays or torch tensors, ``(N, d)`` or ``(N, C, H, W)``; outputs are float64 torch tensors on
the input's device.  Conventions (fan-in scaling, NTK parameterisation, ``Conv``/``Flatten``)
are neural-tangents', so values agree with it to rounding.

Layers: :class:`Dense`, :class:`Conv2d`, :class:`Flatten`, :class:`GlobalAvgPool`,
:class:`Relu`, :class:`LeakyRelu`, :class:`ABRelu`, :class:`Erf`, :class:`Identity`, and the
constraint transform :class:`Centred` (Nero-constrained rows, see ``constrained``).
Presets: :func:`paper_mlp`, :func:`paper_cnn`.  Finite networks: ``k.network(width, in_shape=...)``
builds the batched torch network whose infinite-width limit ``k`` is (:class:`Network`,
parameterisations and seeding in ``gpmargin.kernels.finite``).  Adapters: ``gpmargin.kernels.gpytorch``
(GPyTorch kernels), ``gpmargin.kernels.sklearn`` (a scikit-learn kernel) and ``gpmargin.kernels.nt``
(wrap a neural-tangents ``kernel_fn``).
"""

from gpmargin.kernels.activations import ABRelu, Erf, Identity, LeakyRelu, Relu
from gpmargin.kernels.base import Layer
from gpmargin.kernels.branching import FanInConcat, FanInProd, FanInSum, FanOut, Parallel, parallel, repeat
from gpmargin.kernels.constrained import Centred
from gpmargin.kernels.conv import Conv2d
from gpmargin.kernels.dense import Dense
from gpmargin.kernels.finite import member_seed
from gpmargin.kernels.network import Network
from gpmargin.kernels.pooling import Flatten, GlobalAvgPool
from gpmargin.kernels.presets import (myrtle, paper_cnn, paper_mlp, resnet, resnet_block, wide_resnet,
                                      wide_resnet_widths)
from gpmargin.kernels.serial import Serial, serial

__all__ = [
    "ABRelu",
    "Centred",
    "Conv2d",
    "Dense",
    "Erf",
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "Flatten",
    "GlobalAvgPool",
    "Identity",
    "Layer",
    "LeakyRelu",
    "Network",
    "Parallel",
    "Relu",
    "Serial",
    "member_seed",
    "myrtle",
    "paper_cnn",
    "paper_mlp",
    "parallel",
    "repeat",
    "resnet",
    "resnet_block",
    "serial",
    "wide_resnet",
    "wide_resnet_widths",
]
