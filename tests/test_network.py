"""Finite networks built by kernel objects (``k.network``): shapes, the batched forward pass against
plain per-member torch code, seeding, the two parameterisations, and one-line errors.

(Agreement of the networks' NNGP/NTK with the kernels is in ``test_kernels_mc.py``.)
Inputs are real scikit-learn digits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpmargin import kernels as gk
from gpmargin.errors import GpmarginError
from gpmargin.kernels.state import Spec


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images[:6] / 16.0, dtype=torch.float64)  # (6, 8, 8)


MLP = gk.serial(gk.Dense(1.3, 0.4), gk.Relu(math.sqrt(2)), gk.Dense(0.9, 0.2), gk.Erf(0.8, 1.5, 0.1),
                gk.Dense(1.1, 0.3), gk.LeakyRelu(-0.3), gk.Dense(1.0))
CNN = gk.serial(gk.Conv2d(3, b_std=0.2), gk.ABRelu(-0.5, 1.2), gk.Conv2d((3, 2), stride=2, padding="same", W_std=1.4),
                gk.Relu(), gk.Flatten(), gk.Dense(1.0, 0.1), gk.Identity(), gk.Dense())
CHAIN = gk.serial(gk.Dense(), gk.Relu(2.0), gk.Relu(1.5), gk.Erf(), gk.Dense(), gk.LeakyRelu(0.1),
                  gk.ABRelu(0.5, -1.0), gk.Dense(W_std=0.7))  # activations back to back, pending scales
GAP = gk.serial(gk.Centred(gk.Conv2d(3)), gk.Relu(), gk.Centred(gk.Conv2d(3, padding="same")), gk.Relu(),
                gk.GlobalAvgPool(), gk.Centred(gk.Dense()))


def _phi(layer, h):
    """The activation by its textbook formula."""
    if isinstance(layer, gk.ABRelu):
        return layer.a * torch.clamp(h, max=0) + layer.b * torch.clamp(h, min=0)
    if isinstance(layer, gk.Erf):
        return layer.a * torch.erf(layer.b * h) + layer.c
    assert isinstance(layer, gk.Identity)
    return h


def reference(net, x, j):
    """Member ``j`` of ``net`` by hand: unbatched torch ops on its own parameter slices, the
    pre-activation ``w_mult * W x + b_mult * b`` of every affine layer written out."""
    h = x
    for layer, mod in zip(net.kernel.layers, net.layers):
        inner = layer.layer if isinstance(layer, gk.Centred) else layer
        if isinstance(inner, gk.Dense):
            h = mod.w_mult * h @ mod.weight[j].T
        elif isinstance(inner, gk.Conv2d):
            _, (pt, pb), (pl, pr) = inner._pads(h.shape[-2], h.shape[-1])
            h = mod.w_mult * F.conv2d(F.pad(h, (pl, pr, pt, pb)), mod.weight[j], stride=inner.stride)
        elif isinstance(layer, gk.Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(layer, gk.GlobalAvgPool):
            h = h.mean(dim=(-2, -1))
        else:
            h = _phi(layer, h)
        if hasattr(mod, "bias") and mod.bias is not None:
            b = mod.b_mult * mod.bias[j]
            h = h + (b if h.dim() == 2 else b[:, None, None])
    return h


@pytest.mark.parametrize("name", ["mlp", "chain", "cnn", "gap"])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_batched_forward_equals_each_member_by_hand(digits, name, parameterization):
    kernel = {"mlp": MLP, "chain": CHAIN, "cnn": CNN, "gap": GAP}[name]
    x = digits.reshape(6, -1) if name in ("mlp", "chain") else digits[:, None]
    width = 12 if name in ("mlp", "chain") else [5, 4, 7][: 3 if name == "cnn" else 2]
    net = kernel.network(width, in_shape=tuple(x.shape[1:]), parameterization=parameterization, members=3, seed=4,
                         outputs=2, dtype=torch.float64)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (3, 6, 2)
        for j in range(3):
            torch.testing.assert_close(out[j], reference(net, x, j), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(net.member(j)(x), out[j], rtol=1e-12, atol=1e-12)
        # per-member inputs (members, n, ...) give each member its own batch
        xs = torch.stack([x, x.flip(0), 2 * x])
        per = net(xs)
        for j in range(3):
            torch.testing.assert_close(per[j], net(xs[j])[j], rtol=1e-12, atol=1e-12)
    # gradients reach every parameter
    net(x).square().sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())


def test_shapes_widths_and_attributes():
    net = CNN.network([5, 4, 7], in_shape=(1, 8, 8), members=3, outputs=10)
    assert [tuple(w.shape) for w in net.weights] == [(3, 5, 1, 3, 3), (3, 4, 5, 3, 2), (3, 7, 4 * 3 * 3), (3, 10, 7)]
    assert [tuple(b.shape) for b in net.biases] == [(3, 5), (3, 7)]
    assert net.out_shape == (10,) and net.batch_dims == 1 and net.members == 3
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert [tuple(m.shape) for m in net.weight_matrices()[2]] == [(5, 9), (4, 30), (7, 36), (10, 7)]
    single = net.member(1)
    assert single.members is None and single.batch_dims == 0 and tuple(single.weights[0].shape) == (5, 1, 3, 3)
    assert single(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert gk.paper_mlp(4).network(16, in_shape=64, members=2)(torch.zeros(5, 64)).shape == (2, 5, 1)


def test_seeding_is_per_member_and_reproducible():
    a = MLP.network(16, in_shape=64, members=4, seed=7)
    b = MLP.network(16, in_shape=64, members=2, seed=7)
    c = MLP.network(16, in_shape=64, members=4, seed=8)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa[:2], pb)  # member j does not depend on how many members there are
        assert not torch.equal(pa, pc)
        for i in range(4):  # members are different draws
            assert all(not torch.equal(pa[i], pa[j]) for j in range(i))
    # member j's weight is the first draw of its own generator, scaled as the parameterisation says
    g = torch.Generator().manual_seed(gk.member_seed(7, 3))
    z = torch.randn(16, 64, generator=g, dtype=torch.float64)
    torch.testing.assert_close(a.weights[0][3], z.float(), rtol=0, atol=0)
    assert gk.member_seed(7, 3) == 7003
    std = MLP.network(16, in_shape=64, members=4, seed=7, parameterization="standard")
    torch.testing.assert_close(std.weights[0][3], (z * 1.3 / 8).float(), rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [MLP, CNN, GAP], ids=["mlp", "cnn", "centred-gap"])
def test_standard_and_ntk_parameterisations_agree_at_init(digits, kernel):
    x = digits.reshape(6, -1) if kernel is MLP else digits[:, None]
    kw = dict(in_shape=tuple(x.shape[1:]), members=3, seed=2, outputs=3, dtype=torch.float64)
    width = 16 if kernel is MLP else [6, 5, 8][: len(kernel.layers) and (3 if kernel is CNN else 2)]
    ntk, std = kernel.network(width, parameterization="ntk", **kw), kernel.network(width, parameterization="standard", **kw)
    with torch.no_grad():
        torch.testing.assert_close(ntk(x), std(x), rtol=1e-12, atol=1e-12)
    # but the parameters differ (standard ones carry W_std / sqrt(fan_in))
    assert not torch.equal(ntk.weights[1], std.weights[1])


def test_centred_rows_have_zero_mean_and_norm_w_std():
    k = gk.serial(gk.Centred(gk.Conv2d(3)), gk.Relu(), gk.Centred(gk.Conv2d(3)), gk.Relu(), gk.Flatten(), gk.Dense())
    net = gk.serial(gk.Centred(gk.Dense(W_std=2.0)), gk.Relu(), gk.Centred(gk.Dense())).network(
        32, in_shape=20, members=2, parameterization="standard", dtype=torch.float64)
    w = net.weights[0]
    torch.testing.assert_close(w.sum(-1), torch.zeros(2, 32, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w.norm(dim=-1), torch.full((2, 32), 2.0, dtype=torch.float64))
    conv = k.network(6, in_shape=(2, 8, 8), members=2, dtype=torch.float64).weights[1]  # NTK: norm sqrt(fan_in)
    rows = conv.reshape(2, 6, -1)
    torch.testing.assert_close(rows.norm(dim=-1), torch.full((2, 6), math.sqrt(6 * 9), dtype=torch.float64))


def test_validation_models_are_networks_of_the_paper_kernels(digits):
    from validation.training.models import EnsembleConvNet, EnsembleMLP

    x = digits.reshape(6, -1)
    ens = EnsembleMLP(2, 64, 3, 16, 1, seed=5, dtype=torch.float64)
    ref = gk.paper_mlp(3).network(16, in_shape=64, members=2, seed=5, parameterization="standard",
                                  dtype=torch.float64)
    assert repr(ens.kernel) == repr(gk.paper_mlp(3))
    for a, b in zip(ens.weights, ref.weights):
        assert torch.equal(a, b)
    with torch.no_grad():
        torch.testing.assert_close(ens(x), ref(x), rtol=1e-14, atol=0)
    conv = EnsembleConvNet(2, (1, 12, 12), channels=(3, 4), width=5, seed=0)
    assert repr(conv.kernel) == repr(gk.paper_cnn(4, convs=2))


class _KernelOnly(gk.Layer):
    """A layer with a kernel map but no finite form (as a user might write)."""

    def out_spec(self, spec: Spec) -> Spec:
        return spec

    def apply(self, st):
        st.nngp.mul_(2.0)
        return st


@pytest.mark.parametrize("call, words", [
    (lambda: gk.serial(gk.Dense(), _KernelOnly()).network(8, in_shape=4), ["_KernelOnly", "no finite network"]),
    (lambda: MLP.network(0, in_shape=4), ["width=0"]),
    (lambda: MLP.network([8, 8], in_shape=4), ["width=[8, 8]", "3 positive integers"]),
    (lambda: MLP.network(2.5, in_shape=4), ["width=2.5"]),
    (lambda: MLP.network(8, in_shape=4, members=0), ["members=0"]),
    (lambda: MLP.network(8, in_shape=4, members=1001), ["members=1001"]),
    (lambda: MLP.network(8, in_shape=4, members="3"), ["members='3'"]),
    (lambda: MLP.network(8, in_shape=4, parameterization="mup"), ["parameterization='mup'", "'ntk' or 'standard'"]),
    (lambda: MLP.network(8, in_shape=4, seed=-1), ["seed=-1"]),
    (lambda: MLP.network(8, in_shape=4, outputs=0), ["outputs=0"]),
    (lambda: MLP.network(8, in_shape=(4, 4, 4, 4)), ["in_shape=(4, 4, 4, 4)"]),
    (lambda: MLP.network(8, in_shape=(4, 4)), ["layer 1 of 7", "Dense"]),  # a sequence (C, L): not for Dense
    (lambda: MLP.network(8, in_shape=4, dtype=torch.int64), ["dtype=torch.int64"]),
    (lambda: MLP.network(8, in_shape=(1, 8, 8)), ["dense layer needs feature vectors"]),
    (lambda: CNN.network(8, in_shape=(1, 2, 2)), ["does not fit"]),
    (lambda: gk.serial(gk.Centred(gk.Dense()), gk.Relu(), gk.Centred(gk.Dense())).network(1, in_shape=4),
     ["fan-in 1", "width of at least 2"]),
    (lambda: MLP.network(8, in_shape=4)(torch.zeros(3, 5)), ["x has shape (3, 5)", "(n, 4)"]),
])
def test_bad_input_is_one_line_error(call, words):
    with pytest.raises(GpmarginError) as exc:
        call()
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_nero_trains_a_network_with_biases(digits):
    from validation.training.fullbatch import make_optimizer
    from validation.training.losses import per_network_loss

    x = digits.reshape(6, -1)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])[:, None]
    net = MLP.network(32, in_shape=64, members=3, parameterization="standard", dtype=torch.float64)
    opt = make_optimizer(net, "nero", 0.05)  # batch_dims=1: per member, per row
    loss0 = per_network_loss(net(x), y).detach()
    for _ in range(30):
        opt.zero_grad()
        per_network_loss(net(x), y).sum().backward()
        opt.step()
    for w in net.weights:  # every row of every member centred and unit-norm; biases free
        rows = w.detach().reshape(3, w.shape[1], -1)
        torch.testing.assert_close(rows.norm(dim=-1), torch.ones(rows.shape[:2], dtype=torch.float64))
    assert bool((per_network_loss(net(x), y).detach() < 0.5 * loss0).all())
