"""Ghost batch norm, the large-batch learning-rate rules and the distance-from-init fitter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpmargin.errors import GpmarginError
from validation.training.distance import fit_distance
from validation.training.ghost_bn import GhostBatchNorm1d
from validation.training.schedules import regime_adaptation, sqrt_lr, step_lr


def _pair(G: int, C: int = 6):
    torch.manual_seed(0)
    ghost = GhostBatchNorm1d(C, ghost_batch_size=G).double()
    bn = torch.nn.BatchNorm1d(C).double()
    with torch.no_grad():
        for m in (ghost, bn):
            m.weight.copy_(torch.linspace(0.5, 2.0, C))
            m.bias.copy_(torch.linspace(-1.0, 1.0, C))
    return ghost, bn


def test_ghost_bn_equals_batchnorm_when_ghost_is_whole_batch():
    """G = N: same outputs, gradients and running statistics as torch's BatchNorm1d (float64,
    agreement to rounding)."""
    ghost, bn = _pair(G=32)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = (torch.randn(32, 6, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y1, y2 = ghost(x), bn(x2)
        torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
        (y1 * torch.arange(6.0, dtype=torch.float64)).sum().backward()
        (y2 * torch.arange(6.0, dtype=torch.float64)).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ghost.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ghost.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ghost.weight.grad, bn.weight.grad, rtol=1e-10, atol=1e-12)
    ghost.eval(), bn.eval()
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ghost(x), bn(x), rtol=1e-12, atol=1e-12)


def test_each_ghost_chunk_is_normalised():
    """Without the affine map every chunk of G has per-channel mean 0 and (biased) variance
    ``var / (var + eps)`` (1 up to the eps = 1e-5 in the denominator), to float64 rounding."""
    m = GhostBatchNorm1d(4, ghost_batch_size=16, affine=False).double()
    g = torch.Generator().manual_seed(2)
    # chunks with very different statistics: whole-batch normalisation would not centre them
    x = torch.cat([torch.randn(16, 4, generator=g, dtype=torch.float64) * s + mu
                   for s, mu in ((1.0, 0.0), (5.0, 10.0), (0.5, -3.0), (2.0, 7.0))])
    y = m(x).reshape(4, 16, 4)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(4, 4, dtype=torch.float64), rtol=0, atol=1e-12)
    v = x.reshape(4, 16, 4).var(dim=1, unbiased=False)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), v / (v + 1e-5), rtol=1e-12, atol=0)
    assert float((y.var(dim=1, unbiased=False) - 1).abs().max()) < 1e-3
    whole = torch.nn.functional.batch_norm(x, None, None, training=True).reshape(4, 16, 4)
    assert float(whole.mean(dim=1).abs().max()) > 0.5  # ordinary BN leaves the chunks off-centre


@pytest.mark.parametrize("G, N, match", [(64, 32, "larger than the batch"), (12, 32, "does not divide"),
                                          (0, 32, "positive integer")])
def test_ghost_bn_bad_sizes(G, N, match):
    with pytest.raises(GpmarginError, match=match):
        GhostBatchNorm1d(3, ghost_batch_size=G)(torch.zeros(N, 3))


def test_lr_rules_follow_their_formulas():
    assert sqrt_lr(0.1, 4096, 256) == pytest.approx(0.1 * 4.0, rel=1e-15)
    assert sqrt_lr(0.05, 128, 128) == 0.05
    epochs, ms = regime_adaptation(10, (5, 8), 4096, 256)
    assert epochs == 160 and ms == (80.0, 128.0)
    assert [step_lr(1.0, e, (5, 8), 0.1) for e in (0, 4.9, 5, 8, 20)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    with pytest.raises(GpmarginError, match="batch_size"):
        sqrt_lr(0.1, 0, 128)
    with pytest.raises(GpmarginError, match="lr_ref"):
        sqrt_lr(-0.1, 64, 128)


def test_distance_fitter_recovers_log_law_slope():
    """d = 1 + 0.7 log t + N(0, 0.02^2) at 200 log-spaced times: the least-squares slope has
    standard error ~0.02 / (std(log t) sqrt(200)) ~ 6e-4, so 0.01 is a > 10 s.e. tolerance."""
    rng = np.random.default_rng(0)
    t = np.unique(np.logspace(0, 5, 200).round())
    d = 1.0 + 0.7 * np.log(t) + rng.normal(0, 0.02, size=t.size)
    fit = fit_distance(t, d)
    assert fit["better"] == "log"
    assert fit["log_slope"] == pytest.approx(0.7, abs=0.01)


def test_distance_fitter_prefers_power_law_for_free_random_walk():
    """The mean distance of 200 free Gaussian random walks in 50 dimensions grows like sqrt(t)
    (E||S_t|| ~ sqrt(50 t)): the power law wins, with exponent near 1/2 (0.05: Monte Carlo
    spread of the mean of 200 walks is ~1%)."""
    rng = np.random.default_rng(1)
    steps = rng.normal(size=(200, 2000, 50))
    dist = np.linalg.norm(np.cumsum(steps, axis=1), axis=2).mean(axis=0)
    t = np.arange(1, 2001)
    fit = fit_distance(t, dist)
    assert fit["better"] == "power"
    assert fit["power_exponent"] == pytest.approx(0.5, abs=0.05)


def test_distance_fitter_bad_input():
    with pytest.raises(GpmarginError, match="positive"):
        fit_distance([0, 1, 2], [1, 2, 3])
    with pytest.raises(GpmarginError, match="same length"):
        fit_distance([1, 2], [1, 2])
