"""Figs 1 and 2: margins of a true-label and a random-label network, raw and spectrally normalized.

Two depth-``depth`` paper MLPs (no biases, ``sqrt(2) relu``) are trained full batch on the same
training images, one with the true labels (targets ``alpha_true * onehot``) and one with uniform
random labels (targets ``alpha_random * onehot``), with the loss ``||f(X) - alpha Y||``.

* Fig 1: plain SGD from a PyTorch-default-scale Gaussian init (std ``1/sqrt(3 fan_in)``).
* Fig 2: Nero with constraints (every row zero-mean, unit norm).

For each network the figure shows the histogram of its training margins ``f_y - max_{c!=y} f_c``
and of the same margins divided by Bartlett et al.'s ``R_A ||X||_F / n``.  ``R_A`` (the spectral
complexity, :func:`gpmargin.measures.spectral_complexity`) is computed with the initial weights as
reference matrices (plotted) and with zero reference matrices (saved in the JSON).
"""

from __future__ import annotations

import functools

import numpy as np

from paper_figures import common as C


def run(cfg: dict, ctx) -> dict:
    results: dict = {"nets": ctx.units({label: functools.partial(_train_one, cfg, label)
                                        for label in ("true", "random")})}
    nets = results["nets"]
    for key, field in (("raw", "train_margins"), ("normalized", "normalized_margins_init_ref"),
                       ("normalized_zero_ref", "normalized_margins_zero_ref")):
        allv = np.concatenate([nets[l][field] for l in nets])
        edges = np.linspace(float(allv.min()), float(allv.max()), cfg["bins"] + 1)
        results[f"hist_{key}"] = {"edges": edges.tolist(),
                                  **{l: C.histogram(nets[l][field], edges) for l in nets}}
    results["medians"] = {l: {"raw": float(np.median(n["train_margins"])),
                              "normalized_init_ref": float(np.median(n["normalized_margins_init_ref"])),
                              "normalized_zero_ref": float(np.median(n["normalized_margins_zero_ref"]))}
                          for l, n in nets.items()}
    return results


def _train_one(cfg: dict, label: str, device) -> dict:
    rnd = label == "random"
    t = C.task(cfg["dataset"], "multiclass", cfg["n_train"], cfg["n_test"], cfg["data_seed"], random_labels=rnd)
    alpha = cfg["alpha_random"] if rnd else cfg["alpha_true"]
    targets = C.per_member_targets(t.y_train, [alpha], t.num_classes)
    model, init_w, res = C.train_mlp_group(
        t.x_train, targets, depth=cfg["depth"], width=cfg["width"], outputs=t.num_classes, seed=cfg["net_seed"],
        optimizer=cfg["optimizer"], lr=cfg["lr"], decay=cfg["decay"], steps=cfg["steps"], device=device,
        dtype=cfg["dtype"], gain=cfg["init_gain"])
    dt = C.dtype_of(cfg["dtype"])
    f_tr = C.forward(model, t.x_train.to(device=device, dtype=dt))
    f_te = C.forward(model, t.x_test.to(device=device, dtype=dt))
    m = C.member_measures(model, init_w, 0, f_tr, t.y_train, t.x_train, f_te, t.y_test, cfg["depth"],
                          keep_margins=True)
    marg = np.asarray(m.pop("train_margins"))
    xf = m["x_fro_over_n"]
    out = {
        "alpha": alpha,
        "train_accuracy": m["train_accuracy"],
        "test_accuracy": m["test_accuracy"],
        "spectral_complexity_init_ref": m["spectral_complexity_init_ref"],
        "spectral_complexity_zero_ref": m["spectral_complexity_zero_ref"],
        "spectral_norms": m["spectral_norms"],
        "frobenius_norms": m["frobenius_norms"],
        "x_fro_over_n": xf,
        "train_margins": marg.tolist(),
        "normalized_margins_init_ref": (marg / (m["spectral_complexity_init_ref"] * xf)).tolist(),
        "normalized_margins_zero_ref": (marg / (m["spectral_complexity_zero_ref"] * xf)).tolist(),
        "final_loss": float(res.final_loss[0]),
        "relative_error": C.relative_errors(f_tr, targets)[0],
        "steps": res.steps,
        "data": C.data_info(t),
    }
    return out


def claims_common(results: dict) -> tuple[dict, dict]:
    md = results["medians"]
    return md["true"], md["random"]


def plot(cfg: dict, results: dict, title: str):
    import matplotlib.pyplot as plt

    nets = results["nets"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"true": "C0", "random": "C3"}
    for ax, key, xlabel in ((axes[0], "hist_raw", "training margin  $f_y(x) - \\max_{c\\neq y} f_c(x)$"),
                            (axes[1], "hist_normalized",
                             "spectrally-normalized margin  margin $/ (R_A \\|X\\|_F / n)$")):
        h = results[key]
        edges = np.asarray(h["edges"])
        for label in ("true", "random"):
            n = nets[label]
            name = (f"{label} labels (target scale {n['alpha']:g}; train acc {n['train_accuracy']:.2f}, "
                    f"test acc {n['test_accuracy']:.2f})")
            ax.stairs(h[label], edges, fill=True, alpha=0.45, color=colors[label], label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("number of training images")
        C.style(ax, legend=True, fontsize="x-small")
    axes[0].set_title("raw margins", fontsize=10)
    axes[1].set_title("normalized by Bartlett et al.'s spectral complexity $R_A$ (reference = init)", fontsize=10)
    opt = {"sgd": "SGD", "nero": "Nero + constraints"}.get(cfg["optimizer"], cfg["optimizer"])
    fig.suptitle(f"{title}\n{opt}, depth {cfg['depth']}, width {cfg['width']}, "
                 f"{cfg['n_train']} MNIST training images, {cfg['steps']} steps {C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
