"""The activations of gpmargin.kernels.smooth, .monomials and .numerical: against neural-tangents
0.6.5 on real MNIST (MLPs and CNNs), against each other's closed forms, and against Monte Carlo."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
nt = pytest.importorskip("neural_tangents", reason="neural-tangents not installed (extra 'nt'); skipping the NT oracle tests")
stax = nt.stax

from gpmargin import kernels as gk  # noqa: E402
from gpmargin.errors import GpmarginError  # noqa: E402
from gpmargin.kernels.monomials import Abs, Monomial, Polynomial, RectifiedMonomial, Sign  # noqa: E402
from gpmargin.kernels.nt import from_neural_tangents  # noqa: E402  (switches JAX to float64)
from gpmargin.kernels.numerical import Elementwise, ElementwiseNumerical  # noqa: E402
from gpmargin.kernels.smooth import Cos, Exp, Gaussian, Gelu, Rbf, Sin  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402  (after gpmargin.kernels.nt: float64)
import jax.scipy.special as jsp  # noqa: E402

F = torch.nn.functional

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL = 1e-10
# neural-tangents' diagonal of k(x, x) takes its angles from v*v - K^2 at rounding level, so it is
# ~sqrt(eps) off where the map depends on the angle (Sign); gpmargin's self pass uses theta = 0.
NT_DIAG_TOL = 1e-6


def _erf_nngp(cov12, var1, var2):
    """E[erf(u) erf(u')] (the user's closed form given to Elementwise)."""
    return torch.arcsin(2 * cov12 / torch.sqrt((1 + 2 * var1) * (1 + 2 * var2))) * (2 / math.pi)


def _erf_d_nngp(cov12, var1, var2):
    """E[erf'(u) erf'(u')]."""
    return (4 / math.pi) / torch.sqrt((1 + 2 * var1) * (1 + 2 * var2) - 4 * cov12**2)


def _erf_nngp_jax(cov12, var1, var2):
    return jnp.arcsin(2 * cov12 / jnp.sqrt((1 + 2 * var1) * (1 + 2 * var2))) * (2 / jnp.pi)


def _erf_d_nngp_jax(cov12, var1, var2):
    return (4 / jnp.pi) / jnp.sqrt((1 + 2 * var1) * (1 + 2 * var2) - 4 * cov12**2)


# name: (ours, neural-tangents', tolerance on NT's own diagonal of k(x, x))
with warnings.catch_warnings():  # stax's notices about quadrature and autodiff
    warnings.simplefilter("ignore", UserWarning)
    ACTIVATIONS = {
        "gelu": (Gelu(), stax.Gelu(), RTOL),
        "sin": (Sin(0.7, 1.3, 0.4), stax.Sin(0.7, 1.3, 0.4), RTOL),
        "cos": (Cos(1.1, 0.8, 0.3), stax.Cos(1.1, 0.8, 0.3), RTOL),
        "rbf": (Rbf(0.6), stax.Rbf(0.6), RTOL),
        "exp": (Exp(0.8, 0.7), stax.Exp(0.8, 0.7), RTOL),
        "gaussian": (Gaussian(1.2, -0.7), stax.Gaussian(1.2, -0.7), RTOL),
        "sign": (Sign(), stax.Sign(), NT_DIAG_TOL),
        "abs": (Abs(), stax.Abs(), NT_DIAG_TOL),  # NT's arc-cosine angle on the diagonal, as for ReLU
        "monomial3": (Monomial(3), stax.Monomial(3), RTOL),
        # NT's RectifiedMonomial is NaN at theta = 0 ((pi - theta) / sin(theta) differentiated by jax.grad):
        # on its whole diagonal, and for distinct images at identical receptive fields; so its diagonal
        # is not compared (ours is checked against the closed form in test_rectified_monomial_diagonal)
        # and its CNN runs on digits whose every 3x3 patch has ink
        "rect_monomial2": (RectifiedMonomial(2), stax.RectifiedMonomial(2), None),
        "polynomial": (Polynomial((0.3, -0.5, 0.2, 0.1)), stax.Polynomial((0.3, -0.5, 0.2, 0.1)), RTOL),
        # ours (polar rule, default deg: 5e-13 / 2e-12 from the closed form in the MLP) against NT's
        # Gauss-Hermite rule at deg = 100, where it is converged for erf (measured 3e-13 / 1e-11 from
        # the closed form in the MLP): both within RTOL of the truth
        "numerical_erf": (ElementwiseNumerical(torch.erf), stax.ElementwiseNumerical(jsp.erf, 100), RTOL),
        "elementwise_erf": (Elementwise(torch.erf, _erf_nngp, _erf_d_nngp),
                            stax.Elementwise(jsp.erf, _erf_nngp_jax, _erf_d_nngp_jax), RTOL),
    }
MEASURED: dict = {}  # largest relative errors per case, printed by test_report (pytest -s)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest entry of the reference."""
    assert a.shape == b.shape and a.dtype == torch.float64 and b.dtype == torch.float64
    return float((a - b).abs().max() / b.abs().max())


def _compare(ours, theirs_fn, x, diag_tol, label):
    """k(x, x) against neural-tangents off the diagonal (RTOL) and on it (``diag_tol``); k(x1, x2) for
    two disjoint subsets against NT's block; ``k.diag`` against the matrix diagonal."""
    ref = from_neural_tangents(theirs_fn, jit=True)(x, get=("nngp", "ntk"))  # jit: faster than eager here
    got = ours(x, get=("nngp", "ntk"))
    block = ours(x[:5], x[5:], get=("nngp", "ntk"))
    diag = ours.diag(x, get=("nngp", "ntk"))
    off = ~torch.eye(x.shape[0], dtype=torch.bool)
    errs, diag_errs = [], []
    for name, p, q, b, d in zip(("nngp", "ntk"), got, ref, block, diag):
        assert torch.isfinite(p).all() and torch.isfinite(b).all(), (label, name)
        scale = q[off].abs().max()
        e_off = float((p - q)[off].abs().max() / scale)
        e_block = rel_err(b, q[:5, 5:])
        assert e_off < RTOL and e_block < RTOL, (label, name, e_off, e_block)
        assert rel_err(d, p.diagonal()) < 1e-13, (label, name)
        if diag_tol is not None:
            e_diag = float((p - q).diagonal().abs().max() / scale)
            assert e_diag < diag_tol, (label, name, e_diag)
            diag_errs.append(e_diag)
        errs.append(max(e_off, e_block))
    MEASURED[label] = errs + diag_errs  # (nngp, ntk) off the diagonal, then on it


def _mnist_rows(x: torch.Tensor) -> torch.Tensor:
    """Standardise with MNIST's mean/std, flatten, rescale rows to norm sqrt(d)."""
    z = ((x.double() - 0.1307) / 0.3081).reshape(x.shape[0], -1)
    return z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def vecs(mnist_test):
    return _mnist_rows(mnist_test[0][:12])


@pytest.fixture(scope="module")
def images(mnist_test):
    """6 MNIST digits centre-cropped to 10x10, pixels in [0, 1] (with blank, identical 3x3 patches)."""
    return mnist_test[0][20:26, :, 9:19, 9:19].double()


@pytest.fixture(scope="module")
def inked_images(mnist_test):
    """The first 6 test digits whose 10x10 centre crop has ink in every 3x3 patch (no two images
    share a receptive field)."""
    crops = mnist_test[0][:400, :, 9:19, 9:19].double()
    inked = (torch.nn.functional.unfold(crops, 3).abs().sum(1) > 0).all(1)
    return crops[inked.nonzero().flatten()[:6]]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_against_nt(name, vecs):
    ours, theirs, diag_tol = ACTIVATIONS[name]
    k = gk.serial(gk.Dense(1.3, 0.2), ours, gk.Dense(0.9, 0.1))
    _, _, kfn = stax.serial(stax.Dense(1, 1.3, 0.2), theirs, stax.Dense(1, 0.9, 0.1))
    _compare(k, kfn, vecs, diag_tol, f"mlp {name}")


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_cnn_against_nt(name, images, inked_images):
    ours, theirs, diag_tol = ACTIVATIONS[name]
    x = inked_images if diag_tol is None else images
    k = gk.serial(gk.Conv2d(3, W_std=1.2, b_std=0.1), ours, gk.Flatten(), gk.Dense())
    _, _, kfn = stax.serial(stax.Conv(1, (3, 3), (1, 1), "VALID", 1.2, 0.1), theirs, stax.Flatten(),
                            stax.Dense(1))
    _compare(k, kfn, x, diag_tol, f"cnn {name}")


def _jax_gelu(x):
    return jax.nn.gelu(x, approximate=False)


def test_full_spatial_layout_against_nt(images):
    """GlobalAvgPool reads pairs of distinct positions (the "full" layout); a Relu after the new
    layers takes the pair distance from v1 + v2 - 2 Sigma.  NT's Gauss-Hermite quadrature of gelu
    is converged at deg = 50, ours at deg = 20 (2e-11 in the MLP; cheaper than the default)."""
    k = gk.serial(gk.Conv2d(3, 1, "same", 1.1, 0.1), Gelu(), gk.Conv2d(3, W_std=1.2), ElementwiseNumerical(F.gelu, 20),
                  gk.Conv2d(3, 1, "same", 0.9, 0.2), Polynomial((0.1, 1.0, 0.3)), gk.Conv2d(1), gk.Relu(),
                  gk.GlobalAvgPool(), gk.Dense(1.0, 0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, _, kfn = stax.serial(stax.Conv(1, (3, 3), (1, 1), "SAME", 1.1, 0.1), stax.Gelu(),
                                stax.Conv(1, (3, 3), (1, 1), "VALID", 1.2), stax.ElementwiseNumerical(_jax_gelu, 50),
                                stax.Conv(1, (3, 3), (1, 1), "SAME", 0.9, 0.2), stax.Polynomial((0.1, 1.0, 0.3)),
                                stax.Conv(1, (1, 1)), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, 1.0, 0.1))
    _compare(k, kfn, images[:, :, 2:8, 2:8], NT_DIAG_TOL, "cnn full layout gelu/numerical gelu/polynomial/relu")


def test_nearly_coinciding_pairs(vecs):
    """A duplicated input: the Relu after Gelu records the pair as nearly coinciding and the engine
    recomputes it as a ``points`` state through every layer; it must equal the diagonal.

    Gelu, Sin, the quadrature and the monomials do not map the pair distance (``maps_dist = False``;
    Sign does), so the Relu falls back to
    ``v1 + v2 - 2 Sigma``: exactly 0 only if the pair's value equals its diagonal entry bit for bit
    (else an angle ~1e-8 would put its NTK off by ~1e-9).  The closed forms do (``v1 v2 - Sigma^2``
    is 0), and so does the quadrature (the diagonal uses the same 2-D rule, with a row-wise sum)."""
    x = torch.cat([vecs[:4], vecs[:1]])
    for act in (Gelu(), ElementwiseNumerical(torch.tanh), Sin(0.7, 1.3, 0.4), RectifiedMonomial(2)):
        k = gk.serial(gk.Dense(1.3, 0.2), act, gk.Dense(1.0, 0.1), gk.Relu(), gk.Dense(0.9, 0.1))
        diag = k.diag(x[:1], get=("nngp", "ntk"))
        for p, d in zip(k(x, get=("nngp", "ntk")), diag):
            assert abs(float(p[0, 4] - d[0])) < 1e-13 * float(d[0]), act
        for p, d in zip(k(x[:3], x[3:], get=("nngp", "ntk")), diag):  # x2 = (x[3], x[0])
            assert abs(float(p[0, 1] - d[0])) < 1e-13 * float(d[0]), act
    k = gk.serial(gk.Dense(1.3, 0.2), Sign(), gk.Dense(1.0, 0.1), gk.Relu())  # Sign maps the distance on
    for p, d in zip(k(x, get=("nngp", "ntk")), k.diag(x[:1], get=("nngp", "ntk"))):
        assert abs(float(p[0, 4] - d[0])) < 1e-13 * float(d[0])


@pytest.mark.parametrize("eps", [1e-4, 1e-6, 1e-8])
def test_sign_nearly_coinciding_against_mpmath(vecs, eps):
    """A digit and a slightly perturbed copy: Sign's angle from the carried distance is exact, where
    from ``v1 v2 - Sigma^2`` (neural-tangents' way) it is off by ~sqrt(eps_machine) (measured: 4e-12,
    5e-10, 6e-9 relative at eps = 1e-4, 1e-6, 1e-8).  Reference: the exact kernel in 40-digit mpmath."""
    mpmath = pytest.importorskip("mpmath")
    x = torch.stack([vecs[0], vecs[0] + eps * vecs[1]])
    with mpmath.workdps(40):
        a, b = ([mpmath.mpf(float(t)) for t in row] for row in x)
        n, w2, b2 = x.shape[1], mpmath.mpf(1.3) ** 2, mpmath.mpf(0.2) ** 2
        v1, v2 = (w2 * mpmath.fsum(p * p for p in r) / n + b2 for r in (a, b))
        cov = w2 * mpmath.fsum(p * q for p, q in zip(a, b)) / n + b2
        ref = float(1 - 2 * mpmath.acos(cov / mpmath.sqrt(v1 * v2)) / mpmath.pi)
    k = gk.serial(gk.Dense(1.3, 0.2), Sign())
    assert abs(float(k(x)[0, 1]) - ref) < 1e-15 and abs(float(k(x[:1], x[1:])[0, 0]) - ref) < 1e-15


def test_rectified_monomial_diagonal(vecs):
    """Our diagonal (NT's is NaN): E[u_+^4] = 3 v^2 / 2 and E[(2 u_+)^2] = 2 v, with v = 1.3^2 + 0.2^2
    for rows of norm sqrt(d)."""
    v = 1.3**2 + 0.2**2
    nngp, ntk = gk.serial(gk.Dense(1.3, 0.2), RectifiedMonomial(2), gk.Dense(0.9, 0.1)).diag(vecs, get=("nngp", "ntk"))
    out = 0.81 * 1.5 * v**2 + 0.01
    assert torch.allclose(nngp, torch.full_like(nngp, out), rtol=1e-13, atol=0)
    assert torch.allclose(ntk, torch.full_like(ntk, 0.81 * 2 * v * v + out), rtol=1e-13, atol=0)


# -- ElementwiseNumerical against closed forms -------------------------------------------------
def _mlp(act):
    return gk.serial(gk.Dense(1.3, 0.2), act, gk.Dense(0.9, 0.1))


def _cnn(act):
    return gk.serial(gk.Conv2d(3, W_std=1.2, b_std=0.1), act, gk.Flatten(), gk.Dense())


def _errors(fn, closed, x, deg=None, net=_mlp):
    """(NNGP, NTK) relative errors of the quadrature of ``fn`` against ``closed``, worst of the
    matrix k(x, x) and the diagonal k.diag(x)."""
    quad = net(ElementwiseNumerical(fn) if deg is None else ElementwiseNumerical(fn, deg))
    ref = net(closed)
    pairs = zip(quad(x, get=("nngp", "ntk")), ref(x, get=("nngp", "ntk")),
                quad.diag(x, get=("nngp", "ntk")), ref.diag(x, get=("nngp", "ntk")))
    return tuple(max(rel_err(a, b), rel_err(ad, bd)) for a, b, ad, bd in pairs)


# Measured (NNGP, NTK) at the default deg = 26, MLP / CNN: erf (5e-13, 2e-12) / (1e-14, 3e-13), gelu
# (1e-14, 6e-14) / (1e-15, 3e-15); relu, leaky relu, abs 1e-15 (exact: homogeneous on each side of 0).
CLOSED = {"erf": (torch.erf, gk.Erf()), "gelu": (F.gelu, Gelu()), "relu": (torch.relu, gk.Relu()),
          "leaky_relu": (lambda t: F.leaky_relu(t, 0.1), gk.LeakyRelu(0.1)), "abs": (torch.abs, Abs())}
KINKED = ("relu", "leaky_relu", "abs")


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(CLOSED))
def test_numerical_against_closed_forms(name, net, vecs, images):
    """The default deg: 1e-10 for the smooth activations, rounding (1e-13) for the kinked ones."""
    fn, closed = CLOSED[name]
    errs = _errors(fn, closed, vecs if net == "mlp" else images, net=_mlp if net == "mlp" else _cnn)
    MEASURED[f"numerical {name} {net} default deg"] = list(errs)
    assert max(errs) < (1e-13 if name in KINKED else RTOL), errs


def test_numerical_converges_in_deg(vecs):
    """The error falls with deg (exponentially) and is below RTOL from deg = 24 on; the kinks are
    exact from small deg on (their angular integrand is a trigonometric polynomial of degree 2)."""
    degs = (8, 12, 16, 20, 24)
    for name in ("erf", "gelu"):
        fn, closed = CLOSED[name]
        errs = [max(_errors(fn, closed, vecs[:6], d)) for d in degs]
        MEASURED[f"convergence {name} deg={degs}"] = errs
        assert all(b < a for a, b in zip(errs, errs[1:])) and errs[-1] < RTOL, errs
    errs = [max(_errors(torch.relu, gk.Relu(), vecs[:6], d)) for d in (4, 8, 12)]
    MEASURED["convergence relu deg=(4, 8, 12)"] = errs
    assert errs[-1] < 1e-13, errs


def test_numerical_tanh_against_high_deg(vecs):
    """tanh (poles at +-i pi/2 slow it down) at the default deg against deg = 48."""
    a = _mlp(ElementwiseNumerical(torch.tanh))(vecs, get=("nngp", "ntk"))
    b = _mlp(ElementwiseNumerical(torch.tanh, 48))(vecs, get=("nngp", "ntk"))
    errs = [rel_err(p, q) for p, q in zip(a, b)]
    MEASURED["numerical tanh default vs deg=48"] = errs
    assert max(errs) < RTOL, errs


def _relu_pair(k, v1, v2):
    """E[relu(u) relu(u')] and E[relu'(u) relu'(u')] (the arc-cosine kernel; 0 where a variance is
    0, with relu'(0) = 0 as in autograd)."""
    root = (v1 * v2).sqrt()
    c = torch.where(root > 0, k / root.clamp(min=1e-300), torch.zeros_like(k)).clamp(-1, 1)
    theta = torch.arccos(c)
    ntk = torch.where(root > 0, (math.pi - theta) / (2 * math.pi), torch.zeros_like(theta))
    return root * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi), ntk


def test_numerical_pairs_on_a_grid():
    """Every correlation (negative ones run on (u, -u')), cos = +-1 exactly, and a zero variance
    (the expectation factorises) against the closed forms."""
    from gpmargin.kernels.numerical import pair_expectation

    cos = torch.tensor([-1.0, -1 + 1e-12, -0.9, -0.5, -0.1, 0.0, 0.3, 0.7, 0.99, 1 - 1e-12, 1.0], dtype=torch.float64)
    v1 = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)[:, None, None]
    v2 = torch.tensor([0.0, 0.5, 1.7], dtype=torch.float64)[None, :, None]
    k = cos * (v1 * v2).sqrt()
    relu = ElementwiseNumerical(torch.relu)
    quad = [relu.nngp_map(k, v1, v2), relu.ntk_factor(k, v1, v2)]
    for p, q in zip(quad, _relu_pair(k, v1, v2)):
        assert float((p - q).abs().max()) < 1e-14, float((p - q).abs().max())
    erf = ElementwiseNumerical(torch.erf)
    for p, q in ((erf.nngp_map(k, v1, v2), _erf_nngp(k, v1, v2)), (erf.ntk_factor(k, v1, v2), _erf_d_nngp(k, v1, v2))):
        assert rel_err(p, q.expand_as(p)) < RTOL
    assert torch.equal(pair_expectation(torch.relu, v1, v1, v1, 26), relu.nngp_map(v1.clone(), v1, v1))


def test_layers_equal_quadrature_of_their_own_phi(vecs):
    """Each closed-form layer against ElementwiseNumerical of the function its finite network applies
    (``layer.phi``, differentiated by autograd), and its mean over units: ties the finite modules
    to the kernel maps, at the default deg: the smooth ones to 1e-10, the kinked and discontinuous
    ones (x_+^2, the step, sign) to rounding (the polar rule cuts at 0)."""
    var = torch.tensor([0.05, 0.7, 1.73, 2.5], dtype=torch.float64)
    smooth = [Gelu(), Sin(0.7, 1.3, 0.4), Cos(1.1, 0.8, 0.3), Rbf(0.6), Exp(0.8, 0.7), Gaussian(1.2, -0.7),
              Gaussian(0.9, 0.02), Monomial(3), Polynomial((0.3, -0.5, 0.2, 0.1)), Monomial(0)]
    for layer in smooth + [RectifiedMonomial(2), RectifiedMonomial(0), Sign()]:
        quad = ElementwiseNumerical(layer.phi)
        tol = RTOL if layer in smooth else 1e-13
        # the step function (x >= 0) has no autograd graph; sign' = 0 in autograd, as in the kernel
        get = "nngp" if layer == RectifiedMonomial(0) else ("nngp", "ntk")
        a, b = _mlp(layer)(vecs[:4], get=get), _mlp(quad)(vecs[:4], get=get)
        errs = [rel_err(p, q) for p, q in (zip(a, b) if get != "nngp" else [(a, b)])]
        e_mean = float((layer.gaussian_mean(var) - quad.gaussian_mean(var)).abs().max())
        MEASURED[f"phi quadrature {layer!r}"] = errs + [e_mean]
        assert max(errs) < tol, (layer, errs)
        assert e_mean < 1e-12, (layer, e_mean)


# -- Monte Carlo: the finite networks these kernels describe --------------------------------
def _mc_nngp(kernel, x, width, members, readouts, seed):
    """Monte-Carlo NNGP over independently initialised members (see tests/test_kernels_mc.py)."""
    net = kernel.network(width, in_shape=tuple(x.shape[1:]), members=members, seed=seed, outputs=readouts,
                         dtype=torch.float64)
    with torch.no_grad():
        f = net(x)  # (members, N, readouts)
    s = f @ f.transpose(1, 2) / readouts
    return s.mean(0), s.std(0) / math.sqrt(members)


@pytest.mark.parametrize("act", ["gelu", "tanh"])
def test_monte_carlo(act, mnist_test):
    x = _mnist_rows(mnist_test[0][40:45].double())
    layer = Gelu() if act == "gelu" else ElementwiseNumerical(torch.tanh)
    k = gk.serial(gk.Dense(1.2, 0.3), layer, gk.Dense(1.0, 0.2), layer, gk.Dense(0.9, 0.1))
    mean, se = _mc_nngp(k, x, width=128, members=64, readouts=64, seed=7)
    z = float(((mean - k(x)) / se).abs().max())
    assert z < 4.0, (act, z)
    other = gk.serial(gk.Dense(1.2, 0.3), gk.Relu(), gk.Dense(1.0, 0.2), gk.Relu(), gk.Dense(0.9, 0.1))(x)
    assert float(((mean - other) / se).abs().max()) > 10.0  # the check resolves a different activation
    MEASURED[f"monte carlo {act} (max z)"] = [z]


# -- errors, values ------------------------------------------------------------------------
def test_bad_inputs(vecs):
    k = _mlp(Elementwise(torch.erf, _erf_nngp))
    assert torch.allclose(k(vecs[:4]), _mlp(gk.Erf())(vecs[:4]), rtol=1e-13, atol=0)
    with pytest.raises(GpmarginError, match="ElementwiseNumerical") as info:
        k(vecs[:4], get="ntk")
    assert "\n" not in str(info.value)
    for bad in (lambda: Monomial(-1), lambda: Monomial(1.5), lambda: RectifiedMonomial(-2)):
        with pytest.raises(GpmarginError, match="degree"):
            bad()
    for coef in ((), "12", (1.0, float("nan"))):
        with pytest.raises(GpmarginError, match="coef"):
            Polynomial(coef)
    with pytest.raises(GpmarginError, match="deg"):
        ElementwiseNumerical(torch.tanh, 0)
    import numpy as np

    numpy_fn = _mlp(ElementwiseNumerical(lambda t: torch.from_numpy(np.tanh(t.numpy()))))  # torch cannot differentiate it
    assert torch.allclose(numpy_fn(vecs[:4]), _mlp(ElementwiseNumerical(torch.tanh))(vecs[:4]), rtol=1e-14, atol=0)
    with pytest.raises(GpmarginError, match="autograd") as info:
        numpy_fn(vecs[:4], get="ntk")
    assert "\n" not in str(info.value)
    with pytest.raises(GpmarginError, match="1/\\(4b\\)"):
        _mlp(Gaussian(1.0, 0.5))(vecs[:4])
    with pytest.raises(GpmarginError, match="no fn"):
        _mlp(Elementwise(None, _erf_nngp)).network(8, in_shape=(784,), dtype=torch.float64)(vecs[:2])


def test_layers_are_values():
    plain = [Gelu(), Gelu(approximate=True), Sin(0.5, 2.0, 0.1), Cos(), Rbf(0.3), Exp(2.0, -0.5), Gaussian(),
             Sign(), Abs(), Monomial(4), RectifiedMonomial(1), Polynomial((1.0, 0.0, -2.0))]
    for layer in plain:
        again = eval(repr(layer))
        assert again == layer and hash(again) == hash(layer), repr(layer)
    assert Sin(1.0, 1.0, 0.0) != Cos(1.0, 1.0, 0.0) and Monomial(2) != Polynomial((0, 0, 1))
    assert Polynomial([0, 1]) == Polynomial((0.0, 1.0)) and Sin(1, 2, 0) == Sin(1.0, 2.0, 0.0)
    assert ElementwiseNumerical(torch.tanh) == ElementwiseNumerical(torch.tanh, 26) != ElementwiseNumerical(torch.tanh, 9)
    assert Elementwise(torch.erf, _erf_nngp) != Elementwise(torch.erf, _erf_nngp, _erf_d_nngp)
    assert not Elementwise(torch.erf, _erf_nngp).supports_ntk and Elementwise(None, _erf_nngp, _erf_d_nngp).supports_ntk
    with pytest.raises(GpmarginError, match="immutable"):
        Gelu().approximate = True


def test_finite_networks_run(vecs):
    """Every layer's finite module: finite outputs of the expected shape (values by the tests above)."""
    for layer in [Gelu(True), Sin(), Cos(), Rbf(), Exp(0.5, 0.3), Gaussian(), Sign(), Abs(), Monomial(2),
                  RectifiedMonomial(0), Polynomial((0.1, 1.0)), ElementwiseNumerical(torch.tanh),
                  Elementwise(torch.erf, _erf_nngp)]:
        out = _mlp(layer).network(16, in_shape=(784,), members=2, dtype=torch.float64)(vecs[:3])
        assert out.shape == (2, 3, 1) and torch.isfinite(out).all(), layer


def test_report():
    """Prints the measured agreement (run with -s)."""
    for label, errs in sorted(MEASURED.items()):
        print(f"{label:45s} " + " ".join(f"{e:.1e}" for e in errs))
