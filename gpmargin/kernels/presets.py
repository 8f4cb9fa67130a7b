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


def _stds(W_std, count: int, name: str) -> list[float]:
    """``W_std`` (one number, or one per weight layer) as a list of ``count`` floats."""
    stds = [W_std] * count if isinstance(W_std, (int, float)) else list(W_std)
    if len(stds) != count or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in stds):
        raise GpmarginError(f"{name} W_std={W_std!r} must be a positive number or {count} positive numbers "
                            "(one per weight layer)")
    return [float(s) for s in stds]


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
