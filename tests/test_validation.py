"""Validation harness on real MNIST: training to targets, batched = sequential ensembles,
resumable sweeps (SIGKILL), config checks and one-line CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gpmargin.errors import GpmarginError
from gpmargin.io import read_jsonl
from validation.registry import experiment_from_dict, get_experiment
from validation.training.models import MLP, EnsembleConvNet, EnsembleMLP, member_seed
from validation.harness.folders import prepare_output
from validation.harness.sweep import run_sweep
from validation.training.fullbatch import train
from validation.training.losses import margin_targets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parity(mnist_test):
    from gpmargin.data import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_task("mnist", "parity", n_train=100, n_test=500, seed=0)


def test_training_reaches_margin_targets(parity):
    x, y = parity.x_train.float(), parity.y_train
    alpha = 0.5
    targets = margin_targets(y, alpha).float()
    model = EnsembleMLP(2, x.shape[1], 3, 128, 1, seed=3)
    res = train(model, x, targets, steps=500, lr=0.01, decay=0.99, optimizer="nero")
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 100, 1)
    assert bool(torch.all(torch.sign(out[..., 0]) == y.float())), "train accuracy must be 1"
    rel = (out - targets).norm(dim=(1, 2)) / targets.norm()
    assert float(rel.max()) < 0.02
    assert float((out - targets).abs().max()) < 0.25 * alpha
    # loss history: one row per step, decreasing overall
    assert res.loss_history.shape == (500, 2)
    assert bool(torch.all(res.final_loss < 0.05 * res.loss_history[0]))
    # Nero's constraint holds on every layer after training
    for w in model.weights:
        torch.testing.assert_close(w.detach().norm(dim=-1), torch.ones(w.shape[:2]), atol=1e-5, rtol=0)


def test_tolerance_stops_early_and_arbitrary_targets(parity):
    x = parity.x_train.float()
    torch.manual_seed(0)
    targets = torch.randn(2, x.shape[0], 1)  # per-member, arbitrary outputs (not alpha * y)
    model = EnsembleMLP(2, x.shape[1], 3, 128, 1, seed=1)
    res = train(model, x, targets, steps=2000, lr=0.02, decay=0.995, tol=0.1)
    assert res.converged and res.steps < 2000
    with torch.no_grad():
        rel = (model(x) - targets).norm(dim=(1, 2)) / targets.norm(dim=(1, 2))
    assert float(rel.max()) <= 0.1


def test_multiclass_mse_with_adam(mnist_test):
    from gpmargin.data import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = make_task("mnist", "multiclass", n_train=100, n_test=100, seed=0)
    targets = margin_targets(t.y_train, 1.0, 10)
    assert targets.shape == (100, 10)
    model = EnsembleMLP(1, 784, 2, 64, 10, seed=0)
    res = train(model, t.x_train.float(), targets.float(), steps=200, lr=1e-3, optimizer="adam", loss="mse")
    out = model(t.x_train.float())[0]
    assert float((out.argmax(1) == t.y_train).float().mean()) == 1.0
    assert float(res.final_loss[0]) < 0.1 * float(res.loss_history[0, 0])


def test_batched_ensemble_equals_single_networks(parity):
    x, y = parity.x_train.double(), parity.y_train
    targets = margin_targets(y, 0.3)
    k, seed = 3, 7
    ens = EnsembleMLP(k, 784, 4, 32, 1, seed=seed, dtype=torch.float64)
    singles = [MLP(784, 4, 32, 1, seed=member_seed(seed, j), dtype=torch.float64) for j in range(k)]
    for j, s in enumerate(singles):  # same initialisation from per-member seeds
        for a, b in zip(ens.weights, s.weights):
            assert torch.equal(a.detach()[j], b.detach())
    with torch.no_grad():  # same function before training, and member(j) is an ordinary MLP
        out = ens(x)
        for j, s in enumerate(singles):
            torch.testing.assert_close(out[j], s(x), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ens.member(j)(x), s(x), rtol=1e-12, atol=1e-12)
    train(ens, x, targets, steps=30, lr=0.01, decay=0.99)
    for s in singles:
        train(s, x, targets, steps=30, lr=0.01, decay=0.99)
    for j, s in enumerate(singles):
        for a, b in zip(ens.weights, s.weights):
            torch.testing.assert_close(a.detach()[j], b.detach(), rtol=1e-9, atol=1e-10)


def test_conv_ensemble_matches_members(mnist_test):
    x = mnist_test[0][:8].double()
    ens = EnsembleConvNet(2, (1, 28, 28), channels=(3, 4), width=16, dense_layers=1, outputs=1, seed=0,
                          dtype=torch.float64)
    out = ens(x)
    assert out.shape == (2, 8, 1)
    for j in range(2):  # each member by hand with plain (ungrouped) torch ops
        w = [p.detach()[j] for p in ens.weights]
        h = torch.relu(torch.nn.functional.conv2d(x, w[0]))
        h = torch.relu(torch.nn.functional.conv2d(h, w[1])).reshape(8, -1)
        ref = torch.relu(h @ w[2].T) @ w[3].T
        torch.testing.assert_close(out[j], ref, rtol=1e-12, atol=1e-12)


def test_tiny_sweep_accuracy_rises_with_margin(mnist_test, tmp_path):
    config = get_experiment("fig6", "smoke")
    recs = run_sweep(config, tmp_path / "s", device="cpu", progress=False)
    assert len(recs) == len(config.margins)
    by_margin = sorted(recs, key=lambda r: r["margin"])
    acc = [r["gibbs_test_accuracy"] for r in by_margin]
    assert acc[-1] > acc[0] + 0.2, acc
    assert acc[-1] > 0.8
    big = by_margin[-1]
    # ensembles are at least as good as single networks at a well-fitted margin
    assert big["ensembles"]["4"]["test_accuracy_mean"] >= big["ensembles"]["1"]["test_accuracy_mean"] - 0.01
    m0 = big["members"][0]
    assert m0["train_accuracy"] == 1.0 and m0["train_margin"]["min"] > 0
    assert set(big["ensembles"]) == {"1", "2", "4"}
    # a rerun finds everything done and adds nothing
    again = run_sweep(config, tmp_path / "s", device="cpu", progress=False)
    assert len(read_jsonl(tmp_path / "s" / ".state" / "validate-fig6" / "runs.jsonl")) == len(again) == len(recs)
    # theory vs experiment on the same split
    from validation.theory.comparison import compare

    summary = compare(config, tmp_path / "s", recs, verbose=False)
    lines = (tmp_path / "s" / "fig6-comparison.csv").read_text().splitlines()
    header = lines[0].split(",")
    for col in ("margin", "ensemble", "nn_accuracy", "nn_accuracy_sem", "gp_accuracy", "gp_constrained_accuracy"):
        assert col in header
    assert len(lines) == 1 + len(config.margins) * len(config.ensembles)
    assert (tmp_path / "s" / "fig6-comparison.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "s" / "fig6-comparison.json").read_text())
    assert saved["gaps"] == summary["gaps"] and "versions" in saved["metadata"]
    for col in ("gp_accuracy", "gp_constrained_accuracy"):
        assert summary["gaps"][col]["mean_abs_gap"] < 0.1
    gp = [r["gp_accuracy"] for r in summary["rows"] if r["ensemble"] == 1]
    assert gp == sorted(gp)  # the prediction rises with the margin too


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "gpmargin", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240, **kw)


@pytest.mark.slow
def test_resume_after_sigkill(mnist_test, tmp_path):
    out = tmp_path / "run"
    runs = out / ".state" / "validate-fig6" / "runs.jsonl"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "gpmargin", "validate", "fig6", "--scale", "smoke", "--out", str(out),
           "--device", "cpu", "--no-compare", "--no-progress", "--workers", "0"]  # Dask: test_distributed.py
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if runs.exists() and runs.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = runs.read_bytes()
    n_before = before.count(b"\n")
    assert n_before >= 1
    with open(runs, "ab") as fh:  # a torn line as a kill in the middle of a write would leave
        fh.write(b'{"config_hash": "abc", "margin": 0.3, "se')
    r = _cli("validate", "fig6", "--scale", "smoke", "--out", str(out), "--device", "cpu", "--no-compare",
             "--no-progress", "--workers", "0")
    assert r.returncode == 0, r.stderr
    raw = runs.read_bytes()
    assert raw.startswith(before)  # finished units were kept, not redone
    lines = raw.decode().splitlines()
    recs = [json.loads(line) for line in lines]  # every line parses: no torn or glued line
    config = get_experiment("fig6", "smoke")
    keys = [(r["margin"], r["seed"]) for r in recs]
    assert len(keys) == len(set(keys)) == len(config.units())
    assert {(u["margin"], u["seed"]) for u in config.units()} == set(keys)


def test_different_config_refused(mnist_test, tmp_path):
    config = get_experiment("fig6", "smoke")
    prepare_output(config, tmp_path)
    prepare_output(config, tmp_path)  # same config: fine
    other = dataclasses.replace(config, width=32)
    with pytest.raises(GpmarginError, match="different config"):
        prepare_output(other, tmp_path)
    r = _cli("validate", "fig6", "--scale", "smoke", "--seed", "5", "--out", str(tmp_path), "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "different config" in r.stderr


@pytest.mark.slow
def test_bad_input_errors(tmp_path):
    for args, msg in ((["nosuch"], "unknown experiment"), (["fig6", "--scale", "huge"], "unknown scale")):
        r = _cli("validate", *args, "--out", str(tmp_path / "x"))
        assert r.returncode == 2 and r.stderr.startswith("error:") and msg in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0
    if not torch.cuda.is_available():
        r = _cli("validate", "fig6", "--scale", "smoke", "--device", "cuda", "--out", str(tmp_path / "y"))
        assert r.returncode == 2 and "CUDA is not available" in r.stderr, r.stderr
        assert not (tmp_path / "y").exists()
    base = get_experiment("fig6", "smoke")
    for bad in ((0.1, 0.0), (-1.0,), (float("nan"),), ()):
        with pytest.raises(GpmarginError):
            dataclasses.replace(base, margins=bad)
    with pytest.raises(GpmarginError):
        margin_targets(torch.tensor([1.0, -1.0]), -0.5)
    with pytest.raises(GpmarginError):
        dataclasses.replace(base, ensembles=(1, 8))  # more than the 4 members


def test_config_roundtrip_and_scales():
    for scale in ("smoke", "quick", "paper"):
        c = get_experiment("fig6", scale)
        assert experiment_from_dict(json.loads(json.dumps(c.to_dict()))) == c
        assert c.depth == (3 if scale == "smoke" else 5)
    p = get_experiment("fig6", "paper")
    assert (p.width, p.steps, p.lr, p.decay, len(p.margins), p.ensembles) == (2048, 500, 0.01, 0.99, 20,
                                                                               (1, 2, 4, 8, 16))
    assert abs(p.margins[0] - 1e-3) < 1e-12 and abs(p.margins[-1] - 10) < 1e-9
    q = get_experiment("fig6", "quick")
    assert (q.lr, q.decay, q.steps, q.depth) == (p.lr, p.decay, p.steps, p.depth)
    assert q.config_hash() != p.config_hash() and q.with_seed(3).seeds[0] == 3


def test_config_overrides():
    q = get_experiment("fig6", "quick")
    c = q.with_overrides(["width=2048", "members=3", "ensembles=1,3", "margins=1e-3:1e1:5", "n_test=none",
                          "lr = 0.02"])
    assert (c.width, c.members, c.ensembles, c.n_test, c.lr) == (2048, 3, (1, 3), None, 0.02)
    assert len(c.margins) == 5 and abs(c.margins[0] - 1e-3) < 1e-15 and abs(c.margins[-1] - 10) < 1e-12
    assert c.config_hash() != q.config_hash()
    assert set(c.overrides()) == {"width", "members", "ensembles", "margins", "n_test", "lr"}
    assert q.overrides() == {} and q.with_overrides([]) == q
    for bad, msg in (("widht=3", "KEY one of"), ("width", "KEY one of"), ("scale=paper", "KEY one of"),
                     ("width=wide", "width=wide"), ("margins=auto", "explicit margins"),
                     ("margins=0,1", "margins"), ("ensembles=1,32", "members"), ("seeds=a", "seeds must be a comma list of distinct values, each an integer >= 0")):
        with pytest.raises(GpmarginError, match=msg):
            q.with_overrides([bad])


@pytest.mark.slow
def test_cli_set_overrides(mnist_test, tmp_path):
    out = tmp_path / "run"
    args = ("validate", "fig6", "--scale", "smoke", "--out", str(out), "--device", "cpu", "--no-progress",
            "--workers", "0",
            "--set", "width=16", "--set", "members=2", "--set", "ensembles=1,2", "--set", "margins=0.1,3",
            "--set", "steps=20")
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    saved = json.loads((out / ".state" / "validate-fig6" / "config.json").read_text())["config"]
    assert (saved["width"], saved["members"], saved["margins"], saved["steps"]) == (16, 2, [0.1, 3.0], 20)
    recs = [json.loads(line) for line in (out / ".state" / "validate-fig6" / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["margin"] for r in recs) == [0.1, 3.0]
    summary = json.loads((out / "fig6-comparison.json").read_text())
    assert summary["overrides"]["width"] == 16
    r = _cli(*args[:-2], "--set", "steps=30")  # a different config into the same folder: refused
    assert r.returncode == 2 and "different config" in r.stderr and "steps: 20 -> 30" in r.stderr, r.stderr
    r = _cli("validate", "fig6", "--scale", "smoke", "--out", str(tmp_path / "z"), "--set", "depth=x")
    assert r.returncode == 2 and r.stderr.startswith("error: --set depth=x: depth must be an integer >= 1"), r.stderr
    assert r.stderr.strip().count("\n") == 0 and not (tmp_path / "z").exists()


def test_diagnose_with_overrides(mnist_test, tmp_path, capsys):
    from validation.theory.diagnose import main as diagnose

    out = tmp_path / "d.jsonl"
    assert diagnose(["fig6", "--scale", "smoke", "--margins", "0.3", "--set", "width=16", "--set", "members=1",
                     "--set", "steps=40", "--device", "cpu", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("alpha=0.3: nn=")
    rec = json.loads(out.read_text())
    assert (rec["config"]["width"], rec["config"]["members"], rec["config"]["ensembles"]) == (16, 1, [1])
    with pytest.raises(GpmarginError, match="width=x"):
        diagnose(["fig6", "--scale", "smoke", "--margins", "0.3", "--set", "width=x"])


def test_seeds_are_independent_repetitions_with_error_bars(tmp_path, mnist_test):
    """Seed s trains on its own data split (data_seed + s) besides its own networks; the report
    gives each gap statistic per seed and its mean and standard error over seeds, and a seed's
    statistics are those of a one-seed sweep of that seed (the same computation replayed)."""
    config = get_experiment("fig6", "smoke").with_overrides(
        ["seeds=0,1", "margins=0.01,3", "members=2", "ensembles=1,2", "steps=30", "n_train=100", "n_test=300"])
    a, b = config.seed_data(0).load_task(), config.seed_data(1).load_task()
    assert config.seed_data(0) is config and not torch.equal(a.x_train, b.x_train)
    records = run_sweep(config, tmp_path / "s", "cpu", progress=False)
    summary = config.report(tmp_path / "s", records, device="cpu", verbose=False)
    sg = summary["gaps_over_seeds"]["gp_accuracy"]
    assert sg["seeds"] == [0, 1] and sg["mean_abs_gap"]["sem"] is not None
    assert sg["mean_abs_gap"]["mean"] == pytest.approx(np.mean(sg["mean_abs_gap"]["values"]), rel=1e-12)
    one = dataclasses.replace(config, seeds=(1,))
    alone = one.report(tmp_path / "one", [r for r in records if r["seed"] == 1], device="cpu", verbose=False)
    assert alone["gaps"]["gp_accuracy"]["mean_abs_gap"] == sg["by_seed"]["1"]["mean_abs_gap"]
    assert alone["gaps_over_seeds"] is None
    assert isinstance(summary["predictions"]["gp_accuracy"]["transition_margins"], list)
