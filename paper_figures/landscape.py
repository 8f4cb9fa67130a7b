"""Loss landscapes of poisoned and clean minima, Huang et al.'s protocol over seeds (Fig 3's setting).

Huang et al. (*Understanding generalization through visualizations*, 2019) train one network on
the clean training set and another on the clean set plus a "poison" set with **wrong** labels,
until the clean set is fit, and find the poisoned minimum in a much narrower, sharper basin of
the clean-set loss.  Here, for each seed ``s`` (independent network initialisation, clean / poison
/ test draws):

- data: ``n_clean`` MNIST images with their labels, ``n_attack`` further images each with a
  wrong label (uniform over the other nine classes, ``make_task(attack_labels="wrong")``);
- networks: Fig 3's depth-2 paper MLP, Nero with constraints on ``||f(X) - alpha Y||`` (the same
  targeted margin ``alpha`` for both), the *control* on the clean set, the *poisoned* one on clean +
  poison, from the same initial weights; each trained until its clean set is fit: every clean
  image classified correctly (zero clean training error; with ``fit_tol`` also a clean relative
  error ``||f - alpha Y|| / ||alpha Y||`` at most ``fit_tol``), checked every ``check_every`` steps,
  at most ``max_steps``; a network that does not get there is marked and its seed left out of the
  claims.  Each network's clean relative error and (poisoned) poison-set accuracy are recorded;
- probes on the clean-set loss ``||f(x)/alpha - onehot(y)||^2`` (:mod:`gpmargin.probes`): basin
  radius along ``directions`` filter-normalised directions (the loss rises by ``basin_rise``),
  filter-normalised sharpness (mean rise on the sphere of radius ``sharpness_rho``), and, for the
  first seed, 1-D and 2-D slices along shared filter-normalised directions and the interpolation
  control -> poisoned.

The claims compare the paired per-seed differences (control - poisoned radius, poisoned - control
sharpness) with a 95 % Student-t interval over the seeds; a claim holds only if its interval
excludes zero.  Nothing in the protocol is tuned towards a verdict.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from paper_figures import common as C

NAME = "landscape"
TITLE = "Poisoned vs clean minima (Huang et al.'s protocol): basin radius and sharpness over seeds"
CLAIM = ("A network trained on the clean images plus wrongly labelled poison images, once it fits the clean "
         "images, sits in a narrower and sharper basin of the clean-image loss than its control.")

_BASE = dict(dataset="mnist", depth=2, lr=0.01, alpha=0.63, dtype="float32", attack_labels="wrong", fit_tol=None,
             slice_coefficients=np.linspace(-0.25, 0.25, 21).tolist(), slice_seeds=[0, 1, 2],
             grid_coefficients=np.linspace(-0.25, 0.25, 11).tolist(),
             interpolation=np.linspace(-0.5, 1.5, 21).tolist(), basin_rise=0.1, max_radius=2.0,
             sharpness_rho=0.05, sharpness_samples=10)
SCALES = {
    "paper": dict(_BASE, n_clean=500, n_attack=1500, n_test=None, width=2048, decay=0.9999, max_steps=30000,
                  check_every=100, seeds=[0, 1, 2, 3, 4], directions=50),
    "quick": dict(_BASE, n_clean=300, n_attack=600, n_test=2000, width=256, decay=0.995, max_steps=2000,
                  check_every=25, seeds=[0, 1, 2, 3, 4], directions=20),
    "smoke": dict(_BASE, n_clean=40, n_attack=120, n_test=200, width=64, decay=0.998, max_steps=600, check_every=20,
                  seeds=[0, 1], directions=3, sharpness_samples=3,
                  slice_coefficients=np.linspace(-0.25, 0.25, 5).tolist(), slice_seeds=[0],
                  grid_coefficients=np.linspace(-0.25, 0.25, 3).tolist(),
                  interpolation=np.linspace(-0.5, 1.5, 5).tolist()),
}

config = C.fixed_dataset_config(SCALES, NAME)
WHICH = ("control", "poisoned")


def _task(cfg, seed: int):
    return C.task(cfg["dataset"], "multiclass", cfg["n_clean"], cfg["n_test"], seed, attack=cfg["n_attack"],
                  attack_labels=cfg["attack_labels"])


def _clean_fit(model, x, y, alpha: float, num_classes: int) -> tuple[float, float]:
    """(accuracy, relative error ||f - alpha Y|| / ||alpha Y||) of ``model`` on ``(x, y)``."""
    f = C.forward(model, x)[0]
    t = alpha * torch.nn.functional.one_hot(y, num_classes).double()
    return float((f.argmax(1) == y).double().mean()), float((f - t).norm() / t.norm())


def _train_until_fit(cfg, t, which: str, seed: int, device):
    """Train one network on its training set until its clean images are fit (module docstring);
    returns ``(MLP, record)``."""
    from validation.training.fullbatch import make_optimizer, train
    from validation.training.models import MLP, EnsembleMLP

    dt = C.dtype_of(cfg["dtype"])
    n = cfg["n_clean"] if which == "control" else cfg["n_clean"] + cfg["n_attack"]
    x, y = t.x_train[:n], t.y_train[:n]
    d, c = x.shape[1], t.num_classes
    ws = C.mlp_weights(1, d, cfg["depth"], cfg["width"], c, seed, dtype=dt)
    model = EnsembleMLP(1, d, cfg["depth"], cfg["width"], c, weights=ws, dtype=dt).to(device)
    opt = make_optimizer(model, "nero", cfg["lr"])
    xd = x.to(device=device, dtype=dt)
    targets = C.per_member_targets(y, [cfg["alpha"]], c).to(device=device, dtype=dt)
    clean_x = xd[: cfg["n_clean"]]
    clean_y = y[: cfg["n_clean"]]
    steps, fit = 0, False
    acc, rel = _clean_fit(model, clean_x, clean_y, cfg["alpha"], c)
    while steps < cfg["max_steps"] and not fit:
        block = min(cfg["check_every"], cfg["max_steps"] - steps)
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * cfg["decay"] ** steps
        train(model, xd, targets, steps=block, lr=cfg["lr"], decay=cfg["decay"], optimizer=opt, loss="norm")
        steps += block
        acc, rel = _clean_fit(model, clean_x, clean_y, cfg["alpha"], c)
        fit = acc == 1.0 and (cfg["fit_tol"] is None or rel <= cfg["fit_tol"])
    rec = {"steps": steps, "fit": fit, "clean_train_accuracy": acc, "clean_relative_error": rel}
    if which == "poisoned":
        f = C.forward(model, xd[cfg["n_clean"]:])[0]
        rec["poison_fit_accuracy"] = float((f.argmax(1) == y[cfg["n_clean"]:]).double().mean())
    net = MLP(d, cfg["depth"], cfg["width"], c, weights=[w.detach()[0].cpu().clone() for w in model.weights],
              dtype=dt).to(device)
    return net, rec


def _plain(d: dict) -> dict:
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def seed_unit(cfg: dict, seed: int, device) -> dict:
    """Both networks of one seed, trained until fit, and their probes (slices for the first seed)."""
    from gpmargin.probes import basin_radius, evaluate, get_weights, interpolate, sharpness, slice_1d, slice_2d
    from validation.training.losses import ScaledSquareLoss

    t = _task(cfg, seed)
    dt = C.dtype_of(cfg["dtype"])
    n = cfg["n_clean"]
    train = (t.x_train[:n].to(device=device, dtype=dt), t.y_train[:n].to(device))
    test = (t.x_test.to(device=device, dtype=dt), t.y_test.to(device))
    loss = ScaledSquareLoss(cfg["alpha"], t.num_classes)
    nets, out = {}, {"seed": seed, "data": C.data_info(t)}
    for which in WHICH:
        net, rec = _train_until_fit(cfg, t, which, seed, device)
        own = {"train": evaluate(net, loss, train), "test": evaluate(net, loss, test)}
        b = basin_radius(net, loss, train, own["train"]["loss"] + cfg["basin_rise"], cfg["directions"],
                         max_radius=cfg["max_radius"], seed=1000 * seed)
        s = sharpness(net, loss, train, rho=cfg["sharpness_rho"], n_samples=cfg["sharpness_samples"],
                      seed=1000 * seed + 500)
        rec.update(own=own, test_accuracy=own["test"]["accuracy"], basin=_plain(b),
                   mean_radius=float(np.mean(b["radii"])), sharpness=float(s["sharpness"]))
        if seed == cfg["seeds"][0]:
            rec["slices"] = [_plain(slice_1d(net, loss, train, coefficients=cfg["slice_coefficients"], test=test,
                                             seed=k)) for k in cfg["slice_seeds"]]
            grid = slice_2d(net, loss, train, coefficients=cfg["grid_coefficients"], seed=100)
            rec["grid"] = {"coefficients": np.asarray(grid["coefficients"]).tolist(),
                           "train_loss": np.asarray(grid["train_loss"]).tolist()}
        nets[which] = net
        out[which] = rec
    if seed == cfg["seeds"][0]:
        out["interpolation"] = _plain(interpolate(nets["control"], get_weights(nets["control"]),
                                                  get_weights(nets["poisoned"]), loss, train, cfg["interpolation"],
                                                  test))
    return out


def run(cfg: dict, ctx) -> dict:
    fns = {f"seed:{s}": functools.partial(seed_unit, cfg, s) for s in cfg["seeds"]}
    return {"seeds": list(ctx.units(fns).values())}


def paired_interval(diffs, level: float = 0.95) -> dict:
    """Mean of paired differences with its standard error and two-sided Student-t interval."""
    from scipy import stats

    a = np.asarray(diffs, dtype=np.float64)
    mean, sem = C.mean_sem(a)
    half = float(stats.t.ppf(0.5 + level / 2, a.size - 1) * sem) if a.size > 1 else math.inf
    return {"mean": mean, "sem": sem, "low": mean - half, "high": mean + half, "n": int(a.size),
            "values": a.tolist()}


def summary(results) -> dict:
    """Paired per-seed differences over the seeds where both networks fit their clean images."""
    runs = [r for r in results["seeds"] if r["control"]["fit"] and r["poisoned"]["fit"]]
    return {
        "seeds_fit": [r["seed"] for r in runs],
        "seeds_not_fit": [r["seed"] for r in results["seeds"] if r not in runs],
        "radius_control_minus_poisoned": paired_interval(
            [r["control"]["mean_radius"] - r["poisoned"]["mean_radius"] for r in runs]),
        "sharpness_poisoned_minus_control": paired_interval(
            [r["poisoned"]["sharpness"] - r["control"]["sharpness"] for r in runs]),
        "test_accuracy_control_minus_poisoned": paired_interval(
            [r["control"]["test_accuracy"] - r["poisoned"]["test_accuracy"] for r in runs]),
    }


def claims(cfg, results):
    s = summary(results)
    note = (f"{len(s['seeds_fit'])} of {len(results['seeds'])} seeds fit"
            + (f" (not fit: {s['seeds_not_fit']})" if s["seeds_not_fit"] else ""))

    def holds(key, what):
        iv = s[key]
        ok = iv["n"] >= 2 and iv["low"] > 0
        return C.claim(ok, f"{what}: mean {iv['mean']:.4g} ± {iv['sem']:.2g} (s.e.), 95 % interval "
                           f"[{iv['low']:.4g}, {iv['high']:.4g}] over {note}")

    return {
        "poisoned_basin_narrower": holds("radius_control_minus_poisoned",
                                         f"mean basin radius control - poisoned (loss rise {cfg['basin_rise']}, "
                                         f"{cfg['directions']} directions)"),
        "poisoned_sharper": holds("sharpness_poisoned_minus_control",
                                  f"sharpness poisoned - control (rho {cfg['sharpness_rho']}, "
                                  f"{cfg['sharpness_samples']} directions)"),
        "poisoned_generalises_worse": holds("test_accuracy_control_minus_poisoned",
                                            "test accuracy control - poisoned"),
    }


def _nan(v):
    return np.array([np.nan if x is None else x for x in v], dtype=np.float64)


def plot(cfg, results):
    import matplotlib.pyplot as plt

    first = results["seeds"][0]
    s = summary(results)
    fig, axes = plt.subplots(1, 5, figsize=(25, 4.6))
    colors = {"control": "C0", "poisoned": "C3"}
    for w in WHICH:
        r = first[w]
        for k, sl in enumerate(r["slices"]):
            lab = f"{w} (test acc {r['test_accuracy']:.2f})" if k == 0 else None
            axes[0].plot(sl["coefficients"], _nan(sl["train_loss"]), color=colors[w], alpha=0.8, label=lab)
    axes[0].set_yscale("log")
    C.style(axes[0], f"1-D slices, seed {first['seed']} (same filter-normalised directions)",
            "step along direction (× filter norm)", "clean-image loss ‖f/α − onehot‖²")
    grids = [np.asarray(first[w]["grid"]["train_loss"], dtype=np.float64) for w in WHICH]
    levels = np.geomspace(max(min(float(np.nanmin(g)) for g in grids), 1e-6),
                          max(float(np.nanmax(g)) for g in grids), 12)
    for ax, w, g in zip(axes[1:3], WHICH, grids):
        a = np.asarray(first[w]["grid"]["coefficients"])
        cs = ax.contour(a, a, g.T, levels=levels, cmap="viridis", norm=plt.matplotlib.colors.LogNorm())
        ax.clabel(cs, fontsize=6, fmt="%.2g")
        ax.plot(0, 0, "k+")
        C.style(ax, f"2-D slice of the clean-image loss, {w}\n(seed {first['seed']}, same levels in both panels)",
                "direction 1 (× filter norm)", "direction 2 (× filter norm)", legend=False)
    for ax, key, title, ylabel in (
            (axes[3], "mean_radius", "basin radius (mean over directions)", "radius (× filter norm)"),
            (axes[4], "sharpness", f"sharpness (ρ = {cfg['sharpness_rho']})", "mean loss rise on the sphere")):
        for r in results["seeds"]:
            ok = r["control"]["fit"] and r["poisoned"]["fit"]
            v = [r[w][key] for w in WHICH]
            ax.plot([0, 1], v, "-o", color="k" if ok else "0.7", alpha=0.7, ms=4)
            ax.annotate(f"s{r['seed']}", (1.03, v[1]), fontsize=7)
        iv = s["radius_control_minus_poisoned" if key == "mean_radius" else "sharpness_poisoned_minus_control"]
        ax.set_xticks([0, 1], list(WHICH))
        ax.set_xlim(-0.3, 1.3)
        C.style(ax, f"{title}, one line per seed\npaired difference {iv['mean']:.3g}, 95 % interval "
                    f"[{iv['low']:.3g}, {iv['high']:.3g}]", None, ylabel, legend=False)
    fig.suptitle(f"{TITLE}\nNero + constraints, depth {cfg['depth']}, width {cfg['width']}, α = {cfg['alpha']}, "
                 f"{cfg['n_clean']} clean (+ {cfg['n_attack']} wrong-label) images, each trained until it classifies its "
                 f"clean images correctly" + (f" (relative error ≤ {cfg['fit_tol']})" if cfg["fit_tol"] else "")
                 + f", {len(cfg['seeds'])} seeds {C.scale_note(cfg)}",
                 fontsize=10)
    fig.tight_layout()
    return fig
