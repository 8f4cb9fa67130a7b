"""The paper's networks as kernel objects."""

from __future__ import annotations

import math

from gpmargin.errors import GpmarginError
from gpmargin.kernels.activations import Relu
from gpmargin.kernels.constrained import Centred
from gpmargin.kernels.conv import Conv2d
from gpmargin.kernels.dense import Dense
from gpmargin.kernels.pooling import Flatten
from gpmargin.kernels.serial import Serial, serial


def _affine(layer, constrained: bool):
    return Centred(layer) if constrained else layer


def paper_mlp(depth: int, constrained: bool = False) -> Serial:
    r"""Bias-free MLP with ``depth`` weight matrices, ``ReLU * sqrt(2)`` between them, fan-in
    ``W_std = 1`` and one output.

    For inputs rescaled to norm ``sqrt(d)`` (as the paper does) the NNGP is the arc-cosine
    recursion :math:`K \leftarrow [\sqrt{1-K^2} + K(\pi - \arccos K)]/\pi` applied ``depth - 1``
    times to :math:`x\cdot x'/d`.  ``constrained=True`` gives the kernel of the same network with
    Nero's zero-mean unit-norm weight rows (every layer, readout included; NNGP only), see
    :mod:`gpmargin.kernels.constrained`.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise GpmarginError(f"paper_mlp depth={depth!r} must be an integer >= 1 (number of weight matrices)")
    layers = []
    for _ in range(depth - 1):
        layers += [_affine(Dense(W_std=1.0), constrained), Relu(scale=math.sqrt(2.0))]
    layers.append(_affine(Dense(W_std=1.0), constrained))
    return serial(*layers)


def paper_cnn(depth: int | None = None, constrained: bool = False, W_std: float = 1.0, *,
              dense_layers: int | None = None) -> Serial:
    """The paper's convolutional network: ``Conv(5x5, valid) - ReLU - Conv(5x5, valid) - ReLU -
    Flatten - [Dense - ReLU] * (depth - 3) - Dense`` (one output, no biases, plain ReLU).

    depth : number of weight layers, the two convolutions included (>= 3; default 4, i.e. one
        hidden dense layer), the same count as ``gpmargin predict --arch paper-cnn --depth``.
    W_std : fan-in weight scale of every layer (neural-tangents' default 1.0).
    constrained : Nero-constrained rows (NNGP only), see :mod:`gpmargin.kernels.constrained`.
    dense_layers : deprecated; ``dense_layers=d`` is ``depth=d + 2``.

    On 28x28 MNIST the convolutions give 24x24 and then 20x20 feature maps; only same-position
    covariances are kept (``Flatten`` readout), so memory is 576 numbers per pair of images.
    """
    if dense_layers is not None:
        import warnings

        if depth is not None:
            raise GpmarginError(f"paper_cnn: give depth={depth!r} or the deprecated dense_layers={dense_layers!r}, not both")
        if not isinstance(dense_layers, int) or isinstance(dense_layers, bool) or dense_layers < 1:
            raise GpmarginError(f"paper_cnn dense_layers={dense_layers!r} must be an integer >= 1 (deprecated: use depth)")
        warnings.warn("paper_cnn(dense_layers=d) is deprecated; use depth=d + 2 (weight layers, convolutions "
                      "included, as --depth in the CLI)", DeprecationWarning, stacklevel=2)
        depth = dense_layers + 2
    if depth is None:
        depth = 4
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 3:
        raise GpmarginError(f"paper_cnn depth={depth!r} must be an integer >= 3 (weight layers: 2 convolutions "
                            "plus at least the dense readout)")
    dense_layers = depth - 2
    layers = [
        _affine(Conv2d(5, padding="valid", W_std=W_std), constrained),
        Relu(),
        _affine(Conv2d(5, padding="valid", W_std=W_std), constrained),
        Relu(),
        Flatten(),
    ]
    for _ in range(dense_layers - 1):
        layers += [_affine(Dense(W_std=W_std), constrained), Relu()]
    layers.append(_affine(Dense(W_std=W_std), constrained))
    return serial(*layers)
