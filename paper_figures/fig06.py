"""Fig 6 — MNIST parity: test accuracy of trained networks and ensembles against the targeted
normalized margin, next to the NNGP prediction, drawn as in the paper: an NN panel (one curve per
ensemble size), a GP panel (the same from the NNGP) and their overlay.

This reuses the validation harness: the sweep is ``validation.harness.sweep.run_sweep`` on the
``fig6`` experiment (``validation.experiments.fig6``; resumable in ``DIR/sweep/``), measured
accuracies come from ``validation.theory.gaps.measured_accuracy`` and predictions from
``validation.theory.predictors.predicted_accuracy`` (paper kernel and constrained kernel), on a dense
margin grid for the GP panel and at the trained margins for the gaps.  The settings per scale are
validation's (paper: depth 5, width 2048, 1000 images, 20 margins in logspace(-3, 1), ensembles of
1-16, 3 seeds); ``smoke`` shrinks validation's smoke experiment further (``SMOKE``).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from paper_figures import common as C

NAME = "fig6"
TITLE = "Fig 6: trained networks vs NNGP across margins and ensemble sizes (MNIST parity)"
CLAIM = ("Test accuracy of trained nets and ensembles rises with the targeted normalized margin much as the NNGP "
         "predicts, and ensembling raises it further.")

SCALES = {"paper": {}, "quick": {}, "smoke": {}}  # the fig6 experiment (validation) holds the settings
GP_GRID = {"paper": 41, "quick": 25, "smoke": 9}
SMOKE = dict(n_train=100, n_test=400, width=32, steps=100, margins=(0.01, 3.0), members=2, ensembles=(1, 2))


def _experiment(cfg):
    from validation.registry import experiment_from_dict

    return experiment_from_dict(cfg["experiment"])


def config(scale: str, dataset: str | None = None) -> dict:
    from validation.registry import get_experiment

    C.check_scale(SCALES, scale, NAME)
    C.no_dataset_option(NAME, dataset, "mnist")
    exp = get_experiment("fig6", scale)
    if scale == "smoke":  # validation's smoke sweep, made smaller still for the figure tests
        exp = dataclasses.replace(exp, **SMOKE)
    lo, hi = np.log10(min(exp.margins)), np.log10(max(exp.margins))
    return {"scale": scale, "experiment": exp.to_dict(), "gp_margins": C.logspace(lo - 0.5, hi + 0.5, GP_GRID[scale])}


def _sweep(cfg, ctx) -> dict:
    from validation.harness.sweep import records_complete, run_sweep
    from validation.theory.gaps import measured_accuracy

    exp = _experiment(cfg)
    task = exp.load_task()
    records = run_sweep(exp, ctx.state / "sweep", ctx.device, progress=ctx.progress, task=task, runner=ctx.runner)
    if not records_complete(exp, records):
        raise ValueError("fig6 sweep incomplete; rerun the same command to resume")
    meas = measured_accuracy(exp, records)
    return {"measured": [{"margin": m, "ensemble": k, **v} for (m, k), v in meas.items()],
            "train_accuracy_min": min(mm["train_accuracy"] for r in records for mm in r["members"]),
            "units": len(records), "data": C.data_info(task)}


def _gp(cfg, device) -> dict:
    from validation.theory.predictors import predicted_accuracy

    exp = _experiment(cfg)
    task = exp.load_task()
    grid = sorted(set(float(m) for m in cfg["gp_margins"]) | set(float(m) for m in exp.margins))
    pred = predicted_accuracy(dataclasses.replace(exp, margins=tuple(grid)), task, device)
    return {"margins": grid, "ensembles": list(exp.ensembles), **{k: v.tolist() for k, v in pred.items()}}


def _gaps(cfg, ctx, sweep) -> dict:
    """validation's gap statistics (mean / max |gap|, where, signed mean, margin-shift factor)."""
    from validation.theory.gaps import gap_statistics, measured_grid
    from validation.theory.predictors import predictors

    exp = _experiment(cfg)
    grid = measured_grid(exp, {(r["margin"], r["ensemble"]): r for r in sweep["measured"]})
    preds = predictors(exp, exp.load_task(), ctx.device)
    return {c: gap_statistics(exp.margins, exp.ensembles, grid, p.accuracy) for c, p in preds.items()}


def run(cfg, ctx):
    from validation.theory.comparison import comparison_rows
    from validation.theory.predictors import columns

    exp = _experiment(cfg)
    sweep = ctx.unit("sweep", lambda: _sweep(cfg, ctx))  # drives the sweep's own units from here
    gp = ctx.units({"gp": functools.partial(_gp, cfg)})["gp"]
    # comparison at the trained margins (validation's rows and gap statistics)
    idx = [gp["margins"].index(float(m)) for m in exp.margins]
    pred = {col: np.asarray(gp[col])[:, idx] for col in columns(exp)}
    measured = {(r["margin"], r["ensemble"]): r for r in sweep["measured"]}
    rows = comparison_rows(exp, measured, pred)
    return {"sweep": sweep, "gp": gp, "comparison_rows": rows, "gaps": ctx.unit("gaps", lambda: _gaps(cfg, ctx, sweep))}


def _nn(results, k):
    rows = sorted((r for r in results["sweep"]["measured"] if r["ensemble"] == k), key=lambda r: r["margin"])
    return [r["margin"] for r in rows], [r["mean"] for r in rows], [r["sem"] or 0.0 for r in rows]


def claims(cfg, results):
    exp = _experiment(cfg)
    m, acc1, _ = _nn(results, 1)
    kmax = max(exp.ensembles)
    _, acck, _ = _nn(results, kmax)
    gaps = results["gaps"]["gp_accuracy"]
    g = gaps["mean_abs_gap"]
    return {
        "accuracy_rises_with_margin": C.claim(acc1[-1] - acc1[0] >= 0.05,
                                              f"single nets: {acc1[0]:.3f} at α={m[0]:.3g} -> {acc1[-1]:.3f} at "
                                              f"α={m[-1]:.3g}"),
        "ensembling_helps": C.claim(np.mean(acck) >= np.mean(acc1),
                                    f"mean over margins: ensembles of {kmax} {np.mean(acck):.3f} vs single "
                                    f"{np.mean(acc1):.3f}"),
        "gp_tracks_nn": C.claim(g is not None and g < 0.1,
                                f"mean |nn - gp| (paper kernel) {100 * g:.2f} points, max "
                                f"{100 * gaps['max_abs_gap']:.2f} points at α={gaps['max_gap_margin']:.3g} "
                                f"(k={gaps['max_gap_ensemble']}), best margin shift "
                                f"c={gaps['margin_shift']['factor']:.2f} leaves "
                                f"{100 * gaps['margin_shift']['mean_abs_gap']:.2f} points"),
    }


def plot(cfg, results):
    import matplotlib.pyplot as plt

    exp = _experiment(cfg)
    ks = list(exp.ensembles)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(ks)))
    gp = results["gp"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), sharey=True)
    for j, k in enumerate(ks):
        lab = "single net" if k == 1 else f"ensemble of {k}"
        m, a, s = _nn(results, k)
        axes[0].errorbar(m, a, yerr=s, fmt="o-", color=colors[j], capsize=2, ms=4, label=lab)
        axes[1].plot(gp["margins"], gp["gp_accuracy"][j], "-", color=colors[j], label=lab)
        axes[2].errorbar(m, a, yerr=s, fmt="o", color=colors[j], capsize=2, ms=4,
                         label=f"NN, {lab}")
        axes[2].plot(gp["margins"], gp["gp_accuracy"][j], "-", color=colors[j], lw=1.2)
        axes[2].plot(gp["margins"], gp["gp_constrained_accuracy"][j], ":", color=colors[j], lw=1.2)
    axes[2].plot([], [], "k-", label="NNGP, paper kernel")
    axes[2].plot([], [], "k:", label="NNGP, constrained kernel")
    g = results["gaps"]
    titles = ("NN: trained networks (mean ± s.e.)", "GP: NNGP prediction (paper kernel)",
              f"overlay — mean / max |nn−gp|: paper {100 * g['gp_accuracy']['mean_abs_gap']:.2f} / "
              f"{100 * g['gp_accuracy']['max_abs_gap']:.2f} points, constrained "
              f"{100 * g['gp_constrained_accuracy']['mean_abs_gap']:.2f} / "
              f"{100 * g['gp_constrained_accuracy']['max_abs_gap']:.2f} points")
    for ax, t in zip(axes, titles):
        ax.set_xscale("log")
        ax.axhline(0.5, color="0.5", ls=":", lw=1)
        C.style(ax, title=t, xlabel="targeted normalized margin α (targets α·y)", fontsize="x-small")
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(f"{TITLE}\n{exp.n_train} training images, depth {exp.depth}, width {exp.width}, Nero + constraints, "
                 f"{exp.steps} steps, {len(exp.seeds)} seed(s) × {exp.members} nets {C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
