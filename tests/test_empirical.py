"""gpmargin.empirical: empirical NTK/NNGP of any torch model, Monte Carlo kernels, linearize.

Checked against an independent brute-force Jacobian (one autograd pass per output), between its
two methods, against neural-tangents' ``empirical_ntk_fn`` on the same weights, and against the
analytic kernels it must approach as the width grows (on real MNIST rows and digits).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from gpmargin import kernels as gk
from gpmargin.empirical import empirical_nngp, empirical_ntk, linearize, monte_carlo_kernel
from gpmargin.errors import GpmarginError


@pytest.fixture(scope="module")
def rows(mnist_test):
    x, _ = mnist_test
    z = ((x[:6].double() - 0.1307) / 0.3081).reshape(6, -1)
    return z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images[:7] / 16.0, dtype=torch.float64)[:, None]  # (7, 1, 8, 8)


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 36, 3)).double()


def brute_force_ntk(model, x1, x2):
    """``(n1, n2, O, O)`` from one ``torch.autograd.grad`` per output (no torch.func)."""
    params = [p for p in model.parameters()]

    def jac(x):
        out = model(x)
        rows = []
        for i in range(out.shape[0]):
            for a in range(out.shape[1]):
                g = torch.autograd.grad(out[i, a], params, retain_graph=True)
                rows.append(torch.cat([t.reshape(-1) for t in g]))
        return torch.stack(rows).reshape(out.shape[0], out.shape[1], -1)

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("nap,mbp->nmab", j1, j2)


def test_methods_agree_with_brute_force(digits):
    model = small_cnn()
    x1, x2 = digits[:4], digits[4:]
    ref = brute_force_ntk(model, x1, x2)
    for method in ("jacobian", "ntk_vp"):
        full = empirical_ntk(model, x1, x2, trace_outputs=False, method=method, batch_size=3)  # tiles of 3
        assert full.shape == (4, 3, 3, 3)
        assert float((full - ref).abs().max() / ref.abs().max()) < 1e-12, method
    a = empirical_ntk(model, digits, method="jacobian", batch_size=3)
    b = empirical_ntk(model, digits, method="ntk_vp", batch_size=2)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-10  # the two methods, to rounding
    assert torch.equal(a, a.T)  # one input set: exactly symmetric by construction
    torch.testing.assert_close(a, ref.new_tensor(0) + brute_force_ntk(model, digits, digits).diagonal(
        dim1=-2, dim2=-1).mean(-1), rtol=1e-12, atol=0)
    assert float(torch.linalg.eigvalsh(a).min()) > -1e-10 * float(a.abs().max())  # a Gram matrix


def test_stacked_network_gives_one_kernel_per_member(rows):
    net = gk.paper_mlp(3).network(32, in_shape=784, members=3, seed=2, outputs=2, dtype=torch.float64)
    stacked = empirical_ntk(net, rows[:4], rows[4:], trace_outputs=False)
    assert stacked.shape == (3, 4, 2, 2, 2)
    for j in range(3):
        single = empirical_ntk(net.member(j), rows[:4], rows[4:], trace_outputs=False)
        torch.testing.assert_close(stacked[j], single, rtol=1e-12, atol=1e-14)
    f = net(rows)
    torch.testing.assert_close(empirical_nngp(net, rows), f @ f.transpose(1, 2) / 2, rtol=1e-13, atol=1e-15)


def test_empirical_ntk_approaches_the_analytic_ntk(rows):
    """The relative error of one network's NTK falls as width^-1/2 (its fluctuations; the bias is
    O(1/width)): the fitted log-log slope over widths 64 ... 2048 lies in [-0.7, -0.3]."""
    k = gk.paper_mlp(3)
    theta = k(rows, get="ntk")
    widths = [64, 128, 256, 512, 1024, 2048]
    errors = []
    for width in widths:
        errs = []
        for seed in range(2):  # two networks per width: their mean error
            net = k.network(width, in_shape=784, seed=seed, dtype=torch.float64)
            emp = empirical_ntk(net, rows)[0]
            errs.append(float((emp - theta).norm() / theta.norm()))
        errors.append(np.mean(errs))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    print(f"empirical NTK relative error at widths {widths}: {[f'{e:.3g}' for e in errors]}, slope {slope:.3f}")
    assert -0.7 <= slope <= -0.3, (slope, errors)
    assert errors[-1] < 0.1


def test_agrees_with_neural_tangents_on_the_same_weights(rows):
    pytest.importorskip("neural_tangents", reason="neural-tangents not installed (extra 'nt')")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import gpmargin.kernels.nt  # noqa: F401  (switches JAX to float64)
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    width = 64
    net = gk.paper_mlp(3).network(width, in_shape=784, seed=1, outputs=2, dtype=torch.float64)
    _, apply_fn, _ = stax.serial(stax.Dense(width, 1.0), stax.ABRelu(0, math.sqrt(2)),
                                 stax.Dense(width, 1.0), stax.ABRelu(0, math.sqrt(2)), stax.Dense(2, 1.0))
    ws = [jnp.asarray(w.detach()[0].T.numpy()) for w in net.weights]  # (in, out), neural-tangents' layout
    params = [(ws[0], None), (), (ws[1], None), (), (ws[2], None)]  # no biases (b_std=None)
    theirs = nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0)(rows.numpy()[:4], rows.numpy()[4:], params)
    ours = empirical_ntk(net, rows[:4], rows[4:], trace_outputs=False)[0]
    theirs = torch.from_numpy(np.asarray(theirs))
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-8  # float64 both; measured ~1e-15


def test_monte_carlo_kernel_agrees_with_the_kernel(digits):
    x = digits.reshape(7, -1)
    x = x * 8.0 / x.norm(dim=1, keepdim=True)
    k = gk.serial(gk.Dense(1.2, 0.1), gk.Gelu(), gk.Dense(1.1, 0.2), gk.Relu(), gk.Dense())
    mc = monte_carlo_kernel(k, 256, 64, x, outputs=32, seed=3)
    assert mc.mean.shape == (7, 7) and mc.members == 64
    assert float(mc.z_scores(k(x)).max()) < 4.0  # within 4 standard errors
    other = gk.paper_mlp(3)(x)
    assert float(mc.z_scores(other).max()) > 16.0  # and it tells a different kernel apart
    ntk = monte_carlo_kernel(k, 256, 8, x, get="ntk", seed=3)
    theta = k(x, get="ntk")
    # NTK fluctuations O(1/sqrt(width)) per network (averaged over members), bias O(depth/width)
    assert bool(((ntk.mean - theta).abs() <= 4 * ntk.standard_error + 3 / 256 * theta.abs().max()).all())


def test_linearize(digits):
    model = small_cnn()
    lin = linearize(model)
    x = digits
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=0)  # at theta_0 it is the model
    # its NTK is the model's at theta_0, and stays so after it trains (the model's changes)
    torch.testing.assert_close(empirical_ntk(lin, x), empirical_ntk(model, x), rtol=1e-12, atol=1e-14)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        lin(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(empirical_ntk(lin, x), empirical_ntk(model, x), rtol=1e-12, atol=1e-14)
    # a first-order model: its error against the model after a small step delta is O(delta^2)
    gen = torch.Generator().manual_seed(5)
    delta = [1e-3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()]
    errs = []
    for t in (1.0, 0.5):
        moved = small_cnn()
        with torch.no_grad():
            for p, d in zip(moved.parameters(), delta):
                p.add_(t * d)
            for p, q, d in zip(lin.params, model.parameters(), delta):
                p.copy_(q + t * d)
            errs.append(float((lin(x) - moved(x)).abs().max()))
    assert 3.0 < errs[0] / errs[1] < 5.0, errs  # halving the step quarters the error


def test_bad_input_is_one_line_error(digits):
    model = small_cnn()
    for call, words in [
        (lambda: empirical_ntk(model, digits, method="svd"), "method='svd'"),
        (lambda: empirical_ntk(model, digits.numpy()), "x1 must be a torch tensor"),
        (lambda: empirical_ntk(model, digits, batch_size=0), "batch_size=0"),
        (lambda: empirical_ntk(torch.nn.ReLU(), digits), "no parameters"),
        (lambda: empirical_ntk("model", digits), "torch.nn.Module"),
        (lambda: monte_carlo_kernel(gk.paper_mlp(2), 16, 1, digits.reshape(7, -1)), "members=1"),
        (lambda: linearize(torch.nn.ReLU()), "nothing to linearise"),
    ]:
        with pytest.raises(GpmarginError) as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
