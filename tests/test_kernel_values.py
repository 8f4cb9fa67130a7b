"""Kernel objects are values (equality, hashing, repr, pickling, cloning), kernel matrices of one
input set are exactly symmetric with the self pass's diagonal, and library calls are quiet."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from gpmargin import kernels as gk
from gpmargin.errors import GpmarginError
from gpmargin.linalg import mirror_upper

# eval(repr(k)) needs the public names in scope
NAMESPACE = {name: getattr(gk, name) for name in gk.__all__}

KERNELS = {
    "paper_mlp": gk.paper_mlp(3),
    "paper_cnn": gk.paper_cnn(),
    "constrained_mlp": gk.paper_mlp(2, constrained=True),
    "every_layer": gk.serial(gk.Conv2d(3, 2, "same", 1.5, 0.1), gk.Erf(1, 2, 0.5), gk.LeakyRelu(0.1),
                             gk.ABRelu(-1, 2), gk.Identity(), gk.GlobalAvgPool(), gk.Dense(2.0, 0.3),
                             gk.Relu(2.0), gk.Flatten(), gk.Dense()),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_objects_are_values(name):
    k = KERNELS[name]
    again = eval(repr(k), NAMESPACE)
    assert again == k and hash(again) == hash(k) and again is not k
    assert pickle.loads(pickle.dumps(k)) == k
    assert copy.deepcopy(k) == k


def test_layers_differ_by_any_argument_and_are_frozen():
    assert gk.Dense() == gk.Dense(1.0, None) and gk.Dense() != gk.Dense(1.0, 0.0)
    assert gk.Conv2d(3) == gk.Conv2d((3, 3), 1) and gk.Conv2d(3) != gk.Conv2d(3, padding="same")
    assert gk.Relu() != gk.ABRelu(0.0, 1.0)  # same map, different description
    assert gk.serial(gk.Dense(), gk.Relu()) != gk.serial(gk.Relu(), gk.Dense())
    assert len({gk.Erf(), gk.Erf(1.0, 1.0, 0.0), gk.Erf(c=0.5)}) == 2
    with pytest.raises(GpmarginError, match="immutable"):
        gk.Dense().W_std = 2.0


def test_sklearn_clone_round_trips_equal():
    from sklearn.base import clone

    from gpmargin.kernels.sklearn import NetworkKernel

    nk = NetworkKernel(gk.paper_cnn(), input_shape=(1, 28, 28))
    twin = clone(nk)
    assert twin.get_params() == nk.get_params() and twin == nk


def test_mirror_upper_makes_the_matrix_exactly_symmetric():
    a = torch.randn(37, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    upper = a.triu().clone()
    m = mirror_upper(a.clone(), block=8)  # uneven blocks
    assert torch.equal(m, m.T) and torch.equal(m.triu(), upper)


@pytest.fixture(scope="module")
def images(mnist_test):
    x, _ = mnist_test
    return (x[:40].double() - 0.1307) / 0.3081


@pytest.mark.parametrize("name", ["paper_mlp", "paper_cnn"])
def test_one_input_set_gives_an_exactly_symmetric_matrix_with_the_exact_diagonal(name, images):
    k = KERNELS[name]
    x = images.reshape(40, -1) if name == "paper_mlp" else images
    for batch_size in (None, 7):  # whole rows and square tiles with uneven edges
        K, T = k(x, get=("nngp", "ntk"), batch_size=batch_size)
        d_nngp, d_ntk = k.diag(x, get=("nngp", "ntk"))
        for M, d in ((K, d_nngp), (T, d_ntk)):
            assert torch.equal(M, M.T)  # mirrored by construction
            assert torch.equal(torch.diagonal(M), d)  # the diagonal is the self pass's


def test_library_calls_are_quiet_unless_asked(images, capfd):
    k = gk.paper_cnn()
    k(images[:12], batch_size=3)  # 10 tiles: more than 8
    assert capfd.readouterr().err == ""  # stderr is not a terminal under pytest
    k(images[:12], batch_size=3, progress=True)
    assert "kernel" in capfd.readouterr().err
