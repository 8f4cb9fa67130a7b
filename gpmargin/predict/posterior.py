"""Predictions at the test points: noise-free GP conditioning, and the dispatcher :func:`posterior`.

:func:`posterior` returns, for each ``kind``, the Gaussian distribution of the test outputs of
networks trained to margin ``alpha`` (targets ``f(X) = alpha * Y``):

* ``"nngp"``  the paper's model: the NNGP conditioned on the training outputs (below);
  with a finite ``time``, gradient flow on the readout layer alone (:mod:`gpmargin.predict.gradient`).
* ``"ntk"``   an infinite ensemble of infinitely wide networks trained by gradient descent
  on the squared error, to convergence or for a finite ``time`` (:mod:`gpmargin.predict.gradient`).
* ``"ntkgp"`` a GP with the NTK as prior covariance, conditioned like the NNGP (what
  ``"ntk"`` meant until the gradient-descent prediction was added).

GP conditioning (``"nngp"``, ``"ntkgp"``) on ``f(X) = alpha * Y`` without noise gives, at the
test inputs ``X*``, a Gaussian with

* mean ``alpha * mu``,   ``mu = K_*X K_XX^{-1} Y``              (``Y``: +-1 labels, or one-hot)
* covariance ``Sigma = K_** - K_*X K_XX^{-1} K_X*``              (independent of ``alpha`` and ``Y``)

For several outputs (one per class) the output GPs are independent with the same
kernel, so they share ``Sigma`` and are independent of each other a posteriori.
In every kind the mean is proportional to ``alpha`` and the covariance free of it.

Only ``mu`` and the marginal standard deviations ``s_i = sqrt(Sigma_ii)`` are needed
for expected accuracies (expectation is linear, so it only involves each test
point's marginal); the joint ``Sigma`` is available for sampling whole test sets with
:func:`sample_posterior`.

All solves are float64 with the Cholesky factor of ``K_XX`` from
:func:`gpmargin.linalg.safe_cholesky` (jitter only when needed, and reported).
Variances below the round-off floor ``n * eps * k(x, x)`` (including small negative
values) are set to exactly 0: such a test point is determined by the training data
(e.g. it duplicates a training input) and its draw equals its mean.
"""

from __future__ import annotations

import time

import torch

from gpmargin.errors import GpmarginError
from gpmargin.linalg import safe_cholesky
from gpmargin.predict.gradient import gradient_descent_posterior
from gpmargin.predict.inputs import KINDS, as_tensor, check_kernel, check_kind, check_learning_rate, check_time
from gpmargin.predict.kernel_blocks import TestRowBlocks, kernel_diagonal, kernel_matrix, train_kernel
from gpmargin.predict.result import Posterior, floor_variance
from gpmargin.predict.result import posterior_covariance, sample_posterior  # noqa: F401  (their old home)

__all__ = ["condition", "posterior", "gp_posterior", "check_prediction", "KINDS"]


def check_prediction(kernel, kind: str, time=None, learning_rate=1.0, *,
                     kernel_optional: bool = False) -> tuple[str, float | None, float]:
    """Validate ``kernel``, ``kind``, ``time`` and ``learning_rate`` (at the API boundary);
    ``kernel_optional``: None is allowed (the matrices come from a kernel store).

    ``time`` applies to the gradient-descent predictions (``"ntk"``, and ``"nngp"`` as the
    readout-only flow); ``"ntk"`` and ``"ntkgp"`` need a kernel with an NTK.
    """
    if not (kernel_optional and kernel is None):
        check_kernel(kernel)
    kind = check_kind(kind)
    time = check_time(time)
    learning_rate = check_learning_rate(learning_rate)
    if kind == "ntkgp" and time is not None:
        raise GpmarginError(
            f"time={time:g} applies to kind 'ntk' or 'nngp' (gradient-descent training); kind 'ntkgp' "
            f"(a GP with the NTK as covariance) has no training time: use time=None"
        )
    if kind in ("ntk", "ntkgp") and not getattr(kernel, "supports_ntk", True):
        layers = [x for x in getattr(kernel, "layers", [kernel]) if not getattr(x, "supports_ntk", True)]
        which = f" (layer {layers[0]!r} has none)" if layers else ""
        raise GpmarginError(
            f"kind={kind!r} needs the kernel's NTK, which this kernel does not have{which}; "
            f"use kind='nngp', the only kind for a kernel without an NTK"
        )
    return kind, time, learning_rate


def condition(
    k_train,
    k_cross,
    k_test_diag,
    targets,
    *,
    k_test=None,
    kind: str = "given",
    name: str = "training kernel matrix",
) -> Posterior:
    """Condition on precomputed kernel matrices.

    Parameters
    ----------
    k_train : (n, n)   ``K_XX``
    k_cross : (m, n)   ``K_*X`` (test rows, training columns)
    k_test_diag : (m,) ``k(x*, x*)``
    targets : (n,) or (n, C) regression targets for ``alpha = 1``
    k_test : (m, m), optional
        Full ``K_**``; when given, the joint posterior covariance is returned in ``cov``.
    kind : str
        Label recorded in the result (e.g. ``"nngp"`` or ``"ntk"``).
    """
    t0 = time.perf_counter()
    Kxx = as_tensor(k_train, name="k_train")
    Ksx = as_tensor(k_cross, device=Kxx.device, name="k_cross")
    kss = as_tensor(k_test_diag, device=Kxx.device, name="k_test_diag")
    Y = as_tensor(targets, device=Kxx.device, name="targets")
    n = Kxx.shape[0]
    if Ksx.ndim != 2 or Ksx.shape[1] != n or kss.shape != (Ksx.shape[0],) or Y.shape[0] != n:
        raise GpmarginError(
            f"kernel shapes do not fit: k_train {tuple(Kxx.shape)}, k_cross {tuple(Ksx.shape)}, "
            f"k_test_diag {tuple(kss.shape)}, targets {tuple(Y.shape)}"
        )
    if not bool(torch.isfinite(Ksx).all() and torch.isfinite(kss).all()):
        raise GpmarginError("test kernel values contain NaN or infinity; check the inputs and the kernel")
    L, jitter = safe_cholesky(Kxx, name=name)
    t1 = time.perf_counter()
    v = torch.linalg.solve_triangular(L, Y.reshape(n, -1), upper=False)  # L^-1 Y   (n, C)
    A = torch.linalg.solve_triangular(L, Ksx.T, upper=False)  # L^-1 K_X*  (n, m)
    mean = A.T @ v
    mean = mean[:, 0] if Y.ndim == 1 else mean
    var = floor_variance(kss - (A * A).sum(0), kss, n)
    cov = None
    if k_test is not None:
        Kss = as_tensor(k_test, device=Kxx.device, name="k_test")
        cov = Kss - A.T @ A
        cov = 0.5 * (cov + cov.T)
        cov.diagonal().copy_(var)
    t2 = time.perf_counter()
    return Posterior(mean, var.sqrt(), jitter, kind, {"cholesky": t1 - t0, "solve": t2 - t1}, cov)


def posterior(
    kernel,
    x_train: torch.Tensor,
    targets: torch.Tensor,
    x_test: torch.Tensor,
    *,
    kind: str = "nngp",
    time: float | None = None,
    learning_rate: float = 1.0,
    joint: bool = False,
    progress: bool = False,
    chunk_elements: int = 1 << 22,
) -> Posterior:
    """Distribution of the test outputs (mean for ``alpha = 1``, std, joint covariance if ``joint``).

    ``kind="nngp"`` with ``time=None``: NNGP conditioning; ``"ntkgp"``: the NTK as GP
    covariance (both :func:`gp_posterior`).  ``"ntk"`` (any ``time``) and ``"nngp"`` with a
    finite ``time``: gradient-descent training for time ``time`` with step ``learning_rate``
    (:func:`gpmargin.predict.gradient.gradient_descent_posterior`).

    Raises
    ------
    GpmarginError
        Unknown ``kind``, ``time`` or ``learning_rate`` not > 0, a finite ``time`` with
        ``"ntkgp"``, or ``"ntk"``/``"ntkgp"`` with a kernel that has no NTK.
    """
    kind, time, learning_rate = check_prediction(kernel, kind, time, learning_rate)
    if kind == "ntk" or time is not None:
        return gradient_descent_posterior(
            kernel, x_train, targets, x_test, kind=kind, time=time, learning_rate=learning_rate,
            joint=joint, progress=progress, chunk_elements=chunk_elements,
        )
    post = gp_posterior(kernel, x_train, targets, x_test, get="ntk" if kind == "ntkgp" else "nngp",
                        joint=joint, progress=progress, chunk_elements=chunk_elements)
    post.kind = kind
    post.learning_rate = learning_rate
    return post


def gp_posterior(
    kernel,
    x_train: torch.Tensor,
    targets: torch.Tensor,
    x_test: torch.Tensor,
    *,
    get: str = "nngp",
    joint: bool = False,
    progress: bool = False,
    chunk_elements: int = 1 << 22,
) -> Posterior:
    """GP posterior mean and standard deviation at ``x_test`` for targets ``Y`` at ``x_train``,
    with prior covariance ``kernel(..., get=get)`` (``"nngp"`` or ``"ntk"``).

    The cross-kernel ``K_*X`` is computed in chunks of test rows (about
    ``chunk_elements`` entries each), each chunk solved and discarded, so memory stays
    at ``O(n^2 + chunk)``; ``progress=True`` shows a tqdm bar over the chunks.
    ``joint=True`` also returns the full (m, m) posterior covariance (small test sets).
    ``timings`` reports seconds spent in ``kernel_train``, ``cholesky``,
    ``kernel_test`` and ``solve``.
    """
    kind = get
    check_kernel(kernel)
    n, m = x_train.shape[0], x_test.shape[0]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    Kxx = train_kernel(kernel, x_train, kind, progress=progress)
    timings["kernel_train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    L, jitter = safe_cholesky(Kxx, name=f"training {kind.upper()} matrix")
    del Kxx
    Y = targets.reshape(n, -1).to(L.device, torch.float64)
    v = torch.linalg.solve_triangular(L, Y, upper=False)
    timings["cholesky"] = time.perf_counter() - t0

    t_kernel = time.perf_counter()
    kss = kernel_diagonal(kernel, x_test, kind)
    t_kernel = time.perf_counter() - t_kernel
    t_solve = 0.0
    blocks = TestRowBlocks(lambda a, b: kernel_matrix(kernel, x_test[a:b], x_train, kind), m, n,
                           chunk_elements // max(n, 1), progress=progress, desc=f"{kind.upper()} kernel (test x train)")
    means, vars_, As = [], [], []
    for a, b, Ksx in blocks:
        ts = time.perf_counter()
        A = torch.linalg.solve_triangular(L, Ksx.T, upper=False)  # (n, b-a)
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
        Kss = kernel_matrix(kernel, x_test, None, kind)
        t_kernel += time.perf_counter() - tk
        A = torch.cat(As, dim=1)
        cov = Kss - A.T @ A
        cov = 0.5 * (cov + cov.T)
        cov.diagonal().copy_(var)
    timings["kernel_test"] = t_kernel
    timings["solve"] = t_solve
    return Posterior(mean, var.sqrt(), jitter, kind, timings, cov)
