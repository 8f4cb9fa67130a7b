"""Margin-conditioned GP predictions on real MNIST: against a numpy reference, Monte-Carlo
sampling of the posterior, the alpha -> 0 / inf limits, the NNGP regression anchor of Lee et
al. (2018), and bad input."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import ndtr

sys.path.insert(0, str(Path(__file__).parent))
from test_predict_reference import ReferenceMLPKernel, arccos_recursion, numpy_posterior  # noqa: E402

from gpmargin.errors import GpmarginError  # noqa: E402
from gpmargin.linalg import JitterWarning  # noqa: E402
from gpmargin.predict import (  # noqa: E402
    MarginCurve,
    condition,
    curve_from_posterior,
    margin_at_fraction,
    margin_curve,
    posterior,
    sample_posterior,
)

MARGINS = np.logspace(-2, 1.5, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many small kernels: one thread avoids OpenMP stalls when other jobs
    share the two cores (seen: 50x slower with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mnist(mnist_test, n_train, n_test, seed=0):
    """Disjoint seeded subsets of the real MNIST test split, preprocessed as in the paper."""
    from gpmargin.data import preprocess

    x, y = mnist_test
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    xp = preprocess(torch.as_tensor(np.asarray(x))[np.concatenate([tr, te])], "mnist")
    y = torch.as_tensor(np.asarray(y))
    return xp[:n_train], y[tr], xp[n_train:], y[te]


def _parity(y):
    return torch.where(y % 2 == 1, 1.0, -1.0).to(torch.float64)


@pytest.fixture(scope="module")
def small(mnist_test):
    """500 train / 1000 test MNIST images (flattened, norm sqrt(784)), integer labels."""
    return _mnist(mnist_test, 500, 1000)


@pytest.fixture(scope="module")
def kernel():
    from gpmargin.kernels import paper_mlp

    return paper_mlp(5)


@pytest.fixture(scope="module")
def binary_curve(small, kernel):
    xtr, ytr, xte, yte = small
    return margin_curve(kernel, xtr, _parity(ytr), xte, _parity(yte), MARGINS, ensemble=(1, 3, 16))


@pytest.fixture(scope="module")
def multi_curve(small, kernel):
    xtr, ytr, xte, yte = small
    return margin_curve(kernel, xtr, ytr, xte, yte, MARGINS, ensemble=(1, 3, 16))


# ----------------------------------------------------------------------------- reference
def test_binary_matches_numpy_reference(small, binary_curve):
    xtr, ytr, xte, yte = small
    Kxx = arccos_recursion(xtr.numpy(), xtr.numpy(), 5)
    Ksx = arccos_recursion(xte.numpy(), xtr.numpy(), 5)
    mu, s = numpy_posterior(Kxx, Ksx, np.ones(len(Ksx)), _parity(ytr).numpy())
    c = binary_curve
    np.testing.assert_allclose(c.mean, mu, atol=1e-9)
    np.testing.assert_allclose(c.std, s, atol=1e-9)
    y = _parity(yte).numpy()
    k = np.array([1, 3, 16])[:, None, None]
    ref = ndtr(np.sqrt(k) * MARGINS[None, :, None] * (y * mu / s)[None, None, :])
    np.testing.assert_allclose(c.per_example, ref, atol=1e-9)
    np.testing.assert_allclose(c.accuracy, ref.mean(-1), atol=1e-10)
    assert c.limit_accuracy == pytest.approx(np.mean(np.sign(mu) == y))
    assert c.num_classes == 2 and c.jitter == 0.0 and c.kind == "nngp"
    assert c.accuracy.shape == (3, len(MARGINS)) and c.per_example.shape == (3, len(MARGINS), 1000)
    print(f"\nMNIST parity 500/1000 depth 5: limit {c.limit_accuracy:.4f}, single net at alpha=1.4: {c.accuracy[0, 4]:.4f}")


def test_multiclass_matches_numpy_reference(small, multi_curve):
    xtr, ytr, xte, yte = small
    Kxx = arccos_recursion(xtr.numpy(), xtr.numpy(), 5)
    Ksx = arccos_recursion(xte.numpy(), xtr.numpy(), 5)
    Y = np.eye(10)[ytr.numpy()]
    mu, s = numpy_posterior(Kxx, Ksx, np.ones(len(Ksx)), Y)
    c = multi_curve
    np.testing.assert_allclose(c.mean, mu, atol=1e-9)
    np.testing.assert_allclose(c.std, s, atol=1e-9)
    # independent quadrature: 120-point Gauss-Hermite on a subset of points and scales
    z, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / math.sqrt(2 * math.pi)
    y = yte.numpy()
    idx = np.arange(0, 1000, 7)
    for j, k in enumerate((1, 3, 16)):
        for a in (0, 3, 6):
            tau = math.sqrt(k) * MARGINS[a]
            ref = []
            for i in idx:
                d = np.delete(mu[i, y[i]] - mu[i], y[i]) / s[i]
                ref.append(np.sum(w * np.prod(ndtr(z[:, None] + tau * d[None, :]), axis=1)))
            np.testing.assert_allclose(c.per_example[j, a, idx], ref, atol=1e-7)
    assert c.limit_accuracy == pytest.approx(np.mean(mu.argmax(1) == y))
    assert c.num_classes == 10


def test_reference_kernel_and_real_kernel_give_the_same_curve(small, binary_curve):
    xtr, ytr, xte, yte = small
    c = margin_curve(ReferenceMLPKernel(5), xtr, _parity(ytr), xte, _parity(yte), MARGINS, ensemble=(1, 3, 16))
    np.testing.assert_allclose(c.accuracy, binary_curve.accuracy, atol=1e-10)


def test_ntkgp_kind_uses_the_ntk_as_covariance(small, kernel):
    xtr, ytr, xte, yte = small
    xtr, xte = xtr[:200], xte[:300]
    yb, yt = _parity(ytr[:200]), _parity(yte[:300])
    c = margin_curve(kernel, xtr, yb, xte, yt, MARGINS, kind="ntkgp")
    post = condition(kernel(xtr, get="ntk"), kernel(xte, xtr, get="ntk"), kernel.diag(xte, get="ntk"), yb)
    np.testing.assert_allclose(c.mean, post.mean.numpy(), atol=1e-10)
    np.testing.assert_allclose(c.std, post.std.numpy(), atol=1e-10)
    nngp = margin_curve(kernel, xtr, yb, xte, yt, MARGINS)
    assert c.kind == "ntkgp" and not np.allclose(c.std, nngp.std)


def test_grid_is_one_solve_and_equals_per_margin_calls(small):
    xtr, ytr, xte, yte = small
    k = ReferenceMLPKernel(5)
    args = (xtr[:100], _parity(ytr[:100]), xte[:100], _parity(yte[:100]))
    c = margin_curve(k, *args, MARGINS, ensemble=(1, 4))
    assert k.calls <= 2  # train matrix + one chunk of the cross matrix, whatever the grid size
    for j, e in enumerate((1, 4)):
        for a in (0, 3, 7):
            one = margin_curve(k, *args, [MARGINS[a]], ensemble=(e,))
            assert one.accuracy[0, 0] == pytest.approx(c.accuracy[j, a], abs=1e-13)
    # a k-network average at margin alpha is one network at margin alpha * sqrt(k)
    scaled = margin_curve(k, *args, 2.0 * MARGINS, ensemble=(1,))
    np.testing.assert_allclose(scaled.per_example[0], c.per_example[1], atol=1e-14)


# ----------------------------------------------------------------------------- Monte Carlo
def _check_within(formula, samples, label):
    mc, se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
    print(f"{label}: formula {formula:.5f}  MC {mc:.5f} +- {se:.5f}")
    assert abs(formula - mc) < 4 * se, f"{label}: formula {formula} vs MC {mc} +- {se}"


def test_binary_formula_matches_monte_carlo(binary_curve, small):
    c = binary_curve
    y = _parity(small[3]).numpy()
    rng = np.random.default_rng(3)
    for j, k in enumerate(c.ensemble):
        for a in (1, 3, 5):
            alpha = c.margins[a]
            eps = rng.standard_normal((4000, len(y)))
            f = alpha * c.mean[None] + c.std[None] / math.sqrt(k) * eps  # k-draw average
            right = np.sign(f) == y[None]
            _check_within(c.accuracy[j, a], right.mean(1), f"binary k={k} alpha={alpha:.3g}")


def test_multiclass_formula_matches_monte_carlo(multi_curve, small):
    c = multi_curve
    y = small[3].numpy()
    rng = np.random.default_rng(4)
    for j, k in enumerate(c.ensemble):
        for a in (1, 3, 5):
            alpha = c.margins[a]
            accs = []
            for _ in range(5):  # 5 x 250 draws, each draw: 10 class outputs per point
                eps = rng.standard_normal((250, len(y), 10))
                f = alpha * c.mean[None] + (c.std[None, :, None] / math.sqrt(k)) * eps
                accs.append((f.argmax(-1) == y[None]).mean(1))
            _check_within(c.accuracy[j, a], np.concatenate(accs), f"10-class k={k} alpha={alpha:.3g}")


@pytest.mark.parametrize("task", ["parity", "multiclass"])
def test_joint_posterior_sampling_matches_per_point_formula(small, kernel, task):
    # Expected accuracy only involves each point's marginal: joint draws (correlated across
    # test points through the full posterior covariance) must give the same mean accuracy.
    xtr, ytr, xte, yte = small
    xte, yte = xte[:250], yte[:250]
    ytr_ = _parity(ytr) if task == "parity" else ytr
    yte_ = _parity(yte) if task == "parity" else yte
    from gpmargin.predict.inputs import check_labels

    labels = check_labels(ytr_, yte_)
    post = posterior(kernel, xtr, labels.targets(), xte, joint=True)
    assert post.cov.shape == (250, 250)
    np.testing.assert_allclose(post.cov.diagonal().sqrt().numpy(), post.std.numpy(), atol=1e-12)
    given = condition(kernel(xtr), kernel(xte, xtr), kernel.diag(xte), labels.targets(), k_test=kernel(xte))
    torch.testing.assert_close(given.cov, post.cov, rtol=0, atol=1e-10)
    torch.testing.assert_close(given.mean, post.mean, rtol=0, atol=1e-10)
    curve = curve_from_posterior(post, yte_, MARGINS[[2, 4]], ensemble=(1, 4))
    gen = torch.Generator().manual_seed(5)
    for j, k in enumerate((1, 4)):
        for a, alpha in enumerate(MARGINS[[2, 4]]):
            f = sample_posterior(post, alpha, 3000, generator=gen, ensemble=k).numpy()
            if task == "parity":
                right = np.sign(f) == yte_.numpy()[None]
            else:
                right = f.argmax(-1) == yte_.numpy()[None]
            _check_within(curve.accuracy[j, a], right.mean(1), f"joint {task} k={k} alpha={alpha:.3g}")


# ----------------------------------------------------------------------------- limits
def test_small_margin_gives_chance_and_large_margin_the_interpolator(small, kernel, binary_curve, multi_curve):
    xtr, ytr, xte, yte = small
    for curve, y, labels_tr in ((binary_curve, _parity(yte), _parity(ytr)), (multi_curve, yte, ytr)):
        c = margin_curve(kernel, xtr, labels_tr, xte, y, [1e-9, 1e9], ensemble=(1, 16))
        chance = 1.0 / c.num_classes
        assert np.all(np.abs(c.accuracy[:, 0] - chance) < 1e-6)
        assert np.all(np.abs(c.accuracy[:, 1] - c.limit_accuracy) < 1e-6)
        if c.num_classes == 2:
            interp = np.mean(np.sign(curve.mean) == y.numpy())
        else:
            interp = np.mean(curve.mean.argmax(1) == y.numpy())
        assert c.limit_accuracy == pytest.approx(interp)


def test_nngp_regression_anchor_lee_et_al(mnist_test):
    """NNGP regression, depth-3 ReLU MLP, 1000 MNIST training images, 10 classes: ~0.93
    (Lee et al. 2018 report 0.928 on the official test set; here 9000 held-out images)."""
    from gpmargin.kernels import paper_mlp

    xtr, ytr, xte, yte = _mnist(mnist_test, 1000, 9000, seed=0)
    c = margin_curve(paper_mlp(3), xtr, ytr, xte, yte, [1.0])
    print(f"\nNNGP depth-3 MLP, 1000 MNIST train, 9000 test: posterior-mean argmax accuracy {c.limit_accuracy:.4f}")
    assert 0.90 <= c.limit_accuracy <= 0.96


def test_default_margins_span_chance_to_limit(small, kernel):
    xtr, ytr, xte, yte = small
    for labels in ((_parity(ytr), _parity(yte)), (ytr, yte)):
        c = margin_curve(kernel, xtr, labels[0], xte, labels[1], None, ensemble=(1, 16))
        assert len(c.margins) == 41 and c.margins_rule.startswith("auto")
        span = c.limit_accuracy - c.chance
        assert c.accuracy[:, 0].max() - c.chance < 0.1 * span  # starts near chance (even for k = 16)
        assert c.limit_accuracy - c.accuracy[0, -1] < 0.05 * span  # ends near the limit (k = 1)
        assert np.all(np.diff(np.log(c.margins)) > 0)


def test_margin_at_fraction(binary_curve):
    c = binary_curve
    for k in c.ensemble:
        alpha = margin_at_fraction(c, 0.5, ensemble=k)
        assert c.margins[0] < alpha < c.margins[-1]
        target = c.chance + 0.5 * (c.limit_accuracy - c.chance)
        row = c.row(k)
        assert np.interp(np.log(alpha), np.log(c.margins), row) == pytest.approx(target, abs=1e-12)
    # larger ensembles need smaller margins
    assert margin_at_fraction(c, 0.5, 16) < margin_at_fraction(c, 0.5, 1)
    # not reached inside the grid -> nan
    assert math.isnan(margin_at_fraction(c, 0.999999, 1))
    with pytest.raises(GpmarginError, match="fraction"):
        margin_at_fraction(c, 1.5)
    with pytest.raises(GpmarginError, match="ensemble size 2"):
        margin_at_fraction(c, 0.5, ensemble=2)


# ----------------------------------------------------------------------------- zero variance, jitter
def test_test_points_equal_to_training_points_have_zero_std(small, kernel):
    xtr, ytr, xte, yte = small
    xtest = torch.cat([xtr[:20], xte[:50]])
    ytest = torch.cat([ytr[:20], yte[:50]])
    for ytr_, yte_ in ((_parity(ytr), _parity(ytest)), (ytr, ytest)):
        c = margin_curve(kernel, xtr, ytr_, xtest, yte_, MARGINS)
        # exact zeros: variances below the round-off floor n * eps * k(x, x) are set to 0
        assert np.all(c.std[:20] == 0.0) and np.all(c.std[20:] > 0)
        np.testing.assert_allclose(c.per_example[:, :, :20], 1.0, atol=1e-9)  # interpolated exactly


def test_duplicated_training_inputs_with_same_label_use_reported_jitter(small, kernel):
    xtr, ytr, xte, yte = small
    xdup = torch.cat([xtr[:300], xtr[:10]])
    ydup = torch.cat([ytr[:300], ytr[:10]])
    with pytest.warns(JitterWarning, match="jitter"):
        c = margin_curve(kernel, xdup, _parity(ydup), xte[:200], _parity(yte[:200]), MARGINS)
    assert c.jitter > 0
    ref = margin_curve(kernel, xtr[:300], _parity(ytr[:300]), xte[:200], _parity(yte[:200]), MARGINS)
    np.testing.assert_allclose(c.accuracy, ref.accuracy, atol=1e-4)
    assert c.info["duplicated_train_inputs"] == 10


def test_duplicated_training_inputs_with_conflicting_labels_are_refused(small, kernel):
    xtr, ytr, xte, yte = small
    xdup = torch.cat([xtr[:50], xtr[7:8]])
    yb = _parity(ytr[:50])
    ydup = torch.cat([yb, -yb[7:8]])
    with pytest.raises(GpmarginError, match=r"conflicting labels.*rows 7 \(label .*\), 50 \(label"):
        margin_curve(kernel, xdup, ydup, xte[:20], _parity(yte[:20]), MARGINS)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "change, msg",
    [
        (dict(margins=[0.1, 0.0]), "margins must be finite and > 0"),
        (dict(margins=[-1.0]), "margins must be finite and > 0"),
        (dict(margins=[float("nan")]), "margins must be finite and > 0"),
        (dict(margins=[float("inf")]), "margins must be finite and > 0"),
        (dict(margins=[]), "margins is empty"),
        (dict(ensemble=(1, 0)), "ensemble sizes must be positive integers"),
        (dict(ensemble=(1.5,)), "ensemble sizes must be positive integers"),
        (dict(kind="gp"), "kind must be one of"),
        (dict(y_train="half"), "float labels must be"),
        (dict(y_train="01float"), "float labels must be"),
        (dict(y_train="negint", y_test="int"), "class indices >= 0"),
        (dict(y_train="short"), "y_train has 19 labels"),
        (dict(x_test="mismatch"), "train and test features do not match"),
        (dict(x_train="empty"), "empty"),
        (dict(x_test="empty"), "empty"),
        (dict(x_train="nan"), "NaN"),
    ],
)
def test_bad_input_is_one_line_error(small, kernel, change, msg):
    xtr, ytr, xte, yte = small
    args = dict(x_train=xtr[:20], y_train=_parity(ytr[:20]), x_test=xte[:10], y_test=_parity(yte[:10]),
                margins=[0.1, 1.0], ensemble=(1,), kind="nngp")
    special = {
        "half": torch.full((20,), 0.5, dtype=torch.float64),
        "01float": (ytr[:20] % 2).to(torch.float64),
        "negint": ytr[:20] - 3,
        "short": _parity(ytr[:19]),
        "int": yte[:10],
        "mismatch": xte[:10, :700],
        "empty": None,
        "nan": None,
    }
    for key, val in change.items():
        if isinstance(val, str) and val in special:
            if val == "empty":
                val = args[key][:0]
                if key == "x_train":
                    args["y_train"] = args["y_train"][:0]
                else:
                    args["y_test"] = args["y_test"][:0]
            elif val == "nan":
                val = args[key].clone()
                val[3, 5] = float("nan")
            else:
                val = special[val]
        args[key] = val
    with pytest.raises(GpmarginError, match=msg) as info:
        margin_curve(kernel, **args)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- files and plot
def test_files_and_plot(binary_curve, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import csv
    import json

    c = binary_curve
    c.to_csv(tmp_path / "c.csv")
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert len(rows) == len(c.ensemble) * len(c.margins)
    assert {"margin", "ensemble", "accuracy"} <= set(rows[0])
    r = rows[len(c.margins) + 2]
    # exact round trips: the CSV holds repr(float), the JSON the shortest repr too
    assert int(r["ensemble"]) == c.ensemble[1] and float(r["accuracy"]) == c.accuracy[1, 2]
    c.to_json(tmp_path / "c.json", per_example=True, extra_key={"a": 1})
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["extra_key"] == {"a": 1} and d["num_classes"] == 2
    back = MarginCurve.from_json(tmp_path / "c.json")
    np.testing.assert_array_equal(back.accuracy, c.accuracy)
    np.testing.assert_array_equal(back.per_example, c.per_example)
    assert back.ensemble == c.ensemble and back.limit_accuracy == c.limit_accuracy
    ax = c.plot(title="t")
    assert ax.get_xscale() == "log" and ax.get_title() == "t"
    # one line per ensemble size, limit, chance, and the half-way margin (vertical line + marker)
    assert len(ax.get_lines()) == len(c.ensemble) + 2 + 2 * np.isfinite(margin_at_fraction(c, 0.5, c.ensemble[0]))


def test_blocked_training_kernel_equals_the_full_matrix(small, kernel):
    from gpmargin.predict.kernel_blocks import train_kernel

    x = small[0][:230]
    for kind in ("nngp", "ntk"):
        full = kernel(x, get=kind)
        blocked = train_kernel(kernel, x, kind, block=40)  # 6 x 6 blocks, uneven edges
        assert torch.equal(blocked, blocked.T)
        torch.testing.assert_close(blocked, full, rtol=0, atol=1e-12)
