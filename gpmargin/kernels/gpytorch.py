"""GPyTorch adapters: use any gpmargin kernel object inside GPyTorch models (e.g. ``ExactGP``).

``NNGPKernel(k)`` and ``NTKKernel(k)`` are ``gpytorch.kernels.Kernel`` s computing
``K[..., i, j] = k(x1[..., i, :], x2[..., j, :], get="nngp" | "ntk")`` and behave like every
GPyTorch kernel (they pass GPyTorch's own ``BaseKernelTestCase``, see
``tests/test_interop_gpytorch.py``):

* inputs ``(..., n, features)``; the output has batch shape
  ``broadcast(kernel.batch_shape, x1.shape[:-2], x2.shape[:-2])``.  A kernel has no
  hyperparameters, so every member of a batch is the same kernel: ``batch_shape=[10]`` gives ten
  output GPs (e.g. one per class) and the matrix is computed once for inputs shared by the batch.
* ``kernel[index]`` and ``expand_batch`` change only the batch shape; ``active_dims``, ``diag=True``
  and the deprecated ``last_dim_is_batch=True`` work as for any GPyTorch kernel.
* dtype and device: computed in float64 on the inputs' device, returned in
  ``torch.promote_types(x1.dtype, x2.dtype, kernel.dtype)``, the rule GPyTorch's own kernels follow
  (their parameters' dtype meets the inputs').  ``kernel.dtype`` is the default dtype at creation and
  follows ``.to()``/``.double()``; ``kernel.device`` follows ``.to(device)``.  Use float64 inputs
  and ``model.double()`` to keep gpmargin's float64 all the way through (recommended).
* the kernels are not differentiable with respect to their inputs: inputs that require grad
  raise :class:`~gpmargin.errors.GpmarginError` instead of silently dropping gradients.  Wrap them in
  ``gpytorch.kernels.ScaleKernel`` for a learnable output scale.

For convolutional kernels pass ``input_shape=(C, H, W)``: rows are reshaped to images before the
kernel call (give the model flattened images).
"""

from __future__ import annotations

import copy
import math

import gpytorch
import torch

from gpmargin.errors import GpmarginError


def _unexpand(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every broadcast (stride-0) batch dimension narrowed to size 1."""
    for d in range(x.dim() - 2):
        if x.shape[d] > 1 and x.stride(d) == 0:
            x = x.narrow(d, 0, 1)
    return x


class _NetworkKernel(gpytorch.kernels.Kernel):
    has_lengthscale = False
    _get = "nngp"

    def __init__(self, kernel, input_shape: tuple[int, ...] | None = None, **kwargs):
        if not callable(kernel) or not hasattr(kernel, "diag"):
            raise GpmarginError(
                f"{type(self).__name__}(kernel=...) wraps a gpmargin kernel object "
                f"(e.g. gpmargin.kernels.serial(...)), got {type(kernel).__name__}"
            )
        batch_shape = kwargs.get("batch_shape")
        if batch_shape is not None:
            kwargs["batch_shape"] = torch.Size(batch_shape)
        super().__init__(**kwargs)
        self.kernel = kernel
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        # carries the kernel's dtype and device (it has no parameters); not saved in state_dict
        self.register_buffer("_anchor", torch.zeros((), dtype=torch.get_default_dtype()), persistent=False)

    # -- what GPyTorch asks of a kernel without parameters ------------------------------
    @property
    def dtype(self) -> torch.dtype:
        dtypes = {p.dtype for p in self.parameters()} | {self._anchor.dtype}
        if len(dtypes) > 1:
            raise RuntimeError(f"The kernel's parameters have multiple dtypes: {dtypes}.")
        return dtypes.pop()

    @property
    def device(self) -> torch.device:
        devices = {p.device for p in self.parameters()} | {self._anchor.device}
        if len(devices) > 1:
            raise RuntimeError(f"The kernel's parameters are on multiple devices: {devices}.")
        return devices.pop()

    def _with_batch_shape(self, batch_shape: torch.Size) -> "_NetworkKernel":
        new = copy.deepcopy(self)
        new._batch_shape = torch.Size(batch_shape)
        return new

    def __getitem__(self, index) -> "_NetworkKernel":
        """The kernel for ``batch[index]``: the same kernel with the indexed batch shape."""
        if len(self.batch_shape) == 0:
            return self
        index = index if isinstance(index, tuple) else (index,)
        return self._with_batch_shape(torch.zeros(()).expand(self.batch_shape)[index].shape)

    def expand_batch(self, *sizes) -> "_NetworkKernel":
        shape = torch.Size(sizes[0]) if len(sizes) == 1 and not isinstance(sizes[0], int) else torch.Size(sizes)
        if shape == self.batch_shape:
            return self
        try:
            torch.broadcast_shapes(shape, self.batch_shape)
        except RuntimeError:
            raise RuntimeError(
                f"Cannot expand a kernel with batch shape {self.batch_shape} to new shape {shape}"
            ) from None
        return self._with_batch_shape(shape)

    # -- the computation --------------------------------------------------------------
    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shape is None:
            return x
        need = math.prod(self.input_shape)
        if x.shape[-1] != need:
            raise GpmarginError(f"the inputs have {x.shape[-1]} features per row but input_shape={self.input_shape} "
                                f"needs {need}; pass rows of {need} features or the input_shape of your data")
        return x.reshape(x.shape[0], *self.input_shape)

    def _one(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool) -> torch.Tensor:
        """Kernel (or its diagonal) of one pair of 2-D inputs, float64."""
        r1, r2 = self._rows(x1), self._rows(x2)
        same = x2 is x1 or (x1.shape == x2.shape and torch.equal(x1, x2))
        if diag:
            if same:
                return self.kernel.diag(r1, get=self._get)
            if x1.shape[0] != x2.shape[0]:
                raise GpmarginError(f"diag=True needs as many x1 as x2 rows, got {x1.shape[0]} and {x2.shape[0]}")
            # GPyTorch asks for diag(k(x1, x2)) only with x1 == x2; keep it correct anyway
            return torch.stack([self.kernel(a[None], b[None], get=self._get)[0, 0] for a, b in zip(r1, r2)])
        return self.kernel(r1, None if same else r2, get=self._get)

    def forward(self, x1, x2, diag=False, last_dim_is_batch=False, **params):
        """``k(x1, x2)`` with GPyTorch's batch rules (see the module docstring)."""
        for name, x in (("x1", x1), ("x2", x2)):
            if x.dim() < 2 or x.shape[-1] == 0:
                raise GpmarginError(f"{name} has shape {tuple(x.shape)}; the kernel takes (..., n, d) rows with d >= 1 "
                                    "features")
            if x.requires_grad and torch.is_grad_enabled():
                raise GpmarginError(
                    f"{name} requires grad, but {type(self).__name__} is not differentiable with respect to its "
                    "inputs; detach them (no feature extractor can be trained through this kernel)"
                )
        out_dtype = torch.promote_types(torch.promote_types(x1.dtype, x2.dtype), self.dtype)
        batch = torch.broadcast_shapes(self.batch_shape, x1.shape[:-2], x2.shape[:-2])
        if last_dim_is_batch:
            if self.input_shape is not None:
                raise GpmarginError(
                    "last_dim_is_batch=True treats each feature as its own input; it cannot be used with input_shape"
                )
            x1, x2 = x1.transpose(-1, -2).unsqueeze(-1), x2.transpose(-1, -2).unsqueeze(-1)
            batch = batch + x1.shape[-3:-2]
        # compute each distinct batch member once (inputs broadcast over the batch are computed once)
        u1, u2 = _unexpand(x1), _unexpand(x2)
        ubatch = torch.broadcast_shapes(u1.shape[:-2], u2.shape[:-2])
        a = u1.expand(*ubatch, *u1.shape[-2:]).reshape(-1, *u1.shape[-2:])
        b = u2.expand(*ubatch, *u2.shape[-2:]).reshape(-1, *u2.shape[-2:])
        with torch.no_grad():
            out = torch.stack([self._one(p, q, diag) for p, q in zip(a, b)])
        out = out.reshape(*ubatch, *out.shape[1:]).to(out_dtype)
        return out.expand(*batch, *out.shape[len(ubatch) :])


class NNGPKernel(_NetworkKernel):
    """The NNGP of a gpmargin kernel object as a ``gpytorch.kernels.Kernel``.

    ``NNGPKernel(kernel, input_shape=None, batch_shape=None, active_dims=None)``; see the module
    docstring for batches, dtype and device.
    """

    _get = "nngp"


class NTKKernel(_NetworkKernel):
    """The NTK of a gpmargin kernel object as a ``gpytorch.kernels.Kernel`` (arguments as :class:`NNGPKernel`)."""

    _get = "ntk"
