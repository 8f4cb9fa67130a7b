"""NNGP and NTK kernels of infinitely wide networks, as composable layers (stax-style).

Every kernel object ``k`` (a layer, or ``serial(...)`` of layers) is called as
``k(x1, x2=None, get="nngp")`` with ``get`` in ``"nngp"``, ``"ntk"`` or ``("nngp", "ntk")``,
and ``k.diag(x, get=...)`` gives the diagonal without forming the matrix.  Inputs are numpy
arrays or torch tensors, ``(N, d)`` vectors, ``(N, C, L)`` sequences or ``(N, C, H, W)`` images;
outputs are float64 torch tensors on the input's device.  Conventions (fan-in scaling, NTK
parameterisation, ``Conv``/``Flatten``) are neural-tangents', so values agree with it to rounding.

Layers, by family (one module each):

* affine: :class:`Dense`, :class:`Conv2d`, :class:`Conv1d` (``padding`` "valid", "same", "circular");
  the constraint transform :class:`Centred` (Nero-constrained rows, see ``constrained``);
* activations with closed forms: :class:`Relu`, :class:`LeakyRelu`, :class:`ABRelu`, :class:`Abs`,
  :class:`Erf`, :class:`Identity` (``activations``), :class:`Gelu`, :class:`Sin`, :class:`Cos`,
  :class:`Rbf`, :class:`Exp`, :class:`Gaussian` (``smooth``), :class:`Sign`, :class:`Monomial`,
  :class:`RectifiedMonomial`, :class:`Polynomial` (``monomials``); any activation by quadrature,
  :class:`ElementwiseNumerical`, or a user's closed form, :class:`Elementwise` (``numerical``);
* pooling and readouts: :class:`AvgPool`, :class:`SumPool`, :class:`Flatten`, :class:`GlobalAvgPool`,
  :class:`GlobalSumPool` (``pooling``);
* normalisation and noise: :class:`LayerNorm` (``normalization``), :class:`Dropout` (``dropout``);
* branches: :class:`FanOut`, :func:`parallel`, :class:`FanInSum`, :class:`FanInProd`,
  :class:`FanInConcat`, :func:`repeat` (``branching``).

Presets: :func:`paper_mlp`, :func:`paper_cnn`, :func:`resnet_block`, :func:`resnet`,
:func:`wide_resnet`, :func:`myrtle`.  Finite networks: ``k.network(width, in_shape=...)`` builds the
batched torch network whose infinite-width limit ``k`` is (:class:`Network`, parameterisations and
seeding in ``gpmargin.kernels.finite``).  Adapters: ``gpmargin.kernels.gpytorch`` (GPyTorch kernels),
``gpmargin.kernels.sklearn`` (a scikit-learn kernel) and ``gpmargin.kernels.nt`` (wrap a
neural-tangents ``kernel_fn``).
"""

from gpmargin.kernels.activations import ABRelu, Erf, Identity, LeakyRelu, Relu
from gpmargin.kernels.base import Layer
from gpmargin.kernels.branching import FanInConcat, FanInProd, FanInSum, FanOut, Parallel, parallel, repeat
from gpmargin.kernels.constrained import Centred
from gpmargin.kernels.conv import Conv1d, Conv2d
from gpmargin.kernels.dense import Dense
from gpmargin.kernels.dropout import Dropout
from gpmargin.kernels.finite import member_seed
from gpmargin.kernels.monomials import Abs, Monomial, Polynomial, RectifiedMonomial, Sign
from gpmargin.kernels.network import Network
from gpmargin.kernels.normalization import LayerNorm
from gpmargin.kernels.numerical import Elementwise, ElementwiseNumerical
from gpmargin.kernels.pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, SumPool
from gpmargin.kernels.presets import (myrtle, paper_cnn, paper_mlp, resnet, resnet_block, wide_resnet,
                                      wide_resnet_widths)
from gpmargin.kernels.serial import Serial, serial
from gpmargin.kernels.smooth import Cos, Exp, Gaussian, Gelu, Rbf, Sin

__all__ = [
    "ABRelu",
    "Abs",
    "AvgPool",
    "Centred",
    "Conv1d",
    "Conv2d",
    "Cos",
    "Dense",
    "Dropout",
    "Elementwise",
    "ElementwiseNumerical",
    "Erf",
    "Exp",
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "Flatten",
    "Gaussian",
    "Gelu",
    "GlobalAvgPool",
    "GlobalSumPool",
    "Identity",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "Monomial",
    "Network",
    "Parallel",
    "Polynomial",
    "Rbf",
    "RectifiedMonomial",
    "Relu",
    "Serial",
    "Sign",
    "Sin",
    "SumPool",
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
