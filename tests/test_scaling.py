"""``gpmargin scaling``: gaps of validate runs that differ in one setting, with power-law fits
(:mod:`validation.theory.scaling`), on real smoke-scale gradient-descent sweeps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpmargin.errors import GpmarginError
from validation.theory.scaling import ladder, power_law

REPO = Path(__file__).resolve().parents[1]


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "gpmargin", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_power_law_recovers_an_exact_law():
    x = [64, 128, 256, 512]
    vals = [[3.0 * w ** -0.5] * 3 for w in x]  # every seed on the law: nothing to resample
    f = power_law(x, vals)
    assert f["slope"] == pytest.approx(-0.5, abs=1e-12) and f["prefactor"] == pytest.approx(3.0, rel=1e-12)
    assert f["slope_se"] == pytest.approx(0.0, abs=1e-12)
    assert f["interval"] == pytest.approx([-0.5, -0.5], abs=1e-12)


def test_power_law_interval_reflects_seed_scatter():
    rng = np.random.default_rng(1)
    x = np.array([64, 128, 256, 512])
    vals = [2.0 * w ** -1.0 * np.exp(rng.normal(0, 0.3, size=5)) for w in x]
    f = power_law(x, vals, n_boot=2000, seed=0)
    lo, hi = f["interval"]
    assert lo < f["slope"] < hi and 0.05 < hi - lo < 1.5  # scatter of 30 % per seed, 5 seeds, 3 octaves
    with pytest.raises(GpmarginError, match="positive"):
        power_law(x, [[-1.0]] * 4)
    with pytest.raises(GpmarginError, match="at least two rungs"):
        power_law([64], [[1.0]])


@pytest.mark.slow
def test_scaling_command_on_a_width_ladder(mnist_test, tmp_path):
    runs = []
    for width in (32, 128):
        out = tmp_path / f"w{width}"
        r = _cli("validate", "gd", "--scale", "smoke", "--set", f"width={width}", "--set", "seeds=0,1",
                 "--set", "n_train=100", "--set", "n_test=400", "--set", "steps=20", "--device", "cpu",
                 "--out", out, "--no-progress", "--workers", "0")
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(out)
    r = _cli("scaling", *runs, "--experiment", "gd", "--prediction", "ntk_time_accuracy", "--by", "width",
             "--out", tmp_path / "ladder")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max_abs_gap ~ width^p" in r.stdout
    stem = tmp_path / "ladder" / "scaling-gd-ntk_time_accuracy-width"
    rows = stem.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("width,seeds,max_abs_gap_mean") and [x.split(",")[0] for x in rows[1:]] == ["32", "128"]
    d = json.loads(stem.with_suffix(".json").read_text())
    assert d["settings"] == [32, 128] and set(d["metadata"]) >= {"versions", "device"}
    for rung in d["rungs"]:
        comp = json.loads((Path(rung["folder"]) / "gd-comparison.json").read_text())
        single = [comp["gaps_over_seeds"]["ntk_time_accuracy"]["by_seed"][str(s)]["by_ensemble"]["1"]["max_abs_gap"]
                  for s in (0, 1)]
        assert rung["stats"]["max_abs_gap"]["values"] == single
        assert rung["stats"]["max_abs_gap"]["mean"] == pytest.approx(np.mean(single), rel=1e-12)
    # two rungs: the slope is the line through the two means
    m = [r["stats"]["max_abs_gap"]["mean"] for r in d["rungs"]]
    assert d["fits"]["max_abs_gap"]["slope"] == pytest.approx(math.log(m[1] / m[0]) / math.log(4), rel=1e-9)
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # bad input: one line each
    r = _cli("scaling", runs[0], "--experiment", "gd", "--prediction", "ntk_time_accuracy", "--by", "width",
             "--out", tmp_path / "x")
    assert r.returncode == 2 and "at least two folders" in r.stderr and "Traceback" not in r.stderr
    r = _cli("scaling", *runs, "--experiment", "gd", "--prediction", "gp_accuracy", "--by", "width",
             "--out", tmp_path / "x")
    assert r.returncode == 2 and "no per-seed statistics for prediction 'gp_accuracy'" in r.stderr
    r = _cli("scaling", runs[0], tmp_path, "--experiment", "gd", "--prediction", "ntk_time_accuracy", "--by", "width",
             "--out", tmp_path / "x")
    assert r.returncode == 2 and "no finished 'gd' comparison" in r.stderr
    with pytest.raises(GpmarginError, match="not only in 'steps'"):
        ladder(runs, "gd", "ntk_time_accuracy", "steps")
