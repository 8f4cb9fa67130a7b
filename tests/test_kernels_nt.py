"""gpmargin.kernels against neural-tangents (float64, relative error 1e-10), on real MNIST."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
nt = pytest.importorskip("neural_tangents", reason="neural-tangents not installed (extra 'nt'); skipping the NT oracle tests")
stax = nt.stax

from gpmargin import kernels as gk  # noqa: E402
from gpmargin.kernels.nt import from_neural_tangents  # noqa: E402

RTOL = 1e-10
# On the diagonal of k(x, x) neural-tangents evaluates the arc-cosine angle as
# arctan2(sqrt(v*v - K^2), K) with v*v - K^2 at rounding level, so its angle is ~sqrt(eps) ~ 1e-8
# instead of 0 and its ReLU-NTK diagonal is off by ~1e-8 relative (the NNGP only to second order).
# gpmargin uses theta = 0 exactly there; those entries are compared to NT at this looser
# tolerance and to the exact diagonal (``k.diag``, and closed forms in the preset tests) at RTOL.
NT_DIAG_TOL = 1e-6
SQRT2 = math.sqrt(2.0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest entry of the reference."""
    assert a.shape == b.shape and a.dtype == torch.float64 and b.dtype == torch.float64
    return float((a - b).abs().max() / b.abs().max())


def check(ours, theirs_fn, x1, x2=None, ntk=True):
    theirs = from_neural_tangents(theirs_fn)
    get = ("nngp", "ntk") if ntk else "nngp"
    a = ours(x1, x2, get=get)
    b = theirs(x1, x2, get=get)
    a, b = (a, b) if ntk else ((a,), (b,))
    for name, p, q in zip(("nngp", "ntk"), a, b):
        assert torch.isfinite(p).all()
        if x2 is None:
            off = ~torch.eye(p.shape[0], dtype=torch.bool)
            scale = q.abs().max()
            assert float((p - q)[off].abs().max() / scale) < RTOL, name
            assert float((p - q).diagonal().abs().max() / scale) < NT_DIAG_TOL, name
        else:
            assert rel_err(p, q) < RTOL, (name, rel_err(p, q))
    # the diagonal computed without the matrix equals the matrix diagonal
    if x2 is None:
        d = ours.diag(x1, get=get)
        for p, q in zip(d if ntk else (d,), a):
            assert rel_err(p, torch.diagonal(q)) < 1e-13


def _mnist_rows(x: torch.Tensor) -> torch.Tensor:
    """The paper's preprocessing: standardise with MNIST's mean/std, flatten, rescale rows to norm sqrt(d)."""
    z = ((x.double() - 0.1307) / 0.3081).reshape(x.shape[0], -1)
    return z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def vecs(mnist_test):
    x, _ = mnist_test
    return _mnist_rows(x[:200])


@pytest.fixture(scope="module")
def small_images(mnist_test):
    """14 MNIST digits, centre-cropped to 12x12, with a second channel (the transpose)."""
    x, _ = mnist_test
    c = x[200:214, :, 8:20, 8:20].double()
    return torch.cat([c, c.transpose(-1, -2)], dim=1)


# -- single layers on vectors --------------------------------------------------------------
LAYERS_VEC = {
    "dense": (gk.Dense(1.3, 0.4), stax.Dense(1, 1.3, 0.4)),
    "dense_nobias": (gk.Dense(0.7), stax.Dense(1, 0.7)),
    "relu": (gk.serial(gk.Dense(1.2, 0.1), gk.Relu(SQRT2), gk.Dense(0.9, 0.3)),
             stax.serial(stax.Dense(1, 1.2, 0.1), stax.ABRelu(0, SQRT2), stax.Dense(1, 0.9, 0.3))),
    "relu_plain": (gk.serial(gk.Dense(), gk.Relu(), gk.Dense()), stax.serial(stax.Dense(1), stax.Relu(), stax.Dense(1))),
    "leaky": (gk.serial(gk.Dense(1.0, 0.2), gk.LeakyRelu(0.1), gk.Dense()),
              stax.serial(stax.Dense(1, 1.0, 0.2), stax.LeakyRelu(0.1), stax.Dense(1))),
    "abrelu": (gk.serial(gk.Dense(1.1), gk.ABRelu(-0.5, 1.5), gk.Dense(0.8, 0.5)),
               stax.serial(stax.Dense(1, 1.1), stax.ABRelu(-0.5, 1.5), stax.Dense(1, 0.8, 0.5))),
    "erf": (gk.serial(gk.Dense(1.5, 0.3), gk.Erf(), gk.Dense()), stax.serial(stax.Dense(1, 1.5, 0.3), stax.Erf(), stax.Dense(1))),
    "erf_abc": (gk.serial(gk.Dense(1.0), gk.Erf(0.7, 1.8, 0.2), gk.Dense(1.2, 0.1)),
                stax.serial(stax.Dense(1, 1.0), stax.Erf(0.7, 1.8, 0.2), stax.Dense(1, 1.2, 0.1))),
    "identity": (gk.serial(gk.Dense(1.0, 0.5), gk.Identity(), gk.Dense(2.0)),
                 stax.serial(stax.Dense(1, 1.0, 0.5), stax.Identity(), stax.Dense(1, 2.0))),
    "flatten_vector": (gk.serial(gk.Flatten(), gk.Dense()), stax.serial(stax.Flatten(), stax.Dense(1))),
}


@pytest.mark.parametrize("name", sorted(LAYERS_VEC))
def test_layer_on_vectors(name, vecs):
    ours, (_, _, kfn) = LAYERS_VEC[name]
    check(ours, kfn, vecs[:60])
    check(ours, kfn, vecs[:30], vecs[100:140])


# -- convolutional layers ------------------------------------------------------------------
def _conv_pair(k, stride, padding, W_std, b_std):
    return gk.Conv2d(k, stride, padding, W_std, b_std), stax.Conv(1, (k, k) if isinstance(k, int) else k,
                                                                  (stride, stride), padding.upper(), W_std, b_std)


CONV_CASES = {
    "valid5": ((5, 1, "valid", 1.0, None), "flatten"),
    "same3_bias": ((3, 1, "same", 1.4, 0.3), "flatten"),
    "same4_stride2": ((4, 2, "same", 1.0, 0.1), "flatten"),
    "valid3_stride2": (((3, 2), 2, "valid", 0.9, None), "flatten"),
    "same3_gap": ((3, 1, "same", 1.2, 0.2), "gap"),
    "valid3_gap": ((3, 1, "valid", 1.0, None), "gap"),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv_layers(name, small_images):
    (k, s, p, w, b), readout = CONV_CASES[name]
    c1, n1 = _conv_pair(k, s, p, w, b)
    c2, n2 = _conv_pair(3, 1, "same", 1.1, 0.1)
    g_read, n_read = (gk.Flatten(), stax.Flatten()) if readout == "flatten" else (gk.GlobalAvgPool(), stax.GlobalAvgPool())
    ours = gk.serial(c1, gk.Relu(), c2, gk.Erf(), g_read, gk.Dense(1.0, 0.1))
    _, _, kfn = stax.serial(n1, stax.Relu(), n2, stax.Erf(), n_read, stax.Dense(1, 1.0, 0.1))
    x = small_images if readout == "flatten" else small_images[:7, :, 3:9, 3:9]
    check(ours, kfn, x)
    check(ours, kfn, x[:3], x[4:])


# -- presets on real MNIST -----------------------------------------------------------------
def _nt_paper_mlp(depth):
    layers = []
    for _ in range(depth - 1):
        layers += [stax.Dense(1, 1.0), stax.ABRelu(0, SQRT2)]
    layers.append(stax.Dense(1, 1.0))
    return stax.serial(*layers)[2]


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_paper_mlp_equals_nt(depth, vecs):
    k = gk.paper_mlp(depth)
    check(k, _nt_paper_mlp(depth), vecs)
    # exact diagonal for unit-variance inputs: ReLU*sqrt(2) preserves variance 1, so the NTK
    # gains 1 per weight matrix
    nngp, ntk = k(vecs[:50], get=("nngp", "ntk"))
    assert torch.allclose(nngp.diagonal(), torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-13)
    assert torch.allclose(ntk.diagonal(), torch.full((50,), float(depth), dtype=torch.float64), rtol=0, atol=1e-12)


def test_paper_mlp_equals_nt_tiled(vecs):
    """Tiling (several row and column tiles, a ragged last tile) does not change the numbers."""
    ours = gk.paper_mlp(5)
    theirs = from_neural_tangents(_nt_paper_mlp(5))
    a = ours(vecs[:70], vecs[130:], get=("nngp", "ntk"), batch_size=32)
    b = theirs(vecs[:70], vecs[130:], get=("nngp", "ntk"))
    assert rel_err(a[0], b[0]) < RTOL and rel_err(a[1], b[1]) < RTOL
    whole = ours(vecs, get=("nngp", "ntk"))
    tiled = ours(vecs, get=("nngp", "ntk"), batch_size=48)
    for p, q in zip(tiled, whole):
        assert rel_err(p, q) < 1e-12  # only matmul blocking differs


def test_paper_cnn_equals_nt(mnist_test):
    x, _ = mnist_test
    imgs = ((x[300:360].double() - 0.1307) / 0.3081)
    _, _, kfn = stax.serial(
        stax.Conv(1, (5, 5), padding="VALID"), stax.Relu(),
        stax.Conv(1, (5, 5), padding="VALID"), stax.Relu(),
        stax.Flatten(), stax.Dense(1), stax.Relu(), stax.Dense(1),
    )
    check(gk.paper_cnn(depth=4), kfn, imgs)


def test_bridge_call_signature(vecs):
    from gpmargin.errors import GpmarginError

    _, _, kfn = stax.serial(stax.Dense(1, 1.0, 0.1), stax.Relu(), stax.Dense(1))
    k = from_neural_tangents(kfn, jit=True, diag_block=7)
    nngp, ntk = k(vecs[:20].numpy(), get=("nngp", "ntk"))
    assert isinstance(nngp, torch.Tensor) and nngp.dtype == torch.float64 and nngp.shape == (20, 20)
    # get="nngp" is another jitted XLA program than get=("nngp", "ntk") (fused differently), so only
    # round-off may differ: a length-784 reduction, a few ulps x sqrt(784) ~ 1e-14 relative (equal here)
    assert rel_err(k(vecs[:20], get="nngp"), nngp) < 1e-13
    # NT's ReLU-NTK diagonal carries its sqrt(eps) angle noise, which differs between block sizes
    assert torch.allclose(k.diag(vecs[:20], get="ntk"), ntk.diagonal(), rtol=NT_DIAG_TOL, atol=0)
    d_nngp, d_ntk = k.diag(vecs[:20], get=("nngp", "ntk"))
    assert torch.allclose(d_nngp, nngp.diagonal(), rtol=1e-12, atol=0)
    assert torch.allclose(d_ntk, ntk.diagonal(), rtol=NT_DIAG_TOL, atol=0)
    assert k(vecs[:3], vecs[5:9], get="ntk").shape == (3, 4)
    with pytest.raises(GpmarginError, match="shape"):
        k(vecs[:3], torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(GpmarginError, match="get="):
        k(vecs[:3], get="cov1")
