"""Fig 7 — the attacked / control pair of Fig 3 across targeted margins alpha in logspace(-1, 1, 6):
at every margin the attacked net tests below its control.  NNGP predictions for both training sets
(the constrained depth-2 kernel) are overlaid.  See :mod:`paper_figures.attack`.  Paper settings as
Fig 3; ``quick``: 150 clean + 300 attack images, width 256, 800 steps decayed by 0.995.
"""

from __future__ import annotations


from paper_figures import attack as A, common as C

NAME = "fig7"
TITLE = "Fig 7: attacked vs control across targeted normalized margins"
CLAIM = "At every targeted normalized margin the net that memorised an attack set tests below its control."

_BASE = dict(dataset="mnist", data_seed=0, net_seed=0, depth=2, lr=0.01, decay=0.9999, alphas=C.logspace(-1, 1, 6),
             dtype="float32", keep_margins=False, bins=30, gp_margins=C.logspace(-1.5, 1.5, 25))
SCALES = {
    "paper": dict(_BASE, n_clean=500, n_attack=1500, n_test=None, width=2048, steps=30000),
    "quick": dict(_BASE, n_clean=150, n_attack=300, n_test=2000, width=256, steps=800, decay=0.995),
    "smoke": dict(_BASE, n_clean=40, n_attack=120, n_test=200, width=32, steps=60, alphas=[0.1, 1.0, 10.0],
                  gp_margins=C.logspace(-1, 1, 5)),
}


config = C.fixed_dataset_config(SCALES, NAME)


def run(cfg, ctx):
    return A.run(cfg, ctx, gp=True)


def claims(cfg, results):
    alphas, ctrl, att = A.accuracies(results)
    below = [a < c for a, c in zip(att, ctrl)]
    detail = ", ".join(f"α={al:.3g}: {a:.3f} < {c:.3f}" if b else f"α={al:.3g}: {a:.3f} >= {c:.3f}"
                       for al, a, c, b in zip(alphas, att, ctrl, below))
    return {"attacked_below_control_at_every_margin": C.claim(all(below), f"test accuracy attacked vs control: {detail}")}


def plot(cfg, results):
    import matplotlib.pyplot as plt

    alphas, ctrl, att = A.accuracies(results)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.plot(alphas, ctrl, "o-", color="C0", label=f"control net ({cfg['n_clean']} clean images)")
    ax.plot(alphas, att, "s-", color="C3", label=f"attacked net (+ {cfg['n_attack']} random-label images)")
    gp = results["gp"]
    ax.plot(gp["control"]["margins"], gp["control"]["accuracy"], "--", color="C0", alpha=0.7,
            label="NNGP prediction, control")
    ax.plot(gp["attacked"]["margins"], gp["attacked"]["accuracy"], "--", color="C3", alpha=0.7,
            label="NNGP prediction, attacked")
    ax.axhline(0.1, color="0.5", ls=":", label="chance (0.1)")
    ax.set_xscale("log")
    C.style(ax, xlabel="targeted normalized margin α (Nero-constrained weights, targets α·onehot)",
            ylabel="test accuracy", fontsize="small")
    fig.suptitle(f"{TITLE}\nNero + constraints, depth {cfg['depth']}, width {cfg['width']}, {cfg['steps']} steps "
                 f"{C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
