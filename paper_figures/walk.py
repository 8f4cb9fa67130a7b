"""The walk of SGD (Xing, Arpit, Tsirigotis & Bengio 2018, *A walk with SGD*).

A paper MLP (depth 3, 1 output, ``sqrt(2) relu``) trained with plain minibatch SGD on MNIST
parity with the logistic loss ``log(1 + exp(-y f(x)))``, for two learning rates and two batch
sizes, from the same initial weights.  :class:`gpmargin.probes.WalkRecorder` records at every
step the full-training-set loss along the segment between consecutive iterates, the valley-floor
height ``L(theta_t) - min_a L(theta(a))``, the cosine between consecutive minibatch gradients
and the distance from initialisation.  Xing et al.'s observation: with a large learning rate the
iterates bounce between valley walls (height above the floor well above 0, negative gradient
cosines) while moving steadily away from the start.
"""

from __future__ import annotations

import numpy as np
import torch

from paper_figures import common as C

NAME = "walk"
TITLE = "The walk of SGD: valley-floor height, gradient cosines and distance travelled"
CLAIM = ("At the larger learning rate SGD's steps cross the valley (positive valley-floor height, "
         "consecutive gradients pointing against each other) more than at the smaller one.")

_BASE = dict(dataset="mnist", data_seed=0, net_seed=0, depth=3, dtype="float32", points=11)
SCALES = {
    "paper": dict(_BASE, n_train=5000, width=1024, steps=400, lrs=[0.1, 1.0], batch_sizes=[32, 256]),
    "quick": dict(_BASE, n_train=1000, width=128, steps=100, lrs=[0.02, 0.2], batch_sizes=[20, 200]),
    "smoke": dict(_BASE, n_train=100, width=16, steps=8, lrs=[0.02, 0.2], batch_sizes=[10, 50]),
}

config = C.fixed_dataset_config(SCALES, NAME)


def logistic(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ``log(1 + exp(-y f(x)))`` for a 1-output network and +-1 labels."""
    return torch.nn.functional.softplus(-y.to(out.dtype) * out[:, 0])


def _walk(cfg, lr, batch, device) -> dict:
    from gpmargin.probes import sgd_walk
    from validation.training.models import MLP

    t = C.task(cfg["dataset"], "parity", cfg["n_train"], 100, cfg["data_seed"])
    dt = C.dtype_of(cfg["dtype"])
    x, y = t.x_train.to(device=device, dtype=dt), t.y_train.to(device)
    model = MLP(x.shape[1], cfg["depth"], cfg["width"], 1, seed=cfg["net_seed"], dtype=dt).to(device)
    r = sgd_walk(model, logistic, (x, y), lr=lr, batch_size=batch, steps=cfg["steps"], seed=cfg["net_seed"],
                 points=cfg["points"])
    # NaN (the first step's gradient cosine, a non-finite loss) is stored as null, never as a number
    return {k: (np.where(np.isfinite(v), v, None).tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}


def run(cfg: dict, ctx) -> dict:
    return {f"lr={lr:g},batch={b}": ctx.unit(f"lr={lr:g},batch={b}", lambda lr=lr, b=b: _walk(cfg, lr, b, ctx.device))
            for lr in cfg["lrs"] for b in cfg["batch_sizes"]}


def _arr(v):
    return np.array([np.nan if x is None else x for x in v], dtype=np.float64)


def claims(cfg, results):
    lo, hi = min(cfg["lrs"]), max(cfg["lrs"])
    b = cfg["batch_sizes"][-1]
    h_lo = float(np.nanmean(_arr(results[f"lr={lo:g},batch={b}"]["valley_floor"])))
    h_hi = float(np.nanmean(_arr(results[f"lr={hi:g},batch={b}"]["valley_floor"])))
    c_lo = float(np.nanmean(_arr(results[f"lr={lo:g},batch={b}"]["grad_cosine"])))
    c_hi = float(np.nanmean(_arr(results[f"lr={hi:g},batch={b}"]["grad_cosine"])))
    return {"large_lr_crosses_valley": C.claim(h_hi > h_lo and c_hi < c_lo,
                                               f"batch {b}: mean valley-floor height {h_hi:.3g} (lr {hi:g}) vs "
                                               f"{h_lo:.3g} (lr {lo:g}); mean gradient cosine {c_hi:.3f} vs {c_lo:.3f}")}


def plot(cfg, results):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    styles = {lr: ls for lr, ls in zip(cfg["lrs"], ("-", "--"))}
    colors = {b: c for b, c in zip(cfg["batch_sizes"], ("C0", "C3"))}
    for lr in cfg["lrs"]:
        for b in cfg["batch_sizes"]:
            r = results[f"lr={lr:g},batch={b}"]
            step = np.arange(len(r["loss"]))
            kw = dict(ls=styles[lr], color=colors[b], label=f"lr {lr:g}, batch {b}", lw=1.2)
            axes[0].plot(step, _arr(r["loss"]), **kw)
            axes[1].plot(step, _arr(r["valley_floor"]), **kw)
            axes[2].plot(step, _arr(r["grad_cosine"]), **kw)
            axes[3].plot(step, _arr(r["distance"]), **kw)
    C.style(axes[0], "full training-set loss L(θ_t)", "SGD step t", "logistic loss")
    C.style(axes[1], "valley-floor height L(θ_t) − min_a L(θ(a))\nalong the segment θ_t → θ_t+1",
            "SGD step t", "height (loss units)")
    axes[1].set_yscale("symlog", linthresh=1e-4)
    C.style(axes[2], "cosine between consecutive minibatch gradients", "SGD step t", "cos(g_t−1, g_t)")
    axes[2].axhline(0, color="k", lw=0.6)
    C.style(axes[3], "distance from initialisation ‖θ_t − θ_0‖", "SGD step t", "Euclidean distance")
    fig.suptitle(f"{TITLE}\nMNIST parity, {cfg['n_train']} images, depth-{cfg['depth']} MLP width {cfg['width']}, "
                 f"plain SGD, first {cfg['steps']} steps {C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
