"""Gradient-descent predictions (kind "ntk", finite time) on real MNIST: closed forms checked by
hand, the t -> 0 and t -> inf limits, alpha scaling, the accuracy formulas on top, the CLI and
bad input.  (Agreement with neural-tangents: tests/test_predict_gradient_nt.py.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gpmargin import kernels as gk
from gpmargin.cli import main
from gpmargin.errors import GpmarginError
from gpmargin.predict import accuracy as acc
from gpmargin.predict import curve_from_posterior, margin_curve, posterior


@pytest.fixture(scope="module")
def data(mnist_test):
    from gpmargin.data import preprocess

    x, y = mnist_test
    perm = np.random.default_rng(1).permutation(len(x))
    tr, te = perm[:120], perm[120:220]
    xp = preprocess(torch.as_tensor(np.asarray(x))[np.concatenate([tr, te])], "mnist").reshape(220, -1).double()
    y = torch.as_tensor(np.asarray(y))
    par = lambda v: torch.where(v % 2 == 1, 1.0, -1.0).double()  # noqa: E731
    return xp[:120], par(y[tr]), xp[120:], par(y[te])


@pytest.fixture(scope="module")
def kernel():
    return gk.paper_mlp(3)


def test_one_training_point_by_hand(data, kernel):
    """n = 1: Theta is a number theta, A(t) = (1 - exp(-s theta)) / theta with s = lr * t / 1, so
    mean_* = theta_*x A y and var_* = k_** + (theta_*x A)^2 k_xx - 2 theta_*x A k_*x."""
    xtr, ytr, xte, _ = data
    x1, y1, xs = xtr[:1], ytr[:1], xte[:5]
    t, lr = 0.07, 2.0
    p = posterior(kernel, x1, y1, xs, kind="ntk", time=t, learning_rate=lr)
    k11, th11 = kernel(x1, get="nngp")[0, 0], kernel(x1, get="ntk")[0, 0]
    ks1, ts1 = kernel(xs, x1, get="nngp")[:, 0], kernel(xs, x1, get="ntk")[:, 0]
    kss = kernel.diag(xs, get="nngp")
    a = (1 - math.exp(-lr * t * float(th11))) / float(th11)
    torch.testing.assert_close(p.mean, ts1 * a * y1, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.std**2, kss + (ts1 * a) ** 2 * k11 - 2 * ts1 * a * ks1, rtol=1e-12, atol=0)
    # training output: mean (1 - e^{-s theta}) y, variance e^{-2 s theta} k_xx
    e = math.exp(-lr * t * float(th11))
    torch.testing.assert_close(p.train.mean, (1 - e) * y1, rtol=1e-12, atol=0)
    torch.testing.assert_close(p.train.std**2, e * e * k11.reshape(1), rtol=1e-12, atol=0)


def test_long_time_is_infinite_time_and_short_time_is_the_prior(data, kernel):
    xtr, ytr, xte, _ = data
    inf = posterior(kernel, xtr, ytr, xte, kind="ntk", joint=True)
    late = posterior(kernel, xtr, ytr, xte, kind="ntk", time=1e12, joint=True)
    # eigendecomposition against Cholesky of a 120 x 120 NTK (condition ~1e2): round-off ~1e-13
    torch.testing.assert_close(late.mean, inf.mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(late.cov, inf.cov, rtol=0, atol=1e-9)
    # exact: at infinite time the training outputs are set to Y with zero variance (no solve)
    assert torch.equal(inf.train.mean, ytr) and float(inf.train.std.abs().max()) == 0.0
    # t -> 0: outputs are the network at initialisation, N(0, K_**); the mean grows like s Theta_*X Y
    s = 1e-9
    early = posterior(kernel, xtr, ytr, xte, kind="ntk", time=s * 120, joint=True)
    first_order = kernel(xte, xtr, get="ntk") @ ytr  # next term: s/2 Theta_*X Theta Y, ~1e-7 relative here
    torch.testing.assert_close(early.mean / s, first_order, rtol=0, atol=1e-6 * float(first_order.abs().max()))
    torch.testing.assert_close(early.cov, kernel(xte, get="nngp"), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(early.train.std**2, kernel.diag(xtr, get="nngp"), rtol=1e-6, atol=0)
    for kind in ("ntk", "nngp"):  # the predicted training accuracy rises with time
        acc_t = [margin_curve(kernel, xtr, ytr, xte, ytr[:100], [1.0], kind=kind, time=t).train_accuracy[0, 0]
                 for t in (1.0, 30.0, 1e4)]
        assert acc_t[0] < acc_t[1] < acc_t[2]


def test_readout_flow_at_long_time_is_the_nngp_posterior(data, kernel):
    """kind="nngp" with a finite time trains the readout only; as t -> inf it is the paper's posterior."""
    xtr, ytr, xte, _ = data
    gp = posterior(kernel, xtr, ytr, xte, kind="nngp")
    late = posterior(kernel, xtr, ytr, xte, kind="nngp", time=1e12)
    torch.testing.assert_close(late.mean, gp.mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(late.std, gp.std, rtol=0, atol=1e-6)  # sqrt of a variance with 1e-12 round-off


def test_mean_scales_with_alpha_and_curve_uses_the_exact_formula(data, kernel):
    """Training to alpha * Y scales the mean by alpha and leaves the covariance unchanged, so the
    accuracy at margin alpha is P(y f > 0) with f ~ N(alpha mu, s^2) computed from the alpha = 1 posterior."""
    xtr, ytr, xte, yte = data
    one = posterior(kernel, xtr, ytr, xte, kind="ntk", time=40.0, joint=True)
    for alpha in (0.03, 7.0):
        scaled = posterior(kernel, xtr, alpha * ytr, xte, kind="ntk", time=40.0, joint=True)
        torch.testing.assert_close(scaled.mean, alpha * one.mean, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(scaled.cov, one.cov, rtol=0, atol=1e-12)
    curve = curve_from_posterior(one, yte, [0.03, 7.0], (1,))
    for j, alpha in enumerate((0.03, 7.0)):
        direct = acc.binary_correct_prob(acc.binary_ratio(alpha * one.mean, one.std, yte), torch.ones(1, dtype=torch.float64))
        assert curve.accuracy[0, j] == pytest.approx(float(direct.mean()), abs=1e-12)
    # and Monte Carlo: draws from N(alpha mu, Sigma) are correct with the predicted frequency
    from gpmargin.predict import sample_posterior

    draws = sample_posterior(one, 0.2, 4000, generator=torch.Generator().manual_seed(0))
    mc = float((torch.sign(draws) == yte).double().mean())
    pred = float(curve_from_posterior(one, yte, [0.2], (1,)).accuracy[0, 0])
    # per-draw accuracies are averages of 100 correlated Bernoullis: sd <= 0.5 / sqrt(4000) overall
    assert abs(mc - pred) < 4 * 0.5 / math.sqrt(4000)


def test_curve_records_kind_time_and_learning_rate(data, kernel, tmp_path):
    xtr, ytr, xte, yte = data
    c = margin_curve(kernel, xtr, ytr, xte, yte, [0.1, 1.0, 10.0], ensemble=(1, 4), kind="ntk", time=50.0,
                     learning_rate=0.5)
    assert (c.kind, c.time, c.learning_rate) == ("ntk", 50.0, 0.5) and c.train_accuracy.shape == (2, 3)
    c.to_csv(tmp_path / "c.csv")
    header, first = (tmp_path / "c.csv").read_text().splitlines()[:2]
    assert header.split(",")[5:] == ["kind", "time", "learning_rate", "train_accuracy"]
    assert first.split(",")[5:8] == ["ntk", "50.0", "0.5"]
    c.to_json(tmp_path / "c.json")
    from gpmargin.predict import MarginCurve

    back = MarginCurve.from_json(tmp_path / "c.json")
    assert (back.kind, back.time, back.learning_rate) == ("ntk", 50.0, 0.5)
    np.testing.assert_array_equal(back.train_accuracy, c.train_accuracy)


def test_cli_predict_ntk_at_a_finite_time_on_mnist(tmp_path, mnist_test):
    out = tmp_path / "gd"
    assert main(["predict", "--dataset", "mnist", "--n-train", "150", "--n-test", "200", "--depth", "3",
                 "--kind", "ntk", "--time", "200", "--lr", "0.5", "--margins", "1e-2:1e1:6", "--ensemble", "1,4",
                 "--no-progress", "--out", str(out)]) == 0
    d = json.loads((out / "curve.json").read_text())
    assert (d["kind"], d["time"], d["learning_rate"]) == ("ntk", 200.0, 0.5)
    assert d["config"]["kind"] == "ntk" and d["config"]["time"] == 200.0 and d["config"]["learning_rate"] == 0.5
    assert np.asarray(d["train_accuracy"]).shape == (2, 6) and 0.5 < d["limit_accuracy"] <= 1.0
    assert (out / "curve.png").stat().st_size > 0


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(kind="ntk", time=0.0), "time must be finite and > 0"),
        (dict(kind="ntk", time=-3.0), "time must be finite and > 0"),
        (dict(kind="ntk", time=float("nan")), "time must be finite and > 0"),
        (dict(kind="ntk", time="soon"), "time must be a number"),
        (dict(kind="ntk", learning_rate=0.0), "learning_rate must be finite and > 0"),
        (dict(kind="nngp", time=1.0, learning_rate=-1.0), "learning_rate must be finite and > 0"),
        (dict(kind="gd"), "kind must be one of nngp, ntk, ntkgp"),
        (dict(kind="ntkgp", time=1.0), "kind 'ntkgp'"),
        (dict(kind="ntk", constrained=True), "kind='ntk' needs the kernel's NTK"),
        (dict(kind="ntkgp", constrained=True), "kind='ntkgp' needs the kernel's NTK"),
    ],
)
def test_bad_input_is_one_line_error(data, kwargs, msg):
    xtr, ytr, xte, yte = data
    k = gk.paper_mlp(3, constrained=kwargs.pop("constrained", False))
    for call in (lambda: margin_curve(k, xtr[:10], ytr[:10], xte[:5], yte[:5], [1.0], **kwargs),
                 lambda: posterior(k, xtr[:10], ytr[:10], xte[:5], **kwargs)):
        with pytest.raises(GpmarginError, match=msg) as info:
            call()
        assert "\n" not in str(info.value)


def test_cli_bad_time_is_one_line(capsys):
    assert main(["predict", "--kind", "ntk", "--time", "-1", "--out", "unused"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: time must be finite and > 0") and "\n" not in err
