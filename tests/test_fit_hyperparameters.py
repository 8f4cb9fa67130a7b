"""Fitting a network kernel's variances by the marginal likelihood: GPyTorch's
``ExactMarginalLogLikelihood`` against BoTorch's ``InfiniteWidthBNNKernel``, scikit-learn's own
kernel-gradient tests, ``fit_variances`` and ``gpmargin predict --fit-hyperparameters``, on digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import gpmargin.kernels as gk
from gpmargin.cli import main
from gpmargin.data import make_task
from gpmargin.errors import GpmarginError
from gpmargin.kernels.hyperparameters import with_variances
from gpmargin.predict.fit import fit_variances, log_marginal_likelihood

gpytorch = pytest.importorskip("gpytorch")
from gpmargin.kernels.gpytorch import NNGPKernel  # noqa: E402

DEPTH = 3
SOFTPLUS_0 = math.log(2.0)  # BoTorch's starting variances: softplus(0)


def bnn_architecture():
    """The network of BoTorch's ``InfiniteWidthBNNKernel(depth=3)``: ``K0 = w x.x'/d + b``, then
    ``depth`` times ReLU (the arc-cosine map) and an affine layer with the same ``w, b``."""
    return gk.serial(gk.Dense(1.0, 1.0), *[layer for _ in range(DEPTH) for layer in (gk.Relu(), gk.Dense(1.0, 1.0))])


@pytest.fixture(scope="module")
def parity():
    task = make_task("digits", "parity", n_train=300, n_test=600, seed=0, flatten=True)
    return task.x_train.double(), task.y_train.double(), task.x_test.double(), task.y_test.double()


def test_reproduces_botorch_infinite_width_bnn(parity):
    pytest.importorskip("botorch")
    from botorch.models.kernels.infinite_width_bnn import InfiniteWidthBNNKernel

    x = parity[0][:60]
    theirs = InfiniteWidthBNNKernel(depth=DEPTH).double()
    ours = NNGPKernel(bnn_architecture(), variances="shared").double()
    for kern in (theirs, ours):
        kern.weight_var, kern.bias_var = 1.7, 0.3
    K_theirs, K_ours = theirs(x).to_dense(), ours(x).to_dense()
    off = ~torch.eye(len(x), dtype=torch.bool)
    # off the diagonal both are exact: float64 rounding of O(1) numbers
    assert float((K_ours - K_theirs)[off].abs().max()) < 1e-13
    # on it BoTorch clamps cos(theta) to 1 - 1e-7 at each of the 3 layers: a relative error of
    # about 1e-7 per layer (each map's slope in cos theta is at most its value)
    assert float(((K_ours - K_theirs).diagonal() / K_ours.diagonal()).abs().max()) < DEPTH * 1e-7 * 2
    assert float(((K_ours - K_theirs).diagonal() / K_ours.diagonal()).abs().max()) > 1e-9  # the clamp is there
    # gradients with respect to weight_var and bias_var, by finite differences
    w, b = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.7, 0.3))
    assert torch.autograd.gradcheck(lambda w, b: with_variances(bnn_architecture(), w, b)(x[:12]), (w, b))


def _fit(kernel, data, steps: int = 40):
    x, y, xt, yt = data

    class GP(gpytorch.models.ExactGP):
        def __init__(self, likelihood):
            super().__init__(x, y, likelihood)
            self.covar = kernel

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(torch.zeros(len(z), dtype=z.dtype), self.covar(z))

    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    model = GP(likelihood).double()
    kernel.weight_var = torch.full_like(kernel.weight_var, SOFTPLUS_0)  # both start where BoTorch does
    kernel.bias_var = torch.full_like(kernel.bias_var, SOFTPLUS_0)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        (-mll(model(x), y)).backward()
        optimiser.step()
    with torch.no_grad():
        final = float(mll(model(x), y))
        model.eval()
        error = float((model(xt).mean.sign() != yt).double().mean())
    return final, error


def test_marginal_likelihood_fit_at_least_botorch(parity):
    """The same GP, likelihood, start and Adam steps: our shared variances reach BoTorch's
    marginal likelihood (their kernels differ by BoTorch's clamp only), per-layer ones more."""
    pytest.importorskip("botorch")
    from botorch.models.kernels.infinite_width_bnn import InfiniteWidthBNNKernel

    mll_theirs, err_theirs = _fit(InfiniteWidthBNNKernel(depth=DEPTH).double(), parity)
    mll_shared, err_shared = _fit(NNGPKernel(bnn_architecture(), variances="shared").double(), parity)
    mll_layers, err_layers = _fit(NNGPKernel(bnn_architecture(), variances="per_layer").double(), parity)
    print(f"MLL per label: BoTorch {mll_theirs:.6f} (test error {err_theirs:.4f}); ours shared {mll_shared:.6f} "
          f"({err_shared:.4f}); ours per layer {mll_layers:.6f} ({err_layers:.4f})")
    # the clamp moves BoTorch's diagonal by ~1e-7 relative: its MLL by about that much
    assert abs(mll_shared - mll_theirs) < 1e-5
    assert mll_layers >= mll_theirs - 1e-6
    assert err_layers <= 0.1 and err_shared <= 0.1  # digits parity is learnable to well under 10 %


def test_batched_learnable_variances(parity):
    x = parity[0][:10]
    k = NNGPKernel(bnn_architecture(), variances="per_layer", batch_shape=torch.Size([2])).double()
    assert k.weight_var.shape == (2, DEPTH + 1) and k.bias_var.shape == (2, DEPTH + 1)
    k.weight_var = torch.tensor([[1.0, 1.5, 2.0, 0.5], [0.7, 0.8, 0.9, 1.1]], dtype=torch.float64)
    K = k(x).to_dense()
    assert K.shape == (2, 10, 10)
    for j in range(2):
        ref = with_variances(bnn_architecture(), k.weight_var[j], k.bias_var[j])(x)
        assert torch.equal(K[j], ref)  # the same call per member, replayed
    # indexing the batch: the softplus of an indexed raw parameter may round its last bit
    # differently from the indexed softplus (vectorised vs scalar exp/log1p), so to rounding
    assert torch.allclose(k[1](x).to_dense(), K[1], rtol=1e-14, atol=0)


def test_sklearn_hyperparameters_pass_sklearn_gradient_tests(parity):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import WhiteKernel
    from sklearn.gaussian_process.tests.test_kernels import (test_kernel_clone, test_kernel_clone_after_set_params,
                                                             test_kernel_gradient, test_kernel_theta)

    from gpmargin.kernels.sklearn import NetworkKernel

    net = gk.serial(gk.Dense(1.0, 0.5), gk.Relu(), gk.Dense(1.0, 0.5), gk.Erf(), gk.Dense(1.0, 0.5))
    both = NetworkKernel(net, weight_var=1.5, bias_var=0.2)
    for check in (test_kernel_gradient, test_kernel_theta, test_kernel_clone, test_kernel_clone_after_set_params):
        check(both)  # scikit-learn's own tests (gradient against its finite differences, to 4 decimals)
    for kern in (NetworkKernel(net, get="ntk", weight_var=[1.5, 1.2, 0.8], bias_var=[0.1, 0.2, 0.3]),
                 NetworkKernel(net, weight_var=1.5), NetworkKernel(net)):
        test_kernel_gradient(kern)
        test_kernel_clone(kern)
    assert NetworkKernel(net).theta.size == 0
    # rows of equal norm (the paper's preprocessing): every variance is the same number, which the
    # float path folds into one scalar; the forward-mode gradient must still see it
    from sklearn.gaussian_process.tests import test_kernels as sk

    rows = parity[0][:6].numpy()
    original, sk.X = sk.X, rows / np.linalg.norm(rows, axis=1, keepdims=True)
    try:
        test_kernel_gradient(NetworkKernel(net, weight_var=[1.5, 1.2, 0.8], bias_var=0.2))
    finally:
        sk.X = original
    # the default optimiser tunes the variances and raises the log marginal likelihood
    x, y = parity[0][:150].numpy(), parity[1][:150].numpy()
    fixed = GaussianProcessRegressor(NetworkKernel(net) + WhiteKernel(0.1), optimizer=None).fit(x, y)
    tuned = GaussianProcessRegressor(NetworkKernel(net, weight_var=1.0, bias_var=0.25) + WhiteKernel(0.1)).fit(x, y)
    assert tuned.log_marginal_likelihood_value_ > fixed.log_marginal_likelihood_value_
    assert tuned.kernel_.k1.weight_var != 1.0


def test_fit_variances(parity):
    x, y = parity[0][:200], parity[1][:200]
    fit = fit_variances(gk.paper_mlp(3), x, y)
    assert fit.log_marginal_likelihood > fit.initial_log_marginal_likelihood
    assert len(fit.weight_var) == len(fit.bias_var) == 1 and fit.noise > 0
    assert not fit.kernel.tensors()  # the fitted description holds floats
    # the reported likelihood is the formula's at the fitted values
    K = fit.kernel(x)
    assert fit.log_marginal_likelihood == pytest.approx(float(log_marginal_likelihood(K, y, fit.noise)), rel=1e-9)
    per_layer = fit_variances(gk.paper_mlp(3), x, y, sharing="per_layer", max_iter=10)
    assert len(per_layer.weight_var) == 3 and per_layer.summary()["sharing"] == "per_layer"
    with pytest.raises(GpmarginError, match="sharing='all' must be 'shared' or 'per_layer'"):
        fit_variances(gk.paper_mlp(3), x, y, sharing="all")
    with pytest.raises(GpmarginError, match="no Dense/Conv layers"):
        fit_variances(gk.Relu(), x, y)


def test_predict_fit_hyperparameters_cli(tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["predict", "--fit-hyperparameters", "--n-train", "120", "--n-test", "200", "--depth", "3",
                 "--margins", "0.1,1,10", "--ensemble", "1", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted variances (shared)" in printed
    fitted = json.loads((out / "curve.json").read_text())["config"]["fitted_hyperparameters"]
    assert fitted["log_marginal_likelihood"] > fitted["initial_log_marginal_likelihood"]
    assert fitted["sharing"] == "shared" and len(fitted["weight_var"]) == 1 and "Dense(W_std=" in fitted["kernel"]
    assert np.isfinite(json.loads((out / "curve.json").read_text())["accuracy"]).all()
    assert main(["predict", "--fit-hyperparameters", "--fit-sharing", "per-layer", "--n-train", "60", "--n-test", "60",
                 "--depth", "2", "--margins", "1", "--ensemble", "1", "--no-progress", "--out", str(tmp_path / "p")]) == 0
    assert len(json.loads((tmp_path / "p" / "curve.json").read_text())["config"]["fitted_hyperparameters"]["weight_var"]) == 2
    capsys.readouterr()
    assert main(["predict", "--fit-hyperparameters", "--kernel-store", str(tmp_path / "store"), "--n-train", "60",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--fit-hyperparameters cannot be used with --kernel-store" in capsys.readouterr().err
