"""Fig 8 — Fig 4 on a 3 x 3 grid: MNIST pairs 0 vs 1, 4 vs 7, 3 vs 8 (rows), three data seeds
(columns: different 5 training and 50 test images).  See :mod:`paper_figures.twins`.
"""

from __future__ import annotations

from paper_figures import common as C, twins as T

NAME = "fig8"
TITLE = "Fig 8: sampled vs trained twins on three MNIST pairs × three data seeds (depth-7 MLP)"
CLAIM = "Sampled and trained twins generalise alike across MNIST pairs and data draws, as the NNGP predicts."

_BASE = dict(dataset="mnist", model="mlp", depth=7, tasks=["pair:0,1", "pair:4,7", "pair:3,8"], data_seeds=[0, 1, 2],
             n_train=5, n_test=50, lr=1e-3, decay=0.9, tol=1e-6, max_steps=300, dtype="float64", dense_hidden=1)
SCALES = {
    "paper": dict(_BASE, widths=[500, 1000, 2000, 4000, 7000], pairs=1000, batch=50, max_draws=200000,
                  gp_samples=2_000_000),
    "quick": dict(_BASE, widths=[128, 256], pairs=16, batch=16, max_draws=3000, gp_samples=200_000),
    "smoke": dict(_BASE, tasks=["pair:0,1", "pair:4,7"], data_seeds=[0], depth=3, widths=[64], pairs=1, batch=16,
                  max_draws=160, gp_samples=5_000, max_steps=60),
}


config = C.fixed_dataset_config(SCALES, NAME)


run = T.run


claims = T.claims


def plot(cfg, results):
    import matplotlib.pyplot as plt

    nt, ns = len(cfg["tasks"]), len(cfg["data_seeds"])
    fig, axes = plt.subplots(nt, ns, figsize=(4.3 * ns, 3.4 * nt), squeeze=False, sharey=True)
    for i, panel in enumerate(results["panels"]):
        r, c = divmod(i, ns)
        T.plot_panel(axes[r][c], cfg, panel, xlabel="width" if r == nt - 1 else None, legend=(i == 0))
    head = (f"Fig 8: sampled vs trained twins on {nt} MNIST pair(s) × {ns} data seed(s) "
            f"(depth-{cfg['depth']} MLP)")
    fig.suptitle(f"{head}\nNero lr {cfg['lr']:g} × {cfg['decay']:g}^step, fit to rel. error {cfg['tol']:g} "
                 f"{C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
