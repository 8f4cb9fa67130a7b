"""Kernels against sampled finite networks (no neural-tangents): Monte-Carlo NNGP and empirical NTK.

Inputs are real scikit-learn digits (8x8).  Each Monte-Carlo draw samples all hidden weights of a
finite network (width >= 1024) and takes the readout's *conditional* covariance given the last
hidden layer exactly (Gaussian row: phi . phi' / n; zero-mean unit-norm row: the centred product
/ (n - 1)), which removes the readout's sampling noise without changing the expectation.  The
standard error comes from the spread over draws; seeds are fixed.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpmargin import kernels as gk

SQRT2 = math.sqrt(2.0)
Z = 4.0  # agreement within Z standard errors


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = [0, 1, 7, 13, 42]  # five real digits of different classes
    return torch.tensor(d.images[idx] / 16.0, dtype=torch.float64)  # (5, 8, 8) in [0, 1]


def _rows(w: torch.Tensor, constrained: bool) -> torch.Tensor:
    """Weights with rows over the last dims: Gaussian N(0, 1/fan_in), or Nero's zero-mean unit-norm rows."""
    flat = w.reshape(*w.shape[:2], -1)
    if constrained:
        flat = flat - flat.mean(-1, keepdim=True)
        flat = flat / flat.norm(dim=-1, keepdim=True)
    else:
        flat = flat / math.sqrt(flat.shape[-1])
    return flat.reshape(w.shape)


def _readout_cov(phi: torch.Tensor, constrained: bool) -> torch.Tensor:
    """E[f f^T | phi] for one readout row; phi is (batch, N, features)."""
    n = phi.shape[-1]
    if constrained:
        phi = phi - phi.mean(-1, keepdim=True)
        return phi @ phi.transpose(-1, -2) / (n - 1)
    return phi @ phi.transpose(-1, -2) / n


def _summarise(samples: torch.Tensor):
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return mean, se


def mc_mlp(x, width, draws, constrained, seed, batch=20):
    """Monte-Carlo NNGP of paper_mlp(3): Dense - ReLU*sqrt2 - Dense - ReLU*sqrt2 - Dense(readout)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    n, d = x.shape
    for _ in range(draws // batch):
        w1 = _rows(torch.randn(batch, width, d, generator=g, dtype=torch.float64), constrained)
        w2 = _rows(torch.randn(batch, width, width, generator=g, dtype=torch.float64), constrained)
        h = torch.relu(w1 @ x.T) * SQRT2  # (batch, width, N)
        h = torch.relu(w2 @ h) * SQRT2
        out.append(_readout_cov(h.transpose(1, 2), constrained))
    return _summarise(torch.cat(out))


def mc_cnn(x, channels, out_channels, draws, constrained, seed, batch=10):
    """Monte-Carlo NNGP of Conv3x3 - ReLU - Conv3x3 - ReLU - Flatten - Dense(readout) (valid, no bias)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    imgs = x[:, None]
    for _ in range(draws // batch):
        w1 = _rows(torch.randn(batch, channels, 1, 3, 3, generator=g, dtype=torch.float64), constrained)
        w2 = _rows(torch.randn(batch, out_channels, channels, 3, 3, generator=g, dtype=torch.float64), constrained)
        for b in range(batch):
            h = torch.relu(torch.nn.functional.conv2d(imgs, w1[b]))
            h = torch.relu(torch.nn.functional.conv2d(h, w2[b]))
            out.append(_readout_cov(h.reshape(1, x.shape[0], -1), constrained))
    return _summarise(torch.cat(out))


def _assert_within(mean, se, k, label):
    z = ((mean - k).abs() / se)
    assert float(z.max()) < Z, f"{label}: max |MC - kernel| / SE = {float(z.max()):.2f}\nMC={mean}\nkernel={k}\nSE={se}"


@pytest.mark.parametrize("constrained", [False, True], ids=["gaussian", "nero"])
def test_mlp_nngp_monte_carlo(digits, constrained):
    x = digits.reshape(5, -1)
    x = x * math.sqrt(64) / x.norm(dim=1, keepdim=True)  # positive-mean inputs of norm sqrt(d)
    mean, se = mc_mlp(x, width=1024, draws=160, constrained=constrained, seed=1)
    k = gk.paper_mlp(3, constrained=constrained)(x)
    _assert_within(mean, se, k, f"MLP constrained={constrained}")
    # the Monte Carlo resolves the difference between the two parameterisations
    other = gk.paper_mlp(3, constrained=not constrained)(x)
    assert float(((mean - other).abs() / se).max()) > 10 * Z


@pytest.mark.parametrize("constrained", [False, True], ids=["gaussian", "nero"])
def test_cnn_nngp_monte_carlo(digits, constrained):
    # both hidden layers 1024 channels wide: the readout's centring averages over channels whose
    # positions are correlated, so it is biased by O(1/channels); at 1024 that is well below the SE
    mean, se = mc_cnn(digits, channels=1024, out_channels=1024, draws=30, constrained=constrained, seed=2, batch=5)
    wrap = gk.Centred if constrained else (lambda layer: layer)
    k = gk.serial(wrap(gk.Conv2d(3)), gk.Relu(), wrap(gk.Conv2d(3)), gk.Relu(), gk.Flatten(), wrap(gk.Dense()))
    _assert_within(mean, se, k(digits[:, None]), f"CNN constrained={constrained}")


def _empirical_ntk(model, x):
    from torch.func import functional_call, jacrev

    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)).squeeze(-1))(params)
    flat = torch.cat([j.reshape(x.shape[0], -1) for j in jac.values()], dim=1)
    return flat @ flat.T


class _NTKLinear(torch.nn.Module):
    """Dense layer in the NTK parameterisation: standard normal weights, scaled by 1/sqrt(fan_in) in forward."""

    def __init__(self, fan_in, fan_out, gen):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64))

    def forward(self, h):
        return h @ self.weight.T / math.sqrt(self.weight.shape[1])


class _Relu2(torch.nn.Module):
    def forward(self, h):
        return torch.relu(h) * SQRT2


def test_mlp_empirical_ntk(digits):
    x = digits.reshape(5, -1)
    x = x * math.sqrt(64) / x.norm(dim=1, keepdim=True)
    width, nets = 2048, 4
    g = torch.Generator().manual_seed(3)
    ntks = []
    for _ in range(nets):
        model = torch.nn.Sequential(_NTKLinear(64, width, g), _Relu2(), _NTKLinear(width, width, g), _Relu2(),
                                    _NTKLinear(width, 1, g))
        ntks.append(_empirical_ntk(model, x))
    emp = torch.stack(ntks).mean(0)
    k = gk.paper_mlp(3)(x, get="ntk")
    # A width-n network's NTK fluctuates around its limit by O(1/sqrt(n)) relative (about
    # depth/sqrt(n) ~ 7% per entry for a single net at n=2048, depth 3); averaging 4 independent
    # nets halves that, so 8% of the largest entry is ~3 standard deviations.
    assert float((emp - k).abs().max() / k.abs().max()) < 0.08
    # the diagonal is tighter (every entry ~ depth = 3); check it is not just the NNGP
    nngp = gk.paper_mlp(3)(x)
    assert float((emp - nngp).abs().max()) > 1.0
