"""``gpmargin predict`` end to end on the bundled digits (and a small real MNIST CNN run),
and its one-line errors (exit status 2, message on stderr, no traceback)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpmargin.cli import main
from gpmargin.predict.inputs import parse_ensemble, parse_margins
from gpmargin.errors import GpmarginError

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_default_command_on_digits_writes_csv_json_png(tmp_path):
    out = tmp_path / "digits-parity"
    proc = subprocess.run([sys.executable, "-m", "gpmargin", "predict", "--out", str(out)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("curve.csv", "curve.json", "curve.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _csv(out / "curve.csv")
    assert len(rows) == 41 * 5
    assert {"margin", "ensemble", "accuracy"} <= set(rows[0])
    assert sorted({int(r["ensemble"]) for r in rows}) == [1, 2, 4, 8, 16]
    d = json.loads((out / "curve.json").read_text())
    cfg = d["config"]
    assert cfg["dataset"] == "digits" and cfg["task"] == "parity" and cfg["arch"] == "paper-mlp"
    assert cfg["n_train"] == 1000 and cfg["n_test"] == 797 and cfg["depth"] == 5 and cfg["kind"] == "nngp"
    meta = d["metadata"]
    assert "torch" in meta["versions"] and "numpy" in meta["versions"]
    assert meta["device"]["device"] == "cpu"
    assert {"data", "kernel_train", "cholesky", "kernel_test", "solve", "accuracy", "write", "total"} <= set(d["timings"])
    assert d["jitter"] == 0.0 and d["num_classes"] == 2
    acc = np.asarray(d["accuracy"])
    assert acc.shape == (5, 41)
    # automatic margins: from about chance to about the limit
    assert acc[0, 0] < 0.55 and abs(acc[0, -1] - d["limit_accuracy"]) < 0.05 * (d["limit_accuracy"] - 0.5)
    assert d["limit_accuracy"] > 0.9  # parity of 8x8 digits with an NNGP
    assert "limit accuracy" in proc.stdout and "margin at half-way" in proc.stdout and "wrote" in proc.stdout
    print(proc.stdout)


def test_multiclass_digits_with_given_margins(tmp_path, capsys):
    out = tmp_path / "mc"
    rc = main(["predict", "--task", "multiclass", "--margins", "0.1,1,10", "--ensemble", "1,4",
               "--depth", "3", "--no-progress", "--out", str(out)])
    assert rc == 0
    rows = _csv(out / "curve.csv")
    assert [(float(r["margin"]), int(r["ensemble"])) for r in rows] == [
        (m, k) for k in (1, 4) for m in (0.1, 1.0, 10.0)
    ]
    d = json.loads((out / "curve.json").read_text())
    assert d["num_classes"] == 10 and d["chance"] == pytest.approx(0.1)
    assert d["config"]["depth"] == 3 and d["margins_rule"] == "given"
    accs = [float(r["accuracy"]) for r in rows]
    assert all(0.1 <= a <= 1.0 for a in accs)
    assert "limit accuracy" in capsys.readouterr().out


def test_pair_task_defaults_to_all_training_images_of_the_pair(tmp_path):
    from gpmargin.data import load

    _, y = load("digits", "train")
    expected = int(((np.asarray(y) == 3) | (np.asarray(y) == 8)).sum())
    out = tmp_path / "pair"
    assert main(["predict", "--task", "pair:3,8", "--kind", "ntk", "--margins", "1e-2:1e1:5", "--ensemble", "1",
                 "--no-progress", "--out", str(out)]) == 0
    d = json.loads((out / "curve.json").read_text())
    assert d["config"]["n_train"] == expected and d["kind"] == "ntk" and len(d["margins"]) == 5


def test_cnn_on_real_mnist(tmp_path, mnist_test):
    out = tmp_path / "cnn"
    rc = main(["predict", "--dataset", "mnist", "--arch", "paper-cnn", "--task", "parity", "--n-train", "60",
               "--n-test", "80", "--margins", "0.1,1,10", "--ensemble", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "curve.json").read_text())
    assert d["config"]["arch"] == "paper-cnn" and d["info"]["data"]["flatten"] is False
    assert d["n_test"] == 80 and 0.5 < d["limit_accuracy"] <= 1.0


def test_myrtle_and_wide_resnet_curves_on_digits(tmp_path, capsys):
    """``--arch myrtle`` / ``wide-resnet``: the presets' NNGP curves on 8x8 digit images."""
    for arch, depth in (("myrtle", "5"), ("wide-resnet", "10")):
        out = tmp_path / arch
        rc = main(["predict", "--dataset", "digits", "--arch", arch, "--depth", depth, "--task", "parity", "--n-train",
                   "40", "--n-test", "30", "--margins", "0.1,1", "--ensemble", "1", "--no-progress", "--out", str(out)])
        assert rc == 0
        d = json.loads((out / "curve.json").read_text())
        assert d["config"]["arch"] == arch and d["info"]["data"]["flatten"] is False and 0.5 < d["limit_accuracy"] <= 1
    assert main(["predict", "--dataset", "digits", "--arch", "myrtle", "--depth", "6", "--no-progress",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--depth 6: myrtle depth=6 must be 5, 7 or 10" in capsys.readouterr().err
    assert main(["predict", "--dataset", "digits", "--arch", "myrtle", "--constrained", "--no-progress",
                 "--out", str(tmp_path / "bad2")]) == 2
    assert "--constrained" in capsys.readouterr().err


def test_margin_and_ensemble_specs():
    m = parse_margins("1e-3:1e1:41")
    assert len(m) == 41 and m[0] == pytest.approx(1e-3) and m[-1] == pytest.approx(10.0)
    assert np.allclose(np.diff(np.log10(m)), 0.1)
    assert parse_margins("0.5, 2") == [0.5, 2.0]
    assert parse_margins("auto") is None
    assert parse_margins("3:3:1") == [3.0]
    assert parse_ensemble("1,2,4") == (1, 2, 4)
    for bad in ("a:b:c", "1:2", "x", "-1:1:3", "1:10:0"):
        with pytest.raises(GpmarginError):
            parse_margins(bad)
    for bad in ("0", "1,x", ""):
        with pytest.raises(GpmarginError):
            parse_ensemble(bad)


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--margins=-1:1:5"], "LO and HI must be finite and > 0"),
        (["--margins", "0,1"], "margins must be finite and > 0"),
        (["--margins", "nan,1"], "margins must be finite and > 0"),
        (["--margins", "1:x:3"], "write LO:HI:N"),
        (["--ensemble", "0,1"], "positive integers"),
        (["--n-train", "5000"], "5000"),
        (["--n-test", "0"], "n_test"),
        (["--task", "pair:3,3"], "pair"),
        (["--task", "triples"], "unknown task"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--depth", "0"], "depth"),
        (["--threads", "0"], "--threads"),
        (["--arch", "paper-cnn"], "at least 9x9"),
    ],
)
def test_cli_bad_input_is_one_line_error(tmp_path, capsys, argv, msg):
    rc = main(["predict", "--no-progress", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and msg in errors[0], err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "x" / "curve.csv").exists()


def test_cli_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpmargin", "predict", "--n-train", "5000", "--out", str(tmp_path)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "5000" in lines[0]


def test_auto_threads_count_the_cores_other_processes_use_now():
    """``--threads auto`` takes the cores that are not running another process's thread at
    this moment (not the 1-minute load average, which still counts jobs that just ended)."""
    import os
    import subprocess
    import sys
    import time

    from gpmargin.predict.cli import _busy_elsewhere, _threads

    assert 1 <= _threads("auto") <= max(1, os.cpu_count() or 1)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert _busy_elsewhere() >= 1  # the spinning process is runnable
    finally:
        spin.kill()
        spin.wait()
