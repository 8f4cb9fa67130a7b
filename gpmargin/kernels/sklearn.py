"""scikit-learn adapter: any gpmargin kernel object as a ``sklearn.gaussian_process.kernels.Kernel``.

Example::

    from sklearn.gaussian_process import GaussianProcessRegressor
    from gpmargin.kernels import paper_mlp
    from gpmargin.kernels.sklearn import NetworkKernel

    gpr = GaussianProcessRegressor(NetworkKernel(paper_mlp(3), get="nngp"), optimizer=None, alpha=1e-10)
    gpr.fit(x_train, y_train).predict(x_test, return_std=True)

``NetworkKernel(kernel, get="nngp")(X, Y)`` is ``kernel(X, Y, get=get)`` as a float64 numpy array
(``K[i, j] = k(X_i, Y_j)``); ``diag(X)`` is ``kernel.diag(X, get=get)``.  Rows are examples with
their features flattened; ``input_shape=(C, H, W)`` reshapes them to images for convolutional
kernels, and ``device="cuda"`` computes there (results come back as numpy arrays).

Hyperparameters: ``weight_var`` and ``bias_var``, the variances ``W_std^2`` and ``b_std^2`` of the
network's affine layers (:mod:`gpmargin.kernels.hyperparameters`): one number (shared by every
layer) or an array of one per layer (``bias_var``: per layer with a bias).  Left ``None`` (the
default) they stay the description's and are not hyperparameters; given, they are, with bounds
``weight_var_bounds`` / ``bias_var_bounds`` (or ``"fixed"``), and ``GaussianProcessRegressor``'s
optimiser tunes them by the exact gradient of the log marginal likelihood:
``__call__(X, eval_gradient=True)`` returns ``(K, dK/dlog(theta))``, computed by forward-mode
autograd through the kernel (one pass per hyperparameter), exact to rounding.  Without
hyperparameters the gradient is ``(n, n, 0)``.  Compositions such as
``ConstantKernel() * NetworkKernel(k) + WhiteKernel()`` learn an output scale and a noise level too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from gpmargin.errors import GpmarginError
from gpmargin.kernels.hyperparameters import with_variances

__all__ = ["NetworkKernel"]

GETS = ("nngp", "ntk")


class NetworkKernel(Kernel):
    """The NNGP (``get="nngp"``) or NTK (``get="ntk"``) of a gpmargin kernel object.

    Parameters
    ----------
    kernel : gpmargin kernel object
        Anything with ``kernel(x1, x2, get=...)`` and ``kernel.diag(x, get=...)`` (a layer,
        ``serial(...)``, a preset, ``gpmargin.kernels.nt.from_neural_tangents(kernel_fn)``).
    get : {"nngp", "ntk"}
    input_shape : tuple of int, optional
        Shape of one example, e.g. ``(1, 8, 8)``; rows of ``X`` are reshaped to it.
    device : str, optional
        Torch device to compute on (default: CPU).
    weight_var, bias_var : float or array of float, optional
        Variances replacing the description's ``W_std^2`` / ``b_std^2`` (one shared, or one per
        layer), as hyperparameters; ``None`` keeps the description's, fixed.
    weight_var_bounds, bias_var_bounds : pair of float or "fixed"
        Their bounds for the optimiser (default ``(1e-2, 1e2)`` and ``(1e-6, 1e2)``).
    """

    def __init__(self, kernel, get="nngp", input_shape=None, device=None, weight_var=None, bias_var=None,
                 weight_var_bounds=(1e-2, 1e2), bias_var_bounds=(1e-6, 1e2)):
        # scikit-learn's clone/get_params need every argument stored unchanged under its own name
        self.kernel = kernel
        self.get = get
        self.input_shape = input_shape
        self.device = device
        self.weight_var = weight_var
        self.bias_var = bias_var
        self.weight_var_bounds = weight_var_bounds
        self.bias_var_bounds = bias_var_bounds
        self._check()

    # -- hyperparameters ----------------------------------------------------------------
    def _count(self, name: str) -> int:
        value = getattr(self, name)
        return 0 if value is None else int(np.size(value))

    @property
    def hyperparameter_weight_var(self):
        if self.weight_var is None:
            return Hyperparameter("weight_var", "numeric", "fixed")
        return Hyperparameter("weight_var", "numeric", self.weight_var_bounds, self._count("weight_var"))

    @property
    def hyperparameter_bias_var(self):
        if self.bias_var is None:
            return Hyperparameter("bias_var", "numeric", "fixed")
        return Hyperparameter("bias_var", "numeric", self.bias_var_bounds, self._count("bias_var"))

    @property
    def hyperparameters(self):
        """The variances given as numbers (``None`` ones are the description's, not hyperparameters)."""
        return [h for h in super().hyperparameters if getattr(self, h.name) is not None]

    def _network(self, weight=None, bias=None):
        """The description with the variances (tensors ``weight``/``bias``, or this kernel's values)."""
        if self.weight_var is None and self.bias_var is None:
            return self.kernel
        w = weight if weight is not None else self._tensor("weight_var")
        b = bias if bias is not None else self._tensor("bias_var")
        return with_variances(self.kernel, w, b)

    def _tensor(self, name: str):
        value = getattr(self, name)
        if value is None:
            return None
        a = np.asarray(value, dtype=np.float64)
        return torch.tensor(a.reshape(-1) if a.ndim else a, dtype=torch.float64)

    def _gradient(self, x) -> np.ndarray:
        """``dK/dlog(theta)`` (n, n, n_theta): one forward-mode pass per free hyperparameter."""
        names = [h.name for h in self.hyperparameters if not h.fixed]
        grads = []
        with fwAD.dual_level():
            for name in names:
                values = self._tensor(name)
                for j in range(values.numel()):
                    tangent = torch.zeros_like(values)
                    tangent.view(-1)[j] = values.view(-1)[j]  # d/dlog(v) = v d/dv
                    dual = fwAD.make_dual(values, tangent)
                    k = self._network(**{name.split("_")[0]: dual})
                    K = k(x, get=self.get)
                    grads.append(fwAD.unpack_dual(K).tangent.detach().cpu().numpy())
        n = x.shape[0]
        return np.stack(grads, axis=-1) if grads else np.empty((n, n, 0))

    def _check(self) -> None:
        if not callable(self.kernel) or not hasattr(self.kernel, "diag"):
            raise GpmarginError(
                f"NetworkKernel(kernel=...) wraps a gpmargin kernel object (e.g. gpmargin.kernels.serial(...)), "
                f"got {type(self.kernel).__name__}"
            )
        if self.get not in GETS:
            raise GpmarginError(f"NetworkKernel(get={self.get!r}) is not supported; use 'nngp' or 'ntk'")
        shape = self.input_shape
        if shape is not None and not (isinstance(shape, (tuple, list)) and shape
                                      and all(isinstance(s, (int, np.integer)) and s > 0 for s in shape)):
            raise GpmarginError(
                f"NetworkKernel(input_shape={shape!r}) must be a tuple of positive integers, e.g. (1, 8, 8)"
            )

    def _rows(self, X, name: str) -> torch.Tensor:
        a = np.asarray(X)
        if a.ndim != 2:
            raise GpmarginError(f"{name} has shape {a.shape}; scikit-learn kernels take (n_samples, n_features)")
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise GpmarginError(f"{name} has dtype {a.dtype}; pass numbers (e.g. X.astype(float))")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if int(np.prod(shape)) != a.shape[1]:
                raise GpmarginError(
                    f"{name} has {a.shape[1]} features per row but input_shape={shape} needs {int(np.prod(shape))}"
                )
            t = t.reshape(a.shape[0], *shape)
        return t if self.device is None else t.to(self.device)

    def __call__(self, X, Y=None, eval_gradient=False):
        """``K(X, Y)`` (n, m) float64; with ``eval_gradient=True`` also its (n, n, 0) gradient."""
        self._check()
        if eval_gradient and Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        x = self._rows(X, "X")
        K = self._network()(x, None if Y is None else self._rows(Y, "Y"), get=self.get)
        K = K.detach().cpu().numpy()
        if eval_gradient:
            return K, self._gradient(x)
        return K

    def diag(self, X):
        """``k(X_i, X_i)`` (n,) float64, without forming the matrix."""
        self._check()
        return self._network().diag(self._rows(X, "X"), get=self.get).detach().cpu().numpy()

    def is_stationary(self):
        """False: network kernels depend on the inputs' norms and angle, not only on ``X - Y``."""
        return False

    def __eq__(self, other) -> bool:
        """Same class, ``get``, ``input_shape``, ``device`` and an equal network (gpmargin layers
        compare by their arguments)."""
        if type(self) is not type(other):
            return False
        same_kernel = self.kernel is other.kernel or self.kernel == other.kernel
        shapes = (None if s is None else tuple(s) for s in (self.input_shape, other.input_shape))
        same_variances = all(np.array_equal(np.asarray(getattr(self, n), dtype=object), np.asarray(getattr(other, n), dtype=object))
                             for n in ("weight_var", "bias_var", "weight_var_bounds", "bias_var_bounds"))
        return (same_kernel and self.get == other.get and self.device == other.device and len(set(shapes)) == 1
                and same_variances)

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={getattr(self, k)!r}" for k in ("input_shape", "device", "weight_var", "bias_var")
            if getattr(self, k) is not None
        )
        return f"NetworkKernel({self.kernel!r}, get={self.get!r}{extra})"
