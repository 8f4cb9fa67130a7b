"""The correctness-probability formulas: quadrature accuracy, identities, zero variance, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate
from scipy.special import ndtr

from gpmargin.predict import accuracy as acc


def _quad_reference(d: np.ndarray) -> float:
    """E_z prod Phi(z + d_j) by adaptive scipy quadrature, breakpoints at every -d_j."""
    d = np.asarray(d, dtype=np.float64)
    f = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * float(np.prod(ndtr(z + d)))
    pts = sorted(set(np.clip(-d[np.isfinite(d)], -11.5, 11.5).tolist()))[:40]
    val, err = integrate.quad(f, -12.0, 12.0, epsabs=1e-14, epsrel=1e-12, limit=500, points=pts or None)
    assert err < 1e-10
    return val


def test_quadrature_matches_scipy_quad_to_1e6():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(150):
        J = int(rng.integers(1, 10))
        scale = 10 ** rng.uniform(-2, 1.6)
        rows.append(rng.normal(size=J) * scale + rng.normal() * scale)
    # worst cases for a fixed rule: many equal gaps (sharpest product), around the transition
    rows += [np.full(9, v) for v in np.linspace(-4, 10, 29)]
    errs = []
    for d in rows:
        got = float(acc.expected_normal_cdf_product(torch.tensor(d)[None])[0])
        errs.append(abs(got - _quad_reference(d)))
    print(f"max |trapezoid - quad| over {len(rows)} gap vectors: {max(errs):.2e}")
    assert max(errs) < 1e-6
    assert max(errs) < 1e-9  # what the rule actually achieves; 1e-6 is the promise


def test_many_classes_still_accurate():
    rng = np.random.default_rng(1)
    for J in (29, 99):
        for v in (-1.0, 0.5, 2.0, 4.0):
            d = np.full(J, v) + 0.1 * rng.normal(size=J)
            got = float(acc.expected_normal_cdf_product(torch.tensor(d)[None])[0])
            assert abs(got - _quad_reference(d)) < 1e-7


@settings(max_examples=60, deadline=None)
@given(st.floats(-30, 30))
def test_single_rival_is_closed_form(d):
    # C = 2: P(eps_c < eps_y + d) with eps_c - eps_y ~ N(0, 2)  ->  Phi(d / sqrt 2)
    got = float(acc.expected_normal_cdf_product(torch.tensor([[d]], dtype=torch.float64))[0])
    assert got == pytest.approx(float(ndtr(d / math.sqrt(2))), abs=1e-10)


@pytest.mark.parametrize("J", [1, 2, 5, 9, 30])
def test_zero_gaps_give_uniform_winner(J):
    # all outputs equally likely to be largest: 1 / (J + 1)
    got = float(acc.expected_normal_cdf_product(torch.zeros(1, J, dtype=torch.float64))[0])
    assert got == pytest.approx(1.0 / (J + 1), abs=1e-9)


def test_infinite_gaps():
    d = torch.tensor([[math.inf, math.inf], [math.inf, -math.inf], [math.inf, 0.0]], dtype=torch.float64)
    got = acc.expected_normal_cdf_product(d)
    assert got.tolist() == pytest.approx([1.0, 0.0, 0.5], abs=1e-12)


def test_decided_pairs_agree_with_full_quadrature():
    rng = np.random.default_rng(2)
    gaps = torch.tensor(np.abs(rng.normal(size=(400, 9))) * 3 - rng.uniform(0, 2, size=(400, 1)))
    scales = torch.logspace(-3, 2, 23, dtype=torch.float64)
    fast = acc.multiclass_correct_prob(gaps, scales)
    full = torch.stack([acc.expected_normal_cdf_product(t * gaps) for t in scales])
    assert fast.shape == (23, 400)
    assert float((fast - full).abs().max()) < 1e-12


def test_binary_probabilities_and_zero_std():
    mean = torch.tensor([0.5, -0.5, 0.0, 0.3, -0.3, 0.0], dtype=torch.float64)
    std = torch.tensor([0.2, 0.2, 0.4, 0.0, 0.0, 0.0], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    r = acc.binary_ratio(mean, std, y)
    p = acc.binary_correct_prob(r, torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64))
    expect_finite = ndtr(np.outer([0.1, 1.0, 10.0], [2.5, -2.5, 0.0]))
    np.testing.assert_allclose(p[:, :3].numpy(), expect_finite, rtol=1e-13, atol=1e-15)
    # s = 0: the draw is the mean, at every margin: right, wrong, tie (1/2)
    np.testing.assert_array_equal(p[:, 3:].numpy(), np.tile([1.0, 0.0, 0.5], (3, 1)))
    np.testing.assert_array_equal(acc.binary_limit(mean, y).numpy(), [1, 0, 0.5, 1, 0, 0.5])


def test_multiclass_limit_and_zero_std_ties():
    mean = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.5, 0.0], [0.4, 0.4, 0.4]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 2])
    np.testing.assert_allclose(acc.multiclass_limit(mean, y).numpy(), [1.0, 0.0, 0.5, 1 / 3])
    std0 = torch.zeros(4, dtype=torch.float64)
    gaps = acc.multiclass_gaps(mean, std0, y)
    p = acc.multiclass_correct_prob(gaps, torch.tensor([0.01, 1.0, 100.0], dtype=torch.float64))
    np.testing.assert_allclose(p.numpy(), np.tile([1.0, 0.0, 0.5, 1 / 3], (3, 1)), atol=1e-9)


def test_multiclass_gaps_exclude_true_class():
    mean = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.7, 0.1]], dtype=torch.float64)
    std = torch.tensor([0.5, 0.25], dtype=torch.float64)
    g = acc.multiclass_gaps(mean, std, torch.tensor([0, 1]))
    np.testing.assert_allclose(g.numpy(), [[1.6, 1.2], [2.0, 2.4]])
