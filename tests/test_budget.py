"""Sweeps with a time budget (``--budget SECONDS``) and the prepared GPU-window script.

Real fig6 smoke sweeps on MNIST: a budget that one unit overruns stops after that unit and says
how many remain; a budget shorter than one unit (known from the finished ones) runs nothing; a
rerun without a budget finishes the same sweep and draws the comparison.  The script
``benchmarks/gpu_check.sh`` runs at smoke scale on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gpmargin.cli import main

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["validate", "fig6", "--scale", "smoke", "--workers", "0", "--no-progress"]


def _runs(folder: Path) -> list[dict]:
    (runs,) = folder.rglob("runs.jsonl")
    return [json.loads(line) for line in runs.read_text().splitlines()]


def _main(argv, capsys) -> tuple[int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    return code, capsys.readouterr().out


def test_budget_stops_cleanly_and_a_rerun_resumes(mnist_test, tmp_path, capsys):
    out = str(tmp_path / "s")
    # 1 ms: shorter than any unit (each trains networks) on any machine, so no assertion depends on timing
    code, text = _main([*SWEEP, "--budget", "0.001", "--out", out], capsys)  # the first unit overruns it
    assert code == 0 and "budget: stopped after" in text and "with 1 of 3 unit(s) done; 2 remain" in text
    assert len(_runs(tmp_path)) == 1 and not (tmp_path / "s" / "fig6-comparison.json").exists()
    code, text = _main([*SWEEP, "--budget", "0.001", "--out", out], capsys)  # now known to be too short
    assert code == 0 and "budget: 0.001 s is shorter than one unit" in text and "2 of 3 unit(s) remain" in text
    assert len(_runs(tmp_path)) == 1
    code, text = _main([*SWEEP, "--budget", "600", "--out", out], capsys)
    assert code == 0 and "budget:" not in text and "comparison written" in text
    recs = _runs(tmp_path)
    assert len(recs) == 3 and len({r["margin"] for r in recs}) == 3  # each unit once


@pytest.mark.parametrize("value,message", [("0", "must be a positive, finite number of seconds"),
                                           ("-5", "must be a positive, finite number of seconds"),
                                           ("inf", "must be a positive, finite number of seconds"),
                                           ("soon", "is not a number of seconds")])
def test_bad_budget_is_refused(value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*SWEEP, "--budget", value, "--out", str(tmp_path / "s")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_gpu_window_script_at_smoke_scale_on_cpu(mnist_test, tmp_path):
    env = {**os.environ, "SCALE": "smoke", "DEVICE": "cpu", "BENCHMARKS": "0", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "0.001", str(tmp_path / "dest")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "budget: stopped after" in (tmp_path / "dest" / "sweep.log").read_text()
    assert "gpu none" in (tmp_path / "dest" / "device.txt").read_text()
    assert len(_runs(tmp_path / "dest")) == 1
