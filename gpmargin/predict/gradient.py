"""Outputs of infinitely wide networks trained by gradient descent on the squared error.

Lee et al. (2019), *Wide neural networks of any depth evolve as linear models under gradient
descent*: a network in NTK parameterisation, initialised at random and trained by gradient
flow with learning rate ``eta`` for time ``t`` on

    L = ||f(X) - alpha Y||^2 / (2 N)          (N = Y.numel(): n binary, n * C for C outputs)

has Gaussian test outputs.  With ``K`` the NNGP, ``Theta`` the NTK, ``X`` train, ``*`` test,

    s = eta * t / N,        A(t) = Theta^{-1} (I - exp(-s Theta)),   A(inf) = Theta^{-1}

``kind="ntk"`` (every layer trained):

    mean   alpha * Theta_*X A Y
    cov    K_** + Theta_*X A K A Theta_X* - (Theta_*X A K_X* + K_*X A Theta_X*)
    train  mean alpha * (I - exp(-s Theta)) Y,   cov exp(-s Theta) K exp(-s Theta)

``kind="nngp"`` at finite time (only the readout layer trained, its kernel is ``K``):

    mean   alpha * K_*X K^{-1} (I - exp(-s K)) Y
    cov    K_** - K_*X K^{-1} (I - exp(-2 s K)) K_X*
    train  mean alpha * (I - exp(-s K)) Y,       cov K exp(-2 s K)

This is neural-tangents' ``predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train,
learning_rate)`` evaluated at time ``t`` (same normaliser ``N = y_train.size``, time multiplied
by the learning rate).  The mean is proportional to ``alpha`` and the covariance free of it, so
the exact accuracy formulas of :mod:`gpmargin.predict.accuracy` apply unchanged.

Infinite time solves with the Cholesky factor of ``Theta`` (:func:`gpmargin.linalg.safe_cholesky`,
jitter reported); finite time uses the float64 symmetric eigendecomposition
``Theta = V diag(lambda) V^T`` with eigenvalues below 0 (round-off) set to 0, and
``(1 - exp(-s lambda)) / lambda`` taken as its limit ``s`` at ``lambda = 0``.
At infinite time the training outputs equal ``alpha * Y`` exactly (zero variance).
"""

from __future__ import annotations

import time as _time

import torch

from gpmargin.errors import GpmarginError
from gpmargin.linalg import cholesky_solve, safe_cholesky
from gpmargin.predict.kernel_blocks import TestRowBlocks, kernel_diagonal, kernel_matrix, train_kernel
from gpmargin.predict.result import Posterior, floor_variance

__all__ = ["gradient_descent_posterior", "TrainFlow", "flow_scale"]


def flow_scale(time: float, learning_rate: float, num_targets: int) -> float:
    """``s = learning_rate * time / N``: the exponent scale of ``exp(-s Theta)`` (NT's convention)."""
    return float(learning_rate) * float(time) / float(num_targets)


def _one_minus_exp_over(lam: torch.Tensor, s: float) -> torch.Tensor:
    """``(1 - exp(-s lam)) / lam`` elementwise, ``s`` where ``lam == 0`` (its limit)."""
    safe = torch.where(lam > 0, lam, torch.ones_like(lam))
    return torch.where(lam > 0, -torch.expm1(-s * lam) / safe, torch.full_like(lam, s))


class TrainFlow:
    """The training kernel ``M`` (NTK, or NNGP for the readout-only flow) and ``A(t) = M^{-1}(I - e^{-sM})``.

    ``time=None``: Cholesky factor of ``M`` (jitter reported in ``jitter``); else the
    eigendecomposition of ``M`` with negative eigenvalues clipped to 0.
    """

    def __init__(self, M: torch.Tensor, s: float | None, name: str):
        self.s = s
        self.jitter = 0.0
        if s is None:
            self.L, self.jitter = safe_cholesky(M, name=name)
        else:
            if not bool(torch.isfinite(M).all()):
                raise GpmarginError(f"the {name} contains NaN or infinity; check the inputs and the kernel")
            lam, self.V = torch.linalg.eigh(0.5 * (M + M.T))
            self.lam = lam.clamp_min(0.0)

    def apply(self, B: torch.Tensor, double: bool = False) -> torch.Tensor:
        """``A(t) B`` (``A(2t) B`` when ``double``; at infinite time both are ``M^{-1} B``)."""
        if self.s is None:
            return cholesky_solve(self.L, B)
        w = _one_minus_exp_over(self.lam, 2 * self.s if double else self.s)
        return self.V @ (w[:, None] * (self.V.T @ B))

    def decay(self, B: torch.Tensor, double: bool = False, times_lambda: bool = False) -> torch.Tensor:
        """``e^{-sM} B`` (``e^{-2sM}`` when ``double``; ``M e^{-2sM}`` etc. with ``times_lambda``)."""
        e = torch.exp(-(2 * self.s if double else self.s) * self.lam)
        if times_lambda:
            e = e * self.lam
        return self.V @ (e[:, None] * (self.V.T @ B))


def gradient_descent_posterior(
    kernel,
    x_train: torch.Tensor,
    targets: torch.Tensor,
    x_test: torch.Tensor,
    *,
    kind: str = "ntk",
    time: float | None = None,
    learning_rate: float = 1.0,
    joint: bool = False,
    progress: bool = False,
    chunk_elements: int = 1 << 22,
) -> Posterior:
    """Test (and training) outputs after gradient-descent training, for ``alpha = 1``.

    ``kind="ntk"``: all layers trained (any ``time``); ``kind="nngp"``: readout only
    (finite ``time``).  Inputs are trusted (validated by :func:`gpmargin.predict.posterior`).
    The cross kernels are computed in chunks of test rows as in
    :func:`~gpmargin.predict.source.conditioned`.  Returns a :class:`Posterior` whose
    ``train`` holds the outputs at ``x_train`` at the same time.
    """
    n, m = x_train.shape[0], x_test.shape[0]
    Y = targets.reshape(n, -1).to(torch.float64)
    s = None if time is None else flow_scale(time, learning_rate, targets.numel())
    both = kind == "ntk"
    timings: dict[str, float] = {}

    t0 = _time.perf_counter()
    if both:
        K, T = train_kernel(kernel, x_train, ("nngp", "ntk"), progress=progress)
    else:
        K = T = train_kernel(kernel, x_train, "nngp", progress=progress)
    timings["kernel_train"] = _time.perf_counter() - t0
    t0 = _time.perf_counter()
    flow = TrainFlow(T, s, name=f"training {'NTK' if both else 'NNGP'} matrix")
    Y = Y.to(T.device)
    AY = flow.apply(Y)  # A(t) Y  (n, C)
    timings["factor"] = _time.perf_counter() - t0

    tk = _time.perf_counter()
    kss = kernel_diagonal(kernel, x_test, "nngp")
    t_kernel, t_solve = _time.perf_counter() - tk, 0.0
    get = ("nngp", "ntk") if both else "nngp"
    blocks = TestRowBlocks(lambda a, b: kernel_matrix(kernel, x_test[a:b], x_train, get), m, n,
                           chunk_elements // max(2 * n, 1), progress=progress,
                           desc=f"{kind.upper()} kernels (test x train)")
    means, vars_, keep = [], [], []
    for a, b, block in blocks:
        ts = _time.perf_counter()
        Kc, Tc = block if both else (block, block)
        means.append(Tc @ AY)
        if both:
            B = flow.apply(Tc.T)  # A Theta_X*   (n, b)
            var = kss[a:b] + (B * (K @ B)).sum(0) - 2.0 * (B * Kc.T).sum(0)
            if joint:
                keep.append((B, Kc))
        else:
            B2 = flow.apply(Kc.T, double=True)  # A(2t) K_X*
            var = kss[a:b] - (Kc.T * B2).sum(0)
            if joint:
                keep.append((B2, Kc))
        vars_.append(var)
        t_solve += _time.perf_counter() - ts
    t_kernel += blocks.seconds
    single = targets.ndim == 1
    mean = torch.cat(means)
    var = floor_variance(torch.cat(vars_), kss, n)
    cov = None
    if joint:
        tk = _time.perf_counter()
        Kss = kernel_matrix(kernel, x_test, None, "nngp")
        t_kernel += _time.perf_counter() - tk
        B = torch.cat([k[0] for k in keep], dim=1)
        Kc = torch.cat([k[1] for k in keep], dim=0)
        if both:
            cross = Kc @ B
            cov = Kss + B.T @ (K @ B) - (cross + cross.T)
        else:
            cov = Kss - Kc @ B
        cov = 0.5 * (cov + cov.T)
        cov.diagonal().copy_(var)
    timings["kernel_test"] = t_kernel
    timings["solve"] = t_solve

    train = _train_outputs(flow, K, Y, both, joint, kind, time, learning_rate)
    if single:
        mean, train.mean = mean[:, 0], train.mean[:, 0]
    return Posterior(mean, var.sqrt(), flow.jitter, kind, timings, cov, time, learning_rate, train)


def _train_outputs(flow: TrainFlow, K, Y, both, joint, kind, time, learning_rate) -> Posterior:
    """Outputs at the training inputs at time ``t``: mean ``(I - e^{-sM}) Y``, covariance
    ``e^{-sTheta} K e^{-sTheta}`` (``"ntk"``) or ``K e^{-2sK}`` (``"nngp"``); ``Y`` exactly at ``t = inf``."""
    n = Y.shape[0]
    if flow.s is None:
        cov = torch.zeros(n, n, dtype=torch.float64, device=Y.device)
        return Posterior(Y.clone(), torch.zeros(n, dtype=torch.float64, device=Y.device), flow.jitter, kind,
                         cov=cov if joint else None, time=time, learning_rate=learning_rate)
    mean = Y - flow.decay(Y)
    if both:
        E = flow.decay(torch.eye(n, dtype=torch.float64, device=Y.device))
        cov = E @ K @ E
    else:
        cov = flow.decay(torch.eye(n, dtype=torch.float64, device=Y.device), double=True, times_lambda=True)
    cov = 0.5 * (cov + cov.T)
    var = floor_variance(cov.diagonal().clone(), K.diagonal(), n)
    cov.diagonal().copy_(var)
    return Posterior(mean, var.sqrt(), flow.jitter, kind, cov=cov if joint else None, time=time, learning_rate=learning_rate)

