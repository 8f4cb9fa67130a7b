"""The first hour of a new user (issue 14): inputs that used to give silent wrong answers or
tracebacks now give honest results or one-line errors naming the argument and the value.

Real data only (scikit-learn's digits, MNIST's test split); every GP here is a real solve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gpmargin.errors import DataError, GpmarginError
from gpmargin.kernels import paper_cnn, paper_mlp
from gpmargin.predict import margin_at_fraction, margin_curve
from gpmargin.predict.inputs import MAX_MARGINS, UnseenClassWarning, check_margins, parse_margins

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _cli(*args, timeout=300, **env):
    return subprocess.run([sys.executable, "-m", "gpmargin", *map(str, args)], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _main(capsys, monkeypatch, *args, **env) -> _Result:
    """``gpmargin ARGS`` in this process (no interpreter start-up), with ``env`` set."""
    from gpmargin.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return _Result(rc, out, err)


def _one_line_error(r) -> str:
    """The CLI failed with status 2 and exactly one ``error: ...`` line, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def digits_small():
    """Digits parity, 150 train / 300 test (a real 10-class dataset, +-1 parity labels)."""
    from gpmargin.data import make_task

    return make_task("digits", "parity", n_train=150, n_test=300, seed=0)


# ------------------------------------------------------------------------------ margins
def test_descending_margins_are_sorted_once_at_the_input(digits_small):
    t = digits_small
    assert parse_margins("1e1:1e-3:5") == pytest.approx([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    assert parse_margins("3,0.1,1") == [0.1, 1.0, 3.0]
    assert check_margins([10.0, 1e-3, 1.0]).tolist() == [1e-3, 1.0, 10.0]
    k = paper_mlp(3)
    down = margin_curve(k, t.x_train, t.y_train, t.x_test, t.y_test, margins=np.logspace(1, -3, 9))
    up = margin_curve(k, t.x_train, t.y_train, t.x_test, t.y_test, margins=np.logspace(-3, 1, 9))
    assert np.all(np.diff(down.margins) > 0) and np.allclose(down.accuracy, up.accuracy)
    half = margin_at_fraction(down, 0.5)
    assert np.isfinite(half) and 1e-3 < half < 10
    # a curve stored in descending order (built by hand, or read from an old file) reads the same
    flipped = type(up)(**{**up.__dict__, "margins": up.margins[::-1].copy(), "accuracy": up.accuracy[:, ::-1].copy(),
                          "per_example": up.per_example[:, ::-1].copy()})
    assert margin_at_fraction(flipped, 0.5) == pytest.approx(half, rel=1e-12)
    assert down.to_dict()["margin_at_half"]["1"] == pytest.approx(half)


def test_margin_count_is_capped_before_anything_is_allocated(capsys, monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(GpmarginError, match=f"at most {MAX_MARGINS}") as info:
        parse_margins("1e-3:1e1:100000000")
    assert "100000000" in str(info.value) and "--margins" in str(info.value)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(GpmarginError, match=f"at most {MAX_MARGINS}"):
        check_margins(np.logspace(-3, 1, MAX_MARGINS + 1))
    r = _main(capsys, monkeypatch, "predict", "--margins", "1e-3:1e1:100000000", "--out", "/tmp/never-created-ux")
    assert "at most" in _one_line_error(r)


def test_test_classes_absent_from_training_are_named(digits_train):
    x, y = digits_train
    x = x.reshape(len(x), -1).double()
    tr = torch.nonzero(y <= 2)[:60, 0]
    te = torch.nonzero(y == 7)[:20, 0]
    with pytest.warns(UnseenClassWarning, match=r"class\(es\) 7 \(20 of 20 test points\).*classes 0, 1, 2"):
        margin_curve(paper_mlp(2), x[tr], y[tr], x[te], y[te], margins=[1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenClassWarning)  # all test classes seen: no warning
        margin_curve(paper_mlp(2), x[tr[:40]], y[tr[:40]], x[tr[40:]], y[tr[40:]], margins=[1.0])


def test_limit_not_above_chance_has_no_half_way_margin(tmp_path, capsys, monkeypatch):
    """Digits parity with one training image: the limit (0.4956) is below chance; no half-way margin."""
    r = _main(capsys, monkeypatch, "predict", "--n-train", 1, "--margins", "1e-2:1e1:7", "--ensemble", "1", "--no-progress",
             "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no half-way margin" in r.stdout and "not above chance" in r.stdout
    assert "margin at half-way" not in r.stdout
    d = json.loads((tmp_path / "curve.json").read_text())
    assert d["limit_accuracy"] <= d["chance"]
    assert d["limit_above_chance"] is False and "meaningless" in d["note"]
    assert d["margin_at_half"] == {"1": None}


def test_missing_data_root_is_named(tmp_path, capsys, monkeypatch):
    r = _main(capsys, monkeypatch, "predict", "--data-root", "/nonexistent", "--out", tmp_path / "o")
    msg = _one_line_error(r)
    assert "--data-root /nonexistent: no such folder" in msg
    from gpmargin.data import load, make_task

    with pytest.raises(DataError, match="root /nonexistent: no such folder"):
        make_task("digits", "parity", n_train=10, root="/nonexistent")
    with pytest.raises(DataError, match="root /nonexistent: no such folder"):
        load("mnist", "test", root="/nonexistent")


# ------------------------------------------------------------------------------ output folders
def _unwritable_folder(tmp_path) -> Path:
    """An existing folder nobody can create files in (root ignores modes: then a /proc folder)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").touch()
    except OSError:
        return d
    (d / "probe").unlink()
    return Path("/proc/1")


@pytest.mark.parametrize("command", [
    ("predict", "--dataset", "cifar10"),       # cifar10 is absent: a data error would mean work started
    ("validate", "fig6", "--scale", "smoke"),
    ("figure", "fig1", "--scale", "smoke"),
])
def test_bad_out_fails_in_one_line_before_any_work(tmp_path, command, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    env = {"GPMARGIN_DATA": str(tmp_path / "no-data"), "GPMARGIN_OFFLINE": "1"}  # any data access fails
    msg = _one_line_error(_main(capsys, monkeypatch, *command, "--out", afile, **env))
    assert f"--out {afile} exists and is a file" in msg
    ro = _unwritable_folder(tmp_path)
    msg = _one_line_error(_main(capsys, monkeypatch, *command, "--out", ro, **env))
    assert f"--out {ro}" in msg and "not writable" in msg


def test_to_csv_into_a_folder_and_missing_cuda_and_bad_kernel(digits_small, tmp_path):
    t = digits_small
    curve = margin_curve(paper_mlp(2), t.x_train[:30], t.y_train[:30], t.x_test[:20], t.y_test[:20], margins=[1.0])
    with pytest.raises(GpmarginError, match="is a folder; give a file path") as info:
        curve.to_csv(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(GpmarginError, match="kernel must be a kernel object callable") as info:
        margin_curve(5, t.x_train, t.y_train, t.x_test, t.y_test)
    assert "got int 5" in str(info.value)
    if not torch.cuda.is_available():
        with pytest.raises(GpmarginError, match="CUDA is not available"):
            margin_curve(paper_mlp(2), t.x_train, t.y_train, t.x_test, t.y_test, device="cuda")


def test_paper_cnn_depth_is_the_cli_depth(mnist_test):
    x = mnist_test[0][:6].double()
    ref = paper_cnn(depth=4)(x)
    with pytest.warns(DeprecationWarning, match="depth=d \\+ 2"):
        old = paper_cnn(dense_layers=2)(x)
    assert torch.equal(ref, old) and torch.equal(paper_cnn()(x), ref)  # exact: the same layers, the same call
    assert paper_cnn(depth=3)(x).shape == (6, 6)
    with pytest.raises(GpmarginError, match="paper_cnn depth=2 must be an integer >= 3"):
        paper_cnn(depth=2)


# ------------------------------------------------------------------------------ one results folder
def test_figures_and_experiments_share_a_folder_but_a_changed_config_is_refused(tmp_path):
    import dataclasses

    from paper_figures import get_figure
    from paper_figures.runner import prepare_output as prepare_figure
    from validation.registry import get_experiment
    from validation.harness.folders import prepare_output as prepare_sweep

    out = tmp_path / "gallery"
    for name in ("fig1", "fig2", "fig6"):
        prepare_figure(name, "smoke", get_figure(name).config("smoke"), out)
    fig6 = get_experiment("fig6", "smoke")
    state = prepare_sweep(fig6, out)  # an experiment beside the figures, even one also called fig6
    assert state == out / ".state" / "validate-fig6"
    gd = get_experiment("gd", "smoke")  # another experiment: its own state folder
    assert prepare_sweep(gd, out) == out / ".state" / "validate-gd"
    prepare_figure("fig1", "smoke", get_figure("fig1").config("smoke"), out)  # same config again: fine
    with pytest.raises(GpmarginError) as info:
        prepare_figure("fig1", "quick", get_figure("fig1").config("quick"), out)
    msg = str(info.value)
    assert "holds results of fig1/smoke with a different config" in msg and "scale: \"smoke\" -> \"quick\"" in msg
    with pytest.raises(GpmarginError, match=r"width: 64 -> 128"):
        prepare_sweep(dataclasses.replace(fig6, width=128), out)


def test_old_single_run_folder_is_migrated(tmp_path):
    from gpmargin.io import append_jsonl, atomic_write_json, read_jsonl
    from paper_figures import get_figure
    from paper_figures.runner import config_hash, prepare_output

    cfg = get_figure("fig2").config("smoke")
    h = config_hash("fig2", cfg)
    atomic_write_json(tmp_path / "config.json", {"figure": "fig2", "scale": "smoke", "config": cfg, "config_hash": h})
    append_jsonl(tmp_path / "runs.jsonl", {"figure": "fig2", "config_hash": h, "key": "k", "result": {}})
    prepare_output("fig1", "smoke", get_figure("fig1").config("smoke"), tmp_path)  # another figure: untouched
    assert (tmp_path / "config.json").exists()
    prepare_output("fig2", "smoke", cfg, tmp_path)
    state = tmp_path / ".state" / "figure-fig2"
    assert not (tmp_path / "config.json").exists() and read_jsonl(state / "runs.jsonl")[0]["key"] == "k"


# ------------------------------------------------------------------------------ messages
def test_data_error_leads_with_the_cause_and_is_short(tmp_path, capsys, monkeypatch):
    env = {"GPMARGIN_DATA": str(tmp_path), "GPMARGIN_OFFLINE": "1", "GPMARGIN_CACHE": str(tmp_path / "cache")}
    msg = _one_line_error(_main(capsys, monkeypatch, "predict", "--dataset", "mnist", "--out", tmp_path / "o", **env))
    head = msg.split(". ")[0]
    assert head == "error: MNIST (mnist) train and test splits not available: no searched folder holds the files"
    assert "--data-root DIR" in msg and "--root DIR" not in msg and "root=DIR" in msg
    assert len(msg.replace(str(tmp_path), "T")) < 600  # was 764 here, and about 1000 with downloads on


@pytest.mark.slow
def test_warnings_have_one_style_in_every_command(tmp_path, mnist_test):
    """validate used to print ``.../sweep.py:48: DataSubstitutionWarning`` with a source line."""
    r = _cli("validate", "fig6", "--scale", "smoke", "--set", "steps=2", "--set", "width=8",
             "--set", "margins=1", "--set", "members=1", "--set", "ensembles=1", "--set", "n_train=20",
             "--set", "n_test=20", "--device", "cpu", "--no-compare", "--no-progress", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("warning: ") for ln in lines), r.stderr
    assert any("carved" in ln for ln in lines) and "DataSubstitutionWarning" not in r.stderr
    assert (tmp_path / ".state" / "validate-fig6" / "runs.jsonl").exists()


def test_messages_name_the_argument_and_value(tmp_path, capsys, monkeypatch):
    from gpmargin.data import make_task
    from validation.registry import get_experiment

    with pytest.raises(GpmarginError) as info:
        make_task("digits", "parity", n_train=100000)
    assert "attack" not in str(info.value) and "n_train = 100000" in str(info.value)
    with pytest.raises(GpmarginError, match="seed must be a non-negative integer, got -1"):
        make_task("digits", "parity", n_train=10, seed=-1)
    assert "--seed must be a non-negative integer, got -1" in _one_line_error(
        _main(capsys, monkeypatch, "predict", "--seed", -1, "--out", tmp_path))
    for field in ("depth", "width", "n_train"):
        with pytest.raises(GpmarginError, match=f"^--set {field}=0: {field} must be an integer >= 1$"):
            get_experiment("fig6", "smoke").with_overrides([f"{field}=0"])


def test_comparison_plot_in_points_with_a_legend_outside_the_data(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from validation.theory.comparison import plot
    from validation.theory.gaps import gap_statistics
    from validation.theory.predictors import columns
    from validation.registry import get_experiment

    cfg = get_experiment("fig6", "smoke")
    # measured rows where the GP lines and a measured point sit exactly where the old legend was
    rows = [{"margin": m, "ensemble": k, "nn_accuracy": 0.52 + 0.1 * i, "nn_accuracy_sem": 0.01,
             "gp_accuracy": 0.5 + 0.1 * i, "gp_constrained_accuracy": 0.5 + 0.1 * i, "nn_groups": 1}
            for k in cfg.ensembles for i, m in enumerate(cfg.margins)]
    cols = columns(cfg)
    margins, ks = np.array(cfg.margins, dtype=float), list(cfg.ensembles)
    measured = np.array([[r["nn_accuracy"] for r in rows if r["ensemble"] == k] for k in ks])
    pred = {c: np.array([[r[c] for r in rows if r["ensemble"] == k] for k in ks]) for c in cols}

    def predictor(p):  # the rows' predictions, linear in log margin between them (for the shift search)
        return lambda m: np.array([np.interp(np.log(m), np.log(margins), row) for row in p])

    gap = {c: gap_statistics(margins, ks, measured, predictor(pred[c])) for c in cols}
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)  # keep the drawn figure open to inspect it
    plot(cfg, rows, tmp_path / "c.png", gap, (margins, pred), {c: c for c in cols})
    monkeypatch.undo()
    fig = figs[0]
    assert "2.00 points" in fig._suptitle.get_text()
    fig.canvas.draw()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    for leg in legends:
        box = leg.get_window_extent()
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), "the legend covers a panel"
    plt.close(fig)


# ------------------------------------------------------------------------------ plots
def test_curve_png_marks_the_half_way_margin_and_carved_splits(tmp_path, mnist_test, capsys, monkeypatch):
    r = _main(capsys, monkeypatch, "predict", "--dataset", "mnist", "--n-train", 100, "--n-test", 200, "--margins", "1e-2:1e1:9",
             "--ensemble", "1", "--no-progress", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "carved from the test split" in r.stdout.splitlines()[0]
    from gpmargin.predict import MarginCurve

    curve = MarginCurve.from_json(tmp_path / "curve.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = curve.plot()
    half = margin_at_fraction(curve, 0.5)
    marks = [ln for ln in ax.get_lines() if "half-way" in str(ln.get_label())]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == pytest.approx(half)
    plt.close(ax.figure)


# ------------------------------------------------------------------------------ install
@pytest.mark.slow
def test_neural_tangents_bridge_imports_quietly():
    pytest.importorskip("neural_tangents", reason="neural-tangents oracle (extra 'nt') not installed")
    r = subprocess.run([sys.executable, "-c", "import gpmargin.kernels.nt\nfrom neural_tangents import stax"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_make_run_installs_the_core_only_and_make_test_adds_the_oracle():
    def dry(target, **env):
        r = subprocess.run(["make", "-n", "-B", target], cwd=REPO, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stdout.splitlines() if "pip install" in ln and "-e" in ln]

    if subprocess.run(["make", "--version"], capture_output=True).returncode != 0:
        pytest.skip("make not installed")
    run = dry("run")
    assert run and all("nt" not in ln.split("-e", 1)[1] and "test" not in ln.split("-e", 1)[1] for ln in run)
    assert any('".[test,nt]"' in ln for ln in dry("test"))
    assert any('".[test]"' in ln for ln in dry("test", EXTRAS="test")) and not any(
        "nt]" in ln for ln in dry("test", EXTRAS="test"))
