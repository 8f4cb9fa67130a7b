"""gpmargin.measures against direct computations (torch.linalg.svd, explicit loops)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from gpmargin import measures as M


@pytest.fixture(scope="module")
def net(mnist_test):
    """A small constrained MLP trained briefly on real MNIST parity, with its initial weights."""
    from gpmargin.data import make_task
    from validation.training.models import EnsembleMLP
    from validation.training.fullbatch import make_optimizer, train
    from validation.training.losses import margin_targets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = make_task("mnist", "parity", n_train=200, n_test=300, seed=1)
    model = EnsembleMLP(1, 784, 3, 48, 1, seed=0, dtype=torch.float64)
    opt = make_optimizer(model, "nero", 0.01)
    init = [w.detach()[0].clone() for w in model.weights]
    train(model, t.x_train, margin_targets(t.y_train, 1.0), steps=100, lr=0.01, decay=0.99, optimizer=opt)
    with torch.no_grad():
        f_tr, f_te = model(t.x_train)[0], model(t.x_test)[0]
    return t, [w.detach()[0] for w in model.weights], init, f_tr, f_te


def test_spectral_and_frobenius_norms(net):
    _, ws, *_ = net
    for w, s, f in zip(ws, M.spectral_norms(ws), M.frobenius_norms(ws)):
        assert math.isclose(s, float(torch.linalg.svd(w).S[0]), rel_tol=1e-10)
        assert math.isclose(f, float(np.sqrt((w.numpy() ** 2).sum())), rel_tol=1e-12)
    # numpy inputs give the same numbers
    np.testing.assert_allclose(M.spectral_norms([w.numpy() for w in ws]), M.spectral_norms(ws), rtol=1e-10)
    # Nero-constrained rows have unit norm: ||W||_F^2 = number of rows
    for w, f in zip(ws, M.frobenius_norms(ws)):
        assert math.isclose(f**2, w.shape[0], rel_tol=1e-9)


def test_norm_2_1_convention():
    a = np.arange(12.0).reshape(3, 4) - 5
    assert math.isclose(M.norm_2_1(a), sum(math.sqrt(sum(a[i, j] ** 2 for i in range(3))) for j in range(4)))
    # applied to W^T it sums the row norms of W
    assert math.isclose(M.norm_2_1(a.T), sum(np.linalg.norm(r) for r in a))


def test_spectral_complexity_matches_formula(net):
    t, ws, init, f_tr, _ = net
    lip = M.mlp_lipschitz(3)
    assert math.isclose(lip, 2.0)  # sqrt(2) for each of the 2 hidden activations
    for ref in (None, init):
        spec = [float(torch.linalg.svd(w).S[0]) for w in ws]
        total = 0.0
        for i, w in enumerate(ws):
            d = w - (ref[i] if ref is not None else 0)
            total += (sum(float(torch.linalg.norm(d[r])) for r in range(d.shape[0])) / spec[i]) ** (2 / 3)
        expected = lip * math.prod(spec) * total**1.5
        assert math.isclose(M.spectral_complexity(ws, ref, lipschitz=lip), expected, rel_tol=1e-9)
    r = M.spectral_complexity(ws, init, lipschitz=lip)
    gamma = float((f_tr.reshape(-1) * t.y_train).min())
    expected = gamma / (r * float(torch.linalg.norm(t.x_train)) / t.x_train.shape[0])
    assert math.isclose(M.spectrally_normalized_margin(gamma, r, t.x_train), expected, rel_tol=1e-12)


def test_margins_binary_and_multiclass(net):
    t, ws, init, f_tr, f_te = net
    m = M.margins(f_tr, t.y_train)
    np.testing.assert_allclose(m, (f_tr.reshape(-1) * t.y_train).numpy())
    assert M.accuracy(f_te, t.y_test) == float((torch.sign(f_te.reshape(-1)) == t.y_test).double().mean())
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 10))
    y = rng.integers(0, 10, size=50)
    expected = [f[i, y[i]] - max(f[i, c] for c in range(10) if c != y[i]) for i in range(50)]
    np.testing.assert_allclose(M.margins(f, y), expected)
    assert M.accuracy(f, y) == float(np.mean(f.argmax(1) == y))
    s = M.margin_summary(expected)
    assert s["min"] == min(expected) and s["quantiles"]["0.5"] == pytest.approx(float(np.median(expected)))


def test_network_measures_dict(net):
    t, ws, init, f_tr, f_te = net
    d = M.network_measures(ws, f_tr, t.y_train, t.x_train, f_te, t.y_test, init_weights=init,
                           lipschitz=M.mlp_lipschitz(3))
    gamma = float((f_tr.reshape(-1) * t.y_train).min())
    assert d["train_margin"]["min"] == pytest.approx(gamma)
    assert d["frobenius_normalized_margin"] == pytest.approx(gamma / math.prod(M.frobenius_norms(ws)))
    assert d["spectral_complexity_init_ref"] < d["spectral_complexity_zero_ref"]  # weights moved little
    assert 0.5 < d["test_accuracy"] <= 1.0
    # unmoved weights: R_A (init reference) is 0 and the ratio is stored as None, not inf
    d0 = M.network_measures(init, f_tr, t.y_train, t.x_train, init_weights=init)
    assert d0["spectral_complexity_init_ref"] == 0.0 and d0["spectrally_normalized_margin_init_ref"] is None
