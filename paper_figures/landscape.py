"""Loss landscapes of the Fig 3 networks: Huang et al.'s "poisoned" vs clean minima.

The attacked network of Fig 3 (clean images plus randomly labelled attack images) and its
control twin (clean images only, same initial weights) fit the clean images with the same
margins but test very differently.  Huang et al. (*Understanding generalization through
visualizations*) found that such poisoned minima lie in much narrower basins.  This figure
probes both networks with :mod:`gpmargin.probes` on the loss ``||f(x)/alpha - onehot(y)||^2`` of
the clean training images (the data both networks fit):

- 1-D slices along the same filter-normalised directions (seeds 0, 1, 2): clean train loss and
  test accuracy;
- linear interpolation control -> attacked (coefficients -0.5 ... 1.5);
- basin radius along ``directions`` random filter-normalised directions (threshold: the loss
  rises by ``basin_rise``).

Each network is trained once per output folder (weights kept in ``DIR/net-<which>-<hash>.pt``),
each probe is a resumable unit.  Settings: Fig 3's, at a smaller width for ``quick``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from paper_figures import common as C

NAME = "landscape"
TITLE = "Loss landscapes of Fig 3's attacked (poisoned) and control networks"
CLAIM = ("The attacked network, with the same clean-image margins as its control, sits in a narrower "
         "basin: smaller basin radius and a faster rise of the clean-image loss along random directions.")

_BASE = dict(dataset="mnist", data_seed=0, net_seed=0, depth=2, lr=0.01, alpha=0.63, dtype="float32",
             slice_coefficients=np.linspace(-1, 1, 21).tolist(), slice_seeds=[0, 1, 2],
             interpolation=np.linspace(-0.5, 1.5, 21).tolist(), basin_rise=0.1, max_radius=2.0)
SCALES = {
    "paper": dict(_BASE, n_clean=500, n_attack=1500, n_test=None, width=2048, steps=30000, decay=0.9999,
                  directions=50),
    "quick": dict(_BASE, n_clean=300, n_attack=600, n_test=2000, width=256, steps=800, decay=0.995, directions=20),
    "smoke": dict(_BASE, n_clean=40, n_attack=120, n_test=200, width=32, steps=60, decay=0.99, directions=3,
                  slice_coefficients=np.linspace(-1, 1, 5).tolist(), slice_seeds=[0],
                  interpolation=np.linspace(-0.5, 1.5, 5).tolist()),
}

config = C.fixed_dataset_config(SCALES, NAME)
WHICH = ("control", "attacked")


def _task(cfg):
    return C.task(cfg["dataset"], "multiclass", cfg["n_clean"], cfg["n_test"], cfg["data_seed"],
                  attack=cfg["n_attack"])


def _train(cfg, which, device) -> list[torch.Tensor]:
    t = _task(cfg)
    n = cfg["n_clean"] if which == "control" else cfg["n_clean"] + cfg["n_attack"]
    targets = C.per_member_targets(t.y_train[:n], [cfg["alpha"]], t.num_classes)
    model, _, _ = C.train_mlp_group(t.x_train[:n], targets, depth=cfg["depth"], width=cfg["width"],
                                    outputs=t.num_classes, seed=cfg["net_seed"], optimizer="nero", lr=cfg["lr"],
                                    decay=cfg["decay"], steps=cfg["steps"], device=device, dtype=cfg["dtype"])
    return [w.detach()[0].cpu().clone() for w in model.weights]


def _network(cfg, which, ctx):
    """The trained network ``which`` as a single MLP (trained once per folder, then loaded)."""
    from gpmargin.io import atomic_path
    from validation.training.models import MLP

    path = ctx.state / f"net-{which}-{ctx.hash}.pt"
    if path.exists():
        weights = torch.load(path)
    else:
        weights = _train(cfg, which, ctx.device)
        with atomic_path(path) as tmp:
            torch.save(weights, tmp)
    t = _task(cfg)
    return MLP(t.x_train.shape[1], cfg["depth"], cfg["width"], t.num_classes, weights=weights,
               dtype=C.dtype_of(cfg["dtype"])).to(ctx.device), t


def _data(cfg, t, device):
    dt = C.dtype_of(cfg["dtype"])
    n = cfg["n_clean"]
    return ((t.x_train[:n].to(device=device, dtype=dt), t.y_train[:n].to(device)),
            (t.x_test.to(device=device, dtype=dt), t.y_test.to(device)))


def _loss(cfg, t):
    from validation.training.losses import ScaledSquareLoss

    return ScaledSquareLoss(cfg["alpha"], t.num_classes)


def _plain(d: dict) -> dict:
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def _slices(cfg, which, ctx) -> dict:
    from gpmargin.probes import evaluate, slice_1d

    model, t = _network(cfg, which, ctx)
    train, test = _data(cfg, t, ctx.device)
    loss = _loss(cfg, t)
    own = {"train": evaluate(model, loss, train), "test": evaluate(model, loss, test)}
    return {"own": own, "slices": [_plain(slice_1d(model, loss, train, coefficients=cfg["slice_coefficients"],
                                                   test=test, seed=s)) for s in cfg["slice_seeds"]]}


def _basin(cfg, which, ctx) -> dict:
    from gpmargin.probes import basin_radius, evaluate

    model, t = _network(cfg, which, ctx)
    train, _ = _data(cfg, t, ctx.device)
    loss = _loss(cfg, t)
    base = evaluate(model, loss, train)["loss"]
    return _plain(basin_radius(model, loss, train, base + cfg["basin_rise"], cfg["directions"],
                               max_radius=cfg["max_radius"], progress=ctx.progress))


def _interpolation(cfg, ctx) -> dict:
    from gpmargin.probes import get_weights, interpolate

    a, t = _network(cfg, "control", ctx)
    b, _ = _network(cfg, "attacked", ctx)
    train, test = _data(cfg, t, ctx.device)
    return _plain(interpolate(a, get_weights(a), get_weights(b), _loss(cfg, t), train, cfg["interpolation"], test))


def run(cfg: dict, ctx) -> dict:
    out = {w: {"slices": ctx.unit(f"slices:{w}", lambda w=w: _slices(cfg, w, ctx)),
               "basin": ctx.unit(f"basin:{w}", lambda w=w: _basin(cfg, w, ctx))} for w in WHICH}
    out["interpolation"] = ctx.unit("interpolation", lambda: _interpolation(cfg, ctx))
    return out


def claims(cfg, results):
    ra, rc = (np.asarray(results[w]["basin"]["radii"], dtype=np.float64) for w in ("attacked", "control"))
    diff = float(np.mean(rc) - np.mean(ra))
    se = float(np.sqrt(np.var(ra, ddof=1) / ra.size + np.var(rc, ddof=1) / rc.size)) if ra.size > 1 else math.inf
    return {"attacked_basin_narrower": C.claim(
        diff > 2 * se, f"mean basin radius attacked {np.mean(ra):.4f} vs control {np.mean(rc):.4f} (difference "
                       f"{diff:.4f}, 2 s.e. {2 * se:.4f}; medians {np.median(ra):.4f} / {np.median(rc):.4f}; loss "
                       f"rise {cfg['basin_rise']}, {ra.size} directions)")}


def _nan(v):
    return np.array([np.nan if x is None else x for x in v], dtype=np.float64)


def plot(cfg, results):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    colors = {"control": "C0", "attacked": "C3"}
    for w in WHICH:
        r = results[w]["slices"]
        acc = r["own"]["test"]["accuracy"]
        for k, s in enumerate(r["slices"]):
            lab = f"{w} (test acc {acc:.2f})" if k == 0 else None
            axes[0].plot(s["coefficients"], _nan(s["train_loss"]), color=colors[w], alpha=0.8, label=lab)
            axes[1].plot(s["coefficients"], _nan(s["test_accuracy"]), color=colors[w], alpha=0.8, label=lab)
    C.style(axes[0], "1-D slices (same filter-normalised directions)", "step along direction (× filter norm)",
            "clean-image train loss ‖f/α − onehot‖²")
    axes[0].set_yscale("log")
    C.style(axes[1], "test accuracy along the same slices", "step along direction (× filter norm)", "test accuracy")
    ip = results["interpolation"]
    axes[2].plot(ip["coefficients"], _nan(ip["train_loss"]), "k-", label="clean-image train loss")
    ax2 = axes[2].twinx()
    ax2.plot(ip["coefficients"], _nan(ip["test_accuracy"]), "C2--", label="test accuracy")
    ax2.set_ylabel("test accuracy", color="C2")
    axes[2].set_yscale("log")
    for c, lab in ((0, "control"), (1, "attacked")):
        axes[2].axvline(c, color=colors[lab], lw=0.8, ls=":")
    C.style(axes[2], f"interpolation control (0) → attacked (1)\n‖θ_a − θ_c‖ = {ip['distance']:.1f}",
            "interpolation coefficient c in (1−c)·θ_control + c·θ_attacked", "clean-image train loss")
    for i, w in enumerate(WHICH):
        b = results[w]["basin"]
        r = np.asarray(b["radii"])
        cens = np.asarray(b["censored"], dtype=bool)
        x = i + np.linspace(-0.15, 0.15, r.size)
        axes[3].scatter(x[~cens], r[~cens], color=colors[w], s=18, label=f"{w}: median {b['radius']:.3f}")
        if cens.any():
            axes[3].scatter(x[cens], r[cens], color=colors[w], marker="^", s=24, label=f"{w}: no crossing (≥ cap)")
        axes[3].hlines(b["radius"], i - 0.25, i + 0.25, color=colors[w])
    axes[3].set_xticks([0, 1], list(WHICH))
    C.style(axes[3], f"basin radius along {cfg['directions']} random directions\n(clean loss rises by "
                     f"{cfg['basin_rise']})", None, "radius (× filter norm)")
    fig.suptitle(f"{TITLE}\nNero + constraints, depth {cfg['depth']}, width {cfg['width']}, α = {cfg['alpha']}, "
                 f"{cfg['n_clean']} clean (+ {cfg['n_attack']} random-label) images, {cfg['steps']} steps "
                 f"{C.scale_note(cfg)}", fontsize=10)
    fig.tight_layout()
    return fig
