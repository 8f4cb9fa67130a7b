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
:func:`~gpmargin.predict.result.sample_posterior`.

All solves are float64 with the Cholesky factor of ``K_XX`` from
:func:`gpmargin.linalg.safe_cholesky` (jitter only when needed, and reported), the test rows in
blocks (:func:`gpmargin.predict.source.conditioned`), the kernel computed in memory or read from a
kernel store (``kernel_store=``, any object with ``kernel_source(...)``, e.g.
:func:`gpmargin.distributed.open_store`).
Variances below the round-off floor ``n * eps * k(x, x)`` (including small negative
values) are set to exactly 0: such a test point is determined by the training data
(e.g. it duplicates a training input) and its draw equals its mean.
"""

from __future__ import annotations

import os

import torch

from gpmargin.errors import GpmarginError
from gpmargin.predict.gradient import gradient_descent_posterior
from gpmargin.predict.inputs import KINDS, as_tensor, check_kernel, check_kind, check_learning_rate, check_time
from gpmargin.predict.result import Posterior
from gpmargin.predict.source import KernelFunction, KernelMatrices, conditioned

__all__ = ["condition", "posterior", "check_prediction", "check_kernel_store", "KINDS"]


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


def check_kernel_store(kernel_store, kind: str, time) -> None:
    """A ``kernel_store`` must be an open store (an object with ``kernel_source``) and is for the GP
    kinds at convergence only."""
    if isinstance(kernel_store, (str, os.PathLike)):
        raise GpmarginError(f"kernel_store={str(kernel_store)!r} is a path: open it first, "
                            f"kernel_store=gpmargin.distributed.open_store({str(kernel_store)!r})")
    if not hasattr(kernel_store, "kernel_source"):
        raise GpmarginError(f"kernel_store must be an open kernel store (gpmargin.distributed.open_store), "
                            f"got {type(kernel_store).__name__}")
    if kind == "ntk" or time is not None:
        raise GpmarginError(
            "kernel_store: a stored kernel gives the NNGP posterior (kind='nngp') or the NTK-GP "
            "(kind='ntkgp') at convergence; the gradient-descent prediction (kind='ntk', time=) "
            "needs the in-memory path: drop kernel_store")


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
    Kss = None if k_test is None else as_tensor(k_test, device=Kxx.device, name="k_test")
    post = conditioned(KernelMatrices(Kxx, Ksx, kss, Kss, name=name), Y, kind, joint=Kss is not None)
    post.timings = {k: post.timings[k] for k in ("cholesky", "solve")}
    return post


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
    kernel_store=None,
    memory: int | None = None,
) -> Posterior:
    """Distribution of the test outputs (mean for ``alpha = 1``, std, joint covariance if ``joint``).

    ``kind="nngp"`` with ``time=None``: NNGP conditioning; ``"ntkgp"``: the NTK as GP
    covariance (both :func:`gpmargin.predict.source.conditioned`, the cross kernel in chunks of
    about ``chunk_elements`` entries, so memory stays at ``O(n^2 + chunk)``).  ``"ntk"`` (any
    ``time``) and ``"nngp"`` with a finite ``time``: gradient-descent training for time ``time``
    with step ``learning_rate`` (:func:`gpmargin.predict.gradient.gradient_descent_posterior`).

    ``kernel_store``: an open kernel store made for exactly these inputs (and ``kernel``, which may
    then be None) whose matrices are read instead of calling the kernel, solved out of core in
    ``memory`` bytes (the store's default when None); GP kinds only.

    Raises
    ------
    GpmarginError
        Unknown ``kind``, ``time`` or ``learning_rate`` not > 0, a finite ``time`` with
        ``"ntkgp"``, ``"ntk"``/``"ntkgp"`` with a kernel that has no NTK, or a ``kernel_store``
        that is a path, or with a gradient-descent kind.
    """
    kind, time, learning_rate = check_prediction(kernel, kind, time, learning_rate,
                                                 kernel_optional=kernel_store is not None)
    if kernel_store is not None:
        check_kernel_store(kernel_store, kind, time)
    if kind == "ntk" or time is not None:
        return gradient_descent_posterior(
            kernel, x_train, targets, x_test, kind=kind, time=time, learning_rate=learning_rate,
            joint=joint, progress=progress, chunk_elements=chunk_elements,
        )
    matrix = "ntk" if kind == "ntkgp" else "nngp"  # the kernel's get= (and the store's matrix names)
    if kernel_store is None:
        source = KernelFunction(kernel, x_train, x_test, chunk_elements=chunk_elements)
    else:
        source = kernel_store.kernel_source(x_train, x_test, kind=matrix, kernel=kernel, memory=memory,
                                            device=x_train.device)
    post = conditioned(source, targets, matrix, joint=joint, progress=progress)
    post.kind = kind
    post.learning_rate = learning_rate
    return post
