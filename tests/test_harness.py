"""The experiment protocol: a new experiment is one class; the registry, the sweep (resume, budget,
Dask-free local runner), the report and the CLI's help take it as they take the built-in ones.

The toy experiment is real work, small: a least-squares readout of 8x8 digits (parity), one unit
per ridge penalty and seed, fitted by ``torch.linalg.lstsq`` on the real data split.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import pytest
import torch

from gpmargin.errors import GpmarginError
from validation.harness.experiment import DATA_FIELDS, POSITIVE, Experiment
from validation.harness.fields import integer, listed
from validation.harness.folders import output_path, runs_path
from validation.harness.sweep import records_complete, run_sweep
from validation.registry import EXPERIMENTS, experiment_from_dict, get_experiment, register


@dataclasses.dataclass(frozen=True)
class Ridge(Experiment):
    """Ridge regression of the labels on the pixels, one unit per (penalty, seed)."""

    name: ClassVar[str] = "toy_ridge"
    summary: ClassVar[str] = "ridge readout of 8x8 digits (a test's toy experiment)"

    dataset: str = "digits"
    n_train: int = 300
    n_test: int | None = 200
    carve_from: str | None = None
    penalties: tuple[float, ...] = (1e-3, 1.0, 100.0)
    seeds: tuple[int, ...] = (0, 1)

    FIELDS: ClassVar[dict] = {**DATA_FIELDS, "penalties": listed(POSITIVE), "seeds": listed(integer(0), distinct=True)}

    @classmethod
    def settings(cls, scale: str) -> dict[str, Any]:
        return {"penalties": (1.0,), "seeds": (0,)} if scale == "smoke" else {}

    def units(self):
        return [{"penalty": p, "seed": s} for s in self.seeds for p in self.penalties]

    def unit_key(self, unit):
        return (repr(float(unit["penalty"])), int(unit["seed"]))

    def run_unit(self, task, unit, device):
        g = torch.Generator().manual_seed(unit["seed"])
        keep = torch.randperm(task.x_train.shape[0], generator=g)[: self.n_train // 2]  # a seeded half
        x, y = task.x_train[keep].double(), task.y_train[keep].double()
        w = torch.linalg.solve(x.T @ x + unit["penalty"] * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
        acc = float((torch.sign(task.x_test.double() @ w) == task.y_test.double()).double().mean())
        return {"test_accuracy": acc}

    def report(self, out, records, task=None, device=None, verbose=True):
        path = output_path(self, out, "summary.json")
        path.write_text(json.dumps({"best": max(r["test_accuracy"] for r in records), "units": len(records)}))
        return {"files": {"json": str(path)}}


@pytest.fixture
def toy():
    register(Ridge)
    yield Ridge
    EXPERIMENTS.pop(Ridge.name)


def test_a_registered_experiment_runs_through_the_sweep_and_the_cli(toy, tmp_path, capsys):
    from gpmargin.cli import main

    config = get_experiment("toy_ridge", "quick")
    assert experiment_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.with_overrides(["penalties=0.5,5"]).overrides() == {"penalties": [0.5, 5.0]}
    records = run_sweep(config, tmp_path, "cpu", progress=False)
    assert records_complete(config, records) and len(records) == 6
    assert all(0.5 < r["test_accuracy"] <= 1.0 for r in records)  # parity of digits is learnable
    assert len(runs_path(config, tmp_path).read_text().splitlines()) == 6
    # resume: nothing runs again
    assert run_sweep(config, tmp_path, "cpu", progress=False) == records
    # the CLI: its help lists the toy experiment, a run writes its report
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "toy_ridge (ridge readout of 8x8 digits" in " ".join(capsys.readouterr().out.split())
    assert main(["validate", "toy_ridge", "--scale", "smoke", "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "cli" / "toy_ridge-summary.json").read_text())["units"] == 1
    with pytest.raises(GpmarginError, match="penalties must be a comma list"):
        config.with_overrides(["penalties=-1"])


def test_register_refuses_what_is_not_an_experiment_and_a_second_name(toy):
    with pytest.raises(GpmarginError, match="is not an Experiment subclass"):
        register(dict)

    @dataclasses.dataclass(frozen=True)
    class Other(Ridge):
        name: ClassVar[str] = "toy_ridge"

    with pytest.raises(GpmarginError, match="named 'toy_ridge' is registered already"):
        register(Other)
    with pytest.raises(GpmarginError, match="unknown experiment 'nosuch'"):
        get_experiment("nosuch")
