"""Networks as kernel objects: the paper's MLP and CNN, ResNets / WideResNets and Myrtle CNNs."""

from __future__ import annotations

import math

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.activations import Identity, Relu
from gpmargin.kernels.branching import FanInSum, FanOut, parallel
from gpmargin.kernels.constrained import Centred
from gpmargin.kernels.conv import Conv2d
from gpmargin.kernels.dense import Dense
from gpmargin.kernels.pooling import AvgPool, Flatten, GlobalAvgPool
from gpmargin.kernels.serial import Serial, serial


def _affine(layer, constrained: bool):
    return Centred(layer) if constrained else layer


def _stds(W_std, count: int, name: str) -> list[float]:
    """``W_std`` (one number or 0-dim tensor, or one per weight layer) as a list of ``count``
    (floats, tensors kept so that the kernel is differentiable with respect to them)."""
    one = isinstance(W_std, (int, float)) or (isinstance(W_std, torch.Tensor) and W_std.dim() == 0)
    stds = [W_std] * count if one else list(W_std)

    def positive(s) -> bool:
        value = float(s.detach()) if isinstance(s, torch.Tensor) else s
        return isinstance(value, (int, float)) and math.isfinite(value) and value > 0

    if len(stds) != count or not all(positive(s) for s in stds):
        raise GpmarginError(f"{name} W_std={W_std!r} must be a positive number or {count} positive numbers "
                            "(one per weight layer)")
    return [s if isinstance(s, torch.Tensor) else float(s) for s in stds]


def paper_mlp(depth: int, constrained: bool = False, *, W_std=1.0, act_scale: float = math.sqrt(2.0)) -> Serial:
    r"""Bias-free MLP with ``depth`` weight matrices, ``ReLU * sqrt(2)`` between them, fan-in
    ``W_std = 1`` and one output.

    ``W_std`` may also be one number per weight matrix, and ``act_scale`` replaces ``sqrt(2)``
    (the validation harness uses both for its initialisation variants).

    For inputs rescaled to norm ``sqrt(d)`` (as the paper does) the NNGP is the arc-cosine
    recursion :math:`K \leftarrow [\sqrt{1-K^2} + K(\pi - \arccos K)]/\pi` applied ``depth - 1``
    times to :math:`x\cdot x'/d`.  ``constrained=True`` gives the kernel of the same network with
    Nero's zero-mean unit-norm weight rows (every layer, readout included; NNGP only), see
    :mod:`gpmargin.kernels.constrained`.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise GpmarginError(f"paper_mlp depth={depth!r} must be an integer >= 1 (number of weight matrices)")
    if not (isinstance(act_scale, (int, float)) and math.isfinite(act_scale) and act_scale > 0):
        raise GpmarginError(f"paper_mlp act_scale={act_scale!r} must be a positive number")
    stds = _stds(W_std, depth, "paper_mlp")
    layers = []
    for s in stds[:-1]:
        layers += [_affine(Dense(W_std=s), constrained), Relu(scale=float(act_scale))]
    layers.append(_affine(Dense(W_std=stds[-1]), constrained))
    return serial(*layers)


def paper_cnn(depth: int | None = None, constrained: bool = False, W_std=1.0, convs: int = 2, *,
              dense_layers: int | None = None) -> Serial:
    """The paper's convolutional network: ``Conv(5x5, valid) - ReLU - Conv(5x5, valid) - ReLU -
    Flatten - [Dense - ReLU] * (depth - 3) - Dense`` (one output, no biases, plain ReLU).

    depth : number of weight layers, the convolutions included (>= convs + 1; default convs + 2,
        i.e. one hidden dense layer), the same count as ``gpmargin predict --arch paper-cnn --depth``.
    W_std : fan-in weight scale of every layer (neural-tangents' default 1.0), or one per weight layer.
    constrained : Nero-constrained rows (NNGP only), see :mod:`gpmargin.kernels.constrained`.
    convs : number of 5x5 valid convolutions (default 2, the paper's).
    dense_layers : deprecated; ``dense_layers=d`` is ``depth=d + convs``.

    On 28x28 MNIST the convolutions give 24x24 and then 20x20 feature maps; only same-position
    covariances are kept (``Flatten`` readout), so memory is 576 numbers per pair of images.
    """
    if not isinstance(convs, int) or isinstance(convs, bool) or convs < 1:
        raise GpmarginError(f"paper_cnn convs={convs!r} must be an integer >= 1")
    if dense_layers is not None:
        import warnings

        if depth is not None:
            raise GpmarginError(f"paper_cnn: give depth={depth!r} or the deprecated dense_layers={dense_layers!r}, not both")
        if not isinstance(dense_layers, int) or isinstance(dense_layers, bool) or dense_layers < 1:
            raise GpmarginError(f"paper_cnn dense_layers={dense_layers!r} must be an integer >= 1 (deprecated: use depth)")
        warnings.warn(f"paper_cnn(dense_layers=d) is deprecated; use depth=d + {convs} (weight layers, convolutions "
                      "included, as --depth in the CLI)", DeprecationWarning, stacklevel=2)
        depth = dense_layers + convs
    if depth is None:
        depth = convs + 2
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < convs + 1:
        raise GpmarginError(f"paper_cnn depth={depth!r} must be an integer >= {convs + 1} (weight layers: "
                            f"{convs} convolutions plus at least the dense readout)")
    stds = _stds(W_std, depth, "paper_cnn")
    layers = []
    for s in stds[:convs]:
        layers += [_affine(Conv2d(5, padding="valid", W_std=s), constrained), Relu()]
    layers.append(Flatten())
    for s in stds[convs:-1]:
        layers += [_affine(Dense(W_std=s), constrained), Relu()]
    layers.append(_affine(Dense(W_std=stds[-1]), constrained))
    return serial(*layers)


def _positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise GpmarginError(f"{what}={v!r} must be a positive integer")
    return v


def resnet_block(stride: int = 1, projection: bool = False, *, W_std: float = 1.0, b_std: float | None = None,
                 shortcut_size: int = 1) -> Serial:
    """A pre-activation residual block (Zagoruyko & Komodakis 2016, without batch norm):
    ``Relu - Conv(3x3, stride) - Relu - Conv(3x3)`` plus a shortcut, summed (``FanInSum``).

    The shortcut is the identity, or with ``projection=True`` a ``shortcut_size`` convolution
    with the block's stride (where the number of channels or the resolution changes).
    """
    conv = dict(padding="same", W_std=W_std, b_std=b_std)
    main = serial(Relu(), Conv2d(3, stride, **conv), Relu(), Conv2d(3, 1, **conv))
    shortcut = Conv2d(shortcut_size, stride, **conv) if projection else Identity()
    if stride != 1 and not projection:
        raise GpmarginError(f"resnet_block(stride={stride}) changes the resolution; it needs projection=True")
    return serial(FanOut(2), parallel(main, shortcut), FanInSum())


def resnet(blocks=(2, 2, 2), strides=(1, 2, 2), *, W_std: float = 1.0, b_std: float | None = None,
           shortcut_size: int = 1) -> Serial:
    """A residual network: a 3x3 stem convolution, then groups of :func:`resnet_block` (the first
    block of each group with a projection shortcut and the group's stride), ``Relu``,
    ``GlobalAvgPool`` and a dense readout.

    blocks : blocks per group; strides : each group's first stride (the same length).
    The layout of neural-tangents' WideResNet example (with a 1x1 projection, as Zagoruyko &
    Komodakis, instead of its 3x3, and ``GlobalAvgPool`` for its ``AvgPool(8) - Flatten``,
    the same on 32x32 inputs).
    """
    blocks, strides = tuple(blocks), tuple(strides)
    if not blocks or len(blocks) != len(strides):
        raise GpmarginError(f"resnet blocks={blocks!r} and strides={strides!r} need one entry per group")
    for b in blocks:
        _positive_int(b, "resnet blocks entry")
    for s in strides:
        _positive_int(s, "resnet strides entry")
    layers = [Conv2d(3, 1, "same", W_std, b_std)]
    for n, stride in zip(blocks, strides):
        layers.append(resnet_block(stride, True, W_std=W_std, b_std=b_std, shortcut_size=shortcut_size))
        layers += [resnet_block(1, False, W_std=W_std, b_std=b_std)] * (n - 1)
    layers += [Relu(), GlobalAvgPool(), Dense(W_std, b_std)]
    return serial(*layers)


def wide_resnet(depth: int = 16, k: int = 4, *, W_std: float = 1.0, b_std: float | None = None) -> Serial:
    """WRN-``depth``-``k`` (Zagoruyko & Komodakis 2016): three groups of ``(depth - 4) / 6``
    blocks, strides 1, 2, 2.  ``k`` (the widening factor) sets only the finite channel counts,
    :func:`wide_resnet_widths`; the infinite-width kernel does not depend on it."""
    depth = _positive_int(depth, "wide_resnet depth")
    _positive_int(k, "wide_resnet k")
    if depth < 10 or (depth - 4) % 6:
        raise GpmarginError(f"wide_resnet depth={depth} must be 6 n + 4 with n >= 1 (10, 16, 22, 28, ...)")
    n = (depth - 4) // 6
    return resnet((n, n, n), (1, 2, 2), W_std=W_std, b_std=b_std)


def wide_resnet_widths(depth: int = 16, k: int = 4, base: int = 16) -> list[int]:
    """The channel counts of WRN-``depth``-``k``, one per affine layer before the readout, in the
    order ``network(width=...)`` takes them: stem ``base``, group ``g`` ``base * k * 2**g``."""
    wide_resnet(depth, k)
    n = (depth - 4) // 6
    widths = [base]
    for g in range(3):
        c = base * k * 2**g
        widths += [c, c, c] + [c, c] * (n - 1)  # first block: two convolutions and the projection
    return widths


_MYRTLE = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def myrtle(depth: int = 5, *, W_std: float = math.sqrt(2.0), b_std: float | None = None) -> Serial:
    """The Myrtle CNNs (Shankar et al. 2020; neural-tangents' Myrtle kernels): three stages of
    ``[Conv(3x3, same) - Relu] * n_i`` separated by ``AvgPool(2, stride 2)``, ``(n_1, n_2, n_3)``
    = (2, 1, 1), (2, 2, 2), (3, 3, 3) for depth 5, 7, 10, then ``GlobalAvgPool`` (neural-tangents'
    three ``AvgPool(2)`` on the 4x4 map of a 32x32 input, the same there) and a dense readout.
    """
    if depth not in _MYRTLE:
        raise GpmarginError(f"myrtle depth={depth!r} must be 5, 7 or 10")
    conv = Conv2d(3, 1, "same", W_std, b_std)
    layers = []
    for stage, n in enumerate(_MYRTLE[depth]):
        if stage:
            layers.append(AvgPool((2, 2), (2, 2)))
        layers += [conv, Relu()] * n
    layers += [GlobalAvgPool(), Dense(W_std, b_std)]
    return serial(*layers)
