"""The ``gd`` experiment (gradient descent against its infinite-width theory) at smoke scale, and
the gap statistics of validation.theory.gaps (mean / max |gap|, where, margin-shift factor)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest

from gpmargin.errors import GpmarginError
from validation.theory.comparison import compare
from validation.theory.gaps import gap_statistics
from validation.registry import get_experiment


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tiles: see conftest


@pytest.fixture(scope="module")
def parity(mnist_test):
    from gpmargin.data import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_task("mnist", "parity", n_train=150, n_test=400, seed=0)


def test_margin_shift_recovers_a_known_factor(parity):
    """'Measurements' that are the exact prediction at 1.7 alpha: the search finds c = 1.7 and no
    gap is left; unshifted, the max gap is where the curve is steepest (not on a plateau)."""
    from gpmargin.kernels import paper_mlp
    from gpmargin.predict import curve_from_posterior, posterior

    post = posterior(paper_mlp(3), parity.x_train.double(), parity.y_train, parity.x_test.double(), kind="ntk")
    ens = (1, 4)

    def predict(m):
        return curve_from_posterior(post, parity.y_test, m, ens).accuracy

    margins = np.logspace(-2, 1.5, 8)
    measured = predict(1.7 * margins)
    measured[1, 0] = np.nan  # a missing measurement is skipped
    g = gap_statistics(margins, ens, measured, predict)
    assert g["margin_shift"]["factor"] == pytest.approx(1.7, rel=2e-3)
    assert g["margin_shift"]["mean_abs_gap"] < 2e-4 and not g["margin_shift"]["at_search_bound"]
    gap = measured - predict(margins)
    i = np.nanargmax(np.abs(gap))
    assert g["max_abs_gap"] == pytest.approx(np.nanmax(np.abs(gap)), abs=1e-15)
    assert (g["max_gap_ensemble"], g["max_gap_margin"]) == (ens[i // 8], margins[i % 8])
    assert g["mean_signed_gap"] > 0 and g["mean_abs_gap"] == pytest.approx(np.nanmean(np.abs(gap)), abs=1e-15)
    assert set(g["by_ensemble"]) == {"1", "4"} and g["by_ensemble"]["1"]["max_abs_gap"] <= g["max_abs_gap"]
    assert gap_statistics(margins, ens, np.full((2, 8), np.nan), predict) is None


def test_trained_time_is_neural_tangents_time():
    c = get_experiment("gd", "quick")
    assert c.trained_time() == (float(c.steps), c.lr) and c.loss == "half_mse" and c.decay == 1.0
    decayed = dataclasses.replace(c, decay=0.99, steps=100)
    assert decayed.trained_time()[0] == pytest.approx(sum(0.99**s for s in range(100)), rel=1e-12)
    with pytest.raises(GpmarginError, match="gp_kind"):
        dataclasses.replace(c, gp_kind="ntkgp")
    with pytest.raises(GpmarginError, match="model=resnet: model must be one of mlp, ntk-mlp"):
        dataclasses.replace(c, model="resnet")


def test_gd_smoke_sweep_against_its_theory(mnist_test, tmp_path):
    """Networks from ``paper_mlp(3).network(width, parameterization="ntk")`` trained by full-batch
    gradient descent; their training residual and test accuracy against the predictions."""
    config = dataclasses.replace(get_experiment("gd", "smoke"), n_train=100, n_test=400, width=256, steps=40,
                                 margins=(0.1, 3.0), members=2, ensembles=(1, 2))
    from validation.harness.sweep import run_sweep

    recs = run_sweep(config, tmp_path / "gd", device="cpu", progress=False)
    summary = compare(config, tmp_path / "gd", recs, verbose=False)
    header = (tmp_path / "gd" / "gd-comparison.csv").read_text().splitlines()[0].split(",")
    assert header[4:7] == ["nngp_accuracy", "ntk_accuracy", "ntk_time_accuracy"]
    saved = json.loads((tmp_path / "gd" / "gd-comparison.json").read_text())
    assert saved["predictions"]["ntk_time_accuracy"]["time"] == 40.0
    assert saved["predictions"]["ntk_accuracy"]["time"] is None
    for g in summary["gaps"].values():
        assert {"mean_abs_gap", "max_abs_gap", "max_gap_margin", "mean_signed_gap", "margin_shift"} <= set(g)
    fit = {r["margin"]: r for r in summary["training_fit"]}
    # after 40 steps the fit is incomplete; the prediction at t = 40 says by how much.  At alpha = 3 the
    # residual is mostly the untrained part of alpha*y (init noise is 1/30 of it): a wrong time scale
    # (factor 2) moves the predicted residual by more than 30%, width-256 networks by less.
    big = fit[3.0]
    assert big["ntk_accuracy_relative_error"] == 0.0  # exact: the t = inf fit is alpha * y by construction
    assert abs(math.log(big["nn_relative_error"] / big["ntk_time_accuracy_relative_error"])) < math.log(1.3)
    assert fit[0.1]["nn_relative_error"] > big["nn_relative_error"]
    # single networks at alpha = 3: the prediction at the trained time is the closest
    row = [r for r in summary["rows"] if r["margin"] == 3.0 and r["ensemble"] == 1][0]
    assert abs(row["nn_accuracy"] - row["ntk_time_accuracy"]) < 0.05
