"""Out-of-core solves over a kernel store (gpmargin.distributed.blocked) against the in-memory
path: the blocked Cholesky and triangular solves give the posterior of
gpmargin.predict.posterior.condition to 1e-10, with the same jitter, resume a stopped
factorisation, and `predict --kernel-store` draws the same curve as plain `predict`.

Real MNIST inputs (n = 300 carved from the test split, 150 test points), tiles of 64 (the last
one 44 rows), panels of 1, 2 and 5 tiles and test points solved in chunks.
"""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch

from gpmargin.distributed import compute_kernel_store
from gpmargin.distributed.blocked import blocked_cholesky, discard_factor, stored_posterior
from gpmargin.errors import GpmarginError
from gpmargin.kernels import paper_mlp
from gpmargin.linalg import JitterWarning
from gpmargin.predict import condition, margin_curve
from gpmargin.predict.inputs import check_labels

TILE = 64
N, M = 300, 150


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tiles: see conftest


@pytest.fixture(scope="module")
def task():
    from gpmargin.data import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return make_task("mnist", "multiclass", n_train=N, n_test=M, seed=0)
        except GpmarginError as exc:
            pytest.skip(f"MNIST not available: {exc}")


@pytest.fixture(scope="module")
def kernel():
    return paper_mlp(5)


@pytest.fixture(scope="module")
def store(tmp_path_factory, task, kernel):
    return compute_kernel_store(kernel, task.x_train, task.x_test, tmp_path_factory.mktemp("b") / "s", kinds="both",
                                tile=TILE, progress=False)


def _memory(panel_tiles: int) -> int:
    """Bytes giving panels of ``panel_tiles`` tiles and test chunks of ``panel_tiles * TILE - C`` points
    (54 with one tile: three chunks of the 150 test points)."""
    return 8 * N * (2 * TILE + panel_tiles * TILE) + 1


# Tolerance: the blocked factor is the same LAPACK arithmetic re-associated by panels; with the
# kernel's condition number (~1e3 here) the posterior moves by ~1e-13, checked at 1e-10.
@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_blocked_posterior_equals_in_memory(store, task, kernel, kind):
    labels = check_labels(task.y_train, task.y_test)
    for targets in (labels.targets(), (2.0 * (task.y_train % 2) - 1).to(torch.float64)):  # 10-class and parity
        ref = condition(kernel(task.x_train, get=kind), kernel(task.x_test, task.x_train, get=kind),
                        kernel.diag(task.x_test, get=kind), targets, kind=kind)
        for panel in (1, 2, 5):
            discard_factor(store, kind)
            post = stored_posterior(store, task.x_train, task.x_test, targets, kind=kind, kernel=kernel,
                                    memory=_memory(panel))
            assert len(list((store.path / "done").glob(f"factor-{kind}-*"))) == -(-5 // panel)
            assert post.jitter == ref.jitter == 0.0
            assert post.mean.shape == ref.mean.shape
            assert (post.mean - ref.mean).abs().max() < 1e-10
            assert (post.std - ref.std).abs().max() < 1e-10


def test_jitter_policy_and_report_match_safe_cholesky(tmp_path, task, kernel):
    """Duplicated training inputs make K singular: both paths add the same jitter and say so."""
    x = torch.cat([task.x_train, task.x_train[:20]])
    y = torch.cat([task.y_train, task.y_train[:20]])
    targets = check_labels(y, task.y_test).targets()
    s = compute_kernel_store(kernel, x, task.x_test, tmp_path / "s", tile=TILE, progress=False)
    with pytest.warns(JitterWarning, match="numerically singular; added jitter"):
        ref = condition(kernel(x), kernel(task.x_test, x), kernel.diag(task.x_test), targets)
    with pytest.warns(JitterWarning, match="training NNGP matrix is numerically singular; added jitter 1e-10"):
        post = stored_posterior(s, x, task.x_test, targets, memory=_memory(1))
    assert post.jitter == pytest.approx(ref.jitter, rel=1e-12) and post.jitter > 0
    # jitter 1e-10 x mean diagonal leaves K_XX with condition number ~1e10: round-off is amplified
    # to ~1e-11 in the means; 1e-10 still separates it from any real difference
    assert (post.mean - ref.mean).abs().max() < 1e-10
    assert (post.std - ref.std).abs().max() < 1e-10
    with pytest.warns(JitterWarning, match="added jitter 1e-10"):  # the stored factor, reused, is reported too
        again = stored_posterior(s, x, task.x_test, targets)
    assert again.jitter == post.jitter  # exact: read back from the stored factor's state
    discard_factor(s)
    with pytest.raises(GpmarginError, match="not positive definite even with jitter") as err:
        blocked_cholesky(s, max_rel_jitter=1e-12, warn=False)
    assert "\n" not in str(err.value)


def test_stopped_factorisation_resumes_at_the_first_unfinished_panel(tmp_path, task, kernel):
    s = compute_kernel_store(kernel, task.x_train, task.x_test, tmp_path / "s", tile=TILE, progress=False)
    targets = check_labels(task.y_train, task.y_test).targets()
    ref = stored_posterior(s, task.x_train, task.x_test, targets, memory=_memory(1))
    markers = sorted((s.path / "done").glob("factor-nngp-*"))
    assert len(markers) == 5  # five panels of one tile
    L = s.read("nngp", "factor", (slice(0, N), slice(0, N)))
    # stop after panel 1: later panels unmarked, their tiles overwritten with garbage
    for P in (2, 3, 4):
        s.unmark(("factor", "nngp", P))
        s.write("nngp", "factor", (P, P), np.full((min(TILE, N - P * TILE),) * 2, 7.0), what="test")
    state = s.path / "factor-nngp.json"
    state.write_text(state.read_text().replace('"done"', '"running"'))
    kept = {m.name: m.stat().st_mtime_ns for m in markers[:2]}
    post = stored_posterior(s, task.x_train, task.x_test, targets, memory=_memory(3))  # plan of the stopped run kept
    for name, mtime in kept.items():
        assert (s.path / "done" / name).stat().st_mtime_ns == mtime
    assert len(list((s.path / "done").glob("factor-nngp-*"))) == 5
    # the same factor to the bit (same panels, same arithmetic); the posterior up to the solve's
    # chunking of test points (memory changed it), i.e. round-off
    assert np.array_equal(np.tril(s.read("nngp", "factor", (slice(0, N), slice(0, N)))), np.tril(L))
    assert (post.mean - ref.mean).abs().max() < 1e-12 and (post.std - ref.std).abs().max() < 1e-12


def test_margin_curve_with_kernel_store(store, task, kernel):
    """One store serves both label sets of the same inputs and any margins and ensembles."""
    for y_train, y_test in ((task.y_train, task.y_test),
                            (2.0 * (task.y_train % 2) - 1, 2.0 * (task.y_test % 2) - 1)):
        ref = margin_curve(kernel, task.x_train, y_train, task.x_test, y_test, None, (1, 4))
        got = margin_curve(None, task.x_train, y_train, task.x_test, y_test, ref.margins, (1, 4), kernel_store=store)
        assert np.abs(got.accuracy - ref.accuracy).max() < 1e-10
        # a fraction of correctly classified test points (sign / argmax of the mean): exact unless
        # a mean lies within round-off of a decision boundary
        assert got.limit_accuracy == ref.limit_accuracy
    other = task.x_test.clone()
    other[0, 0] += 1e-3
    with pytest.raises(GpmarginError, match="other inputs: x_test"):
        margin_curve(kernel, task.x_train, task.y_train, other, task.y_test, kernel_store=store)


def _accuracies(path):
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r["margin"]), float(r["accuracy"])] for r in rows])


def test_predict_cli_with_kernel_store_gives_the_same_curve(tmp_path, mnist_test):
    from gpmargin.cli import main

    data = ["--dataset", "mnist", "--task", "parity", "--n-train", str(N), "--n-test", str(M), "--threads", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["kernel", *data, "--tile", str(TILE), "--no-progress", "--out", str(tmp_path / "s")]) == 0
        assert main(["predict", *data, "--no-progress", "--out", str(tmp_path / "plain")]) == 0
        assert main(["predict", *data, "--no-progress", "--kernel-store", str(tmp_path / "s"), "--memory", "0.001",
                     "--out", str(tmp_path / "stored")]) == 0
        assert main(["predict", *data, "--depth", "3", "--no-progress", "--kernel-store", str(tmp_path / "s"),
                     "--out", str(tmp_path / "bad")]) == 2
    a, b = _accuracies(tmp_path / "plain" / "curve.csv"), _accuracies(tmp_path / "stored" / "curve.csv")
    assert a.shape == b.shape == (41 * 5, 2)
    assert np.abs(a - b).max() < 1e-10


def test_kernel_store_is_an_open_store(store, task):
    """A path is refused in one line that says how to open it; so is a gradient-descent kind."""
    with pytest.raises(GpmarginError, match=r"is a path: open it first, kernel_store=gpmargin.distributed.open_store"):
        margin_curve(None, task.x_train, task.y_train, task.x_test, task.y_test, kernel_store=store.path)
    with pytest.raises(GpmarginError, match="the gradient-descent prediction .* needs the in-memory path"):
        margin_curve(None, task.x_train, task.y_train, task.x_test, task.y_test, kind="ntk", kernel_store=store)
