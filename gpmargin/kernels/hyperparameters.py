"""The weight and bias variances of a network description, read and replaced as values to fit.

A description's affine layers (``Dense``, ``Conv2d``, ``Conv1d``, also inside ``Centred`` and
branches) carry ``W_std`` and ``b_std``; the variances ``W_std^2`` and ``b_std^2`` are what a
marginal likelihood is maximised over (the parameterisation of BoTorch's
``InfiniteWidthBNNKernel``).  :func:`with_variances` puts tensors in their place, so the kernel is
differentiable with respect to them (see :mod:`gpmargin.kernels.engine`):

>>> import torch
>>> from gpmargin.kernels import Dense, Relu, serial
>>> from gpmargin.kernels.hyperparameters import variances, with_variances
>>> k = serial(Dense(1.0, 0.5), Relu(), Dense(1.0, 0.5))
>>> variances(k)
([1.0, 1.0], [0.25, 0.25])
>>> w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
>>> with_variances(k, w, 0.04).layers[0]  # doctest: +ELLIPSIS
Dense(W_std=tensor(1.4142, dtype=torch.float64, grad_fn=<SqrtBackward0>), b_std=...)
"""

from __future__ import annotations

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer
from gpmargin.kernels.dense import Affine

SHARING = ("shared", "per_layer")


def affine_layers(kernel: Layer) -> list[Affine]:
    """The affine layers of ``kernel``, in the order the engine runs them."""
    found: list[Affine] = []

    def visit(layer):
        if isinstance(layer, Affine):
            found.append(layer)
        return layer

    kernel.map_layers(visit)
    return found


def variances(kernel: Layer) -> tuple[list, list]:
    """``(weight, bias)``: ``W_std^2`` of every affine layer and ``b_std^2`` of those with a bias."""
    layers = affine_layers(kernel)
    return [a.W_std**2 for a in layers], [a.b_std**2 for a in layers if a.b_std is not None]


def _per_layer(value, count: int, name: str) -> list:
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        if value.shape[0] not in (1, count):
            raise GpmarginError(f"{name} has {value.shape[0]} entries but the network has {count} such layers; "
                                f"pass one value (shared) or {count}")
        return [value[0 if value.shape[0] == 1 else i] for i in range(count)]
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise GpmarginError(f"{name} has {len(value)} entries but the network has {count} such layers; "
                                f"pass one value (shared) or {count}")
        return list(value)
    return [value] * count


def _std(variance, name: str):
    if isinstance(variance, torch.Tensor):
        if bool((variance.detach() < 0).any()):
            raise GpmarginError(f"{name}={variance.detach().tolist()} must be non-negative (a variance)")
        return variance.sqrt()
    if variance < 0:
        raise GpmarginError(f"{name}={variance!r} must be non-negative (a variance)")
    return float(variance) ** 0.5


def with_variances(kernel: Layer, weight_var=None, bias_var=None) -> Layer:
    """``kernel`` with ``W_std = sqrt(weight_var)`` and ``b_std = sqrt(bias_var)`` in its affine layers.

    Each of ``weight_var``, ``bias_var`` is one number or 0-dim tensor (shared by every layer) or
    one per layer (a sequence or a 1-D tensor; ``bias_var`` counts only the layers that have a
    bias, which keep having one); ``None`` keeps those values as they are.  Tensors stay in the
    graph: the returned kernel is differentiable with respect to them.
    """
    layers = affine_layers(kernel)
    biased = sum(a.b_std is not None for a in layers)
    ws = iter(_per_layer(weight_var, len(layers), "weight_var") if weight_var is not None else [])
    bs = iter(_per_layer(bias_var, biased, "bias_var") if bias_var is not None else [])

    def replace(layer):
        if not isinstance(layer, Affine):
            return layer
        args = layer.arguments()
        if weight_var is not None:
            args["W_std"] = _std(next(ws), "weight_var")
        if layer.b_std is not None and bias_var is not None:
            args["b_std"] = _std(next(bs), "bias_var")
        return type(layer)(**args)

    return kernel.map_layers(replace)


def with_biases(kernel: Layer, bias_var: float) -> Layer:
    """``kernel`` with a bias of variance ``bias_var`` in every affine layer that has none."""
    std = _std(bias_var, "bias_var")

    def add(layer):
        if isinstance(layer, Affine) and layer.b_std is None:
            return type(layer)(**dict(layer.arguments(), b_std=std))
        return layer

    return kernel.map_layers(add)
