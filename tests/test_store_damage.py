"""A damaged kernel store is never read silently, and the remedy its message names repairs it.

Real stores of real MNIST kernels (n = 300, 150 test points, tiles of 64) are damaged on disk the
way a user's would be: a chunk file deleted while its done-marker stays, or a byte flipped, in
each array (training tiles, cross rows, the test diagonal, the stored Cholesky factor).  Every read
names the array and the chunk in one line; `gpmargin kernel` rerun re-reads every tile, recomputes
the damaged ones and discards a damaged factor; `predict` discards a damaged factor and factorises
again.  Also: `gpmargin kernel --workers 1` and `--scheduler ADDRESS` against a real local Dask
cluster give the store of the in-process run.
"""

from __future__ import annotations

import csv
import shutil
import warnings

import numpy as np
import pytest
import torch

from gpmargin.cli import main
from gpmargin.distributed import compute_kernel_store, open_store
from gpmargin.distributed.blocked import blocked_cholesky, stored_posterior
from gpmargin.distributed.store import DamagedStore, KernelStore
from gpmargin.kernels import paper_mlp

TILE = 64
N, M = 300, 150
DATA = ["--dataset", "mnist", "--task", "parity", "--n-train", str(N), "--n-test", str(M), "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tiles: see conftest


@pytest.fixture(scope="module")
def made(tmp_path_factory, mnist_test):
    """A finished store with its NNGP factor, made by the CLI, and the curve `predict` draws from it."""
    root = tmp_path_factory.mktemp("damage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["kernel", *DATA, "--tile", str(TILE), "--no-progress", "--out", str(root / "s")]) == 0
        assert main(["predict", *DATA, "--no-progress", "--kernel-store", str(root / "s"),
                     "--out", str(root / "curve")]) == 0
    return root


def _accuracies(folder):
    with open(folder / "curve.csv") as f:
        return np.array([float(r["accuracy"]) for r in csv.DictReader(f)])


def _copy(made, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(made / "s", out)
    return out


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _predict(store, out, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["predict", *DATA, "--no-progress", "--kernel-store", str(store), "--out", str(out)])
    return code, capsys.readouterr().err


# (array, chunk): a training tile off the diagonal, a cross tile, a block of the test diagonal
KERNEL_CHUNKS = [("train", (1, 3)), ("cross", (2, 4)), ("test_diag", (1,))]


@pytest.mark.parametrize("array,index", KERNEL_CHUNKS)
@pytest.mark.parametrize("damage", ["deleted", "flipped"])
def test_damaged_kernel_chunk_is_named_and_kernel_rerun_repairs_it(made, tmp_path, capsys, array, index, damage):
    store = _copy(made, tmp_path)
    ks = KernelStore.open(store)
    chunk = ks.chunk_path("nngp", array, *index)
    chunk.unlink() if damage == "deleted" else _flip_byte(chunk)
    if array == "train":  # a training tile is read only to factorise: make predict factorise
        (store / "factor-nngp.json").unlink()
    code, err = _predict(store, tmp_path / "bad", capsys)
    what = "is missing" if damage == "deleted" else "fails its checksum"
    chunk_name = "/".join(map(str, index))
    assert code == 2, err
    line = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert f"chunk {chunk_name} of nngp/{array} {what}" in line and "rerun the `gpmargin kernel` command" in line
    assert not (tmp_path / "bad" / "curve.csv").exists()  # nothing half-written
    # the remedy the message names: rerun the same kernel command; it recomputes that one unit
    assert main(["kernel", *DATA, "--tile", str(TILE), "--no-progress", "--out", str(store)]) == 0
    code, err = _predict(store, tmp_path / "good", capsys)
    assert code == 0, err
    assert np.abs(_accuracies(tmp_path / "good") - _accuracies(made / "curve")).max() < 1e-10


def _inputs():
    from gpmargin.data import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = make_task("mnist", "parity", n_train=N, n_test=M, seed=0)
    return t.x_train, t.x_test


def test_kernel_rerun_reports_the_one_repaired_unit(made, tmp_path):
    store = _copy(made, tmp_path)
    KernelStore.open(store).chunk_path("nngp", "cross", 0, 1).unlink()
    again = compute_kernel_store(paper_mlp(5), *_inputs(), store, tile=TILE, progress=False)
    assert again.report["repaired"] == 1 and again.report["computed"] == 1
    assert np.isfinite(again.cross_rows("nngp", 0, M)).all()


@pytest.mark.parametrize("damage", ["deleted", "flipped"])
def test_damaged_factor_is_refactorised_by_predict(made, tmp_path, capsys, damage):
    store = _copy(made, tmp_path)
    chunk = KernelStore.open(store).chunk_path("nngp", "factor", 3, 1)
    chunk.unlink() if damage == "deleted" else _flip_byte(chunk)
    what = "is missing" if damage == "deleted" else "fails its checksum"
    with pytest.raises(DamagedStore, match=f"chunk 3/1 of nngp/factor {what}; rerun `gpmargin predict`") as err:
        KernelStore.open(store).read("nngp", "factor", (slice(TILE, N), slice(TILE, 2 * TILE)))
    assert "\n" not in str(err.value)
    code, err = _predict(store, tmp_path / "curve", capsys)
    assert code == 0, err
    assert np.abs(_accuracies(tmp_path / "curve") - _accuracies(made / "curve")).max() < 1e-10


def test_factor_damage_message_and_repairs(made, tmp_path, capsys):
    """Python API: a solve on a damaged factor discards it, warns in one line and factorises
    again (same posterior); `gpmargin kernel` rerun also finds and discards a damaged factor."""
    store = _copy(made, tmp_path)
    x_train, x_test = _inputs()
    ks = open_store(store)
    y = torch.ones(N, dtype=torch.float64)
    ref = stored_posterior(ks, x_train, x_test, y)
    _flip_byte(ks.chunk_path("nngp", "factor", 4, 2))
    with pytest.warns(RuntimeWarning, match=r"chunk 4/2 of the stored nngp factor was damaged; discarded"):
        again = stored_posterior(open_store(store), x_train, x_test, y)
    assert torch.equal(again.mean, ref.mean) and torch.equal(again.std, ref.std)  # same panels, same arithmetic
    # damage it again: the kernel command's verification discards it (the next predict refactorises)
    ks.chunk_path("nngp", "factor", 2, 2).unlink()
    assert main(["kernel", *DATA, "--tile", str(TILE), "--no-progress", "--out", str(store)]) == 0
    assert not (store / "factor-nngp.json").exists()
    assert blocked_cholesky(open_store(store)) == 0.0
    code, err = _predict(store, tmp_path / "curve", capsys)
    assert code == 0, err
    assert np.abs(_accuracies(tmp_path / "curve") - _accuracies(made / "curve")).max() < 1e-10
