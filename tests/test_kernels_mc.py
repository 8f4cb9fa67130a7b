"""Kernels against the finite networks they describe (no neural-tangents): every network here is
built by the kernel object itself, ``k.network(...)``, so this checks that kernel and network agree.

* NNGP by Monte Carlo: many independently initialised members at once; each member has ``R``
  readout units, which given the member's hidden layers are independent draws of the output
  process, so ``F_j = f_j f_j^T / R`` is an unbiased estimate of the finite-width NNGP.  The
  standard error is the spread of ``F_j`` over members / sqrt(members); the kernel must agree
  within ``Z = 4`` standard errors (finite-width bias is O(1/width), below the SE here).
* NTK at initialisation: the empirical tangent kernel (``torch.func.jacrev``) of wide
  NTK-parameterised networks against ``k(x, get="ntk")``.

Inputs are real scikit-learn digits (8x8); seeds are fixed.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpmargin import kernels as gk

Z = 4.0  # agreement within Z standard errors


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = [0, 1, 7, 13, 42]  # five real digits of different classes
    return torch.tensor(d.images[idx] / 16.0, dtype=torch.float64)  # (5, 8, 8) in [0, 1]


@pytest.fixture(scope="module")
def vectors(digits):
    x = digits.reshape(5, -1)
    return x * math.sqrt(64) / x.norm(dim=1, keepdim=True)  # positive-mean inputs of norm sqrt(d)


def mc_nngp(kernel, x, width, members, readouts, batch, seed=0, **kw):
    """Monte-Carlo NNGP of ``kernel``'s finite networks: (mean, standard error) over members."""
    samples = []
    for b in range(members // batch):
        net = kernel.network(width, in_shape=tuple(x.shape[1:]), members=batch, seed=seed + b, outputs=readouts,
                             dtype=torch.float64, **kw)
        with torch.no_grad():
            f = net(x)  # (batch, N, readouts)
        samples.append(f @ f.transpose(1, 2) / readouts)
        del net
    s = torch.cat(samples)
    return s.mean(0), s.std(0) / math.sqrt(s.shape[0])


def _z(mean, se, k):
    return float(((mean - k).abs() / se).max())


def _assert_within(mean, se, k, label):
    z = _z(mean, se, k)
    assert z < Z, f"{label}: max |MC - kernel| / SE = {z:.2f}\nMC={mean}\nkernel={k}\nSE={se}"


@pytest.mark.parametrize("constrained", [False, True], ids=["gaussian", "nero"])
def test_mlp_nngp_monte_carlo(vectors, constrained):
    k = gk.paper_mlp(3, constrained=constrained)
    mean, se = mc_nngp(k, vectors, width=512, members=160, readouts=128, batch=40, seed=1,
                       parameterization="standard")
    _assert_within(mean, se, k(vectors), f"MLP constrained={constrained}")
    # the Monte Carlo resolves the difference between the two kernels
    other = gk.paper_mlp(3, constrained=not constrained)(vectors)
    assert _z(mean, se, other) > 10 * Z


def test_mlp_with_biases_and_other_activations_monte_carlo(vectors):
    # biases, Erf, LeakyRelu, unequal W_std; NTK parameterisation (same NNGP as standard)
    k = gk.serial(gk.Dense(1.3, 0.4), gk.Erf(), gk.Dense(1.1, 0.2), gk.LeakyRelu(0.2), gk.Dense(0.9, 0.3))
    mean, se = mc_nngp(k, vectors, width=512, members=160, readouts=256, batch=40, seed=5)
    _assert_within(mean, se, k(vectors), "Dense/Erf/LeakyRelu with biases")


@pytest.mark.parametrize("constrained", [False, True], ids=["gaussian", "nero"])
def test_cnn_nngp_monte_carlo(digits, constrained):
    # both hidden layers 256 channels wide: the readout's centring averages over channels whose
    # positions are correlated, so it is biased by O(1/channels), below the SE at this width
    wrap = gk.Centred if constrained else (lambda layer: layer)
    k = gk.serial(wrap(gk.Conv2d(3)), gk.Relu(), wrap(gk.Conv2d(3)), gk.Relu(), gk.Flatten(), wrap(gk.Dense()))
    x = digits[:, None]
    mean, se = mc_nngp(k, x, width=256, members=40, readouts=128, batch=20, seed=2, parameterization="standard")
    _assert_within(mean, se, k(x), f"CNN constrained={constrained}")


def empirical_ntk(net, x) -> torch.Tensor:
    """Per-member empirical NTK ``(members, N, N)`` of a one-output network: ``J_j J_j^T``.

    Member ``j``'s output depends only on its own slice of the stacked parameters, so the
    Jacobian of the sum over members holds every member's Jacobian in its slice (one
    ``jacrev`` for all members)."""
    from torch.func import functional_call, jacrev

    params = {name: p.detach() for name, p in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (x,)).sum(0)[:, 0])(params)  # (N, k, ...) per parameter
    k = net.members
    return sum(torch.einsum("akp,bkp->kab", j.reshape(x.shape[0], k, -1), j.reshape(x.shape[0], k, -1))
               for j in jac.values())


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_empirical_ntk_at_init(digits, vectors, arch):
    if arch == "mlp":
        k, x, width, members = gk.serial(gk.Dense(1.0, 0.2), gk.Relu(math.sqrt(2)), gk.Dense(1.0, 0.2),
                                         gk.Relu(math.sqrt(2)), gk.Dense(1.0, 0.2)), vectors, 512, 16
    else:
        k, x, width, members = gk.serial(gk.Conv2d(3, b_std=0.1), gk.Relu(), gk.Conv2d(3, padding="same"), gk.Relu(),
                                         gk.Flatten(), gk.Dense()), digits[:, None], 128, 8
    net = k.network(width, in_shape=tuple(x.shape[1:]), members=members, seed=3, dtype=torch.float64)
    ntks = empirical_ntk(net, x)
    nngp, theta = k(x, get=("nngp", "ntk"))
    # The NTK of one width-n network fluctuates around its limit with relative standard deviation
    # O(1/sqrt(n)) (Hanin & Nica 2019: variance ~ depth / n); its mean is biased by only O(1/n).
    # So the member average is within a few standard errors (spread over members / sqrt(members))
    # plus an O(1/n) bias; we allow Z standard errors plus depth/n of the largest entry.
    mean, se = ntks.mean(0), ntks.std(0) / math.sqrt(members)
    tol = Z * se + 3.0 / width * theta.abs().max()
    err = (mean - theta).abs()
    assert bool((err < tol).all()), f"{arch}: |NTK_emp - NTK| = {err}\ntolerance {tol}"
    # and the width really is large: one member is within O(1/sqrt(n)) of the limit
    rel = float(((ntks - theta).abs().amax((1, 2)) / theta.abs().max()).median())
    assert rel < 3.0 * 3 / math.sqrt(width), rel
    assert float(((mean - nngp).abs() / tol).max()) > 2  # the same test rejects the NNGP
