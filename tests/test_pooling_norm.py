"""Pools (AvgPool, SumPool, GlobalSumPool), circular padding, Conv1d, LayerNorm and Dropout, on
real MNIST: against neural-tangents (relative error 1e-10), against the extended-precision oracle
(``tests/oracles/extended.py``, 1e-12), against their finite networks (Monte Carlo within 4
standard errors, and the finite modules by hand), and their one-line shape errors.

Every network below is one neural-tangents accepts: an activation is fed by an affine layer
(possibly through a pool, a ``LayerNorm`` or a ``Dropout`` of Gaussian features), as
neural-tangents requires (``is_gaussian``).  ``LayerNorm`` of non-Gaussian features (the inputs,
activations), which neural-tangents refuses, is checked against the oracle and the finite
networks.  A ``LayerNorm`` over spatial axes scales identical receptive fields of different
images (or rows) differently, which makes them parallel but not identical -- where the ReLU-family
NTK is ill-conditioned (see the oracle's docstring) -- so such a ``LayerNorm`` feeds an ``Erf``
here.
"""

from __future__ import annotations

import importlib
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpmargin import kernels as gk
from gpmargin.errors import GpmarginError
from gpmargin.kernels.conv import Conv1d
from gpmargin.kernels.dropout import Dropout
from gpmargin.kernels.finite import Flow, Init
from gpmargin.kernels.normalization import LayerNorm
from gpmargin.kernels.pooling import AvgPool, GlobalSumPool, SumPool
from oracles.extended import LD, oracle_kernels

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
nt = pytest.importorskip("neural_tangents", reason="neural-tangents not installed (extra 'nt')")
importlib.import_module("gpmargin.kernels.nt")  # switches JAX to float64
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

stax = nt.stax
pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL = 1e-10  # against neural-tangents
ORACLE_RTOL = 1e-12
NT_DIAG_TOL = 1e-6  # neural-tangents' ReLU-NTK diagonal carries a sqrt(eps) angle (see test_kernels_nt)
Z = 4.0


# -- data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imgs(mnist_test):
    """6 MNIST test digits centre-cropped to 10x10, with a second channel: the transpose."""
    x, _ = mnist_test
    c = x[:6, :, 9:19, 9:19].double()
    return torch.cat([c, c.transpose(-1, -2)], dim=1)


@pytest.fixture(scope="module")
def vecs(mnist_test):
    """8 MNIST test digits as 196-pixel vectors (2x2-averaged), values in [0, 1] (mean > 0)."""
    x, _ = mnist_test
    return F.avg_pool2d(x[10:18].double(), 2).reshape(8, -1)


@pytest.fixture(scope="module")
def seqs(mnist_test):
    """6 digits as sequences (N, C, L): rows 8..19 are 12 channels, columns 6..21 16 steps."""
    x, _ = mnist_test
    return x[20:26, 0, 8:20, 6:22].double().contiguous()


# -- helpers --------------------------------------------------------------------------------------
def _nt_layout(x: torch.Tensor):
    a = x.numpy()
    if a.ndim == 4:  # NCHW -> NHWC
        a = np.transpose(a, (0, 2, 3, 1))
    elif a.ndim == 3:  # (N, C, L) -> (N, L, C): neural-tangents' 1-D layout
        a = np.transpose(a, (0, 2, 1))
    return jnp.asarray(a)


def nt_kernels(kfn, x1, x2=None):
    """neural-tangents' (nngp, ntk), compiled (op-by-op evaluation costs seconds per network)."""
    out = jax.jit(kfn, static_argnames="get")(_nt_layout(x1), None if x2 is None else _nt_layout(x2), ("nngp", "ntk"))
    return tuple(torch.from_numpy(np.array(o, dtype=np.float64)) for o in out)


def check_nt(ours, kfn, x1, x2=None) -> list[float]:
    """Ours against neural-tangents: off-diagonal (and x1-vs-x2) entries at RTOL, the diagonal at
    NT_DIAG_TOL; ``k.diag`` equals the matrix diagonal bit for bit.  Returns the errors."""
    a = ours(x1, x2, get=("nngp", "ntk"))
    b = nt_kernels(kfn, x1, x2)
    errs = []
    for name, p, q in zip(("nngp", "ntk"), a, b):
        assert torch.isfinite(p).all()
        scale = q.abs().max()
        if x2 is None:
            off = ~torch.eye(p.shape[0], dtype=torch.bool)
            err = float((p - q)[off].abs().max() / scale)
            assert float((p - q).diagonal().abs().max() / scale) < NT_DIAG_TOL, name
        else:
            err = float((p - q).abs().max() / scale)
        assert err < RTOL, (name, err)
        errs.append(err)
    if x2 is None:
        d = ours.diag(x1, get=("nngp", "ntk"))
        for p, q in zip(d, a):
            assert torch.equal(p, torch.diagonal(q))
    return errs


def rel_err(ours, oracle) -> float:
    a = np.asarray(ours.numpy(), dtype=LD)
    return float(np.max(np.abs(a - oracle)) / np.max(np.abs(oracle)))


def check_oracle(ours, x, spatial="full", x2=None, ntk=True) -> list[float]:
    """Ours against the longdouble oracle: ``k(x)`` (and ``k(x, x2)`` against the cross block of
    the oracle's Gram matrix of both sets) at ORACLE_RTOL."""
    info = {}
    both = x if x2 is None else torch.cat([x, x2])
    o = oracle_kernels(ours, both, ntk=ntk, spatial=spatial, info=info)
    get = ("nngp", "ntk") if ntk else ("nngp",)
    a = ours(x, x2, get=get if ntk else "nngp")
    a = a if ntk else (a,)
    n = x.shape[0]
    errs = []
    for p, q in zip(a, o):
        q = q if x2 is None else q[:n, n:]
        errs.append(rel_err(p, q))
    assert max(errs) < ORACLE_RTOL, errs
    assert info["min_gap"] > 1e-9  # no parallel, non-identical receptive fields (see the oracle)
    return errs


# -- pools ------------------------------------------------------------------------------------------
POOL_NETS = {
    # 10x10 -> conv 8x8 -> AvgPool 7x7 -> conv (same) -> AvgPool (same, stride 2: 4x4, padding 0
    # before, 1 after) -> circular conv -> Dropout of position pairs -> circular SumPool, read out
    # by Flatten ("flatten") or GlobalSumPool ("global_sum")
    "flatten": (
        [gk.Flatten(), gk.Dense()], [stax.Flatten(), stax.Dense(1)]),
    "global_sum": (
        [gk.Conv2d(1, W_std=0.6), gk.Erf(), GlobalSumPool(), gk.Dense(1.0, 0.1)],
        [stax.Conv(1, (1, 1), W_std=0.6), stax.Erf(), stax.GlobalSumPool(), stax.Dense(1, 1.0, 0.1)]),
}
POOL_BODY = (
    [gk.Conv2d(3, W_std=1.3, b_std=0.2), gk.Relu(), AvgPool((2, 2)), gk.Conv2d(3, 1, "same", 1.1, 0.1), gk.Relu(),
     AvgPool((3, 3), (2, 2), "same"), gk.Conv2d(2, 1, "circular", 1.1, 0.1), gk.Relu(), Dropout(0.7),
     SumPool((2, 1), (1, 1), "circular")],
    [stax.Conv(1, (3, 3), W_std=1.3, b_std=0.2), stax.Relu(), stax.AvgPool((2, 2)),
     stax.Conv(1, (3, 3), padding="SAME", W_std=1.1, b_std=0.1), stax.Relu(), stax.AvgPool((3, 3), (2, 2), "SAME"),
     stax.Conv(1, (2, 2), padding="CIRCULAR", W_std=1.1, b_std=0.1), stax.Relu(), stax.Dropout(0.7),
     stax.SumPool((2, 1), (1, 1), "CIRCULAR")],
)


@pytest.mark.parametrize("readout", sorted(POOL_NETS))
def test_pools_against_nt_and_oracle(readout, imgs):
    ours = gk.serial(*POOL_BODY[0], *POOL_NETS[readout][0])
    _, _, kfn = stax.serial(*POOL_BODY[1], *POOL_NETS[readout][1])
    check_nt(ours, kfn, imgs)
    check_oracle(ours, imgs)
    check_oracle(ours, imgs[:2], x2=imgs[2:])


def test_pool_geometry_and_means(imgs):
    # SumPool = AvgPool * window size: kernel * (k_h k_w)^2
    base = [gk.Conv2d(3, W_std=1.3, b_std=0.2), gk.Relu()]
    avg = gk.serial(*base, AvgPool((3, 2), (1, 2), "same"), gk.Flatten(), gk.Dense())
    tot = gk.serial(*base, SumPool((3, 2), (1, 2), "same"), gk.Flatten(), gk.Dense())
    assert torch.allclose(tot(imgs), avg(imgs) * 36, rtol=1e-13, atol=0)
    # an AvgPool over the whole image followed by Flatten is GlobalAvgPool
    x = imgs[:, :, :6, :6]
    whole = gk.serial(*base, AvgPool((4, 4)), gk.Flatten(), gk.Dense())
    gap = gk.serial(*base, gk.GlobalAvgPool(), gk.Dense())
    assert torch.allclose(whole(x), gap(x), rtol=1e-13, atol=0)
    # default strides are 1 (stax's), and the layer is a value
    assert AvgPool((2, 2)) == AvgPool((2, 2), (1, 1), "VALID") and AvgPool((2, 2)).strides == (1, 1)
    for layer in (AvgPool((2, 3), (2, 1), "circular"), SumPool((2,)), GlobalSumPool(), Conv1d(3, 2, "same", 1.5),
                  LayerNorm((1, 2, 3), 1e-5), Dropout(0.5, "test"), gk.Conv2d(3, padding="circular")):
        same = eval(repr(layer), {**vars(gk), **globals()})
        assert same == layer and hash(same) == hash(layer)
    # pools on the network inputs keep the channel count (a following Dense sees C*H*W features)
    k = gk.serial(AvgPool((2, 2), (2, 2)), gk.Flatten(), gk.Dense())
    pooled = F.avg_pool2d(imgs, 2)
    assert torch.allclose(k(imgs), gk.serial(gk.Flatten(), gk.Dense())(pooled), rtol=1e-13, atol=0)


# -- circular padding ---------------------------------------------------------------------------------
def test_circular_conv_diag_layout(imgs):
    ours = gk.serial(gk.Conv2d(3, 1, "circular", 1.3, 0.2), gk.Relu(), gk.Conv2d((3, 2), 2, "circular", 1.1, 0.1),
                     gk.Erf(), gk.Flatten(), gk.Dense())
    _, _, kfn = stax.serial(stax.Conv(1, (3, 3), (1, 1), "CIRCULAR", 1.3, 0.2), stax.Relu(),
                            stax.Conv(1, (3, 2), (2, 2), "CIRCULAR", 1.1, 0.1), stax.Erf(), stax.Flatten(),
                            stax.Dense(1))
    check_nt(ours, kfn, imgs)
    check_oracle(ours, imgs, spatial="diag")
    # the kernel of a circular convolution of the inputs is that of a valid one of the wrapped inputs
    wrapped = F.pad(imgs, (1, 1, 1, 1), mode="circular")
    valid = gk.serial(gk.Conv2d(3, 1, "valid", 1.3, 0.2), gk.Relu(), gk.Conv2d((3, 2), 2, "circular", 1.1, 0.1),
                      gk.Erf(), gk.Flatten(), gk.Dense())
    assert torch.allclose(ours(imgs), valid(wrapped), rtol=1e-13, atol=0)


# -- Conv1d on sequences ---------------------------------------------------------------------------------
def test_conv1d_sequences(seqs):
    ours = gk.serial(Conv1d(3, W_std=1.3, b_std=0.2), gk.Relu(), Conv1d(2, 2, "same", 1.1, 0.1), gk.Relu(),
                     AvgPool((2,)), Conv1d(3, 1, "circular"), LayerNorm(), gk.Relu(), gk.GlobalAvgPool(), gk.Dense())
    _, _, kfn = stax.serial(stax.Conv(1, (3,), W_std=1.3, b_std=0.2), stax.Relu(),
                            stax.Conv(1, (2,), (2,), "SAME", 1.1, 0.1), stax.Relu(), stax.AvgPool((2,)),
                            stax.Conv(1, (3,), padding="CIRCULAR"), stax.LayerNorm(), stax.Relu(),
                            stax.GlobalAvgPool(), stax.Dense(1))
    check_nt(ours, kfn, seqs)
    check_oracle(ours, seqs)
    # a sequence is an image of height 1, Conv1d(k) the Conv2d with window (1, k)
    flat = gk.serial(Conv1d(3, 2, "same", 1.2, 0.3), gk.Relu(), gk.Flatten(), gk.Dense())
    as_2d = gk.serial(gk.Conv2d((1, 3), (1, 2), "same", 1.2, 0.3), gk.Relu(), gk.Flatten(), gk.Dense())
    assert torch.equal(flat(seqs), as_2d(seqs[:, :, None, :]))
    # rows of a digit as 1-channel sequences
    rows = seqs[:, 4:5, :]
    check_oracle(gk.serial(Conv1d(4, W_std=1.3, b_std=0.2), gk.Erf(), Conv1d(3, padding="circular"), gk.Relu(),
                           gk.Flatten(), gk.Dense()), rows, spatial="diag")


# -- LayerNorm and Dropout ---------------------------------------------------------------------------------
def test_layernorm_dropout_mlp(vecs):
    ours = gk.serial(gk.Dense(1.3, 0.2), LayerNorm(), gk.Relu(), Dropout(0.8), gk.Dense(1.1, 0.1),
                     LayerNorm(axis=-1, eps=0.1), gk.Erf(), Dropout(0.6), gk.Dense())
    _, _, kfn = stax.serial(stax.Dense(1, 1.3, 0.2), stax.LayerNorm(), stax.Relu(), stax.Dropout(0.8),
                            stax.Dense(1, 1.1, 0.1), stax.LayerNorm(eps=0.1), stax.Erf(), stax.Dropout(0.6),
                            stax.Dense(1))
    check_nt(ours, kfn, vecs)
    check_oracle(ours, vecs)
    check_oracle(ours, vecs[:3], x2=vecs[3:])  # two input sets: distinct examples, independent masks
    # Dropout changes exactly the diagonal: by 1/rate after the last layer's Dense(1.0) without bias
    no_drop = gk.serial(*ours.layers[:-2], gk.Dense())
    a, b = ours(vecs), no_drop(vecs)
    off = ~torch.eye(8, dtype=torch.bool)
    assert torch.equal(a[off], b[off])
    assert torch.allclose(a.diagonal(), b.diagonal() / 0.6, rtol=1e-14, atol=0)
    assert torch.equal(gk.serial(*ours.layers[:-2], Dropout(0.6, "test"), gk.Dense())(vecs), b)


def test_layernorm_dropout_cnn(imgs):
    ours = gk.serial(gk.Conv2d(3, W_std=1.3, b_std=0.2), LayerNorm(1), gk.Relu(), Dropout(0.7),
                     gk.Conv2d(3, 1, "same", 1.1, 0.1), LayerNorm((1, 2, 3), eps=0.05), gk.Erf(),
                     gk.Conv2d(2, W_std=0.9), LayerNorm((-3, -1)), gk.Erf(), gk.Flatten(), gk.Dense())
    _, _, kfn = stax.serial(stax.Conv(1, (3, 3), W_std=1.3, b_std=0.2), stax.LayerNorm(-1), stax.Relu(),
                            stax.Dropout(0.7), stax.Conv(1, (3, 3), padding="SAME", W_std=1.1, b_std=0.1),
                            stax.LayerNorm((1, 2, 3), eps=0.05), stax.Erf(), stax.Conv(1, (2, 2), W_std=0.9),
                            stax.LayerNorm((3, 2)), stax.Erf(), stax.Flatten(), stax.Dense(1))
    check_nt(ours, kfn, imgs)
    check_oracle(ours, imgs, spatial="diag")
    # the same network read out by GlobalAvgPool: the full position-position layout
    gap = gk.serial(*ours.layers[:-2], gk.GlobalAvgPool(), gk.Dense())
    check_oracle(gap, imgs[:4, :, 2:9, 2:9])


def test_layernorm_of_non_gaussian_features(vecs, imgs):
    """Inputs and activations have a non-zero mean over units, which the finite LayerNorm
    subtracts (neural-tangents refuses these); on the inputs the kernel is exact."""
    mlp = gk.serial(LayerNorm(), gk.Dense(1.3, 0.2), gk.Relu(), LayerNorm(eps=0.01), gk.Dense(1.1), gk.Relu(), gk.Dense())
    check_oracle(mlp, vecs)
    # (a LayerNorm over the 2 input channels at each position would map them to about +-1, 0:
    # nearly parallel receptive fields, ill-conditioned for a ReLU; it feeds an Erf)
    cnn = gk.serial(LayerNorm((1, 2, 3)), gk.Conv2d(3, W_std=1.3, b_std=0.2), gk.Relu(), LayerNorm(1), gk.Conv2d(3),
                    gk.Relu(), gk.Flatten(), gk.Dense())
    check_oracle(cnn, imgs, spatial="diag")
    cnn = gk.serial(LayerNorm(), gk.Conv2d(3, W_std=1.3, b_std=0.2), gk.Erf(), LayerNorm((1, 2)), gk.Conv2d(3),
                    gk.Relu(), gk.Flatten(), gk.Dense())
    check_oracle(cnn, imgs, spatial="diag")
    # LayerNorm of the inputs is the Dense kernel of the normalised inputs (finite width: exact)
    z = (vecs - vecs.mean(1, keepdim=True)) / (vecs.var(1, unbiased=False, keepdim=True) + 1e-12).sqrt()
    k = gk.serial(LayerNorm(), gk.Dense(1.2, 0.3), gk.Relu(), gk.Dense())
    ref = gk.serial(gk.Dense(1.2, 0.3), gk.Relu(), gk.Dense())
    assert torch.allclose(k(vecs, get="ntk"), ref(z, get="ntk"), rtol=1e-13, atol=0)
    zi = (imgs - imgs.mean((1, 2, 3), keepdim=True)) / (imgs.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-12).sqrt()
    k = gk.serial(LayerNorm((1, 2, 3)), gk.Conv2d(3, b_std=0.1), gk.Relu(), gk.Flatten(), gk.Dense())
    ref = gk.serial(gk.Conv2d(3, b_std=0.1), gk.Relu(), gk.Flatten(), gk.Dense())
    assert torch.allclose(k(imgs), ref(zi), rtol=1e-12, atol=0)
    with pytest.raises(NotImplementedError):  # neural-tangents: "only implemented for Gaussian inputs"
        stax.serial(stax.LayerNorm(), stax.Dense(1))[2](_nt_layout(vecs[:2]), None, "nngp")


def _mc_nngp(kernel, x, width, members, readouts, batch, seed=0):
    samples = []
    for b in range(members // batch):
        net = kernel.network(width, in_shape=tuple(x.shape[1:]), members=batch, seed=seed + b, outputs=readouts,
                             dtype=torch.float64)
        with torch.no_grad():
            f = net(x)  # (batch, N, readouts)
        samples.append(f @ f.transpose(1, 2) / readouts)
    s = torch.cat(samples)
    return s.mean(0), s.std(0) / math.sqrt(s.shape[0])


def test_layernorm_dropout_monte_carlo(vecs):
    """Finite networks (LayerNorm of the inputs and of activations, Dropout masks drawn at every
    forward pass) against the kernel, within Z standard errors."""
    x = vecs[:5]
    k = gk.serial(LayerNorm(), gk.Dense(1.3, 0.2), gk.Relu(), LayerNorm(), gk.Dense(1.1, 0.1), gk.Relu(),
                  Dropout(0.7), gk.Dense())
    torch.manual_seed(0)  # the dropout masks
    mean, se = _mc_nngp(k, x, width=384, members=160, readouts=96, batch=40, seed=3)
    z = float(((mean - k(x)).abs() / se).max())
    assert z < Z, z
    # the Monte Carlo resolves the dropout (the diagonal / 0.7)
    no_drop = gk.serial(*k.layers[:-2], gk.Dense())
    assert float(((mean - no_drop(x)).abs() / se).max()) > 4 * Z


# -- finite modules ------------------------------------------------------------------------------------
def _init(members=2):
    return Init("ntk", [11 + j for j in range(members)], True, torch.float64, "cpu")


def test_finite_pools_and_circular_conv(imgs):
    x = imgs[:3]
    for layer, ref in (
        (AvgPool((3, 3), (2, 2), "same"), lambda t: F.avg_pool2d(F.pad(t, (0, 1, 0, 1)), 3, 2)),
        (SumPool((2, 3), (1, 2), "circular"), lambda t: 6 * F.avg_pool2d(F.pad(t, (0, 1, 0, 1), mode="circular"),
                                                                        (2, 3), (1, 2))),
        (AvgPool((3, 3), padding="circular"), lambda t: F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="circular"), 3, 1)),
    ):
        mod, shape = layer.module(tuple(x.shape[1:]), None, _init())
        out = mod(Flow(x, "shared", 2))
        assert out.layout == "shared" and tuple(out.h.shape[1:]) == shape
        assert torch.allclose(out.h, ref(x), rtol=1e-14, atol=1e-15)
        grouped = mod(Flow(torch.cat([x, 2 * x], 1), "image", 2))  # two members' channel groups
        assert torch.allclose(grouped.h, torch.cat([ref(x), ref(2 * x)], 1), rtol=1e-14, atol=1e-15)
    h = torch.rand(3, 2 * 4, 5, 5, dtype=torch.float64)
    s = GlobalSumPool().finite(Flow(h, "image", 2))
    assert s.layout == "vector" and torch.allclose(s.h, h.sum((2, 3)).reshape(3, 2, 4).permute(1, 2, 0))
    # circular Conv2d: F.pad(mode="circular") then a valid convolution
    conv = gk.Conv2d((3, 2), 2, "circular", 1.3, 0.2)
    mod, shape = conv.module(tuple(x.shape[1:]), 4, _init())
    out = mod(Flow(x, "shared", 2))
    assert tuple(out.h.shape[1:]) == (2 * 4, *shape[1:]) and shape == (4, 5, 5)
    w, b = mod.weight.detach(), mod.bias.detach()
    xp = F.pad(x, (0, 0, 0, 1), mode="circular")  # 10 -> 5 with stride 2: padding 1 (rows, after), 0 (columns)
    for j in range(2):
        ref = F.conv2d(xp, w[j] * mod.w_mult, b[j] * mod.b_mult, 2)
        assert torch.allclose(out.h[:, 4 * j : 4 * j + 4], ref, rtol=1e-13, atol=1e-14)


def test_finite_conv1d_network(seqs):
    k = gk.serial(Conv1d(3, 2, "circular", 1.3, 0.2), gk.Relu(), gk.Flatten(), gk.Dense())
    c, length = seqs.shape[1:]
    net = k.network(6, in_shape=(c, length), members=2, dtype=torch.float64)  # a sequence (C, L)
    w0, w1 = net.weights
    b0 = net.biases[0]
    assert w0.shape == (2, 6, c, 1, 3)
    out = net(seqs)
    torch.testing.assert_close(net(seqs[None].expand(2, -1, -1, -1)), out, rtol=0, atol=0)  # per-member inputs
    torch.testing.assert_close(k.network(6, in_shape=(c, 1, length), members=2, dtype=torch.float64)(seqs[:, :, None]),
                               out, rtol=0, atol=0)  # the same network as an image of height 1
    xp = F.pad(seqs, (0, 1), mode="circular")  # L = 16, stride 2: 8 outputs, padding 1 (after)
    for j in range(2):
        h = F.conv1d(xp, w0[j, :, :, 0] * (1.3 / math.sqrt(3 * c)), b0[j] * 0.2, stride=2).relu().flatten(1)
        assert torch.allclose(out[j], h @ w1[j].T / math.sqrt(h.shape[1]), rtol=1e-12, atol=1e-13)


def test_finite_layernorm_layouts():
    torch.manual_seed(1)
    ln = LayerNorm((1, 3), eps=1e-3)
    x = torch.randn(4, 2 * 3, 5, 6, dtype=torch.float64) * 3 + 1
    ref = torch.cat([(g - g.mean((1, 3), keepdim=True)) / (g.var((1, 3), unbiased=False, keepdim=True) + 1e-3).sqrt()
                     for g in x.split(3, dim=1)], 1)
    assert torch.allclose(ln.finite(Flow(x, "image", 2)).h, ref, rtol=1e-13, atol=1e-14)
    shared = ln.finite(Flow(x[:, :3], "shared", 2))
    assert shared.layout == "shared" and torch.allclose(shared.h, ref[:, :3], rtol=1e-13, atol=1e-14)
    v = torch.randn(2, 7, 4, dtype=torch.float64) + 2  # (k, features, n)
    out = LayerNorm().finite(Flow(v, "vector", 2, {1.5: 1}))  # the pending factor is applied first
    u = 1.5 * v
    ref = (u - u.mean(1, keepdim=True)) / (u.var(1, unbiased=False, keepdim=True) + 1e-12).sqrt()
    assert out.factors == {} and torch.allclose(out.h, ref, rtol=1e-13, atol=1e-14)


def test_finite_dropout():
    d = Dropout(0.25)
    mod, _ = d.module((None,), None, _init())
    h = torch.ones(2, 4000, 3, dtype=torch.float64)
    torch.manual_seed(0)
    out = mod(Flow(h.clone(), "vector", 2, {2.0: 1}))
    kept = out.h != 0
    assert out.factors == {2.0: 1} and torch.all(out.h[kept] == 4.0)  # inverted dropout: 1 / rate
    assert abs(float(kept.double().mean()) - 0.25) < 0.01
    mod.eval()
    assert torch.equal(mod(Flow(h, "vector", 2)).h, h)
    assert torch.equal(Dropout(0.25, "test").finite(Flow(h, "vector", 2)).h, h)


# -- errors ---------------------------------------------------------------------------------------------
def _one_line(call, words):
    with pytest.raises(GpmarginError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("call, words", [
    (lambda v, i: gk.serial(gk.Dense(), AvgPool((2, 2)), gk.Flatten(), gk.Dense())(v),
     ["AvgPool(window_shape=(2, 2), strides=(1, 1), padding='valid') cannot take input of shape vector", "vectors"]),
    (lambda v, i: gk.serial(gk.Conv2d(3), gk.Relu(), SumPool((9, 9)), gk.Flatten(), gk.Dense())(i),
     ["SumPool(", "image (inf, 8, 8)", "does not fit the 8x8 image"]),
    (lambda v, i: gk.serial(AvgPool((3,)), gk.Flatten(), gk.Dense())(i), ["(3,)", "pools sequences"]),
    (lambda v, i: gk.serial(Conv1d(3), gk.Flatten(), gk.Dense())(i), ["Conv1d(", "image (2, 10, 10)", "(N, C, L)"]),
    (lambda v, i: gk.serial(Conv1d(30), gk.Flatten(), gk.Dense())(i[:, :, 0]), ["length-10 sequence"]),
    (lambda v, i: gk.serial(gk.Dense(), LayerNorm(5), gk.Dense())(v),
     ["LayerNorm(axis=5, eps=1e-12) cannot take input of shape vector (inf)", "axis 5 does not exist"]),
    (lambda v, i: gk.serial(gk.Conv2d(3), LayerNorm(-1), gk.Flatten(), gk.Dense())(i), ["channel / feature axis 1"]),
    (lambda v, i: gk.serial(gk.Conv2d(3), LayerNorm((0, 1)), gk.Flatten(), gk.Dense())(i), ["batch axis 0"]),
    (lambda v, i: gk.serial(gk.Erf(), LayerNorm(), gk.Dense())(v), ["needs the mean over units"]),
    (lambda v, i: gk.serial(Dropout(0.5), gk.Dense())(v), ["Dropout(rate=0.5, mode='train')", "network inputs"]),
    (lambda v, i: Dropout(0.0), ["rate=0.0", "(0, 1]"]),
    (lambda v, i: Dropout(1.5), ["rate=1.5", "keep probability"]),
    (lambda v, i: Dropout(0.5, "eval"), ["mode='eval'"]),
    (lambda v, i: gk.Conv2d(3, padding="reflect"), ["padding='reflect'", "circular"]),
    (lambda v, i: AvgPool((2, 2, 2)), ["window_shape"]),
    (lambda v, i: AvgPool((2, 2), strides=(0, 1)), ["strides"]),
    (lambda v, i: LayerNorm("channels"), ["axis='channels'"]),
])
def test_errors_are_one_line(call, words, vecs, imgs):
    _one_line(lambda: call(vecs, imgs), words)


def test_pooled_cnn_monte_carlo(imgs):
    """A finite CNN with circular padding, AvgPool, LayerNorm over an image and GlobalSumPool
    against its kernel, within Z standard errors."""
    x = imgs[:4, :, 2:8, 2:8]
    k = gk.serial(gk.Conv2d(3, 1, "circular", 1.3, 0.2), gk.Relu(), AvgPool((2, 2), (2, 2), "same"),
                  gk.Conv2d(2, 1, "circular", 1.1, 0.1), LayerNorm((1, 2, 3)), gk.Erf(), GlobalSumPool(),
                  gk.Dense(0.5))
    mean, se = _mc_nngp(k, x, width=128, members=120, readouts=64, batch=40, seed=7)
    z = float(((mean - k(x)).abs() / se).max())
    assert z < Z, z
    # it resolves the pool's cross-position terms: the filter average (a 2x2 stride-2 Conv2d of
    # W_std = 1, which keeps only the same-offset pairs) is far off
    conv = gk.serial(*k.layers[:2], gk.Conv2d(2, 2, "same"), *k.layers[3:])
    assert float(((mean - conv(x)).abs() / se).max()) > 4 * Z
