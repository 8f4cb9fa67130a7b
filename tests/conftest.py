"""Shared fixtures: real datasets, located once per session.

Datasets are found through ``GPMARGIN_DATA`` (``.ci/run`` points it at ``../shared/data``);
when it is unset and a ``shared/data`` folder sits beside the checkout, that is used.
A test that needs an absent dataset is skipped with a message naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_SHARED = REPO.parent / "shared" / "data"
if "GPMARGIN_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["GPMARGIN_DATA"] = str(_SHARED)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    its small tiles or networks are too small for two threads; on a busy 2-core machine a second
    thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load_or_skip(name: str, split: str):
    from gpmargin.data import load
    from gpmargin.errors import DataError

    try:
        return load(name, split=split)
    except DataError as exc:
        pytest.skip(f"dataset {name!r} ({split} split) not available: {exc}")


@pytest.fixture(scope="session")
def mnist_test():
    """The real MNIST test split: (x (10000, 1, 28, 28) in [0, 1], y int64)."""
    return _load_or_skip("mnist", "test")


@pytest.fixture(scope="session")
def fashion_train():
    """Fashion-MNIST training split (60,000 images) when installed with apt."""
    return _load_or_skip("fashion_mnist", "train")


@pytest.fixture(scope="session")
def fashion_test():
    return _load_or_skip("fashion_mnist", "test")


@pytest.fixture(scope="session")
def digits_train():
    return _load_or_skip("digits", "train")
