"""Branched networks (FanOut, parallel, FanInSum/Prod/Concat, repeat) and the ResNet / WideResNet /
Myrtle presets: against neural-tangents (float64, 1e-10), against their own finite networks
(Monte Carlo NNGP within 4 standard errors, empirical NTK), and their errors.

Inputs are real: MNIST rows for vectors, MNIST digits centre-cropped to 8x8 (with a second
channel, the transpose) for images, scikit-learn digits for the Monte Carlo.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from gpmargin import kernels as gk
from gpmargin.errors import GpmarginError
from gpmargin.kernels import FanInConcat, FanInProd, FanInSum, FanOut, parallel, repeat

from test_kernels_mc import Z, _assert_within, empirical_ntk, mc_nngp  # noqa: E402

SQRT2 = math.sqrt(2.0)


@pytest.fixture(scope="module")
def rows(mnist_test):
    x, _ = mnist_test
    z = ((x[:12].double() - 0.1307) / 0.3081).reshape(12, -1)
    return z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def crops(mnist_test):
    x, _ = mnist_test
    c = x[300:306, :, 10:18, 10:18].double()
    return torch.cat([c, c.transpose(-1, -2)], dim=1)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images[[0, 1, 7, 13, 42]] / 16.0, dtype=torch.float64)[:, None]  # (5, 1, 8, 8)


def residual_mlp():
    return gk.serial(gk.Dense(1.2, 0.1), FanOut(2), parallel(gk.serial(gk.Relu(), gk.Dense(1.1, 0.2)), gk.Identity()),
                     FanInSum(), gk.Relu(), gk.Dense())


def product_mlp():
    return gk.serial(FanOut(3), parallel(gk.Dense(1.2, 0.1), gk.serial(gk.Dense(), gk.Erf(), gk.Dense(0.8, 0.3)),
                                         gk.Dense(0.5)), FanInProd(), gk.Dense(1.1), gk.Relu(), gk.Dense())


def concat_mlp():
    return gk.serial(FanOut(2), parallel(gk.Dense(1.2, 0.1), gk.serial(gk.Dense(), gk.Relu(), gk.Dense(0.8, 0.3))),
                     FanInConcat(1), gk.Dense(1.1), gk.Relu(), gk.Dense())


def concat_cnn(axis, readout):
    return gk.serial(gk.Conv2d(3, W_std=1.3, b_std=0.1), FanOut(2),
                     parallel(gk.Conv2d(3, padding="same"), gk.serial(gk.Relu(), gk.Conv2d(3, padding="same", W_std=0.7))),
                     FanInConcat(axis), gk.Conv2d(2, W_std=1.1), gk.Relu(), readout, gk.Dense())


def residual_cnn():
    return gk.serial(gk.Conv2d(3, padding="same", W_std=1.3, b_std=0.1), FanOut(2),
                     parallel(gk.serial(gk.Relu(), gk.Conv2d(3, padding="same")), gk.Identity()), FanInSum(),
                     gk.Relu(), gk.GlobalAvgPool(), gk.Dense())


# -- against neural-tangents -----------------------------------------------------------
class TestAgainstNeuralTangents:
    @pytest.fixture(autouse=True, scope="class")
    def nt(self):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        nt = pytest.importorskip("neural_tangents", reason="neural-tangents not installed (extra 'nt')")
        return nt.stax

    @staticmethod
    def check(ours, theirs, x1, x2=None):
        from test_kernels_nt import check

        check(ours, theirs, x1, x2)

    def test_vector_branches(self, nt, rows):
        s = nt
        res = s.serial(s.Dense(1, 1.2, 0.1), s.FanOut(2), s.parallel(s.serial(s.Relu(), s.Dense(1, 1.1, 0.2)), s.Identity()),
                       s.FanInSum(), s.Relu(), s.Dense(1))
        self.check(residual_mlp(), res[2], rows)
        self.check(residual_mlp(), res[2], rows[:5], rows[5:])
        prod = s.serial(s.FanOut(3), s.parallel(s.Dense(1, 1.2, 0.1), s.serial(s.Dense(1), s.Erf(), s.Dense(1, 0.8, 0.3)),
                                                 s.Dense(1, 0.5)), s.FanInProd(), s.Dense(1, 1.1), s.Relu(), s.Dense(1))
        self.check(product_mlp(), prod[2], rows)
        # equal widths: the concatenation is the plain average of the branch kernels
        cat = s.serial(s.FanOut(2), s.parallel(s.Dense(8, 1.2, 0.1), s.serial(s.Dense(8), s.Relu(), s.Dense(8, 0.8, 0.3))),
                       s.FanInConcat(-1), s.Dense(1, 1.1), s.Relu(), s.Dense(1))
        self.check(concat_mlp(), cat[2], rows)

    @pytest.mark.parametrize("axis,nt_axis", [(1, 3), (2, 1), (3, 2)], ids=["channels", "rows", "columns"])
    @pytest.mark.parametrize("pooled", [False, True], ids=["flatten", "gap"])
    def test_image_concat(self, nt, crops, axis, nt_axis, pooled):
        s = nt
        theirs = s.serial(s.Conv(1, (3, 3), W_std=1.3, b_std=0.1), s.FanOut(2),
                          s.parallel(s.Conv(1, (3, 3), padding="SAME"),
                                     s.serial(s.Relu(), s.Conv(1, (3, 3), padding="SAME", W_std=0.7))),
                          s.FanInConcat(nt_axis), s.Conv(1, (2, 2), W_std=1.1), s.Relu(),
                          s.GlobalAvgPool() if pooled else s.Flatten(), s.Dense(1))
        self.check(concat_cnn(axis, gk.GlobalAvgPool() if pooled else gk.Flatten()), theirs[2], crops)

    def test_residual_cnn(self, nt, crops):
        s = nt
        theirs = s.serial(s.Conv(1, (3, 3), padding="SAME", W_std=1.3, b_std=0.1), s.FanOut(2),
                          s.parallel(s.serial(s.Relu(), s.Conv(1, (3, 3), padding="SAME")), s.Identity()), s.FanInSum(),
                          s.Relu(), s.GlobalAvgPool(), s.Dense(1))
        self.check(residual_cnn(), theirs[2], crops)

    def test_wide_resnet(self, nt, crops):
        s = nt

        def block(c, stride, projection):
            main = s.serial(s.Relu(), s.Conv(c, (3, 3), (stride, stride), padding="SAME"), s.Relu(),
                            s.Conv(c, (3, 3), padding="SAME"))
            shortcut = s.Conv(c, (1, 1), (stride, stride), padding="SAME") if projection else s.Identity()
            return s.serial(s.FanOut(2), s.parallel(main, shortcut), s.FanInSum())

        layers = [s.Conv(16, (3, 3), padding="SAME")]
        for c, stride in ((64, 1), (128, 2), (256, 2)):
            layers += [block(c, stride, True), block(c, 1, False)]
        layers += [s.Relu(), s.GlobalAvgPool(), s.Dense(1)]
        self.check(gk.wide_resnet(16, 4), s.serial(*layers)[2], crops)

    @pytest.mark.parametrize("depth", [5, 7])
    def test_myrtle(self, nt, crops, depth):
        s = nt
        layers = []
        for stage, n in enumerate({5: (2, 1, 1), 7: (2, 2, 2)}[depth]):
            if stage:
                layers.append(s.AvgPool((2, 2), (2, 2)))
            layers += [s.Conv(1, (3, 3), padding="SAME", W_std=SQRT2), s.Relu()] * n
        layers += [s.GlobalAvgPool(), s.Dense(1, SQRT2)]
        self.check(gk.myrtle(depth), s.serial(*layers)[2], crops)


# -- against the finite networks ---------------------------------------------------------
@pytest.mark.parametrize("make", [residual_mlp, product_mlp, concat_mlp], ids=["sum", "prod", "concat"])
def test_vector_branches_monte_carlo(make, digits):
    x = digits.reshape(5, -1)
    x = x * 8.0 / x.norm(dim=1, keepdim=True)
    k = make()
    mean, se = mc_nngp(k, x, width=512, members=80, readouts=64, batch=40, seed=4)
    _assert_within(mean, se, k(x), make.__name__)


@pytest.mark.parametrize("name", ["wide_resnet_block", "myrtle5", "concat_rows"])
def test_cnn_branches_monte_carlo(name, digits):
    if name == "wide_resnet_block":  # a stem, one projection block and one identity block of a WideResNet
        k = gk.serial(gk.Conv2d(3, padding="same"), gk.resnet_block(2, True), gk.resnet_block(1),
                      gk.Relu(), gk.GlobalAvgPool(), gk.Dense())
    elif name == "myrtle5":
        k = gk.myrtle(5)
    else:
        k = concat_cnn(2, gk.Flatten())
    mean, se = mc_nngp(k, digits, width=64, members=40, readouts=64, batch=20, seed=6)
    _assert_within(mean, se, k(digits), name)


def test_resnet_empirical_ntk(digits):
    """The empirical NTK of wide NTK-parameterised ResNets (tolerance as in test_kernels_mc)."""
    k = gk.resnet((1, 1), (1, 2))
    width, members = 96, 8
    net = k.network(width, in_shape=(1, 8, 8), members=members, seed=3, dtype=torch.float64)
    ntks = empirical_ntk(net, digits)
    theta = k(digits, get="ntk")
    mean, se = ntks.mean(0), ntks.std(0) / math.sqrt(members)
    depth = 6  # weight layers on the longest path
    tol = Z * se + depth / width * theta.abs().max()
    assert bool(((mean - theta).abs() < tol).all()), ((mean - theta).abs() / tol).max()


def test_finite_network_shapes_and_widths(crops):
    widths = gk.wide_resnet_widths(10, 2, base=4)
    net = gk.wide_resnet(10, 2).network(widths, in_shape=(2, 8, 8), members=3, outputs=2, dtype=torch.float64)
    assert net(crops).shape == (3, 6, 2)
    assert [w.shape[1] for w in net.weights] == widths + [2]
    # member j of a stacked network is the unbatched member j, branches included
    single = net.member(1)
    torch.testing.assert_close(single(crops), net(crops)[1], rtol=1e-12, atol=1e-12)


def test_repeat_is_serial():
    block = gk.serial(gk.Dense(1.1, 0.1), gk.Relu())
    assert repeat(block, 3) == gk.serial(block, block, block)
    k = gk.serial(FanOut(2), parallel(gk.Dense(), gk.serial(gk.Dense(), gk.Relu(), gk.Dense())), FanInSum())
    assert eval(repr(k), vars(gk)) == k
    assert hash(eval(repr(k), vars(gk))) == hash(k)


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("make,needle", [
    (lambda: gk.serial(gk.Conv2d(3), FanOut(2), parallel(gk.Conv2d(3), gk.Conv2d(3, padding="same")), FanInSum(),
                       gk.Flatten(), gk.Dense()), "branch 2 has shape"),
    (lambda: gk.serial(gk.Dense(), parallel(gk.Dense(), gk.Dense()), FanInSum()), "put FanOut(2) before it"),
    (lambda: gk.serial(FanOut(2), gk.Dense()), "gets 2 branches; join them"),
    (lambda: gk.serial(FanOut(2), parallel(gk.Dense(), gk.Dense())), "ends with 2 branches"),
    (lambda: gk.serial(gk.Dense(), FanOut(2), parallel(gk.Relu(), gk.Dense()), FanInSum()), "ends in a nonlinearity"),
    (lambda: gk.serial(FanOut(3), parallel(gk.Dense(), gk.Dense()), FanInSum()), "has 2 branches but gets 3"),
    (lambda: gk.serial(FanOut(2), parallel(gk.Dense(), gk.Dense()), FanInConcat(2), gk.Dense()), "axis 2 does not exist"),
])
def test_bad_branches_one_line_error(rows, crops, make, needle):
    x = crops if needle == "branch 2 has shape" else rows
    with pytest.raises(GpmarginError) as err:
        make()(x)
    msg = str(err.value)
    assert "\n" not in msg and needle in msg, msg


def test_bad_combinator_arguments():
    for bad in (lambda: FanOut(0), lambda: parallel(), lambda: repeat(gk.Dense(), 0), lambda: FanInConcat("c"),
                lambda: gk.wide_resnet(15), lambda: gk.myrtle(6)):
        with pytest.raises(GpmarginError):
            bad()


@pytest.mark.slow
def test_harness_trains_a_wide_resnet(tmp_path):
    """``validate fig6 --set arch=wide_resnet``: the harness trains the preset's finite networks with
    Nero at controlled margins and overlays the preset's NNGP prediction (smoke scale, 8x8 digits)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpmargin", "validate", "fig6", "--scale", "smoke", "--out", str(out), "--device",
           "cpu", "--no-progress", "--workers", "0", "--set", "arch=wide_resnet", "--set", "depth=10", "--set",
           "width=8", "--set", "members=2", "--set", "ensembles=1,2", "--set", "margins=0.1,3", "--set", "steps=20",
           "--set", "dataset=digits", "--set", "n_train=40", "--set", "n_test=40"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "fig6-comparison.json").read_text())
    assert summary["overrides"]["arch"] == "wide_resnet"
    table = (out / "fig6-comparison.csv").read_text()
    assert "gp_accuracy" in table and "gp_constrained_accuracy" not in table  # no constrained kernel for a ResNet
    from validation.registry import get_experiment

    with pytest.raises(GpmarginError, match="depth=11 must be 6 n [+] 4"):  # checked up front, before any work
        get_experiment("fig6", "smoke").with_overrides(["arch=wide_resnet", "depth=11"])


def test_activation_needs_gaussian_preactivations(rows):
    """Like neural-tangents, a closed-form activation refuses the outputs of a nonlinearity (its
    Gaussian expectation would be wrong); the finite network of such a chain still builds."""
    k = gk.serial(gk.Dense(), gk.Relu(), gk.Erf(), gk.Dense())
    with pytest.raises(GpmarginError, match=r"layer 3 of 4: Erf\(.*\) gets the outputs of a nonlinearity"):
        k(rows)
    assert k.network(8, in_shape=rows.shape[1]).forward(rows.float()).shape == (1, 12, 1)
    gk.serial(gk.Relu(), gk.Dense())(rows)  # the inputs count as Gaussian (covariance x.x'/d)
