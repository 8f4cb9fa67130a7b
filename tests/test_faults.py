"""Extreme values get a one-line error before any work (or simply work), never a traceback.

Each case is one a new user met: a tile edge of 1e9, a tile too large for this machine's
memory, ``--device cuda`` on a machine without CUDA, ``--memory inf``, a malformed
``--scheduler`` (which used to print a ``Client.__del__`` traceback 20 s after its error).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gpmargin.cli import main
from gpmargin.errors import GpmarginError

REPO = Path(__file__).resolve().parents[1]
DATA = ["--dataset", "mnist", "--task", "parity", "--n-train", "300", "--n-test", "150", "--threads", "1"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def _error(argv, capsys) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_tile_larger_than_the_data_is_one_tile(mnist_test, tmp_path):
    from gpmargin.distributed import open_store

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["kernel", *DATA, "--tile", "1000000000", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    store = open_store(tmp_path / "s")
    assert store.tile_size == 300 and store.tiles == (1, 1) and len(store.kernel_tasks()) == 3


def test_a_tile_beyond_memory_is_refused_before_any_work(fashion_train, tmp_path, capsys):
    n = 30000  # one 30000^2 tile: 8 x 30000^2 x 3 bytes = 20 GiB of blocks, more than half of a 24 GiB machine
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 8 * n * n * 3 <= ram / 2:
        pytest.skip(f"this machine has {ram / 2**30:.0f} GiB: a {n} tile fits")
    line = _error(["kernel", "--dataset", "fashion_mnist", "--task", "parity", "--n-train", str(n), "--n-test", "100",
                   "--tile", str(n), "--no-progress", "--out", str(tmp_path / "s")], capsys)
    assert f"tile {n} needs about" in line and "use a smaller --tile" in line
    assert not (tmp_path / "s").exists()  # nothing half-made


@no_cuda
def test_cuda_requested_without_cuda(mnist_test, tmp_path, capsys):
    line = _error(["kernel", *DATA, "--device", "cuda", "--out", str(tmp_path / "s")], capsys)
    assert "CUDA is not available" in line and not (tmp_path / "s").exists()
    line = _error(["predict", *DATA, "--device", "cuda", "--out", str(tmp_path / "p")], capsys)
    assert "CUDA is not available" in line
    from gpmargin.kernels import paper_mlp

    with pytest.raises(GpmarginError, match="CUDA is not available"):
        paper_mlp(3).network(16, in_shape=784, device="cuda")


def test_memory_must_be_finite(mnist_test, tmp_path, capsys):
    line = _error(["predict", *DATA, "--kernel-store", str(tmp_path / "none"), "--memory", "inf",
                   "--out", str(tmp_path / "p")], capsys)
    assert "--memory must be a positive, finite number of GiB, got inf" in line


@pytest.mark.parametrize("command", [
    ["kernel", *DATA, "--no-progress"],
    ["validate", "gd", "--scale", "smoke"],
])
def test_malformed_scheduler_is_one_line_and_nothing_later(mnist_test, tmp_path, command):
    """Run as a real process to its end: no traceback from a half-made Client at exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "gpmargin", *command, "--scheduler", "notanaddress",
                           "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--scheduler 'notanaddress' is not a Dask scheduler address" in lines[0]


# -- validate: --set checked up front, by key --------------------------------------------------
@pytest.mark.parametrize("experiment,assignment,message", [
    ("measures", "steps=-5", "--set steps=-5: steps must be an integer >= 1"),
    ("measures", "lrs=nan", "--set lrs=nan: lrs must be a comma list of values, each a finite number > 0"),
    ("measures", "sharpness_rho=nan", "--set sharpness_rho=nan: sharpness_rho must be a finite number > 0"),
    ("large_batch", "momentum=nan", "--set momentum=nan: momentum must be a finite number >= 0 and < 1"),
    ("gd", "steps=0", "--set steps=0: steps must be an integer >= 1"),
    ("measures", "gp_kinds=bogus", "--set gp_kinds=bogus: gp_kinds must be a comma list of distinct values, each "
                                   "one of nngp, ntk"),
    ("measures", "basin_rise=0", "--set basin_rise=0: basin_rise must be a finite number > 0"),
    ("measures", "seed=-1", "--set seed=-1: seed must be an integer >= 0"),
    ("large_batch", "batch_size=0", "--set batch_size=0: batch_size must be an integer >= 1"),
    ("fig6", "lr=inf", "--set lr=inf: lr must be a finite number > 0"),
    ("minnorm", "arms=nero,bogus", "--set arms=nero,bogus: arms must be a comma list of distinct values, each one of"),
])
def test_set_is_checked_before_anything_runs(experiment, assignment, message, tmp_path, capsys):
    line = _error(["validate", experiment, "--scale", "smoke", "--set", assignment, "--no-progress",
                   "--out", str(tmp_path / "o")], capsys)
    assert message in line
    assert not (tmp_path / "o").exists()


def test_networks_beyond_memory_are_refused_before_training(mnist_test, tmp_path, capsys):
    line = _error(["validate", "gd", "--scale", "smoke", "--set", "width=100000000", "--no-progress",
                   "--out", str(tmp_path / "o")], capsys)
    assert "width=100000000 (depth 3, 4 members, float32) needs about" in line and "lower width or members" in line
    assert not list(tmp_path.rglob("runs.jsonl"))  # no unit ran


def test_divergence_names_the_learning_rate_to_lower(mnist_test, tmp_path, capsys):
    line = _error(["validate", "minnorm", "--scale", "smoke", "--set", "sgd_lr=1e30", "--set", "arms=sgd-wd",
                   "--no-progress", "--workers", "0", "--out", str(tmp_path / "m")], capsys)
    assert "training diverged" in line and line.endswith("lower it with --set sgd_lr=...")
    line = _error(["validate", "measures", "--scale", "smoke", "--set", "lrs=1e30", "--no-progress", "--workers", "0",
                   "--out", str(tmp_path / "p")], capsys)
    assert "training diverged for the network with" in line and line.endswith("lower it with --set lrs=...")


def test_a_diverged_large_batch_run_is_recorded_as_diverged(fashion_train, tmp_path, capsys):
    import json

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["validate", "large_batch", "--scale", "smoke", "--set", "lr=1e30", "--set", "arms=small,large",
                     "--no-progress", "--workers", "0", "--out", str(tmp_path / "o")]) == 0
    (runs,) = (tmp_path / "o").rglob("runs.jsonl")
    recs = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(recs) == 2 and all(r["diverged"] and r["members"] == [] for r in recs)
    summary = json.loads((tmp_path / "o" / "large_batch-comparison.json").read_text())
    assert [(a["arm"], a["diverged"], a["test_accuracy"]) for a in summary["arms"]] == [("small", 1, None),
                                                                                         ("large", 1, None)]
    assert "all 1 run(s) diverged" in capsys.readouterr().out
