"""Figs 5 and 10: test accuracy of 10-class MNIST nets against their margin, three ways.

Every group of networks is one batched ensemble of depth-2 paper MLPs trained full batch on the
same ``n_train`` images with the loss ``||f(X) - T||``:

* ``sgd_init`` (Fig 5a): SGD, targets ``1 * onehot``, first layer initialised N(0, sigma^2) with
  sigma = 1e-4 * 2^i (other layers Xavier-normal), one network per sigma;
* ``sgd_alpha`` (Fig 5b): SGD from a PyTorch-default-scale init, targets ``alpha * onehot``;
* ``nero_alpha`` (Fig 5c, Fig 10): Nero with constraints, targets ``alpha * onehot``;
* ``nero_alpha_random`` (Fig 10): the same on uniformly random training labels.

Measured per network: train and test accuracy and the Frobenius-normalized margin
``median_i margin_i / prod_l ||W_l||_F`` (the median training margin is used rather than the
minimum so that nets with train accuracy in (0.9, 1) have a positive, plottable margin; both are
saved).  Only networks with train accuracy above ``min_train_accuracy`` (0.9) are drawn.

Overlays: the NNGP posterior of the depth-2 paper kernel, unconstrained and with Nero's
constraints, and the gradient-descent prediction (``kind="ntk"``, trained to convergence, paper
kernel), on the same train/test split, each with ``validation.theory.gaps.gap_statistics`` against the
nets it is drawn beside.  For the Frobenius axis of Fig 5(d) the
GP's margin alpha is mapped to ``alpha / prod_l ||W_l||_F`` of a constrained net (each row unit
norm, so ``prod_l ||W_l||_F = sqrt(width * 10)``): a net fitted to ``alpha * onehot`` has
training margins about alpha.
"""

from __future__ import annotations

import math

import numpy as np

from paper_figures import common as C


def _task(cfg, random_labels: bool = False):
    return C.task(cfg["dataset"], "multiclass", cfg["n_train"], cfg["n_test"], cfg["data_seed"],
                  random_labels=random_labels)


def train_group(cfg: dict, group: str, device) -> dict:
    rnd = group.endswith("_random")
    t = _task(cfg, random_labels=rnd)
    if group == "sgd_init":
        values = list(cfg["sigmas"])
        targets = C.per_member_targets(t.y_train, [1.0] * len(values), t.num_classes)
        kw = dict(optimizer="sgd", lr=cfg["sgd_lr"], decay=cfg["sgd_decay"], steps=cfg["sgd_steps"], init="scale",
                  sigmas=values)
    elif group == "sgd_alpha":
        values = list(cfg["sgd_alphas"])
        targets = C.per_member_targets(t.y_train, values, t.num_classes)
        kw = dict(optimizer="sgd", lr=cfg["sgd_lr"], decay=cfg["sgd_decay"], steps=cfg["sgd_steps"],
                  gain=C.TORCH_DEFAULT_GAIN)
    elif group in ("nero_alpha", "nero_alpha_random"):
        values = list(cfg["nero_alphas"])
        targets = C.per_member_targets(t.y_train, values, t.num_classes)
        kw = dict(optimizer="nero", lr=cfg["nero_lr"], decay=cfg["nero_decay"], steps=cfg["nero_steps"])
    else:  # pragma: no cover - programming error
        raise ValueError(group)
    model, init_w, res = C.train_mlp_group(t.x_train, targets, depth=cfg["depth"], width=cfg["width"],
                                           outputs=t.num_classes, seed=cfg["net_seed"], device=device,
                                           dtype=cfg["dtype"], **kw)
    dt = C.dtype_of(cfg["dtype"])
    f_tr = C.forward(model, t.x_train.to(device=device, dtype=dt))
    f_te = C.forward(model, t.x_test.to(device=device, dtype=dt))
    rel = C.relative_errors(f_tr, targets)
    nets = []
    for j, v in enumerate(values):
        m = C.member_measures(model, init_w, j, f_tr, t.y_train, t.x_train, f_te, t.y_test, cfg["depth"])
        nets.append({"value": float(v), "train_accuracy": m["train_accuracy"], "test_accuracy": m["test_accuracy"],
                     "frobenius_normalized_margin_median": m["frobenius_normalized_margin_median"],
                     "frobenius_normalized_margin_min": m["frobenius_normalized_margin"],
                     "train_margin_median": m["train_margin_median"], "frobenius_product": m["frobenius_product"],
                     "relative_error": rel[j], "final_loss": float(res.final_loss[j])})
    return {"group": group, "parameter": "sigma" if group == "sgd_init" else "alpha", "nets": nets,
            "steps": res.steps, "data": C.data_info(t)}


#: the predictions drawn beside the nets: NNGP posterior (paper and Nero-constrained kernels) and
#: gradient descent to convergence (Lee et al. 2019; the constrained kernel has no NTK)
PREDICTIONS = {"constrained": dict(constrained=True, kind="nngp"), "paper": dict(constrained=False, kind="nngp"),
               "gd": dict(constrained=False, kind="ntk")}


def gp(cfg: dict, device, random_labels: bool = False) -> dict:
    t = _task(cfg, random_labels=random_labels)
    out = {name: C.gp_curve(cfg["depth"], t, cfg["gp_margins"], device=device, **kw)
           for name, kw in PREDICTIONS.items()}
    fro = math.sqrt(cfg["width"] * 10)
    for v in out.values():
        v["frobenius_normalized_margin"] = [a / fro for a in v["margins"]]
    return out


def gaps(cfg: dict, group: dict, device, threshold: float = 0.0, random_labels: bool = False) -> dict:
    """Gap statistics of the group's kept nets (train accuracy > ``threshold``) against every prediction."""
    t = _task(cfg, random_labels=random_labels)
    return C.overlay_gaps(kept(group, threshold), cfg["depth"], t, PREDICTIONS, device)


def kept(group: dict, threshold: float) -> list[dict]:
    return [n for n in group["nets"] if n["train_accuracy"] > threshold]


def rises(values: list[float], accs: list[float], min_gain: float = 0.05) -> tuple[bool, str]:
    """Test accuracy at the largest kept margin exceeds that at the smallest by ``min_gain``."""
    if len(accs) < 2:
        return False, f"only {len(accs)} net(s) kept"
    order = np.argsort(values)
    lo, hi = accs[order[0]], accs[order[-1]]
    rho = float(np.corrcoef(np.argsort(np.argsort(values)), np.argsort(np.argsort(accs)))[0, 1])
    return hi - lo >= min_gain, (f"test accuracy {lo:.3f} at the smallest margin -> {hi:.3f} at the largest "
                                 f"(Spearman rho {rho:.2f})")
