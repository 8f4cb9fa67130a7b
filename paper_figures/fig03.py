"""Fig 3 — extreme memorisation: two nets with the same margins on the clean images but very
different test accuracy.  See :mod:`paper_figures.attack`.

Paper settings: depth 2, width 2048, 10 classes; the attacked net trains on 500 clean MNIST images
plus 1500 other images with random labels, the control on the same 500; Nero with constraints,
alpha = 0.63, lr 0.01 decayed by 0.9999 per step (the step count is not given; we use 30000, by
when the learning rate has decayed 20-fold, so the nets fit their targets closely).
Paper result: test accuracy 0.35 (attacked) vs 0.81 (control).  ``quick``: 300 clean + 600 attack
images, width 512, 1000 steps decayed by 0.996 per step (the learning rate decays about 50-fold, so
the nets fit their targets in fewer steps).
"""

from __future__ import annotations

import numpy as np

from paper_figures import attack as A, common as C

NAME = "fig3"
TITLE = "Fig 3: extreme memorisation — same margins on the clean images, different test accuracy"
CLAIM = ("A net that also memorised randomly labelled attack images has the same clean-image margins "
         "as its control twin but much lower test accuracy.")

_BASE = dict(dataset="mnist", data_seed=0, net_seed=0, depth=2, lr=0.01, decay=0.9999, alphas=[0.63],
             dtype="float32", keep_margins=True, bins=30, gp_margins=[0.63])
SCALES = {
    "paper": dict(_BASE, n_clean=500, n_attack=1500, n_test=None, width=2048, steps=30000),
    "quick": dict(_BASE, n_clean=300, n_attack=600, n_test=2000, width=512, steps=1000, decay=0.996),
    "smoke": dict(_BASE, n_clean=40, n_attack=120, n_test=200, width=32, steps=60, bins=10),
}


config = C.fixed_dataset_config(SCALES, NAME)


run = A.run


def claims(cfg, results):
    c, a = results["control"]["nets"][0], results["attacked"]["nets"][0]
    rel = abs(a["clean_margin_median"] - c["clean_margin_median"]) / max(abs(c["clean_margin_median"]), 1e-12)
    return {
        "attacked_below_control": C.claim(a["test_accuracy"] < c["test_accuracy"],
                                          f"test accuracy attacked {a['test_accuracy']:.3f} vs control "
                                          f"{c['test_accuracy']:.3f}"),
        "clean_margins_coincide": C.claim(rel < 0.1 and a["clean_train_accuracy"] > 0.99 and
                                          c["clean_train_accuracy"] > 0.99,
                                          f"median clean margin attacked {a['clean_margin_median']:.3f} vs control "
                                          f"{c['clean_margin_median']:.3f} (relative difference {rel:.3f}); clean "
                                          f"train accuracy {a['clean_train_accuracy']:.3f} / {c['clean_train_accuracy']:.3f}"),
    }


def plot(cfg, results):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    h = results["hist_clean_margins"]
    edges = np.asarray(h["edges"])
    for which, color, desc in (("control", "C0", f"control: {cfg['n_clean']} clean images"),
                               ("attacked", "C3", f"attacked: + {cfg['n_attack']} random-label images")):
        n = results[which]["nets"][0]
        ax.stairs(h[which], edges, fill=True, alpha=0.45, color=color,
                  label=f"{desc} — test accuracy {n['test_accuracy']:.2f}")
    C.style(ax, xlabel=f"margin on the {cfg['n_clean']} clean training images  (target α = {cfg['alphas'][0]:g})",
            ylabel="number of clean images", fontsize="small")
    fig.suptitle(f"{TITLE}\nNero + constraints, depth {cfg['depth']}, width {cfg['width']}, {cfg['steps']} steps "
                 f"{C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
