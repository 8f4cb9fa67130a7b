"""The result of a prediction: the Gaussian distribution of the test outputs, and draws from it.

:class:`Posterior` holds, for margin ``alpha = 1``, the mean and marginal standard deviations of
the test outputs (and their joint covariance when asked for); every kind of prediction
(:mod:`gpmargin.predict.posterior`, :mod:`gpmargin.predict.gradient`, the out-of-core solves of
:mod:`gpmargin.distributed.blocked`) returns one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gpmargin.errors import GpmarginError
from gpmargin.linalg import safe_cholesky

__all__ = ["Posterior", "floor_variance", "posterior_covariance", "sample_posterior"]


@dataclass
class Posterior:
    """Posterior of the GP at the test points, for margin ``alpha = 1``.

    ``mean`` is (m,) for one output (binary labels) or (m, C) for one output per
    class; ``std`` (m,) is shared by all outputs.  At margin ``alpha`` the posterior
    mean is ``alpha * mean`` and the standard deviation is unchanged.
    ``time`` (None: trained to convergence) and ``learning_rate`` are those of the
    gradient-descent kinds; ``train`` (gradient-descent kinds only) is the same kind of
    object for the outputs at the training inputs at that time.
    """

    mean: torch.Tensor
    std: torch.Tensor
    jitter: float
    kind: str
    timings: dict[str, float] = field(default_factory=dict)
    cov: torch.Tensor | None = None  # joint (m, m) covariance, only when requested
    time: float | None = None
    learning_rate: float = 1.0
    train: "Posterior | None" = None


def floor_variance(var: torch.Tensor, prior_var: torch.Tensor, n: int) -> torch.Tensor:
    """``var`` with the entries below the round-off floor ``n * eps * |prior_var|`` set to 0
    (also small negative ones): such a test point is determined by the training data."""
    eps = torch.finfo(torch.float64).eps
    floor = n * eps * prior_var.abs()
    return torch.where(var > floor, var, torch.zeros_like(var))


def posterior_covariance(post: Posterior) -> torch.Tensor:
    """The joint (m, m) posterior covariance of a :class:`Posterior` computed with ``joint=True``."""
    if post.cov is None:
        raise GpmarginError("this posterior has no joint covariance; compute it with joint=True")
    return post.cov


def sample_posterior(
    post: Posterior,
    margin: float,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    ensemble: int = 1,
) -> torch.Tensor:
    """Joint samples of the test outputs of networks trained to ``margin``.

    Draws ``f* ~ N(margin * mean, cov)`` jointly over the test points (independently
    for each class output), averaged over ``ensemble`` independent draws.  Needs a
    posterior computed with ``joint=True``.  Returns (num_samples, m) or
    (num_samples, m, C).  The covariance is factorised with
    :func:`~gpmargin.linalg.safe_cholesky` (it is PSD but may be singular).
    """
    cov = posterior_covariance(post)
    margin = float(margin)
    if not (margin > 0 and margin < float("inf")):
        raise GpmarginError(f"margin must be finite and > 0, got {margin!r}")
    L, _ = safe_cholesky(cov, warn=False, name="posterior covariance", max_rel_jitter=1e-2)
    m = cov.shape[0]
    mean = post.mean if post.mean.ndim == 2 else post.mean[:, None]
    C = mean.shape[1]
    eps = torch.randn(num_samples, C, m, dtype=torch.float64, generator=generator).to(cov.device)
    draws = margin * mean.T[None] + (eps @ L.T) / ensemble**0.5  # (S, C, m)
    draws = draws.transpose(1, 2)  # (S, m, C)
    return draws[..., 0] if post.mean.ndim == 1 else draws
