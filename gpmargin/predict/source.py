"""Where a GP prediction's kernel comes from, and the one conditioning loop over any such source.

Noise-free GP conditioning on ``f(X) = Y`` (``alpha = 1``) needs four things of the kernel,
whatever holds it (:class:`KernelSource`):

* ``factor(kind)``: a factor of the training matrix, ``K_XX + jitter I = L L^T``, that solves
  ``L^{-1} B`` (:class:`TrainFactor`), with the jitter it needed;
* ``cross_rows(kind, a, b)``: the test rows ``K_*X[a:b]``;
* ``test_diagonal(kind)``: ``k(x*, x*)``;
* ``block_rows(kind)``: how many test rows one block may hold (the working memory).

:class:`KernelFunction` computes them from a kernel object in memory, :class:`KernelMatrices`
holds given matrices, and a kernel store (:mod:`gpmargin.distributed`) reads them from disk out of
core.  :func:`conditioned` is the GP posterior from any of them, test rows in blocks::

    mean = (L^{-1} K_X*)^T (L^{-1} Y),     var = k(x*, x*) - colsum((L^{-1} K_X*)^2)

with variances below the round-off floor set to 0 (:func:`~gpmargin.predict.result.floor_variance`).
"""

from __future__ import annotations

import time

import torch

from gpmargin.errors import GpmarginError
from gpmargin.linalg import safe_cholesky
from gpmargin.predict.kernel_blocks import TestRowBlocks, kernel_diagonal, kernel_matrix, train_kernel
from gpmargin.predict.result import Posterior, floor_variance

__all__ = ["KernelSource", "TrainFactor", "KernelFunction", "KernelMatrices", "conditioned"]


class TrainFactor:
    """The lower Cholesky factor ``L`` of ``K_XX + jitter I`` in memory."""

    def __init__(self, L: torch.Tensor, jitter: float):
        self.L, self.jitter = L, float(jitter)

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """``L^{-1} B`` (B: (n, r))."""
        return torch.linalg.solve_triangular(self.L, B, upper=False)

    def solve_pair(self, Y: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L^{-1} Y, L^{-1} B)`` (a factor on disk reads itself once for both)."""
        return self.solve(Y), self.solve(B)


class KernelSource:
    """The interface of a kernel source (module docstring); ``n_train``, ``n_test`` and ``device``
    say what it holds and where its blocks come back.  ``timings`` collects the seconds its own
    work took (e.g. ``kernel_train``, ``cholesky``)."""

    n_train: int
    n_test: int
    device: torch.device

    def factor(self, kind: str, progress: bool = False) -> TrainFactor:
        raise NotImplementedError

    def cross_rows(self, kind: str, a: int, b: int) -> torch.Tensor:
        raise NotImplementedError

    def test_diagonal(self, kind: str) -> torch.Tensor:
        raise NotImplementedError

    def block_rows(self, kind: str) -> int:
        raise NotImplementedError

    def test_matrix(self, kind: str) -> torch.Tensor:
        """``K_**`` (m, m), for the joint posterior covariance."""
        raise GpmarginError(f"{type(self).__name__} gives no joint test covariance; use joint=False")


class KernelFunction(KernelSource):
    """The blocks of ``kernel(x1, x2, get=kind)`` at ``x_train`` and ``x_test``, computed in memory
    (``K_XX`` exactly symmetric, :func:`~gpmargin.predict.kernel_blocks.train_kernel`); test blocks of
    about ``chunk_elements`` entries."""

    def __init__(self, kernel, x_train: torch.Tensor, x_test: torch.Tensor, *, chunk_elements: int = 1 << 22):
        self.kernel, self.x_train, self.x_test = kernel, x_train, x_test
        self.n_train, self.n_test, self.device = x_train.shape[0], x_test.shape[0], x_train.device
        self.chunk_elements = chunk_elements
        self.timings: dict[str, float] = {}

    def factor(self, kind: str, progress: bool = False) -> TrainFactor:
        t0 = time.perf_counter()
        K = train_kernel(self.kernel, self.x_train, kind, progress=progress)
        t1 = time.perf_counter()
        L, jitter = safe_cholesky(K, name=f"training {kind.upper()} matrix")
        self.timings.update(kernel_train=t1 - t0, cholesky=time.perf_counter() - t1)
        return TrainFactor(L, jitter)

    def cross_rows(self, kind: str, a: int, b: int) -> torch.Tensor:
        return kernel_matrix(self.kernel, self.x_test[a:b], self.x_train, kind)

    def test_diagonal(self, kind: str) -> torch.Tensor:
        return kernel_diagonal(self.kernel, self.x_test, kind)

    def block_rows(self, kind: str) -> int:
        return self.chunk_elements // max(self.n_train, 1)

    def test_matrix(self, kind: str) -> torch.Tensor:
        return kernel_matrix(self.kernel, self.x_test, None, kind)


class KernelMatrices(KernelSource):
    """Given matrices: ``k_train`` (n, n), ``k_cross`` (m, n), ``k_test_diag`` (m,), and optionally
    ``k_test`` (m, m); all test rows in one block.  ``name`` labels the training matrix in errors."""

    def __init__(self, k_train: torch.Tensor, k_cross: torch.Tensor, k_test_diag: torch.Tensor,
                 k_test: torch.Tensor | None = None, name: str = "training kernel matrix"):
        self.k_train, self.k_cross, self.k_test_diag, self.k_test, self.name = k_train, k_cross, k_test_diag, k_test, name
        self.n_train, self.n_test, self.device = k_train.shape[0], k_cross.shape[0], k_train.device
        self.timings: dict[str, float] = {}

    def factor(self, kind: str, progress: bool = False) -> TrainFactor:
        t0 = time.perf_counter()
        L, jitter = safe_cholesky(self.k_train, name=self.name)
        self.timings["cholesky"] = time.perf_counter() - t0
        return TrainFactor(L, jitter)

    def cross_rows(self, kind: str, a: int, b: int) -> torch.Tensor:
        return self.k_cross[a:b]

    def test_diagonal(self, kind: str) -> torch.Tensor:
        return self.k_test_diag

    def block_rows(self, kind: str) -> int:
        return self.n_test

    def test_matrix(self, kind: str) -> torch.Tensor:
        if self.k_test is None:
            return super().test_matrix(kind)
        return self.k_test


def conditioned(source: KernelSource, targets: torch.Tensor, kind: str = "nngp", *, joint: bool = False,
                progress: bool = False) -> Posterior:
    """The noise-free GP posterior at the source's test points given ``f(X) = targets`` (module
    docstring): mean ``(m,)`` or ``(m, C)`` for targets ``(n,)`` or ``(n, C)``, std ``(m,)``, the
    joint covariance when ``joint``.  ``timings``: the source's, ``kernel_test`` (fetching test
    blocks) and ``solve``."""
    n, m = source.n_train, source.n_test
    factor = source.factor(kind, progress=progress)
    Y = targets.reshape(n, -1).to(source.device, torch.float64)
    t0 = time.perf_counter()
    kss = source.test_diagonal(kind)
    t_kernel, t_solve = time.perf_counter() - t0, 0.0
    blocks = TestRowBlocks(lambda a, b: source.cross_rows(kind, a, b), m, n, source.block_rows(kind),
                           progress=progress, desc=f"{kind.upper()} kernel (test x train)")
    v, means, vars_, As = None, [], [], []
    for a, b, Ksx in blocks:
        ts = time.perf_counter()
        if v is None:
            v, A = factor.solve_pair(Y, Ksx.T)
        else:
            A = factor.solve(Ksx.T)  # L^-1 K_X*   (n, b - a)
        means.append(A.T @ v)
        vars_.append(kss[a:b] - (A * A).sum(0))
        if joint:
            As.append(A)
        t_solve += time.perf_counter() - ts
    t_kernel += blocks.seconds
    mean = torch.cat(means)
    mean = mean[:, 0] if targets.ndim == 1 else mean
    var = floor_variance(torch.cat(vars_), kss, n)
    cov = None
    if joint:
        tk = time.perf_counter()
        Kss = source.test_matrix(kind)
        t_kernel += time.perf_counter() - tk
        A = torch.cat(As, dim=1)
        cov = Kss - A.T @ A
        cov = 0.5 * (cov + cov.T)
        cov.diagonal().copy_(var)
    timings = {**getattr(source, "timings", {}), "kernel_test": t_kernel, "solve": t_solve}
    return Posterior(mean, var.sqrt(), factor.jitter, kind, timings, cov)
