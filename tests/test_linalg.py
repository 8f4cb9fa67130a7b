"""Safe Cholesky: plain when possible, reported jitter when needed, a clear error otherwise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gpmargin.errors import GpmarginError
from gpmargin.linalg import JitterWarning, cholesky_solve, safe_cholesky


def _digits_gram(n=60):
    from sklearn.datasets import load_digits

    x = load_digits().data[:n].astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    # exponential kernel on real images: positive definite, moderately conditioned
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return torch.from_numpy(np.exp(-d2)), x


def test_plain_factorisation_has_no_jitter_and_no_warning():
    K, _ = _digits_gram()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L, jitter = safe_cholesky(K)
    assert jitter == 0.0
    assert L.dtype == torch.float64
    assert torch.allclose(L @ L.T, K, atol=1e-12)
    assert torch.equal(L, torch.tril(L))


def test_duplicated_rows_get_reported_jitter():
    K, x = _digits_gram()
    x2 = np.concatenate([x, x[:5]])  # exact duplicates: K is singular
    d2 = ((x2[:, None, :] - x2[None, :, :]) ** 2).sum(-1)
    K2 = torch.from_numpy(np.exp(-d2))
    with pytest.warns(JitterWarning, match="jitter"):
        L, jitter = safe_cholesky(K2)
    assert jitter > 0
    mean_diag = float(K2.diagonal().mean())
    assert 1e-10 * mean_diag * 0.99 <= jitter <= 1e-3 * mean_diag
    assert torch.allclose(L @ L.T, K2 + jitter * torch.eye(len(K2), dtype=torch.float64), atol=1e-12)


def test_jitter_grows_by_factors_of_ten():
    # rank-1 PSD matrix: needs jitter, the first one tried (1e-10 * mean diag) must work
    v = torch.linspace(1.0, 2.0, 30, dtype=torch.float64)
    K = torch.outer(v, v)
    with pytest.warns(JitterWarning):
        _, jitter = safe_cholesky(K)
    assert jitter == pytest.approx(1e-10 * float(K.diagonal().mean()))
    # an indefinite direction of size 1e-7 x mean diag needs a larger jitter: a power of ten step
    K2 = K - 1e-7 * float(K.diagonal().mean()) * torch.outer(torch.ones(30), torch.ones(30)).double() / 30
    K2 = K2 + torch.diag(torch.zeros(30, dtype=torch.float64))
    with pytest.warns(JitterWarning):
        L, jitter2 = safe_cholesky(K2)
    ratio = jitter2 / (1e-10 * float(K2.diagonal().mean()))
    assert ratio > 10 and abs(np.log10(ratio) - round(np.log10(ratio))) < 1e-9


def test_indefinite_matrix_is_a_clear_error():
    K = torch.tensor([[2.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    with pytest.raises(GpmarginError, match="not positive definite even with jitter"):
        safe_cholesky(K)


@pytest.mark.parametrize(
    "K, msg",
    [
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "NaN"),
        (torch.zeros(0, 0), "empty"),
        (torch.ones(2, 3), "square"),
        (-torch.eye(3), "non-positive mean diagonal"),
    ],
)
def test_bad_matrices(K, msg):
    with pytest.raises(GpmarginError, match=msg):
        safe_cholesky(K)


def test_cholesky_solve_matches_numpy():
    K, _ = _digits_gram()
    L, _ = safe_cholesky(K)
    rng = np.random.default_rng(0)
    B = torch.from_numpy(rng.normal(size=(len(K), 3)))
    X = cholesky_solve(L, B)
    np.testing.assert_allclose(X.numpy(), np.linalg.solve(K.numpy(), B.numpy()), rtol=1e-8, atol=1e-8)
    x1 = cholesky_solve(L, B[:, 0])
    assert x1.shape == (len(K),)
    np.testing.assert_allclose(x1.numpy(), X[:, 0].numpy(), rtol=1e-12)


# -- empty_matrix: the kernel engine's outputs ------------------------------------------------
@pytest.mark.parametrize("rows,cols", [(3, 5), (1100, 1100)])  # torch.empty, and the mapped huge pages (>= 8 MiB)
def test_empty_matrix_is_an_ordinary_writable_float64_matrix(rows, cols, tmp_path):
    from gpmargin.linalg import empty_matrix

    m = empty_matrix(rows, cols)
    assert m.shape == (rows, cols) and m.dtype == torch.float64 and m.is_contiguous()
    m.fill_(2.5)
    view = m[1:, 2:]
    del m  # the view keeps the memory alive
    assert bool((view == 2.5).all())
    torch.save(view, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt"), view)


def test_kernel_matrix_on_mapped_outputs_matches_the_arc_cosine_recursion():
    """A self-kernel big enough for the mapped outputs (1100^2 float64 = 9.7 MB), with the BLAS
    writing into the output's strided blocks and the diagonal blanked before the layers: the
    paper MLP's NNGP equals the closed-form recursion on the normalised digits (float64
    rounding through 2 layers and a 64-term product: 1e-13), is exactly symmetric, and its
    diagonal is the self pass's."""
    from sklearn.datasets import load_digits

    from gpmargin.kernels import paper_mlp

    x = torch.as_tensor(load_digits().data[:1100], dtype=torch.float64)
    x = x * 8.0 / x.norm(dim=1, keepdim=True)  # norm sqrt(64)
    k = paper_mlp(3)
    K = k(x)
    c = (x @ x.T / 64).clamp(-1, 1)
    for _ in range(2):
        c = ((1 - c * c).clamp(min=0).sqrt() + c * (torch.pi - torch.arccos(c))) / torch.pi
        c = c.clamp(-1, 1)
    assert float((K - c).abs().max()) < 1e-13
    assert torch.equal(K, K.T)
    assert torch.equal(torch.diagonal(K), k.diag(x))
