"""GPyTorch adapters: use any gpmargin kernel object inside GPyTorch models (e.g. ``ExactGP``).

GPyTorch feeds kernels 2-D inputs ``(..., n, features)``.  For convolutional kernels pass
``input_shape=(C, H, W)``: rows are then reshaped to images before the kernel call (give the
model flattened images).  The kernels have no hyperparameters of their own; wrap them in
``gpytorch.kernels.ScaleKernel`` for a learnable output scale.  Models using them must be
float64 (``model.double()``), as the kernels return float64.
"""

from __future__ import annotations

import gpytorch
import torch

from gpmargin.errors import GpmarginError


class _NetworkKernel(gpytorch.kernels.Kernel):
    has_lengthscale = False
    _get = "nngp"

    def __init__(self, kernel, input_shape: tuple[int, ...] | None = None, **kwargs):
        super().__init__(**kwargs)
        if not callable(kernel) or not hasattr(kernel, "diag"):
            raise GpmarginError(f"{type(self).__name__} wraps a gpmargin kernel object, got {type(kernel).__name__}")
        self.kernel = kernel
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shape is None:
            return x
        return x.reshape(x.shape[0], *self.input_shape)

    def _one(self, x1, x2, diag):
        x1 = self._rows(x1)
        if diag:
            if x2 is not None and not torch.equal(x1, self._rows(x2)):
                # GPyTorch asks for diag of k(x1, x2) only with x1 == x2; keep it correct anyway
                return torch.stack([self.kernel(a[None], b[None], get=self._get)[0, 0] for a, b in zip(x1, self._rows(x2))])
            return self.kernel.diag(x1, get=self._get)
        same = x2 is None or (x2 is x1) or (x1.shape == x2.shape and torch.equal(x1, self._rows(x2)))
        return self.kernel(x1, None if same else self._rows(x2), get=self._get)

    def forward(self, x1, x2, diag=False, last_dim_is_batch=False, **params):
        if last_dim_is_batch:
            raise GpmarginError(f"{type(self).__name__} does not support last_dim_is_batch=True")
        with torch.no_grad():
            if x1.dim() == 2:
                return self._one(x1, x2, diag)
            batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
            a = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
            b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
            out = torch.stack([self._one(p, q, diag) for p, q in zip(a, b)])
            return out.reshape(*batch, *out.shape[1:])


class NNGPKernel(_NetworkKernel):
    """The NNGP of a gpmargin kernel object as a ``gpytorch.kernels.Kernel``."""

    _get = "nngp"


class NTKKernel(_NetworkKernel):
    """The NTK of a gpmargin kernel object as a ``gpytorch.kernels.Kernel``."""

    _get = "ntk"
