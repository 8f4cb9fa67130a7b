"""gpmargin.kernels.sklearn.NetworkKernel inside scikit-learn's Gaussian-process estimators, on digits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessClassifier, GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel

from gpmargin import kernels as gk
from gpmargin.data import make_task
from gpmargin.errors import GpmarginError
from gpmargin.kernels.sklearn import NetworkKernel
from gpmargin.predict import posterior


def relu_net():
    return gk.serial(gk.Dense(1.5, 0.1), gk.Relu(), gk.Dense(1.2, 0.2))


@pytest.fixture(scope="module")
def parity():
    return make_task("digits", "parity", n_train=300, n_test=200, seed=0)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_regressor_equals_gpmargin_posterior(parity, get):
    """GaussianProcessRegressor adds ``alpha`` to the diagonal; gpmargin conditions without noise.
    With ``a = alpha``, ``W = K_*X K^-1`` and the smallest eigenvalue ``lam`` of ``K``, the posterior
    mean moves by at most ``a ||W||_2 ||K^-1 y|| / (1 - a/lam)`` and test point i's variance by at
    most ``a ||W_i||^2 / lam``, its standard deviation by that over ``s_i``.  With ``a = 1e-12`` on
    300 digits these bounds are 4e-10 (mean) and 1.5e-9 (std) for the NNGP (3e-11, 1e-11 for the
    NTK); they are recomputed and asserted < 2e-9, so the 1e-8 tolerance checks the implementations.
    A GP with the NTK as covariance is gpmargin's ``kind="ntkgp"``."""
    t = parity
    net, a = relu_net(), 1e-12
    gpr = GaussianProcessRegressor(NetworkKernel(net, get=get), optimizer=None, alpha=a)
    mean, std = gpr.fit(t.x_train.numpy(), t.y_train.numpy()).predict(t.x_test.numpy(), return_std=True)

    ours = posterior(net, t.x_train, t.y_train, t.x_test, kind={"nngp": "nngp", "ntk": "ntkgp"}[get])
    assert ours.jitter == 0.0
    K = net(t.x_train, get=get)
    lam = float(torch.linalg.eigvalsh(K)[0])
    W = torch.linalg.solve(K, net(t.x_test, t.x_train, get=get).T).T
    mean_bound = a * float(torch.linalg.matrix_norm(W, 2) * torch.linalg.solve(K, t.y_train).norm()) / (1 - a / lam)
    std_bound = float((a * (W**2).sum(1) / lam / ours.std).max())
    assert mean_bound < 2e-9 and std_bound < 2e-9, (mean_bound, std_bound)
    np.testing.assert_allclose(mean, ours.mean.numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(std, ours.std.numpy(), rtol=0, atol=1e-8)


def test_classifier_runs_on_digits(parity):
    t = parity
    net = relu_net()
    clf = GaussianProcessClassifier(NetworkKernel(net), optimizer=None).fit(t.x_train.numpy(), t.y_train.numpy())
    acc = float((clf.predict(t.x_test.numpy()) == t.y_test.numpy()).mean())
    # measured 0.895 (Laplace approximation, logistic link, unit prior scale); chance is ~0.5
    assert acc > 0.85, acc
    proba = clf.predict_proba(t.x_test.numpy())
    assert proba.shape == (200, 2) and np.allclose(proba.sum(1), 1.0)
    # ten classes, one-vs-rest, with the default optimiser (the kernel has no hyperparameters to tune)
    m = make_task("digits", "multiclass", n_train=300, n_test=200, seed=0)
    clf = GaussianProcessClassifier(NetworkKernel(net, get="ntk")).fit(m.x_train.numpy(), m.y_train.numpy())
    acc = float((clf.predict(m.x_test.numpy()) == m.y_test.numpy()).mean())
    assert acc > 0.8, acc  # chance is 0.1


def test_composed_kernel_is_optimised_with_correct_gradients(parity):
    """In ``C * NetworkKernel + White`` the empty gradient of our kernel composes with scikit-learn's:
    the log marginal likelihood's analytic gradient equals central finite differences."""
    t = parity
    x, y = t.x_train.numpy()[:100], t.y_train.numpy()[:100]
    kernel = ConstantKernel(1.0) * NetworkKernel(relu_net()) + WhiteKernel(1e-2)
    gpr = GaussianProcessRegressor(kernel, random_state=0).fit(x, y)
    assert gpr.log_marginal_likelihood_value_ > gpr.log_marginal_likelihood(kernel.theta)
    theta = gpr.kernel_.theta
    value, grad = gpr.log_marginal_likelihood(theta, eval_gradient=True)
    h = 1e-5
    fd = [(gpr.log_marginal_likelihood(theta + h * e) - gpr.log_marginal_likelihood(theta - h * e)) / (2 * h)
          for e in np.eye(len(theta))]
    # central differences: error O(h^2 * third derivative) + rounding eps*|lml|/h ~ 1e-9
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
    K, dK = NetworkKernel(relu_net())(x[:7], eval_gradient=True)
    assert K.shape == (7, 7) and dK.shape == (7, 7, 0)


def test_kernel_protocol_clone_pickle(parity):
    x = parity.x_train.numpy()[:20]
    net = relu_net()
    k = NetworkKernel(net, get="ntk")
    K = k(x)
    # exact: the adapter makes the same kernel call on the same rows (x shares parity.x_train's memory)
    assert K.dtype == np.float64 and np.array_equal(K, net(parity.x_train[:20], get="ntk").numpy())
    # a (20, 5) block is another matrix product than the (20, 20) matrix (BLAS blocking, threads):
    # a length-64 reduction, a few ulps x sqrt(64) ~ 1e-15 relative (measured 9e-16), and the
    # ReLU angle amplifies it by 1 / sqrt(1 - c^2) <= 2.2 for these digits (largest cosine 0.89);
    # the entries (i, i), i < 5, are self-pairs (angle exactly 0, nothing amplified) in both calls
    np.testing.assert_allclose(k(x, x[:5]), K[:, :5], rtol=1e-12, atol=0)
    assert np.array_equal(k.diag(x), net.diag(parity.x_train[:20], get="ntk").numpy())  # same call, exact
    assert not k.is_stationary() and k.requires_vector_input and k.n_dims == 0
    assert k.get_params() == {"kernel": net, "get": "ntk", "input_shape": None, "device": None, "weight_var": None,
                              "bias_var": None, "weight_var_bounds": (1e-2, 1e2), "bias_var_bounds": (1e-6, 1e2)}
    for copy in (clone(k), pickle.loads(pickle.dumps(k)), k.clone_with_theta(k.theta)):
        # exact: a copy of the kernel object repeats the same call on the same x
        assert copy == k and copy.kernel is not net and np.array_equal(copy(x), K)
    assert k != NetworkKernel(net, get="nngp")
    assert k != NetworkKernel(gk.serial(gk.Dense(1.5, 0.1), gk.Relu()), get="ntk")
    # a fitted regressor pickles with its kernel
    gpr = GaussianProcessRegressor(k, optimizer=None, alpha=1e-10).fit(x, parity.y_train.numpy()[:20])
    again = pickle.loads(pickle.dumps(gpr))
    # exact: the unpickled regressor holds bitwise copies of X_train_, L_ and alpha_ and repeats the
    # same calls (same shapes, same thread count)
    assert np.array_equal(again.predict(x[:3]), gpr.predict(x[:3]))
    # convolutional kernels take flattened rows
    conv = gk.serial(gk.Conv2d(3, padding="same", W_std=1.3, b_std=0.2), gk.Relu(), gk.GlobalAvgPool(), gk.Dense())
    imgs = make_task("digits", "parity", n_train=6, n_test=1, seed=0, flatten=False).x_train
    kc = NetworkKernel(conv, input_shape=(1, 8, 8))
    # exact: the rows are reshaped back to the same (6, 1, 8, 8) images, the same call
    assert np.array_equal(kc(imgs.reshape(6, 64).numpy()), conv(imgs).numpy())


@pytest.mark.parametrize(
    "make,input_shape",
    [
        (lambda: gk.paper_mlp(3, constrained=True), None),
        (lambda: gk.serial(gk.Centred(gk.Conv2d(3)), gk.Relu(), gk.Flatten(), gk.Centred(gk.Dense())), (1, 8, 8)),
        (lambda: gk.serial(gk.Conv2d(3, padding="same", b_std=0.1), gk.Erf(0.9, 1.1, 0.1), gk.GlobalAvgPool(),
                           gk.Dense(1.2), gk.LeakyRelu(0.1), gk.Dense(b_std=0.3), gk.ABRelu(-0.2, 1.0),
                           gk.Identity(), gk.Dense()), (1, 8, 8)),
    ],
    ids=["constrained_mlp", "constrained_cnn", "layer_zoo"],
)
def test_every_kernel_object_pickles_inside_the_sklearn_kernel(make, input_shape):
    """scikit-learn pickles fitted estimators (joblib); the wrapped kernel objects must survive it."""
    x = make_task("digits", "parity", n_train=6, n_test=1, seed=0).x_train.numpy()  # (6, 64)
    kern = NetworkKernel(make(), input_shape=input_shape)
    again = pickle.loads(pickle.dumps(kern))
    assert again == kern and again.kernel is not kern.kernel
    # exact: the unpickled kernel object (equal layers) repeats the same calls on the same x
    assert np.array_equal(again(x), kern(x)) and np.array_equal(again.diag(x), kern.diag(x))


def test_bad_arguments_are_one_line_errors(parity):
    x = parity.x_train.numpy()[:5]
    with pytest.raises(GpmarginError, match="wraps a gpmargin kernel object"):
        NetworkKernel("relu")
    with pytest.raises(GpmarginError, match=r"get='ntgp'.*'nngp' or 'ntk'"):
        NetworkKernel(relu_net(), get="ntgp")
    with pytest.raises(GpmarginError, match=r"input_shape=64\) must be a tuple"):
        NetworkKernel(relu_net(), input_shape=64)
    with pytest.raises(GpmarginError, match=r"input_shape=\(1, 8, 8\) needs 64"):
        NetworkKernel(relu_net(), input_shape=(1, 8, 8))(x[:, :10])
    with pytest.raises(ValueError, match="only be evaluated when Y is None"):
        NetworkKernel(relu_net())(x, x, eval_gradient=True)
    # set_params bypasses __init__; the next call still checks
    k = NetworkKernel(relu_net()).set_params(get="both")
    with pytest.raises(GpmarginError, match="get='both'"):
        k(x)
