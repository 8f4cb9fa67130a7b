"""Fig 1 — true vs random labels with SGD: the random-label net has the larger raw margin but the
smaller spectrally-normalized margin (Bartlett et al.'s observation).  See :mod:`paper_figures.pair_margins`.

Paper settings: two depth-5, width-5000 MLPs, 10 classes, 1000 MNIST training images, SGD with lr
0.01 decayed by 0.999 per step for 1000 steps, target scale 1 (true labels) vs 10 (random labels).
``quick`` narrows the nets to width 256 and uses 500 images; narrow nets diverge with lr 0.01
on the (un-averaged) loss ``||f(X) - alpha Y||``, so quick uses lr 0.003.
"""

from __future__ import annotations

from paper_figures import common as C, pair_margins as P

NAME = "fig1"
TITLE = "Fig 1: true vs random labels (SGD) — raw vs spectrally-normalized margins"
CLAIM = "With SGD the random-label net has the larger raw margin but the smaller spectrally-normalized margin."

_BASE = dict(dataset="mnist", data_seed=0, net_seed=0, optimizer="sgd", decay=0.999, alpha_true=1.0,
             alpha_random=10.0, init_gain=C.TORCH_DEFAULT_GAIN, dtype="float32", bins=40)
SCALES = {
    "paper": dict(_BASE, n_train=1000, n_test=None, depth=5, width=5000, lr=0.01, steps=1000),
    "quick": dict(_BASE, n_train=500, n_test=2000, depth=5, width=256, lr=0.003, steps=1000),
    "smoke": dict(_BASE, n_train=60, n_test=200, depth=3, width=32, lr=0.003, steps=40, bins=15),
}


config = C.fixed_dataset_config(SCALES, NAME)


run = P.run


def claims(cfg, results):
    t, r = P.claims_common(results)
    return {
        "random_has_larger_raw_margin": C.claim(
            r["raw"] > t["raw"], f"median raw margin: random {r['raw']:.3g} vs true {t['raw']:.3g}"),
        "random_has_smaller_normalized_margin": C.claim(
            r["normalized_init_ref"] < t["normalized_init_ref"],
            f"median spectrally-normalized margin (init reference): random {r['normalized_init_ref']:.3g} "
            f"vs true {t['normalized_init_ref']:.3g}"),
    }


def plot(cfg, results):
    return P.plot(cfg, results, TITLE)
