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
* learnable variances: ``variances="shared"`` (one weight variance ``W_std^2`` and one bias variance
  ``b_std^2`` for every affine layer) or ``"per_layer"`` (one pair per layer) registers
  ``raw_weight_var`` / ``raw_bias_var`` with ``Positive`` constraints, of shape
  ``(*batch_shape, 1 or layers)`` (one set per batch member), initialised from the description
  (shared: its first affine layer); ``ExactMarginalLogLikelihood`` and any torch optimiser fit them.
  The default ``"fixed"`` keeps the description's values (no parameters).  Layers without a bias
  keep none.  Wrap the kernel in ``gpytorch.kernels.ScaleKernel`` for a learnable output scale.
* the kernels are differentiable with respect to their inputs (and to the variances), by autograd
  through :mod:`gpmargin.kernels.engine`.

For convolutional kernels pass ``input_shape=(C, H, W)``: rows are reshaped to images before the
kernel call (give the model flattened images).
"""

from __future__ import annotations

import copy
import math

import gpytorch
import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.hyperparameters import SHARING, affine_layers, variances, with_variances


def _unexpand(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every broadcast (stride-0) batch dimension narrowed to size 1."""
    for d in range(x.dim() - 2):
        if x.shape[d] > 1 and x.stride(d) == 0:
            x = x.narrow(d, 0, 1)
    return x


class _NetworkKernel(gpytorch.kernels.Kernel):
    has_lengthscale = False
    _get = "nngp"

    def __init__(self, kernel, input_shape: tuple[int, ...] | None = None, variances: str = "fixed", **kwargs):
        if not callable(kernel) or not hasattr(kernel, "diag"):
            raise GpmarginError(
                f"{type(self).__name__}(kernel=...) wraps a gpmargin kernel object "
                f"(e.g. gpmargin.kernels.serial(...)), got {type(kernel).__name__}"
            )
        if variances not in ("fixed",) + SHARING:
            raise GpmarginError(f"{type(self).__name__}(variances={variances!r}) must be 'fixed', 'shared' or "
                                "'per_layer'")
        batch_shape = kwargs.get("batch_shape")
        if batch_shape is not None:
            kwargs["batch_shape"] = torch.Size(batch_shape)
        super().__init__(**kwargs)
        self.kernel = kernel
        self.variances = variances
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        # carries the kernel's dtype and device without parameters; not saved in state_dict
        self.register_buffer("_anchor", torch.zeros((), dtype=torch.get_default_dtype()), persistent=False)
        if variances != "fixed":
            self._register_variances(kernel, variances)

    def _register_variances(self, kernel, sharing: str) -> None:
        if not hasattr(kernel, "map_layers") or not affine_layers(kernel):
            raise GpmarginError(f"{type(self).__name__}(variances={sharing!r}) needs a kernel with Dense/Conv "
                                "layers whose variances can be learned")
        weight, bias = variances(kernel)
        for name, values in (("weight_var", weight), ("bias_var", bias)):
            if not values:
                continue
            values = values[:1] if sharing == "shared" else values
            start = torch.tensor([float(v) for v in values], dtype=torch.get_default_dtype())
            constraint = gpytorch.constraints.Positive()
            raw = constraint.inverse_transform(start.clamp(min=1e-12)).expand(*self.batch_shape, len(values))
            self.register_parameter("raw_" + name, torch.nn.Parameter(raw.clone()))
            self.register_constraint("raw_" + name, constraint)

    @property
    def learnable(self) -> bool:
        return self.variances != "fixed"

    def _variance(self, name: str):
        if not hasattr(self, "raw_" + name):
            return None
        return getattr(self, f"raw_{name}_constraint").transform(getattr(self, "raw_" + name))

    def _set_variance(self, name: str, value) -> None:
        raw = getattr(self, "raw_" + name, None)
        if raw is None:
            raise GpmarginError(f"{type(self).__name__} has no {name} (variances='fixed', or no layer has a bias)")
        value = torch.as_tensor(value).to(raw)
        self.initialize(**{"raw_" + name: getattr(self, f"raw_{name}_constraint").inverse_transform(value)})

    @property
    def weight_var(self):
        """The weight variances ``W_std^2``, shape ``(*batch_shape, 1 or layers)`` (None when fixed)."""
        return self._variance("weight_var")

    @weight_var.setter
    def weight_var(self, value):
        self._set_variance("weight_var", value)

    @property
    def bias_var(self):
        """The bias variances ``b_std^2`` (None when fixed or without biases)."""
        return self._variance("bias_var")

    @bias_var.setter
    def bias_var(self, value):
        self._set_variance("bias_var", value)

    def kernels(self, batch: torch.Size = torch.Size()) -> list:
        """The gpmargin descriptions of the members of ``batch`` (flattened; the parameters'
        batch shape broadcast onto it), each with its learned variances."""
        if not self.learnable:
            return [self.kernel] * max(1, batch.numel())
        w = self.weight_var.expand(*batch, self.weight_var.shape[-1]).reshape(-1, self.weight_var.shape[-1])
        b = self.bias_var
        b = None if b is None else b.expand(*batch, b.shape[-1]).reshape(-1, b.shape[-1])

        def one(v):
            return v[0] if v.shape[0] == 1 else v

        return [with_variances(self.kernel, one(w[i]), None if b is None else one(b[i])) for i in range(w.shape[0])]

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
        new = self._with_batch_shape(torch.zeros(()).expand(self.batch_shape)[index].shape)
        for name in ("raw_weight_var", "raw_bias_var"):  # the batch dimensions lead, the layers' trail
            raw = getattr(new, name, None)
            if raw is not None:
                raw.data = raw.data[index]
        return new

    def expand_batch(self, *sizes) -> "_NetworkKernel":
        shape = torch.Size(sizes[0]) if len(sizes) == 1 and not isinstance(sizes[0], int) else torch.Size(sizes)
        if shape == self.batch_shape:
            return self
        if self.learnable:
            return super().expand_batch(*sizes)
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

    def _one(self, kernel, x1: torch.Tensor, x2: torch.Tensor, diag: bool) -> torch.Tensor:
        """Kernel (or its diagonal) of one pair of 2-D inputs, float64."""
        r1, r2 = self._rows(x1), self._rows(x2)
        same = x2 is x1 or (x1.shape == x2.shape and not x2.requires_grad and torch.equal(x1, x2))
        if diag:
            if same:
                return kernel.diag(r1, get=self._get)
            if x1.shape[0] != x2.shape[0]:
                raise GpmarginError(f"diag=True needs as many x1 as x2 rows, got {x1.shape[0]} and {x2.shape[0]}")
            # GPyTorch asks for diag(k(x1, x2)) only with x1 == x2; keep it correct anyway
            return torch.stack([kernel(a[None], b[None], get=self._get)[0, 0] for a, b in zip(r1, r2)])
        return kernel(r1, None if same else r2, get=self._get)

    def forward(self, x1, x2, diag=False, last_dim_is_batch=False, **params):
        """``k(x1, x2)`` with GPyTorch's batch rules (see the module docstring)."""
        for name, x in (("x1", x1), ("x2", x2)):
            if x.dim() < 2 or x.shape[-1] == 0:
                raise GpmarginError(f"{name} has shape {tuple(x.shape)}; the kernel takes (..., n, d) rows with d >= 1 "
                                    "features")
        out_dtype = torch.promote_types(torch.promote_types(x1.dtype, x2.dtype), self.dtype)
        batch = torch.broadcast_shapes(self.batch_shape, x1.shape[:-2], x2.shape[:-2])
        if last_dim_is_batch:
            if self.input_shape is not None:
                raise GpmarginError(
                    "last_dim_is_batch=True treats each feature as its own input; it cannot be used with input_shape"
                )
            x1, x2 = x1.transpose(-1, -2).unsqueeze(-1), x2.transpose(-1, -2).unsqueeze(-1)
            batch = batch + x1.shape[-3:-2]
        if self.learnable:  # every batch member has its own variances
            a = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
            b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
            out = torch.stack([self._one(k, p, q, diag) for k, p, q in zip(self.kernels(batch), a, b)])
            return out.reshape(*batch, *out.shape[1:]).to(out_dtype)
        # compute each distinct batch member once (inputs broadcast over the batch are computed once)
        u1, u2 = _unexpand(x1), _unexpand(x2)
        ubatch = torch.broadcast_shapes(u1.shape[:-2], u2.shape[:-2])
        a = u1.expand(*ubatch, *u1.shape[-2:]).reshape(-1, *u1.shape[-2:])
        b = u2.expand(*ubatch, *u2.shape[-2:]).reshape(-1, *u2.shape[-2:])
        out = torch.stack([self._one(self.kernel, p, q, diag) for p, q in zip(a, b)])
        out = out.reshape(*ubatch, *out.shape[1:]).to(out_dtype)
        return out.expand(*batch, *out.shape[len(ubatch) :])


class NNGPKernel(_NetworkKernel):
    """The NNGP of a gpmargin kernel object as a ``gpytorch.kernels.Kernel``.

    ``NNGPKernel(kernel, input_shape=None, variances="fixed", batch_shape=None, active_dims=None)``;
    see the module docstring for learnable variances, batches, dtype and device.
    """

    _get = "nngp"


class NTKKernel(_NetworkKernel):
    """The NTK of a gpmargin kernel object as a ``gpytorch.kernels.Kernel`` (arguments as :class:`NNGPKernel`)."""

    _get = "ntk"
