"""gpmargin's GPyTorch adapters under GPyTorch's own kernel test suite, and a batched GP on digits.

``BaseKernelTestCase`` (shipped with GPyTorch) checks batch broadcasting, lazily evaluated
batched kernels and their indexing, ``batch_shape``, ``active_dims``, ``diag``, pickling, dtype
and device; it compares batched against looped evaluations, so the value checks below compare
against the gpmargin kernel objects themselves.
"""

from __future__ import annotations

import unittest
import warnings

import pytest
import torch

gpytorch = pytest.importorskip("gpytorch", reason="gpytorch not installed; skipping the GPyTorch adapter tests")
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase  # noqa: E402

from gpmargin import kernels as gk  # noqa: E402
from gpmargin.errors import GpmarginError  # noqa: E402
from gpmargin.kernels.gpytorch import NNGPKernel, NTKKernel  # noqa: E402
from gpmargin.predict import posterior  # noqa: E402


def relu_net():
    return gk.serial(gk.Dense(1.5, 0.1), gk.Relu(), gk.Dense(1.2, 0.2))


def erf_net():
    return gk.serial(gk.Dense(1.3, 0.3), gk.Erf(), gk.Dense(0.9, 0.4))


# -- GPyTorch's own suite: 26 tests per adapter --------------------------------------------
class TestNNGPKernelReluGPyTorchSuite(BaseKernelTestCase, unittest.TestCase):
    seed = 0

    def create_kernel_no_ard(self, **kwargs):
        return NNGPKernel(relu_net(), **kwargs)


class TestNTKKernelReluGPyTorchSuite(BaseKernelTestCase, unittest.TestCase):
    seed = 0

    def create_kernel_no_ard(self, **kwargs):
        return NTKKernel(relu_net(), **kwargs)


class TestNNGPKernelErfGPyTorchSuite(BaseKernelTestCase, unittest.TestCase):
    seed = 1

    def create_kernel_no_ard(self, **kwargs):
        return NNGPKernel(erf_net(), **kwargs)


class TestNTKKernelErfGPyTorchSuite(BaseKernelTestCase, unittest.TestCase):
    seed = 1

    def create_kernel_no_ard(self, **kwargs):
        return NTKKernel(erf_net(), **kwargs)


# -- values, dtypes and the options GPyTorch's suite does not check ------------------------
@pytest.fixture(scope="module")
def digits_x():
    from gpmargin.data import make_task

    t = make_task("digits", "multiclass", n_train=40, n_test=10, seed=0)
    return t.x_train, t.x_test


@pytest.mark.parametrize("cls,get", [(NNGPKernel, "nngp"), (NTKKernel, "ntk")])
def test_values_equal_the_kernel_object(digits_x, cls, get):
    x, z = digits_x
    net = relu_net()
    kern = cls(net).double()
    # exact: the adapter makes the same float64 kernel call on the same rows (views of x and z)
    assert torch.equal(kern(x, z).to_dense(), net(x, z, get=get))
    assert torch.equal(kern(x).to_dense(), net(x, get=get))
    assert torch.equal(kern(x, diag=True), net.diag(x, get=get))
    # a kernel with batch_shape (10,) on shared inputs: one computation broadcast to the batch (exact)
    out = cls(net, batch_shape=[10]).double().forward(x, z)
    assert out.shape == (10, 40, 10) and out.stride(0) == 0 and torch.equal(out[3], net(x, z, get=get))
    # active_dims selects input columns before the kernel (exact: the same call on a copy of x[:, cols])
    cols = [0, 5, 9, 20, 33, 63]
    assert torch.equal(cls(net, active_dims=cols).double()(x).to_dense(), net(x[:, cols], get=get))
    # the deprecated last_dim_is_batch: one kernel per feature, each on 1-D inputs (exact: the same
    # call on the same (7, 1) and (5, 1) column views)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        per_dim = kern(x[:7, :3], z[:5, :3], last_dim_is_batch=True).to_dense()
    assert per_dim.shape == (3, 7, 5)
    for d in range(3):
        assert torch.equal(per_dim[d], net(x[:7, d : d + 1], z[:5, d : d + 1], get=get))


def test_dtype_and_device_follow_gpytorch_rules(digits_x):
    x, _ = digits_x
    k32 = NNGPKernel(relu_net())  # the default dtype, like any freshly built GPyTorch kernel
    assert k32.dtype == torch.get_default_dtype() and k32.device == torch.device("cpu")
    # output dtype = promote(inputs, kernel): float64 inputs give float64 however the kernel is set
    assert k32(x).to_dense().dtype == torch.float64
    assert k32(x.float()).to_dense().dtype == torch.promote_types(torch.float32, k32.dtype)
    k64 = k32.double()
    assert k64.dtype == torch.float64 and k64(x.float()).to_dense().dtype == torch.float64
    # float32 output is the float64 kernel rounded once (exact: the same float64 call, then one rounding)
    ref = relu_net()(x.float().double())
    assert torch.equal(NNGPKernel(relu_net()).float()(x.float()).to_dense(), ref.float())
    # the buffer carrying dtype/device is not part of a model's saved state
    assert "_anchor" not in k64.state_dict()


def test_bad_inputs_are_one_line_errors(digits_x):
    x, _ = digits_x
    with pytest.raises(GpmarginError, match="wraps a gpmargin kernel object"):
        NNGPKernel("relu")
    with pytest.raises(GpmarginError, match="variances='learned'.* must be 'fixed', 'shared' or 'per_layer'"):
        NNGPKernel(relu_net(), variances="learned")
    with pytest.raises(GpmarginError, match="needs a kernel with Dense/Conv layers"):
        NNGPKernel(gk.Relu(), variances="shared")
    with pytest.raises(GpmarginError, match="has no bias_var"):
        NNGPKernel(gk.paper_mlp(2), variances="shared").bias_var = 0.1


def test_inputs_are_differentiable(digits_x):
    """Inputs that require grad get the gradient of the gpmargin kernel itself (a feature
    extractor can be trained through the kernel)."""
    x, _ = digits_x
    a = x[:6].double().clone().requires_grad_(True)
    b = x[:6].double().clone().requires_grad_(True)
    NNGPKernel(relu_net())(a).to_dense().sum().backward()
    relu_net()(b).sum().backward()
    # GPyTorch passes x twice (two tensors that require grad, so the triangles are computed
    # separately rather than mirrored): the same derivative summed in another order, rounding
    assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-14)
    with pytest.raises(GpmarginError, match="input_shape"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            NNGPKernel(gk.paper_cnn(), input_shape=(1, 8, 8))(x, last_dim_is_batch=True).to_dense()


def test_conv_kernel_via_input_shape():
    from gpmargin.data import make_task

    t = make_task("digits", "multiclass", n_train=12, n_test=4, seed=0, flatten=False)
    net = gk.serial(gk.Conv2d(3, padding="same", W_std=1.4, b_std=0.1), gk.Relu(), gk.Flatten(), gk.Dense(1.1, 0.2))
    kern = NTKKernel(net, input_shape=(1, 8, 8)).double()
    flat = t.x_train.reshape(12, 64)
    # exact: the rows are reshaped back to the same (12, 1, 8, 8) images, the same call
    assert torch.equal(kern(flat).to_dense(), net(t.x_train, get="ntk"))


# -- a batched model on real data: one output GP per class ---------------------------------
@pytest.mark.parametrize("cls,get,kind", [(NNGPKernel, "nngp", "nngp"), (NTKKernel, "ntk", "ntkgp")])
def test_batched_exact_gp_per_class_matches_gpmargin_posterior(cls, get, kind):
    """An ExactGP with ``batch_shape`` 10 (one independent GP per digit class, targets one-hot)
    has posterior means ``K_*X (K + s2 I)^-1 Y``; gpmargin's noise-free posterior is
    ``K_*X K^-1 Y``.  Their difference is ``s2 K_*X K^-1 (K + s2 I)^-1 Y``, at most
    ``s2 ||K_*X K^-1||_2 ||K^-1 Y||_F / (1 - s2 / lambda_min)`` in every entry; with
    ``s2 = 1e-12`` that bound is computed below (4e-10 for the NNGP, 3e-11 for the NTK) and asserted
    < 1e-9, so the 1e-8 tolerance tests the implementations, not the noise.  A GP with the NTK as
    covariance is gpmargin's ``kind="ntkgp"``."""
    from gpmargin.data import make_task

    t = make_task("digits", "multiclass", n_train=300, n_test=200, seed=0)
    Y = torch.nn.functional.one_hot(t.y_train, 10).double()  # (n, 10)
    net = relu_net()
    s2 = 1e-12

    class PerClassGP(gpytorch.models.ExactGP):
        def __init__(self, x, targets, likelihood):
            super().__init__(x, targets, likelihood)
            self.mean_module = gpytorch.means.ZeroMean(batch_shape=torch.Size([10]))
            self.covar_module = cls(net, batch_shape=torch.Size([10]))

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    # GPyTorch rounds fixed noise below 1e-6 up unless told otherwise
    with gpytorch.settings.min_fixed_noise(double_value=s2):
        lik = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(
            noise=torch.full((10, 300), s2, dtype=torch.float64), batch_shape=torch.Size([10])
        )
    model = PerClassGP(t.x_train, Y.T.contiguous(), lik).double()
    model.eval()
    with torch.no_grad():
        f = model(t.x_test)
    assert f.mean.shape == (10, 200)

    ours = posterior(net, t.x_train, Y, t.x_test, kind=kind)
    assert ours.jitter == 0.0
    K = net(t.x_train, get=get)
    W = torch.linalg.solve(K, net(t.x_test, t.x_train, get=get).T).T
    lam_min = float(torch.linalg.eigvalsh(K)[0])
    alpha_norm = torch.linalg.norm(torch.linalg.solve(K, Y))
    bound = s2 * float(torch.linalg.matrix_norm(W, 2) * alpha_norm) / (1 - s2 / lam_min)
    assert bound < 1e-9, bound
    assert float((f.mean.T - ours.mean).abs().max()) < 1e-8
    # and the posterior variances, shared by the ten GPs
    assert float((f.variance - ours.std**2).abs().max()) < 1e-8
    acc = float((f.mean.argmax(0) == t.y_test).double().mean())
    assert acc > 0.85, acc  # 10 classes: chance is 0.1


class TestNNGPKernelLearnableGPyTorchSuite(BaseKernelTestCase, unittest.TestCase):
    """Learnable per-layer variances (one set per batch member) under GPyTorch's own suite."""

    seed = 2

    def create_kernel_no_ard(self, **kwargs):
        return NNGPKernel(relu_net(), variances="per_layer", **kwargs)
