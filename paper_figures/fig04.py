"""Fig 4 — sampled vs trained twins on MNIST 0 vs 1 (5 training points), depth-7 MLP, against
width, with the NNGP prediction.  See :mod:`paper_figures.twins` for the procedure.

Paper settings: depth 7, widths 500-7000, up to 1000 pairs per width, Nero lr 1e-3 decayed by
0.9 per step, twins fitted to relative error 1e-6.  Every scale uses the paper's schedule
(at most 300 steps; by then the learning rate has decayed below 1e-16); ``quick`` uses narrower
nets and fewer pairs, ``smoke`` a depth-3 net.
"""

from __future__ import annotations

from paper_figures import common as C, twins as T

NAME = "fig4"
TITLE = "Fig 4: sampled vs trained twins (MNIST 0 vs 1, 5 training points, depth-7 MLP)"
CLAIM = ("A net trained by Nero to reproduce a sampled constrained net's outputs on 5 points generalises "
         "like it, at every width, as the NNGP predicts.")

_BASE = dict(dataset="mnist", model="mlp", depth=7, tasks=["pair:0,1"], data_seeds=[0], n_train=5, n_test=50,
             lr=1e-3, decay=0.9, tol=1e-6, max_steps=300, dtype="float64", dense_hidden=1)
SCALES = {
    "paper": dict(_BASE, widths=[500, 1000, 2000, 4000, 7000], pairs=1000, batch=50, max_draws=200000,
                  gp_samples=2_000_000),
    "quick": dict(_BASE, widths=[128, 256, 512], pairs=30, batch=30, max_draws=4000, gp_samples=400_000),
    "smoke": dict(_BASE, depth=3, widths=[512], pairs=3, batch=12, max_draws=400, gp_samples=20_000),
}


config = C.fixed_dataset_config(SCALES, NAME)


run = T.run


claims = T.claims


def plot(cfg, results):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    T.plot_panel(ax, cfg, results["panels"][0], xlabel="width (hidden units per layer)")
    head = f"Fig 4: sampled vs trained twins (MNIST 0 vs 1, 5 training points, depth-{cfg['depth']} MLP)"
    fig.suptitle(f"{head}\nconstrained nets, Nero lr {cfg['lr']:g} × {cfg['decay']:g}^step, fit to rel. error "
                 f"{cfg['tol']:g} {C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
