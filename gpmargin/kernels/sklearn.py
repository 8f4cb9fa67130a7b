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

Hyperparameters: none.  The network's ``W_std``/``b_std`` are fixed by the kernel object, so the
kernel's ``theta`` is empty and ``__call__(X, eval_gradient=True)`` returns ``(K, zeros (n, n, 0))``,
the gradient with respect to no hyperparameters, as scikit-learn's kernels with fixed bounds do.
Alone, the kernel is therefore never optimised; in compositions such as
``ConstantKernel() * NetworkKernel(k) + WhiteKernel()`` the output scale and noise level are
learned by ``GaussianProcessRegressor``'s optimiser as usual.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Kernel

from gpmargin.errors import GpmarginError

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
    """

    def __init__(self, kernel, get="nngp", input_shape=None, device=None):
        # scikit-learn's clone/get_params need every argument stored unchanged under its own name
        self.kernel = kernel
        self.get = get
        self.input_shape = input_shape
        self.device = device
        self._check()

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
        K = self.kernel(x, None if Y is None else self._rows(Y, "Y"), get=self.get)
        K = K.detach().cpu().numpy()
        if eval_gradient:
            return K, np.empty((K.shape[0], K.shape[0], 0))
        return K

    def diag(self, X):
        """``k(X_i, X_i)`` (n,) float64, without forming the matrix."""
        self._check()
        return self.kernel.diag(self._rows(X, "X"), get=self.get).detach().cpu().numpy()

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
        return same_kernel and self.get == other.get and self.device == other.device and len(set(shapes)) == 1

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={getattr(self, k)!r}" for k in ("input_shape", "device") if getattr(self, k) is not None
        )
        return f"NetworkKernel({self.kernel!r}, get={self.get!r}{extra})"
