"""Figs 3 and 7: extreme memorisation with an attack set.

The *attacked* network trains on ``n_clean`` MNIST images with their true labels plus
``n_attack`` other images with uniform random labels; its *control* twin (same initial weights)
trains on the same ``n_clean`` images only.  Both are depth-2 paper MLPs trained with Nero and
constraints to targets ``alpha * onehot`` (loss ``||f(X) - alpha Y||``), so with every row of
unit norm both have the same targeted normalized margin ``alpha``.  One batched ensemble per
training set holds one network per ``alpha`` (Fig 3: one ``alpha``; Fig 7: ``logspace(-1, 1, 6)``).

Measured per network: test accuracy (true test labels), and the margins on the clean images.
Fig 7 also draws the NNGP prediction (the depth-2 paper kernel with Nero's constraints) for
both training sets: the GP conditioned on ``f = alpha Y`` on the clean images, and on the clean
plus the randomly labelled attack images.
"""

from __future__ import annotations

import functools

import numpy as np

from paper_figures import common as C


def _tasks(cfg):
    t = C.task(cfg["dataset"], "multiclass", cfg["n_clean"], cfg["n_test"], cfg["data_seed"], attack=cfg["n_attack"])
    return t


def _train(cfg, which: str, device) -> dict:
    t = _tasks(cfg)
    n = cfg["n_clean"] if which == "control" else cfg["n_clean"] + cfg["n_attack"]
    x, y, clean = t.x_train[:n], t.y_train[:n], t.train_clean[:n]
    targets = C.per_member_targets(y, cfg["alphas"], t.num_classes)
    model, init_w, res = C.train_mlp_group(
        x, targets, depth=cfg["depth"], width=cfg["width"], outputs=t.num_classes, seed=cfg["net_seed"],
        optimizer="nero", lr=cfg["lr"], decay=cfg["decay"], steps=cfg["steps"], device=device, dtype=cfg["dtype"])
    dt = C.dtype_of(cfg["dtype"])
    f_tr = C.forward(model, x.to(device=device, dtype=dt))
    f_te = C.forward(model, t.x_test.to(device=device, dtype=dt))
    rel = C.relative_errors(f_tr, targets)
    nets = []
    for j, a in enumerate(cfg["alphas"]):
        m = C.member_measures(model, init_w, j, f_tr, y, x, f_te, t.y_test, cfg["depth"], clean=clean,
                              keep_margins=cfg["keep_margins"])
        m.pop("train_margins", None)
        nets.append({"alpha": float(a), "test_accuracy": m["test_accuracy"], "train_accuracy": m["train_accuracy"],
                     "clean_train_accuracy": m["clean_train_accuracy"], "clean_margin_median": m["clean_margin_median"],
                     "frobenius_normalized_margin_median": m["frobenius_normalized_margin_median"],
                     "relative_error": rel[j], "final_loss": float(res.final_loss[j]),
                     **({"clean_margins": m["clean_margins"]} if cfg["keep_margins"] else {})})
    return {"nets": nets, "n_train": n, "steps": res.steps, "data": C.data_info(t)}


def _gp(cfg, device) -> dict:
    t = _tasks(cfg)
    n = cfg["n_clean"]
    out = {}
    for which, rows in (("control", slice(0, n)), ("attacked", slice(None))):
        sub = type(t)(t.x_train[rows], t.y_train[rows], t.x_test, t.y_test, t.num_classes, t.info)
        out[which] = C.gp_curve(cfg["depth"], sub, cfg["gp_margins"], constrained=True, device=device)
    return out


def run(cfg: dict, ctx, gp: bool = False) -> dict:
    fns = {w: functools.partial(_train, cfg, w) for w in ("control", "attacked")}
    if gp:
        fns["gp"] = functools.partial(_gp, cfg)
    out = ctx.units(fns)
    if cfg["keep_margins"]:
        allv = np.concatenate([out[w]["nets"][0]["clean_margins"] for w in ("control", "attacked")])
        edges = np.linspace(float(allv.min()), float(allv.max()), cfg["bins"] + 1)
        out["hist_clean_margins"] = {"edges": edges.tolist(),
                                     **{w: C.histogram(out[w]["nets"][0]["clean_margins"], edges)
                                        for w in ("control", "attacked")}}
    return out


def accuracies(results: dict) -> tuple[list[float], list[float], list[float]]:
    alphas = [n["alpha"] for n in results["control"]["nets"]]
    return (alphas, [n["test_accuracy"] for n in results["control"]["nets"]],
            [n["test_accuracy"] for n in results["attacked"]["nets"]])
