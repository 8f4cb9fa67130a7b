"""Fig 5 — three ways of changing the margin of 10-class MNIST nets (depth 2): (a) SGD with a
small first-layer init scale sigma, (b) SGD with target scale alpha (NNGP and gradient-descent predictions
overlaid), (c) Nero with constraints and target scale alpha (NNGP predictions overlaid), (d) all three against the Frobenius-normalized
margin: nearly one curve.  See :mod:`paper_figures.margin_sweeps`.

Paper settings: 1000 training images, depth 2, width 2048, sigma = 1e-4 * 2^i, alpha in
logspace(-4, 1); only nets with train accuracy > 0.9 are kept.  The brief does not give the
learning-rate schedule; we use SGD lr 0.01 and Nero lr 0.01, both decayed by 0.999 per step,
1000 steps at paper scale.  ``quick``: 400 images, width 128, SGD lr 0.003 for 300 steps, Nero 400 steps decayed
by 0.99 per step (so that the nets at small alpha fit their targets), 6-8 nets per panel.
"""

from __future__ import annotations

import numpy as np

from paper_figures import common as C, margin_sweeps as S

NAME = "fig5"
TITLE = "Fig 5: test accuracy against margin, controlled three ways (10-class MNIST, depth-2 MLP)"
CLAIM = ("Whether the margin is set by init scale (SGD), target scale (SGD) or target scale with Nero constraints, "
         "test accuracy follows the Frobenius-normalized margin along nearly one curve.")

_BASE = dict(dataset="mnist", data_seed=0, net_seed=0, depth=2, dtype="float32", min_train_accuracy=0.9,
             sgd_decay=0.999, nero_decay=0.999, nero_lr=0.01)
SCALES = {
    "paper": dict(_BASE, n_train=1000, n_test=None, width=2048, sigmas=[1e-4 * 2 ** i for i in range(15)],
                  sgd_alphas=C.logspace(-4, 1, 11), nero_alphas=C.logspace(-4, 1, 11), sgd_lr=0.01, sgd_steps=1000,
                  nero_steps=1000, gp_margins=C.logspace(-4.5, 1.5, 49)),
    "quick": dict(_BASE, n_train=400, n_test=2000, width=128, sigmas=[1e-4 * 2 ** i for i in range(0, 15, 2)],
                  sgd_alphas=C.logspace(-4, 1, 6), nero_alphas=C.logspace(-4, 1, 6), sgd_lr=0.003, sgd_steps=300,
                  nero_steps=400, nero_decay=0.99, gp_margins=C.logspace(-4.5, 1.5, 25)),
    "smoke": dict(_BASE, n_train=60, n_test=200, width=24, sigmas=[1e-4, 1e-2, 1.0], sgd_alphas=[1e-3, 0.1, 10.0],
                  nero_alphas=[1e-3, 0.1, 10.0], sgd_lr=0.003, sgd_steps=40, nero_steps=60,
                  gp_margins=C.logspace(-3, 1, 5), min_train_accuracy=0.0),
}
GROUPS = ("sgd_init", "sgd_alpha", "nero_alpha")
LABELS = {"sgd_init": "(a) SGD, init scale σ", "sgd_alpha": "(b) SGD, target scale α",
          "nero_alpha": "(c) Nero + constraints, target scale α"}


config = C.fixed_dataset_config(SCALES, NAME)


def run(cfg, ctx):
    out = {g: ctx.unit(g, lambda g=g: S.train_group(cfg, g, ctx.device)) for g in GROUPS}
    out["gp"] = ctx.unit("gp", lambda: S.gp(cfg, ctx.device))
    th = cfg["min_train_accuracy"]
    out["gaps"] = ctx.unit("gaps", lambda: {g: S.gaps(cfg, out[g], ctx.device, th) for g in ("sgd_alpha", "nero_alpha")})
    return out


#: drawn in panels (b) and (c): (prediction, style, label)
OVERLAYS = {"sgd_alpha": (("paper", "k-", "NNGP, paper kernel"), ("gd", "-.", "gradient descent t=∞, paper kernel")),
            "nero_alpha": (("paper", "k-", "NNGP, paper kernel"), ("constrained", "--", "NNGP, constrained kernel"))}


def _max_gap(results, group, name) -> str:
    g = results.get("gaps", {}).get(group, {}).get(name)
    return "" if g is None else f" (max |gap| {100 * g['max_abs_gap']:.1f} pts at α={g['max_gap_margin']:.2g})"


def claims(cfg, results):
    th = cfg["min_train_accuracy"]
    out = {}
    for g in GROUPS:
        k = S.kept(results[g], th)
        ok, detail = S.rises([n["frobenius_normalized_margin_median"] for n in k], [n["test_accuracy"] for n in k])
        out[f"{g}_accuracy_rises_with_margin"] = C.claim(ok, f"{LABELS[g]}: {len(k)} nets kept; {detail}")
    # one curve: pooled over the three panels, accuracy is monotone in the normalized margin
    pooled = [n for g in GROUPS for n in S.kept(results[g], th)]
    if len(pooled) >= 3:
        x = np.argsort(np.argsort([n["frobenius_normalized_margin_median"] for n in pooled]))
        y = np.argsort(np.argsort([n["test_accuracy"] for n in pooled]))
        rho = float(np.corrcoef(x, y)[0, 1])
    else:
        rho = float("nan")
    out["one_curve_against_normalized_margin"] = C.claim(rho > 0.7, f"Spearman rank correlation of test accuracy "
                                                                    f"with the Frobenius-normalized margin over all "
                                                                    f"{len(pooled)} kept nets: {rho:.2f}")
    return out


def plot(cfg, results):
    import matplotlib.pyplot as plt

    th = cfg["min_train_accuracy"]
    fig, grid = plt.subplots(2, 2, figsize=(12.5, 9))
    axes = grid.ravel()
    colors = {"sgd_init": "C2", "sgd_alpha": "C1", "nero_alpha": "C0"}
    gp = results["gp"]
    for ax, g in zip(axes[:3], GROUPS):
        nets = results[g]["nets"]
        k = S.kept(results[g], th)
        drop = [n for n in nets if n not in k]
        ax.plot([n["value"] for n in k], [n["test_accuracy"] for n in k], "o-", color=colors[g],
                label=f"test accuracy (train acc > {th:g})")
        if drop:
            ax.plot([n["value"] for n in drop], [n["test_accuracy"] for n in drop], "x", color="0.5",
                    label=f"dropped: train acc ≤ {th:g}")
        ax.set_xscale("log")
        ax.axhline(0.1, color="0.5", ls=":", label="chance")
        param = "first-layer init scale σ" if g == "sgd_init" else "target scale α"
        for name, fmt, lab in OVERLAYS.get(g, ()):
            ax.plot(gp[name]["margins"], gp[name]["accuracy"], fmt, color="k" if fmt == "k-" else "0.4", lw=1.3,
                    label=lab + _max_gap(results, g, name))
        C.style(ax, title=LABELS[g], xlabel=param, ylabel="test accuracy", fontsize="x-small")
    ax = axes[3]
    for g in GROUPS:
        k = S.kept(results[g], th)
        ax.plot([n["frobenius_normalized_margin_median"] for n in k], [n["test_accuracy"] for n in k], "o",
                color=colors[g], label=LABELS[g])
    ax.plot(gp["paper"]["frobenius_normalized_margin"], gp["paper"]["accuracy"], "k-", lw=1,
            label="NNGP, paper kernel (α / Π‖W‖_F of a constrained net)")
    ax.plot(gp["constrained"]["frobenius_normalized_margin"], gp["constrained"]["accuracy"], "--", color="0.45",
            lw=1.5, label="NNGP, constrained kernel")
    ax.set_xscale("log")
    ax.axhline(0.1, color="0.5", ls=":")
    C.style(ax, title="(d) all three against the normalized margin",
            xlabel="Frobenius-normalized margin  median margin / Π‖W_l‖_F", ylabel="test accuracy",
            fontsize="x-small")
    fig.suptitle(f"{TITLE}\n{cfg['n_train']} training images, width {cfg['width']}, SGD {cfg['sgd_steps']} / Nero "
                 f"{cfg['nero_steps']} steps {C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
