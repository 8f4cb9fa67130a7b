"""Paper figures: every figure runs at smoke scale and writes its files; the cheap claims hold;
the CLI refuses unknown figures in one line; a finished folder is redrawn without training.

Real MNIST (test split, carved into train/test) and Fashion-MNIST only; skipped when absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from gpmargin.errors import GpmarginError
from gpmargin.io import read_jsonl
from paper_figures import FIGURES, get_figure
from paper_figures.runner import run_figure

REPO = Path(__file__).resolve().parents[1]

# figure -> dataset fixture it needs
NEEDS = {name: "mnist_test" for name in FIGURES}
NEEDS["fig9"] = "fashion_test"


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Lazily run each figure once at smoke scale (shared by the tests of this module)."""
    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str, request) -> tuple[Path, dict]:
        request.getfixturevalue(NEEDS[name])  # skip when the dataset is absent
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                payload = run_figure(name, "smoke", out, device="cpu")
            cache[name] = (out, payload)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(FIGURES))
def test_smoke_writes_png_and_json(name, smoke_runs, request):
    out, payload = smoke_runs(name, request)
    png, js = out / f"{name}.png", out / f"{name}.json"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads(js.read_text())
    assert d["figure"] == name and d["scale"] == "smoke"
    assert d["config"] == json.loads(json.dumps(get_figure(name).config("smoke")))
    assert set(d["metadata"]) >= {"versions", "device", "timestamp"}
    assert d["metadata"]["device"]["device"] == "cpu" and "torch" in d["metadata"]["versions"]
    assert d["wall_s"] > 0 and d["results"] and d["claims"]
    assert all(set(c) == {"holds", "detail"} for c in d["claims"].values())
    assert not list(out.glob(".*.tmp")), "atomic writes leave no temporary files"
    # every unit of work was recorded for resuming
    keys = {r["key"] for r in read_jsonl(out / ".state" / f"figure-{name}" / "runs.jsonl")}
    assert set(d["units"]["run"]) <= keys and keys


def test_fig2_random_labels_larger_normalized_margin_but_chance(smoke_runs, request):
    _, d = smoke_runs("fig2", request)
    nets = d["results"]["nets"]
    # a direct measurement of the claim's ingredients, computed here from the saved margins
    med = {k: float(np.median(v["normalized_margins_init_ref"])) for k, v in nets.items()}
    assert nets["true"]["test_accuracy"] > 0.25  # 60 training images: well above chance
    assert abs(nets["random"]["test_accuracy"] - 0.1) < 0.1
    assert med["random"] > med["true"], med
    assert d["claims"]["random_has_larger_normalized_margin"]["holds"]


def test_fig3_and_fig7_attacked_below_control(smoke_runs, request):
    _, d3 = smoke_runs("fig3", request)
    c, a = d3["results"]["control"]["nets"][0], d3["results"]["attacked"]["nets"][0]
    assert a["test_accuracy"] < c["test_accuracy"]
    _, d7 = smoke_runs("fig7", request)
    ctrl = [n["test_accuracy"] for n in d7["results"]["control"]["nets"]]
    att = [n["test_accuracy"] for n in d7["results"]["attacked"]["nets"]]
    assert len(ctrl) == len(att) == 3
    # at smoke scale (40 clean images, 200 test images) single margins are noisy: compare on average and at
    # the largest margin, where the gap is widest; the quick scale checks every margin (claims in fig7.json)
    assert np.mean(att) < np.mean(ctrl) and att[-1] < ctrl[-1], (att, ctrl)
    # the GP prediction for the attacked training set is below the control's too
    gp = d7["results"]["gp"]
    assert np.mean(gp["attacked"]["accuracy"]) < np.mean(gp["control"]["accuracy"])


def test_fig5_and_fig10_accuracy_rises_with_margin_random_at_chance(smoke_runs, request):
    _, d5 = smoke_runs("fig5", request)
    for g in ("sgd_alpha", "nero_alpha"):
        acc = [n["test_accuracy"] for n in d5["results"][g]["nets"]]  # margins increasing
        assert acc[-1] > acc[0] + 0.2, (g, acc)
    _, d10 = smoke_runs("fig10", request)
    true = [n["test_accuracy"] for n in d10["results"]["nero_alpha"]["nets"]]
    rnd = [n["test_accuracy"] for n in d10["results"]["nero_alpha_random"]["nets"]]
    assert true[-1] > true[0] + 0.2
    assert all(abs(a - 0.1) < 0.08 for a in rnd), rnd
    gp_r = d10["results"]["gp_random"]["constrained"]["accuracy"]
    assert all(abs(a - 0.1) < 0.05 for a in gp_r), gp_r
    gp_t = d10["results"]["gp"]["constrained"]["accuracy"]
    assert gp_t[-1] > gp_t[0] + 0.2


def test_fig4_twins_fit_targets_and_gp(smoke_runs, request):
    _, d = smoke_runs("fig4", request)
    tol = d["config"]["tol"]
    w = d["results"]["panels"][0]["widths"][0]
    assert w["pairs"] == d["config"]["pairs"]
    assert max(w["relative_error"]) <= tol, w["relative_error"]
    assert d["claims"]["twins_fit_targets"]["holds"]
    assert all(0.0 <= a <= 1.0 for a in w["sampled_test_accuracy"] + w["trained_test_accuracy"])
    gp = d["results"]["panels"][0]["gp"]
    assert gp["accepted"] > 100 and 0.5 < gp["test_accuracy"] <= 1.0


def test_fig9_substitution_is_recorded(smoke_runs, request):
    _, d = smoke_runs("fig9", request)
    assert d["config"]["dataset"] == "fashion_mnist"
    assert "CIFAR-10" in d["config"]["substitution"]
    assert d["results"]["panels"][0]["widths"][0]["data"]["dataset"] == "fashion_mnist"
    # the refit: the same sampled nets (replayed draws: identical), twins trained on the longer schedule
    panel = d["results"]["panels"][0]
    for w, r in zip(panel["widths"], panel["refit"]):
        assert r["sampled_test_accuracy"] == w["sampled_test_accuracy"] and r["width"] == w["width"]
        assert max(r["steps_per_batch"]) <= d["config"]["refit"]["max_steps"]
        assert max(r["relative_error"]) < max(w["relative_error"])  # twice the steps, 5x the learning rate
    claim = d["claims"]["unfit_twins_are_a_step_budget"]
    worst = max(r["max_relative_error"] for r in panel["refit"])
    assert claim["holds"] == (worst <= d["config"]["refit_tol"]) and "Σ lr" in claim["detail"]


def test_rerun_of_finished_folder_trains_nothing(smoke_runs, request, monkeypatch):
    out, first = smoke_runs("fig10", request)
    import validation.training.fullbatch

    def boom(*a, **k):
        raise AssertionError("training ran on a rerun of a finished folder")

    monkeypatch.setattr(validation.training.fullbatch, "train", boom)
    lines = len(read_jsonl(out / ".state" / "figure-fig10" / "runs.jsonl"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = run_figure("fig10", "smoke", out, device="cpu")
    assert again["units"]["run"] == [] and sorted(again["units"]["reused"]) == sorted(first["units"]["run"])
    assert len(read_jsonl(out / ".state" / "figure-fig10" / "runs.jsonl")) == lines
    assert again["results"] == json.loads(json.dumps(first["results"]))


def test_interrupted_run_resumes_only_missing_units(mnist_test, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_figure("fig1", "smoke", tmp_path, device="cpu")
    runs = tmp_path / ".state" / "figure-fig1" / "runs.jsonl"
    lines = runs.read_text().splitlines()
    runs.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a kill mid-append
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = run_figure("fig1", "smoke", tmp_path, device="cpu")
    assert again["units"]["reused"] == ["true"] and again["units"]["run"] == ["random"]
    assert [r["key"] for r in read_jsonl(runs)] == ["true", "random"]


def test_folder_with_other_config_of_the_same_figure_is_refused(mnist_test, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_figure("fig1", "smoke", tmp_path, device="cpu")
    with pytest.raises(GpmarginError, match="holds results of fig1/smoke with a different config .*scale"):
        run_figure("fig1", "quick", tmp_path, device="cpu")  # refused before any work


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gpmargin", "figure", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_cli_unknown_figure_scale_and_list(tmp_path):
    r = _cli("fig99", "--scale", "smoke", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: unknown figure 'fig99'")
    r = _cli("fig1", "--scale", "huge", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown scale 'huge'" in r.stderr
    r = _cli("list")
    assert r.returncode == 0
    assert [line.split()[0] for line in r.stdout.strip().splitlines()] == list(FIGURES)
    assert not (tmp_path / "x").exists()


def test_config_errors():
    with pytest.raises(GpmarginError, match="unknown scale"):
        get_figure("fig5").config("huge")
    with pytest.raises(GpmarginError, match="--dataset"):
        get_figure("fig1").config("smoke", "cifar10")
    with pytest.raises(GpmarginError, match="--dataset"):
        get_figure("fig9").config("smoke", "imagenet")
    assert get_figure("fig9").config("paper")["substitution"] is None
    assert get_figure("fig09") is get_figure("fig9")


def test_walk_and_landscape_probe_figures(smoke_runs, request):
    _, d = smoke_runs("walk", request)
    for r in d["results"].values():
        # no gradient before the first step: NaN is stored as null, never as a number
        assert r["grad_cosine"][0] is None and all(-1 <= v <= 1 for v in r["grad_cosine"][1:])
        assert len(r["segment_loss"][0]) == 11 and all(v >= 0 for v in r["valley_floor"])
    _, d = smoke_runs("landscape", request)
    seeds = d["results"]["seeds"]
    assert [r["seed"] for r in seeds] == d["config"]["seeds"]
    first = seeds[0]
    ip = first["interpolation"]
    assert ip["coefficients"][0] == -0.5 and ip["coefficients"][-1] == 1.5
    for r in seeds:
        assert r["data"]["attack_labels"] == "wrong" and r["data"]["seed"] == r["seed"]
        for w in ("control", "poisoned"):
            s = r[w]
            # trained until the clean images are classified correctly (or marked as not fit)
            assert s["fit"] == (s["clean_train_accuracy"] == 1.0) and s["steps"] <= d["config"]["max_steps"]
            assert 0 < s["basin"]["radius"] <= d["config"]["max_radius"] and np.isfinite(s["sharpness"])
            assert s["mean_radius"] == pytest.approx(np.mean(s["basin"]["radii"]), rel=1e-12)
        assert 0 <= r["poisoned"]["poison_fit_accuracy"] <= 1
    for w in ("control", "poisoned"):
        s = first[w]
        mid = len(s["slices"][0]["train_loss"]) // 2  # coefficient 0 is the network itself
        assert s["slices"][0]["train_loss"][mid] == pytest.approx(s["own"]["train"]["loss"], rel=1e-5)
        g = np.asarray(s["grid"]["train_loss"])
        assert g[g.shape[0] // 2, g.shape[1] // 2] == pytest.approx(s["own"]["train"]["loss"], rel=1e-5)
    # each claim is decided by a 95 % interval of paired per-seed differences
    from paper_figures.landscape import paired_interval, summary

    sm = summary(d["results"])
    for key, claim in zip(("radius_control_minus_poisoned", "sharpness_poisoned_minus_control",
                           "test_accuracy_control_minus_poisoned"), d["claims"].values()):
        assert claim["holds"] == (sm[key]["n"] >= 2 and sm[key]["low"] > 0)
        assert "95 % interval" in claim["detail"]
    # Student-t interval: [1, 2, 3] has mean 2, s.e. 1/sqrt(3), t_{0.975, 2} = 4.302653
    iv = paired_interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and iv["sem"] == pytest.approx(3 ** -0.5, rel=1e-12)
    assert iv["high"] - iv["mean"] == pytest.approx(4.302653 * 3 ** -0.5, rel=1e-6)
