"""Kernels differentiated by autograd: with respect to the inputs and to every numeric layer
argument, on real digits inputs, checked by ``torch.autograd.gradcheck`` (finite differences,
float64), against neural-tangents' ``jax.grad`` and between forward and reverse mode; the custom
derivatives where pre-activations coincide."""

from __future__ import annotations

import doctest
import os

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import gpmargin.kernels as gk
import gpmargin.kernels.hyperparameters as hyperparameters
from gpmargin.errors import GpmarginError
from gpmargin.kernels.hyperparameters import variances, with_variances


def t(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64, requires_grad=True)


@pytest.fixture(scope="module")
def vectors(digits_train):
    return digits_train[0][:5].reshape(5, -1).double()


@pytest.fixture(scope="module")
def images(digits_train):
    return digits_train[0][:3, :, 1:7, 1:7].double()  # 6x6 crops: gradcheck perturbs every pixel


# every activation with its numeric arguments (given as tensors that require grad)
ACTIVATIONS = {
    "Relu": (gk.Relu, [1.2]),
    "LeakyRelu": (gk.LeakyRelu, [0.2]),
    "ABRelu": (gk.ABRelu, [-0.3, 1.1]),
    "Abs": (gk.Abs, []),
    "Erf": (gk.Erf, [1.1, 0.9, 0.2]),
    "Identity": (gk.Identity, []),
    "Gelu": (gk.Gelu, []),
    "Sin": (gk.Sin, [1.1, 0.8, 0.3]),
    "Cos": (gk.Cos, [1.1, 0.8, 0.3]),
    "Rbf": (gk.Rbf, [0.7]),
    "Exp": (gk.Exp, [1.0, 0.5]),
    "Gaussian": (gk.Gaussian, [1.0, -0.6]),
    "Sign": (gk.Sign, []),
    "Monomial": (lambda: gk.Monomial(2), []),
    "RectifiedMonomial1": (lambda: gk.RectifiedMonomial(1), []),
    "RectifiedMonomial2": (lambda: gk.RectifiedMonomial(2), []),
    "Polynomial": (lambda: gk.Polynomial([0.1, 1.0, 0.5]), []),
    "ElementwiseNumerical": (lambda: gk.ElementwiseNumerical(torch.tanh, deg=10), []),
}


def gradchecks(make, x, params, get=("nngp", "ntk")):
    """gradcheck of ``k(x)``, ``k(x, x2)`` and ``k.diag(x)`` with respect to ``x`` and ``params``
    (fast mode: random projections of the Jacobian, against central differences, float64)."""
    ps = [t(v) for v in params]
    x = x.clone().requires_grad_(True)
    x2 = x[:2].detach().clone().mul(0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, *p: make(*p)(x, get=get), (x, *ps), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x, y, *p: make(*p)(x, y, get=get), (x, x2, *ps), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x, *p: make(*p).diag(x, get=get), (x, *ps), fast_mode=True)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_gradcheck_every_activation_mlp(name, vectors):
    act, params = ACTIVATIONS[name]
    gradchecks(lambda W, *a: gk.serial(gk.Dense(W, 0.3), act(*a), gk.Dense(W, 0.2)), vectors, [1.3] + params)


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n != "ElementwiseNumerical"])
def test_gradcheck_every_activation_cnn(name, images):
    act, params = ACTIVATIONS[name]
    gradchecks(lambda W, *a: gk.serial(gk.Conv2d(3, padding="same", W_std=W, b_std=0.2), act(*a),
                                       gk.Conv2d(3, W_std=1.1), gk.Flatten(), gk.Dense(1.0)), images, [1.3] + params)


STRUCTURES = {
    "circular conv, GlobalAvgPool": lambda W, B: gk.serial(gk.Conv2d(3, padding="circular", W_std=W, b_std=B), gk.Relu(),
                                                           gk.Conv2d(3, W_std=W), gk.GlobalAvgPool(), gk.Dense(W, B)),
    "AvgPool": lambda W, B: gk.serial(gk.Conv2d(2, W_std=W, b_std=B), gk.Relu(), gk.AvgPool(2), gk.Flatten(), gk.Dense(W)),
    "SumPool, GlobalSumPool": lambda W, B: gk.serial(gk.Conv2d(2, W_std=W, b_std=B), gk.Relu(), gk.SumPool(2),
                                                     gk.GlobalSumPool(), gk.Dense(W)),
    "LayerNorm": lambda W, B: gk.serial(gk.Conv2d(3, W_std=W, b_std=B), gk.LayerNorm(axis=(1, 2, 3), eps=B * 0.01),
                                        gk.Relu(), gk.Flatten(), gk.Dense(W)),
    "Dropout": lambda W, B: gk.serial(gk.Conv2d(3, W_std=W, b_std=B), gk.Relu(), gk.Dropout(B + 0.5), gk.Flatten(),
                                      gk.Dense(W)),
    "residual": lambda W, B: gk.serial(gk.Conv2d(3, padding="same", W_std=W, b_std=B), gk.FanOut(2),
                                       gk.parallel(gk.serial(gk.Relu(), gk.Conv2d(3, padding="same", W_std=W)), gk.Identity()),
                                       gk.FanInSum(), gk.Relu(), gk.Flatten(), gk.Dense(W)),
    "product, concat": lambda W, B: gk.serial(gk.Conv2d(3, W_std=W, b_std=B), gk.FanOut(2),
                                              gk.parallel(gk.Conv2d(1, W_std=W), gk.Conv2d(1, W_std=B + 1)), gk.FanInProd(),
                                              gk.Conv2d(1), gk.FanOut(2),
                                              gk.parallel(gk.serial(gk.Relu(), gk.Conv2d(1, W_std=W)), gk.serial(gk.Erf(), gk.Conv2d(1))),
                                              gk.FanInConcat(2), gk.Flatten(), gk.Dense(W)),
}


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_gradcheck_pooling_normalisation_branches(name, images):
    gradchecks(STRUCTURES[name], images, [1.3, 0.2])


def test_gradcheck_conv1d_centred_and_presets(images, vectors):
    gradchecks(lambda W, B: gk.serial(gk.Conv1d(3, W_std=W, b_std=B), gk.Relu(), gk.Flatten(), gk.Dense(W, B)),
               images[:, :, 0], [1.3, 0.2])
    # Centred (Nero-constrained rows) has an NNGP only
    gradchecks(lambda W, B: gk.serial(gk.Centred(gk.Dense(W, B)), gk.Relu(), gk.Dense(W, B)), vectors, [1.3, 0.2],
               get="nngp")
    gradchecks(lambda W, B: gk.serial(gk.Centred(gk.Conv2d(3, W_std=W, b_std=B)), gk.Relu(), gk.Flatten(), gk.Dense(W)),
               images, [1.3, 0.2], get="nngp")
    gradchecks(lambda W: gk.paper_mlp(3, W_std=W), vectors, [1.1])


def test_full_gradcheck_relu_mlp(vectors):
    """Every entry of the Jacobian (not random projections) of a ReLU MLP with biases."""
    x = vectors[:4].clone().requires_grad_(True)
    W, B = t(1.3), t(0.2)
    k = lambda x, W, B: gk.serial(gk.Dense(W, B), gk.Relu(), gk.Dense(W, B), gk.Relu(), gk.Dense(W, B))(
        x, get=("nngp", "ntk"))
    assert torch.autograd.gradcheck(k, (x, W, B))


def test_coinciding_inputs(vectors, images):
    """Duplicated examples: the NNGP's derivative exists (custom backward, finite where arccos'
    is not) and matches central differences; the ReLU NTK is not differentiable there and the
    gradient is its derivative along moves that keep the pair coinciding (documented in ABRelu)."""
    k = gk.serial(gk.Dense(1.2, 0.3), gk.Relu(), gk.Dense(1.2, 0.3), gk.Relu(), gk.Dense(1.0, 0.1))
    x = torch.cat([vectors[:2], vectors[:1]]).clone()  # rows 0 and 2 coincide
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for get in ("nngp", "ntk"):
        xg = x.clone().requires_grad_(True)
        entry = k(xg, get=get)[0, 2]
        (grad,) = torch.autograd.grad(entry, xg)
        assert torch.isfinite(grad).all()
        if get == "nngp":
            h = 1e-6
            fd = (k(x + h * direction, get=get)[0, 2] - k(x - h * direction, get=get)[0, 2]) / (2 * h)
            # the NNGP is C^1 at coincidence with an O(theta^3) remainder: central differences
            # agree to rounding / h ~ 1e-10
            assert abs(float((grad * direction).sum()) - float(fd)) < 1e-8
        together = direction.clone()
        together[2] = together[0]  # a move that keeps rows 0 and 2 equal
        h = 1e-6
        fd = (k(x + h * together, get=get)[0, 2] - k(x - h * together, get=get)[0, 2]) / (2 * h)
        assert abs(float((grad * together).sum()) - float(fd)) < 1e-8
    # images whose receptive fields coincide (zero borders): finite gradients, and NaN-free
    xi = torch.cat([images[:1], images[:1]]).clone().requires_grad_(True)
    kc = gk.serial(gk.Conv2d(3, padding="same", b_std=0.1), gk.Relu(), gk.Conv2d(3), gk.Relu(), gk.Flatten(), gk.Dense())
    kc(xi, get="ntk").sum().backward()
    assert torch.isfinite(xi.grad).all()


def test_forward_mode_matches_reverse_mode(vectors, images):
    """jvp (forward-mode, used by the scikit-learn gradient) against vjp (reverse mode), W and b."""
    for make, x in ((lambda w, b: gk.serial(gk.Dense(w, b), gk.Relu(), gk.Dense(w, b), gk.Sign(), gk.Dense(w, b)), vectors),
                    (lambda w, b: gk.serial(gk.Conv2d(3, padding="same", W_std=w, b_std=b), gk.ABRelu(b, w),
                                            gk.Conv2d(3, W_std=w), gk.Relu(), gk.Flatten(), gk.Dense(w, b)), images)):
        w0, b0 = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)
        for get in ("nngp", "ntk"):
            J = torch.autograd.functional.jacobian(lambda w, b: make(w, b)(x, get=get), (w0, b0))
            for which in (0, 1):
                with fwAD.dual_level():
                    w = fwAD.make_dual(w0, torch.tensor(float(which == 0), dtype=torch.float64))
                    b = fwAD.make_dual(b0, torch.tensor(float(which == 1), dtype=torch.float64))
                    tangent = fwAD.unpack_dual(make(w, b)(x, get=get)).tangent
                # two evaluation orders of the same derivative: float64 rounding of O(1) entries
                assert float((tangent - J[which]).abs().max()) < 1e-13 * float(J[which].abs().max() + 1)


def test_float_path_unchanged_by_tensor_arguments(vectors):
    """Tensor arguments that do not require grad give the float path's values (same IEEE
    operations: a 0-dim float64 tensor and a Python float multiply alike)."""
    a = gk.serial(gk.Dense(1.3, 0.2), gk.Erf(1.1, 0.9, 0.2), gk.Dense(1.3, 0.2), gk.Relu(), gk.Dense(1.1))
    f = lambda v: torch.tensor(v, dtype=torch.float64)
    b = gk.serial(gk.Dense(f(1.3), f(0.2)), gk.Erf(f(1.1), f(0.9), f(0.2)), gk.Dense(f(1.3), f(0.2)), gk.Relu(),
                  gk.Dense(f(1.1)))
    for get in ("nngp", "ntk"):
        assert torch.equal(a(vectors, get=get), b(vectors, get=get))
    assert a == b and hash(a) == hash(b)
    assert not torch.is_grad_enabled() or not a(vectors).requires_grad


def test_against_neural_tangents_jax_grad(vectors):
    """Gradients with respect to the inputs and W_std against jax.grad of neural-tangents'
    kernel_fn (inputs away from coincidence, where neural-tangents is exact)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    nt = pytest.importorskip("neural_tangents", reason="neural-tangents not installed (extra 'nt')")
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    stax = nt.stax
    X, Y = vectors.numpy(), vectors[:4].numpy()[::-1] * 0.8 + 0.05
    R = np.random.default_rng(0).normal(size=(X.shape[0], Y.shape[0]))
    cases = {  # one network of four activations (each jax.grad compiles: the slow part)
        "relu, erf, leaky relu, gelu": (
            lambda w: stax.serial(stax.Dense(1, W_std=w, b_std=0.3), stax.Relu(), stax.Dense(1, W_std=w, b_std=0.3),
                                  stax.Erf(), stax.Dense(1, W_std=w), stax.LeakyRelu(0.1), stax.Dense(1, W_std=w, b_std=0.1),
                                  stax.Gelu(), stax.Dense(1, W_std=w, b_std=0.2)),
            lambda w: gk.serial(gk.Dense(w, 0.3), gk.Relu(), gk.Dense(w, 0.3), gk.Erf(), gk.Dense(w), gk.LeakyRelu(0.1),
                                gk.Dense(w, 0.1), gk.Gelu(), gk.Dense(w, 0.2))),
    }
    for name, (theirs, ours) in cases.items():
        for get in ("nngp", "ntk"):
            def loss(x, w):
                return jnp.sum(theirs(w)[2](x, jnp.asarray(Y), get) * R)

            gx, gw = jax.grad(loss, argnums=(0, 1))(jnp.asarray(X), 1.3)
            x = torch.tensor(X, requires_grad=True)
            w = t(1.3)
            (ours(w)(x, torch.tensor(Y.copy()), get=get) * torch.tensor(R)).sum().backward()
            # two float64 implementations of the same derivative: rounding (measured <= 5e-16)
            assert np.abs(np.asarray(gx) - x.grad.numpy()).max() <= 1e-12 * np.abs(gx).max(), (name, get)
            assert abs(float(gw) - float(w.grad)) <= 1e-12 * abs(float(gw)), (name, get)


def test_variances_read_and_replaced():
    k = gk.serial(gk.Dense(1.0, 0.5), gk.Relu(), gk.Centred(gk.Dense(2.0)), gk.Relu(), gk.Dense(1.5, 0.1))
    assert variances(k) == ([1.0, 4.0, 2.25], [0.25, 0.010000000000000002])
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    k2 = with_variances(k, w, 0.04)
    assert [float(v.detach()) for v in variances(k2)[0]] == pytest.approx([1.0, 2.0, 3.0], rel=1e-15)
    assert variances(k2)[1] == pytest.approx([0.04, 0.04], rel=1e-15)
    x = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k2(x).sum().backward()
    assert torch.isfinite(w.grad).all() and bool((w.grad != 0).all())
    net = k2.network(8, in_shape=(4,))  # the finite network is drawn from the values
    assert net(x.float()).shape == (1, 3, 1)
    with pytest.raises(GpmarginError, match="weight_var has 2 entries but the network has 3"):
        with_variances(k, [1.0, 2.0])
    with pytest.raises(GpmarginError, match="must be non-negative"):
        with_variances(k, -1.0)
    assert doctest.testmod(hyperparameters).failed == 0


def test_bad_hyperparameters_and_paths_without_gradients(vectors):
    with pytest.raises(GpmarginError, match="W_std must be a number or a one-element floating tensor"):
        gk.Dense(torch.ones(2))
    with pytest.raises(GpmarginError, match="a must be a number"):
        gk.Erf("one")
    with pytest.raises(GpmarginError, match="W_std=inf must be finite"):
        gk.Dense(float("inf"))
    x = vectors.clone().requires_grad_(True)
    try:
        from gpmargin.kernels.nt import from_neural_tangents
        nt = pytest.importorskip("neural_tangents")
        wrapped = from_neural_tangents(nt.stax.serial(nt.stax.Dense(1), nt.stax.Relu(), nt.stax.Dense(1))[2])
    except pytest.skip.Exception:
        wrapped = None
    if wrapped is not None:
        with pytest.raises(GpmarginError, match="x1 require.* a wrapped neural-tangents kernel_fn cannot be differentiated"):
            wrapped(x)
        with pytest.raises(GpmarginError, match="cannot be differentiated"):
            wrapped.diag(x)
    from gpmargin.distributed.store import store_config

    with pytest.raises(GpmarginError, match="a kernel store cannot be differentiated"):
        store_config(gk.paper_mlp(2), x, vectors, ["nngp"], 4)
    with pytest.raises(GpmarginError, match="the kernel's hyperparameters require.*kernel store"):
        store_config(gk.serial(gk.Dense(t(1.0)), gk.Relu(), gk.Dense()), vectors, vectors, ["nngp"], 4)
