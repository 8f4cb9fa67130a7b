"""The ``measures`` experiment: a population of trained networks, their measures, Kendall's tau
(overall and granulated, Jiang et al. 2020) and the GP predictions at each network's own margin."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from gpmargin.errors import GpmarginError
from validation.registry import get_experiment
from validation.experiments.measures import HYPERPARAMETERS, analyse
from validation.theory.kendall import granulated, kendall
from validation.training.labels import noisy_labels


def test_kendall_and_granulated_tau_by_hand():
    assert kendall([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3]))  # a constant measure ranks nothing
    assert math.isnan(kendall([1.0, 1.0 + 1e-9, 1.0], [1, 2, 3]))  # float round-off of a constant
    # two hyperparameters a in {0,1}, b in {0,1}: the measure follows the target when a varies
    # (tau +1 in both groups b=0, b=1) and opposes it when b varies (tau -1 in both groups)
    hyper = [dict.fromkeys(HYPERPARAMETERS, 0) | {"margin": a, "lr": b} for a in (0, 1) for b in (0, 1)]
    target = np.array([0.0, 2.0, 1.0, 3.0])  # (a, b) = (0,0), (0,1), (1,0), (1,1)
    measure = np.array([1.0, 0.0, 2.0, 1.5])
    assert granulated(measure, target, hyper, "margin", HYPERPARAMETERS) == pytest.approx(1.0)
    assert granulated(measure, target, hyper, "lr", HYPERPARAMETERS) == pytest.approx(-1.0)


def test_noisy_labels_flip_exactly_the_fraction():
    y = torch.tensor([1.0, -1.0] * 50)
    z = noisy_labels(y, 0.2, seed=3)
    assert int((z != y).sum()) == 20 and torch.equal(noisy_labels(y, 0.2, seed=3), z)
    c = torch.arange(100) % 10
    zc = noisy_labels(c, 0.3, seed=0, num_classes=10)
    assert int((zc != c).sum()) == 30 and int(zc.max()) <= 9
    assert torch.equal(noisy_labels(y, 0.0, 0), y)


def test_config_checks_and_overrides():
    cfg = get_experiment("measures", "quick")
    assert len(cfg.grid()) >= 40  # the minimum population at quick scale
    with pytest.raises(GpmarginError, match="batch_sizes must lie in"):
        cfg.with_overrides(["batch_sizes=5000"])
    with pytest.raises(GpmarginError, match="KEY=VALUE with KEY one of"):
        cfg.with_overrides(["nonsense=1"])
    assert cfg.with_overrides(["widths=8,16"]).widths == (8, 16)


@pytest.fixture(scope="module")
def population(tmp_path_factory, mnist_test):
    from validation.harness.sweep import run_sweep

    cfg = get_experiment("measures", "smoke").with_overrides(["batch_sizes=120", "steps=10"])
    out = tmp_path_factory.mktemp("measures")
    task = cfg.load_task()
    records = run_sweep(cfg, out, "cpu", progress=False, task=task)
    summary = analyse(cfg, out, records, task=task)
    return cfg, out, task, records, summary


def test_population_records_and_tau_table(population):
    cfg, out, _, records, summary = population
    assert len(records) == len(cfg.grid()) == 4
    for r in records:
        assert 0 <= r["test_accuracy"] <= 1 and r["gap"] == pytest.approx(r["train_accuracy"] - r["test_accuracy"])
        assert r["measures"]["basin_radius"] > 0 and r["measures"]["ph_dimension_euclidean"] > 0
    rows = list(csv.DictReader(open(out / "measures-tau.csv")))
    names = {row["measure"] for row in rows}
    assert {"margin", "spectrally_normalized_margin", "sharpness_average", "basin_radius", "ph_dimension_loss",
            "nngp_predicted_accuracy", "ntk_predicted_accuracy"} <= names
    assert len(rows) == 2 * len(names)
    saved = json.load(open(out / "measures-tau.json"))
    wn = next(t for t in saved["tau"] if t["measure"] == "weight_norm" and t["target"] == "test_accuracy")
    assert wn["overall"] is None  # every layer's norm is fixed by Nero's constraints: no ranking, null not 0
    for t in saved["tau"]:
        for k in ("overall", "margin", "label_noise", "psi"):
            assert t[k] is None or -1 <= t[k] <= 1
    gp = summary["gp_predicted_accuracy"]["nngp_predicted_accuracy"]
    assert all(v is None or 0 < v < 1 for v in gp) and sum(v is not None for v in gp) >= 3
    assert (out / "measures-tau.png").stat().st_size > 10_000
    assert len(list(csv.reader(open(out / "measures-networks.csv")))) == 5


def test_population_resumes_without_training(population, monkeypatch):
    import validation.experiments.measures as P
    from validation.harness.sweep import run_sweep

    cfg, out, task, records, _ = population

    def boom(*a, **k):
        raise AssertionError("a finished unit was trained again")

    monkeypatch.setattr(P, "measure_unit", boom)
    assert len(run_sweep(cfg, out, "cpu", progress=False, task=task)) == len(records)
