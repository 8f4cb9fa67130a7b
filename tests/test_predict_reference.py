"""Independent numpy reference for the prediction tests, and a check of the reference itself.

The paper's arc-cosine recursion for a bias-free ReLU MLP with ``depth`` weight
matrices on inputs of norm sqrt(d):  K0 = x.x'/d, then depth-1 times
K <- [sqrt(1 - K^2) + K (pi - arccos K)] / pi  (for unit-diagonal K; general
diagonals are handled through the correlation).  Conditioning by numpy/scipy.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch


def arccos_recursion(x1: np.ndarray, x2: np.ndarray, depth: int) -> np.ndarray:
    x1 = np.asarray(x1, dtype=np.float64).reshape(len(x1), -1)
    x2 = np.asarray(x2, dtype=np.float64).reshape(len(x2), -1)
    d = x1.shape[1]
    K = x1 @ x2.T / d
    n1 = np.einsum("ij,ij->i", x1, x1) / d
    n2 = np.einsum("ij,ij->i", x2, x2) / d
    for _ in range(depth - 1):
        norm = np.sqrt(np.outer(n1, n2))
        rho = np.clip(K / norm, -1.0, 1.0)
        K = norm * (np.sqrt(1.0 - rho * rho) + rho * (np.pi - np.arccos(rho))) / np.pi
        # ReLU * sqrt(2) preserves the diagonal: n -> n
    return K


class ReferenceMLPKernel:
    """The kernel protocol (``k(x1, x2=None, get=...)``, ``k.diag``) over the numpy recursion (NNGP only)."""

    def __init__(self, depth: int):
        self.depth = depth
        self.calls = 0

    def __call__(self, x1, x2=None, get="nngp"):
        assert get == "nngp"
        self.calls += 1
        a = _np(x1)
        b = a if x2 is None else _np(x2)
        return torch.from_numpy(arccos_recursion(a, b, self.depth))

    def diag(self, x, get="nngp"):
        a = _np(x).reshape(len(x), -1)
        return torch.from_numpy(np.einsum("ij,ij->i", a, a) / a.shape[1])


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def numpy_posterior(Kxx, Ksx, kss, Y):
    """mu = K*X Kxx^-1 Y and s^2 = k** - diag(K*X Kxx^-1 KX*) with scipy's Cholesky."""
    c = scipy.linalg.cho_factor(Kxx, lower=True)
    mu = Ksx @ scipy.linalg.cho_solve(c, Y)
    var = kss - np.einsum("ij,ji->i", Ksx, scipy.linalg.cho_solve(c, Ksx.T))
    return mu, np.sqrt(np.clip(var, 0.0, None))


def test_reference_recursion_is_the_relu_network_kernel(mnist_test):
    """Depth 2 on two real MNIST images: 2 E[relu(u) relu(v)] for (u, v) ~ N(0, [[1, rho], [rho, 1]])
    by Monte Carlo, against the recursion; and the diagonal stays x.x/d = 1 at every depth."""
    from gpmargin.data import preprocess

    x, _ = mnist_test
    xs = preprocess(torch.as_tensor(np.asarray(x[:2])), "mnist").numpy()
    K = arccos_recursion(xs, xs, 2)
    rho = float(xs[0] @ xs[1] / xs.shape[1])
    rng = np.random.default_rng(0)
    u = rng.standard_normal(400_000)
    v = rho * u + np.sqrt(1 - rho * rho) * rng.standard_normal(400_000)
    prod = 2 * np.maximum(u, 0) * np.maximum(v, 0)
    assert abs(K[0, 1] - prod.mean()) < 4 * prod.std() / np.sqrt(len(prod))
    for depth in (1, 3, 7):
        np.testing.assert_allclose(np.diag(arccos_recursion(xs, xs, depth)), 1.0, atol=1e-12)
