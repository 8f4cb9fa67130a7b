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


# -- paths ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_out_with_a_tilde_after_equals_is_one_folder(tmp_path, monkeypatch):
    """``--out=~/X``: bash does not expand ``~`` after ``=``; the parser does, once, for every
    path option of every command, and a real `predict` writes everything into ``$HOME/X``."""
    from gpmargin.cli import build_parser

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    parser = build_parser()
    for argv in (["predict", "--out=~/X", "--kernel-store=~/S", "--data-root=~/D"], ["kernel", "--out=~/X"],
                 ["validate", "fig6", "--out=~/X"], ["figure", "fig6", "--out=~/X"], ["data", "info", "--data-root=~/D"]):
        args = parser.parse_args(argv)
        for name in ("out", "kernel_store", "data_root", "root"):
            if getattr(args, name, None) is not None:
                assert getattr(args, name) == home / {"out": "X", "kernel_store": "S"}.get(name, "D"), (argv, name)
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "gpmargin", "predict", "--dataset", "digits", "--n-train", "100",
                           "--n-test", "50", "--margins", "0.1,1", "--no-progress", "--out=~/X"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not any(cwd.iterdir())  # no literal ./~ folder
    assert (home / "X" / "curve.csv").is_file()


# -- Python API --------------------------------------------------------------------------------
def test_probes_leave_batchnorm_statistics_as_they_found_them(digits_train):
    from gpmargin.probes import basin_radius, sharpness, slice_1d

    x = digits_train[0][:200].reshape(200, -1).float()
    y = digits_train[1][:200]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    model.train()
    model(x)  # running statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    slice_1d(model, loss, (x, y), coefficients=[-0.5, 0.0, 0.5])
    sharpness(model, loss, (x, y), 0.05, "worst", n_samples=2, ascent_steps=2)
    basin_radius(model, loss, (x, y), threshold=5.0, n_directions=2, grid=3, bisections=2)
    after = model.state_dict()
    assert model.training  # the mode it was in
    for k, v in before.items():  # parameters and buffers: restored copies, bit for bit
        assert torch.equal(after[k], v), k


def test_network_edge_inputs():
    from gpmargin.kernels import paper_cnn, paper_mlp
    from gpmargin.kernels.gpytorch import NNGPKernel

    nets = paper_cnn().network(8, in_shape=(1, 28, 28), members=3)
    assert nets(torch.zeros(0, 1, 28, 28)).shape == (3, 0, 1)  # no examples, no outputs
    assert nets.member(1)(torch.zeros(0, 1, 28, 28)).shape == (0, 1)
    with pytest.raises(GpmarginError, match="width='64' is text; give a positive integer"):
        paper_mlp(3).network("64", in_shape=784)
    conv = NNGPKernel(paper_cnn(), input_shape=(1, 28, 28)).double()
    with pytest.raises(GpmarginError, match=r"100 features per row but input_shape=\(1, 28, 28\) needs 784"):
        conv(torch.zeros(3, 100, dtype=torch.float64)).to_dense()
    with pytest.raises(GpmarginError, match=r"x1 has shape \(3, 0\); the kernel takes"):
        NNGPKernel(paper_mlp(3)).double()(torch.zeros(3, 0, dtype=torch.float64)).to_dense()


def test_inputs_so_small_the_kernel_underflows_name_the_fix():
    from gpmargin.data import make_task
    from gpmargin.kernels import paper_mlp
    from gpmargin.predict import margin_curve

    t = make_task("digits", "parity", n_train=100, n_test=50)
    with pytest.raises(GpmarginError, match="so small that the kernel underflowed; rescale the inputs"):
        margin_curve(paper_mlp(3), t.x_train * 1e-200, t.y_train, t.x_test * 1e-200, t.y_test, (0.1, 1.0))


@pytest.mark.slow
def test_ctrl_c_on_dask_workers_stops_in_seconds_with_one_line(mnist_test, tmp_path):
    """A real SIGINT 8 s into `validate gd --workers 1`: the cluster stops, one line, exit 130,
    and the records written so far are whole."""
    import json
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "gpmargin", "validate", "gd", "--scale", "quick", "--workers", "1",
                             "--no-progress", "--out", str(tmp_path / "o")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C did not stop the run within 30 s")
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert proc.returncode == 130 and lines == ["interrupted"], err
    assert time.time() - t0 < 20
    for runs in (tmp_path / "o").rglob("runs.jsonl"):
        assert all(json.loads(line) for line in runs.read_text().splitlines())
