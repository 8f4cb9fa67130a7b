"""gpmargin.kernels: closed forms, call signature, tiling, bad input, GPyTorch (no neural-tangents)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpmargin import kernels as gk
from gpmargin.errors import GpmarginError


def _mnist_rows(x: torch.Tensor) -> torch.Tensor:
    """The paper's preprocessing: standardise with MNIST's mean/std, flatten, rescale rows to norm sqrt(d)."""
    z = ((x.double() - 0.1307) / 0.3081).reshape(x.shape[0], -1)
    return z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def vecs(mnist_test):
    return _mnist_rows(mnist_test[0][:120])


@pytest.fixture(scope="module")
def imgs(mnist_test):
    return ((mnist_test[0][:12].double() - 0.1307) / 0.3081)[:, :, 4:18, 6:20]


def arccos_recursion(x: np.ndarray, depth: int) -> np.ndarray:
    """The paper's recursion, written independently in numpy."""
    k = x @ x.T / x.shape[1]
    for _ in range(depth - 1):
        k = np.clip(k, -1.0, 1.0)
        k = (np.sqrt(1.0 - k**2) + k * (np.pi - np.arccos(k))) / np.pi
    return k


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_paper_mlp_is_arccos_recursion(depth, vecs):
    ours = gk.paper_mlp(depth)(vecs)
    ref = arccos_recursion(vecs.numpy(), depth)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)


def test_call_signature_and_diag(vecs, imgs):
    for k, x in ((gk.paper_mlp(3), vecs[:30]), (gk.paper_cnn(), imgs)):
        nngp = k(x)
        ntk = k(x, get="ntk")
        both = k(x, x, get=("nngp", "ntk"))
        assert isinstance(both, tuple) and len(both) == 2
        assert torch.allclose(both[0], nngp, rtol=1e-12, atol=0) and torch.allclose(both[1], ntk, rtol=1e-12, atol=0)
        assert torch.allclose(nngp, nngp.T, rtol=1e-12, atol=0)
        d_nngp, d_ntk = k.diag(x, get=("nngp", "ntk"))
        assert d_nngp.shape == (x.shape[0],)
        assert torch.allclose(d_nngp, nngp.diagonal(), rtol=1e-12, atol=0)
        assert torch.allclose(d_ntk, ntk.diagonal(), rtol=1e-12, atol=0)
        assert torch.allclose(k.diag(x), d_nngp)
        # NNGP and NTK of a network are covariance matrices: positive semi-definite
        for m in (nngp, ntk):
            assert torch.linalg.eigvalsh(m).min() > -1e-10 * m.abs().max()
        # the NTK dominates the NNGP (it adds positive semi-definite terms)
        assert torch.linalg.eigvalsh(ntk - nngp).min() > -1e-10 * ntk.abs().max()
        # rectangular blocks agree with the square kernel
        block = k(x[:5], x[5:], get="ntk")
        assert torch.allclose(block, ntk[:5, 5:], rtol=1e-12, atol=1e-15)


def test_numpy_and_float32_inputs(vecs):
    k = gk.paper_mlp(2)
    ref = k(vecs[:10])
    out = k(vecs[:10].numpy())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert torch.allclose(out, ref, rtol=1e-14, atol=0)
    out32 = k(vecs[:10].float())
    assert out32.dtype == torch.float64
    assert torch.allclose(out32, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "gap"])
def test_tiling_and_progress(kind, vecs, imgs, capsys):
    if kind == "mlp":
        k, x = gk.paper_mlp(4), vecs[:50]
    elif kind == "cnn":
        k, x = gk.paper_cnn(), imgs
    else:
        k = gk.serial(gk.Conv2d(3, padding="same"), gk.Relu(), gk.Conv2d(3, stride=2), gk.Erf(), gk.GlobalAvgPool(), gk.Dense())
        x = imgs[:, :, 3:11, 3:11]
    ref = k(x, get=("nngp", "ntk"))
    tiled = k(x, get=("nngp", "ntk"), batch_size=7, progress=True)
    small = k(x, get=("nngp", "ntk"), max_memory=20_000)
    for a, b, c in zip(ref, tiled, small):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14) and torch.allclose(a, c, rtol=1e-12, atol=1e-14)
    assert "kernel" in capsys.readouterr().err  # the tqdm bar was drawn


def test_no_nan_on_degenerate_inputs():
    x = torch.zeros(4, 10, dtype=torch.float64)
    x[1] = 1.0
    x[2] = 1.0  # duplicate row: correlation exactly 1
    x[3] = -1e6  # large, anti-correlated
    for k in (gk.paper_mlp(4), gk.serial(gk.Dense(1.0, 0.1), gk.Erf(2.0, 3.0, 0.5), gk.Dense()),
              gk.serial(gk.Dense(), gk.LeakyRelu(0.2), gk.Dense())):
        nngp, ntk = k(x, get=("nngp", "ntk"))
        assert torch.isfinite(nngp).all() and torch.isfinite(ntk).all()
    _raises("overflowed", gk.paper_mlp(3), x * 1e160, get="ntk")
    nngp = gk.paper_mlp(3)(x)
    assert nngp[0].abs().max() == 0  # the zero input has zero covariance with everything (exact: 0 * x)
    assert torch.isclose(nngp[1, 2], nngp[1, 1], rtol=1e-14)


# -- bad input -------------------------------------------------------------------------------
def _raises(match, fn, *args, **kwargs):
    with pytest.raises(GpmarginError, match=match):
        fn(*args, **kwargs)


def test_bad_inputs(vecs, imgs):
    k = gk.paper_mlp(2)
    _raises(r"x1 has examples of shape \(784,\) but x2 has \(10,\)", k, vecs, torch.ones(3, 10, dtype=torch.float64))
    bad = vecs[:5].clone()
    bad[2, 7] = float("nan")
    _raises("NaN or infinite", k, bad)
    bad[2, 7] = float("inf")
    _raises("x2 contains 1 NaN or infinite", k, vecs[:3], bad)
    _raises("empty", k, torch.zeros(0, 784, dtype=torch.float64))
    _raises("empty", k, np.zeros((3, 0)))
    _raises("dtype torch.int64", k, torch.ones(3, 4, dtype=torch.int64))
    _raises("dtype int32", k, np.ones((3, 4), dtype=np.int32))
    _raises("expected \\(N, d\\)", k, torch.ones(3, 4, 5, 6, 7, dtype=torch.float64))
    _raises("get=", k, vecs[:3], get="cov")
    _raises("get=", k, vecs[:3], get=("ntk", "nngp"))
    _raises("depth", gk.paper_mlp, 0)
    _raises("batch_size", k, vecs[:3], batch_size=0)
    assert issubclass(GpmarginError, ValueError)


def test_bad_compositions(vecs, imgs):
    dense_after_conv = gk.serial(gk.Conv2d(3), gk.Relu(), gk.Dense())
    _raises(r"Dense\(W_std=1.0, b_std=None\) cannot take input of shape image \(inf, 12, 12\).*Flatten", dense_after_conv, imgs)
    _raises(r"Conv2d\(.*\) cannot take input of shape vector \(784\)", gk.serial(gk.Conv2d(3), gk.Flatten(), gk.Dense()), vecs)
    _raises(r"GlobalAvgPool\(\) cannot take input of shape vector", gk.serial(gk.Dense(), gk.GlobalAvgPool()), vecs)
    _raises("filter does not fit", gk.serial(gk.Conv2d(20), gk.Flatten()), imgs)
    _raises("ends with image", gk.serial(gk.Conv2d(3), gk.Relu()), imgs)
    _raises("padding", gk.Conv2d, 3, padding="full")
    _raises("kernel_size", gk.Conv2d, 0)
    _raises("serial\\(\\) takes kernel layers", gk.serial, gk.Dense(), "relu")
    _raises("wraps a Dense or Conv2d", gk.Centred, gk.Relu())
    # the constrained kernel has no NTK: a clear error, not a number
    _raises("NTK of Nero-constrained", gk.paper_mlp(3, constrained=True), vecs[:4], get="ntk")
    _raises("NTK of Nero-constrained", gk.paper_mlp(3, constrained=True).diag, vecs[:4], get=("nngp", "ntk"))
    # centring after an activation applied straight to the inputs: the mean is unknown
    _raises("mean over units", gk.serial(gk.Relu(), gk.Centred(gk.Dense())), vecs[:4])


# -- the constrained kernel: closed forms ------------------------------------------------
def test_constrained_first_layer_closed_form(vecs):
    x = vecs[:20].numpy()
    d = x.shape[1]
    xc = x - x.mean(1, keepdims=True)
    ref = xc @ xc.T / (d - 1)  # E[w w^T] = P / (d - 1) for a uniform centred unit row
    np.testing.assert_allclose(gk.paper_mlp(1, constrained=True)(vecs[:20]).numpy(), ref, rtol=1e-12, atol=1e-14)


def test_constrained_prior_variance_recursion(mnist_test):
    """Variance: first layer (|x|^2 - d xbar^2)/(d-1); each later centred layer multiplies by
    1 - mu^2/v: 1 - 1/pi for Gaussian pre-activations, 1 - c^2/pi after the finite-fan-in first
    layer, with c = E|g| / E|w_1 sqrt(k)| = sqrt(k/2) Gamma(k/2) / Gamma((k+1)/2), k = d - 1."""
    raw = mnist_test[0][:50].double().reshape(50, -1)
    x = raw * math.sqrt(784) / raw.norm(dim=1, keepdim=True)  # positive-mean inputs, norm sqrt(d)
    xbar = x.mean(1)
    v1 = (784 - 784 * xbar**2) / 783
    c = math.sqrt(783 / 2) * math.exp(math.lgamma(783 / 2) - math.lgamma(784 / 2))
    assert 1.0002 < c < 1.0004
    for depth in (1, 2, 5):
        want = v1 if depth == 1 else v1 * (1 - c**2 / math.pi) * (1 - 1 / math.pi) ** (depth - 2)
        got = gk.paper_mlp(depth, constrained=True).diag(x)
        assert torch.allclose(got, want, rtol=1e-12, atol=0)
        assert torch.allclose(gk.paper_mlp(depth).diag(x), torch.ones(50, dtype=torch.float64), rtol=1e-12, atol=0)


# -- GPyTorch ---------------------------------------------------------------------------
def test_gpytorch_exact_gp_digits_parity():
    gpytorch = pytest.importorskip("gpytorch")
    from sklearn.datasets import load_digits

    from gpmargin.kernels.gpytorch import NNGPKernel, NTKKernel

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float64)
    x = x - x.mean(1, keepdim=True)
    x = x * math.sqrt(64) / x.norm(dim=1, keepdim=True)
    y = torch.tensor(digits.target % 2 * 2 - 1, dtype=torch.float64)  # parity, +-1
    xtr, ytr, xte, yte = x[:300], y[:300], x[300:700], y[300:700]

    class GP(gpytorch.models.ExactGP):
        def __init__(self, xt, yt, lik, base):
            super().__init__(xt, yt, lik)
            self.mean_module = gpytorch.means.ZeroMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(base)

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    for base in (NNGPKernel(gk.paper_mlp(3)), NTKKernel(gk.paper_mlp(3))):
        lik = gpytorch.likelihoods.GaussianLikelihood().double()
        model = GP(xtr, ytr, lik, base).double()
        model.train()
        lik.train()
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
        for _ in range(15):
            opt.zero_grad()
            loss = -mll(model(xtr), ytr)
            loss.backward()
            opt.step()
        model.eval()
        lik.eval()
        with torch.no_grad():
            pred = lik(model(xte))
        acc = float((torch.sign(pred.mean) == yte).double().mean())
        assert acc > 0.85, acc  # chance is ~0.5
        assert torch.isfinite(pred.variance).all() and (pred.variance > 0).all()
        # diag=True and batch shapes go through the same kernel
        kern = model.covar_module.base_kernel
        full = kern.forward(xte[:20], xte[:20])
        assert torch.allclose(kern.forward(xte[:20], xte[:20], diag=True), full.diagonal(), rtol=1e-12)
        batched = kern.forward(xte[:20].expand(2, 20, 64), xte[:10].expand(2, 10, 64))
        assert batched.shape == (2, 20, 10) and torch.allclose(batched[1], full[:, :10], rtol=1e-12)


def test_constrained_cnn_is_a_serial_of_centred_layers(imgs):
    k = gk.paper_cnn(depth=4, constrained=True)
    by_hand = gk.serial(gk.Centred(gk.Conv2d(5)), gk.Relu(), gk.Centred(gk.Conv2d(5)), gk.Relu(), gk.Flatten(),
                        gk.Centred(gk.Dense()), gk.Relu(), gk.Centred(gk.Dense()))
    a, b = k(imgs), by_hand(imgs)
    assert torch.equal(a, b)  # exact: the same layers (equal repr), so the same computation
    assert torch.linalg.eigvalsh(a).min() > -1e-12 * a.abs().max()
    assert torch.allclose(k.diag(imgs), a.diagonal(), rtol=1e-12, atol=0)
    # centring lowers the variance below the Gaussian kernel's
    assert (a.diagonal() < gk.paper_cnn(depth=4).diag(imgs)).all()
    # global average pooling and biases work with centred layers too
    gap = gk.serial(gk.Centred(gk.Conv2d(3, padding="same", b_std=0.2)), gk.Erf(), gk.GlobalAvgPool(),
                    gk.Centred(gk.Dense(b_std=0.1)))
    g = gap(imgs[:5, :, :8, :8])
    assert torch.isfinite(g).all() and torch.allclose(gap.diag(imgs[:5, :, :8, :8]), g.diagonal(), rtol=1e-12)
