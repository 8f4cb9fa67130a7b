"""Figs 4, 8, 9: sampled vs trained twins on a 5-point binary task, against width.

For a binary task (labels +-1) with ``n_train = 5`` training and ``n_test = 50`` test images:

1. **Sampled net.** Draw constrained random networks (the architecture's finite networks,
   ``kernel.network(...)``, with every weight row of every layer centred to mean zero and scaled to
   unit norm: the prior Nero trains in) in batches of stacked members,
   and keep those whose sign classifies all 5 training points correctly; a net that gets all 5
   wrong is kept with its output negated (negating the last layer keeps it constrained).
2. **Trained twin.** A fresh constrained net of the same architecture is trained with Nero (lr
   1e-3 decayed by 0.9 per step, loss ``||f(X) - T||``) to reproduce the sampled net's 5 training
   outputs ``T``, until the relative error ``||f(X) - T|| / ||T||`` is at most ``tol`` (1e-6) or
   ``max_steps`` steps have run.  Twins are trained together as one batched ensemble with
   per-member targets.
3. Both nets are evaluated on the 50 test points; accuracies are averaged over all pairs.

**NNGP prediction** (the horizontal line): the infinite-width limit of step 1.  The network's
outputs on the 5 + 50 points are, at infinite width, jointly Gaussian with the covariance of
the *constrained* kernel (``paper_mlp(depth, constrained=True)`` or ``paper_cnn(...,
constrained=True)``).  Conditioning on "all 5 training signs correct" is not a Gaussian
conditioning, so it is done as the paper does, by rejection: draw ``gp_samples`` joint prior
samples on the 55 points, keep those classifying the 5 training points all correctly, and (by
the prior's symmetry ``f -> -f``) the negation of those classifying all 5 wrongly; the
prediction is the mean test accuracy of the kept samples (its Monte-Carlo standard error is
saved too).  The acceptance rates of the GP and of the finite nets are saved side by side.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from paper_figures import common as C

PAIRS = {"mnist": "pair:0,1", "fashion_mnist": "pair:2,7", "cifar10": "pair:5,8"}
PAIR_NAMES = {"mnist": {"pair:0,1": "0 vs 1", "pair:4,7": "4 vs 7", "pair:3,8": "3 vs 8"},
              "fashion_mnist": {"pair:2,7": "pullover vs sneaker"},
              "cifar10": {"pair:5,8": "dog vs ship"}}


def pair_name(dataset: str, task: str) -> str:
    return PAIR_NAMES.get(dataset, {}).get(task, task)


def _task(cfg, task_name: str, seed: int):
    return C.task(cfg["dataset"], task_name, cfg["n_train"], cfg["n_test"], seed, flatten=cfg["model"] == "mlp")


def _dense_width(cfg, width: int) -> int:
    return int(cfg.get("dense_width") or width)


def _units(cfg, width: int):
    """Widths of the network's hidden layers: ``width`` (MLP), or two ``width``-channel convolutions
    and ``dense_hidden`` dense layers of ``dense_width`` (conv net)."""
    if cfg["model"] == "mlp":
        return width
    return [width, width] + [_dense_width(cfg, width)] * cfg["dense_hidden"]


def _constrained_nets(cfg, width: int, in_shape, k: int, seed: int, device, dtype):
    """``k`` constrained random nets: the architecture's finite networks (``kernel(cfg).network``,
    member ``j`` seeded ``1000 * seed + j``) with every weight row centred and scaled to unit norm."""
    from validation.training.nero import project_

    net = kernel(cfg, constrained=False).network(_units(cfg, width), in_shape=in_shape, parameterization="standard",
                                                 members=k, seed=seed, dtype=dtype, device=device)
    with torch.no_grad():
        for w in net.weights:
            project_(w, batch_dims=1)
    return net


def _draw_seed(seed: int, width: int, batch: int, twin: bool) -> int:
    """The network seed of one batch of draws (independent streams per data seed, width, batch, role)."""
    return int(np.random.SeedSequence([int(seed), int(width), int(batch), int(twin)]).generate_state(1)[0])


def _out(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[..., 0]  # (k, n)


def run_width(cfg: dict, task_name: str, seed: int, width: int, device) -> dict:
    """All pairs at one (task, data seed, width): sampled and trained test accuracies."""
    from validation.training.fullbatch import train

    t = _task(cfg, task_name, seed)
    dt = C.dtype_of(cfg["dtype"])
    in_shape = tuple(t.x_train.shape[1:])
    x_tr = t.x_train.to(device=device, dtype=dt)
    x_te = t.x_test.to(device=device, dtype=dt)
    y_tr = t.y_train.to(device=device, dtype=dt)
    y_te = t.y_test.to(device=device, dtype=dt)
    sampled, trained, rel_err, steps_used = [], [], [], []
    draws, batch = 0, 0
    while len(sampled) < cfg["pairs"] and draws < cfg["max_draws"]:
        k = min(cfg["batch"], cfg["max_draws"] - draws)
        model = _constrained_nets(cfg, width, in_shape, k, _draw_seed(seed, width, batch, False), device, dt)
        f_tr, f_te = _out(model, x_tr), _out(model, x_te)
        draws += k
        s = torch.sign(f_tr)
        right = (s == y_tr).all(dim=1)
        wrong = (s == -y_tr).all(dim=1)
        keep = torch.nonzero(right | wrong).flatten()[: cfg["pairs"] - len(sampled)]
        del model
        batch += 1
        if keep.numel() == 0:
            continue
        flip = torch.where(right[keep], 1.0, -1.0).to(dt)[:, None]
        ft, fe = f_tr[keep] * flip, f_te[keep] * flip
        sampled += ((torch.sign(fe) == y_te).to(torch.float64).mean(1)).tolist()
        # trained twins: fresh constrained nets fitted by Nero to the sampled training outputs
        twin = _constrained_nets(cfg, width, in_shape, keep.numel(), _draw_seed(seed, width, batch - 1, True), device, dt)
        targets = ft[..., None]
        res = train(twin, x_tr, targets, steps=cfg["max_steps"], lr=cfg["lr"], decay=cfg["decay"], optimizer="nero",
                    tol=cfg["tol"])
        g_tr, g_te = _out(twin, x_tr), _out(twin, x_te)
        rel_err += ((g_tr - ft).norm(dim=1) / ft.norm(dim=1)).double().cpu().tolist()
        trained += ((torch.sign(g_te) == y_te).to(torch.float64).mean(1)).tolist()
        steps_used.append(res.steps)
        del twin
    n = len(sampled)
    rel = np.asarray(rel_err)
    return {
        "task": task_name, "seed": int(seed), "width": int(width), "pairs": n, "draws": draws,
        "acceptance_rate": n / draws if draws else None,
        "sampled_test_accuracy": sampled, "trained_test_accuracy": trained, "relative_error": rel_err,
        "sampled_mean": C.mean_sem(sampled)[0] if n else None, "sampled_sem": C.mean_sem(sampled)[1] if n else None,
        "trained_mean": C.mean_sem(trained)[0] if n else None, "trained_sem": C.mean_sem(trained)[1] if n else None,
        "fraction_fitted_to_tol": float(np.mean(rel <= cfg["tol"])) if n else None,
        "max_relative_error": float(rel.max()) if n else None,
        "median_relative_error": float(np.median(rel)) if n else None,
        "steps_per_batch": steps_used, "data": C.data_info(t),
    }


def kernel(cfg, constrained: bool = True):
    """The architecture of the figure: its kernel (Nero-constrained for the NNGP prediction) and,
    unconstrained, the kernel whose ``network`` the sampled and trained nets are."""
    from gpmargin.kernels import paper_cnn, paper_mlp

    if cfg["model"] == "mlp":
        return paper_mlp(cfg["depth"], constrained=constrained)
    return paper_cnn(depth=cfg["dense_hidden"] + 3, constrained=constrained)


def run_gp(cfg: dict, task_name: str, seed: int, device) -> dict:
    """Rejection-sampled NNGP prediction (module docstring) for one (task, data seed)."""
    from gpmargin.linalg import safe_cholesky

    t = _task(cfg, task_name, seed)
    x = torch.cat([t.x_train, t.x_test]).to(device=device, dtype=torch.float64)
    y = torch.cat([t.y_train, t.y_test]).to(device=device, dtype=torch.float64)
    n = t.x_train.shape[0]
    K = kernel(cfg)(x)
    L, jitter = safe_cholesky(K, warn=False, name="prior kernel on train + test points")
    gen = torch.Generator(device=device).manual_seed(7919 * int(seed) + 17)
    accs = []
    drawn = 0
    chunk = 20000
    while drawn < cfg["gp_samples"]:
        s = min(chunk, cfg["gp_samples"] - drawn)
        f = torch.randn(s, x.shape[0], generator=gen, device=device, dtype=torch.float64) @ L.T
        drawn += s
        sg = torch.sign(f[:, :n])
        right = (sg == y[:n]).all(1)
        wrong = (sg == -y[:n]).all(1)
        keep = right | wrong
        flip = torch.where(right, 1.0, -1.0)[keep][:, None]
        accs.append(((torch.sign(f[keep, n:] * flip) == y[n:]).double().mean(1)).cpu())
    a = torch.cat(accs).numpy()
    mean, sem = C.mean_sem(a)
    return {"task": task_name, "seed": int(seed), "samples": drawn, "accepted": int(a.size),
            "acceptance_rate": a.size / drawn, "test_accuracy": mean if a.size else None,
            "test_accuracy_sem": sem if a.size else None, "jitter": float(jitter),
            "kernel": f"{'paper_mlp' if cfg['model'] == 'mlp' else 'paper_cnn'} (constrained=True)"}


def refit_config(cfg: dict) -> dict | None:
    """The config of the refit runs (``cfg["refit"]``: another Nero schedule ``lr``, ``decay``,
    ``max_steps`` for the same sampled nets and the same initial twins), or None."""
    return dict(cfg, **cfg["refit"]) if cfg.get("refit") else None


def run(cfg: dict, ctx) -> dict:
    fns = {}
    refit = refit_config(cfg)
    for task_name in cfg["tasks"]:
        for seed in cfg["data_seeds"]:
            for w in cfg["widths"]:
                fns[f"{task_name}/seed{seed}/width{w}"] = functools.partial(run_width, cfg, task_name, seed, w)
                if refit:
                    fns[f"{task_name}/seed{seed}/width{w}/refit"] = functools.partial(run_width, refit, task_name,
                                                                                      seed, w)
            fns[f"{task_name}/seed{seed}/gp"] = functools.partial(run_gp, cfg, task_name, seed)
    res = ctx.units(fns)
    panels = []
    for task_name in cfg["tasks"]:
        for seed in cfg["data_seeds"]:
            key = f"{task_name}/seed{seed}"
            panels.append({"task": task_name, "seed": seed, "pair": pair_name(cfg["dataset"], task_name),
                           "widths": [res[f"{key}/width{w}"] for w in cfg["widths"]],
                           **({"refit": [res[f"{key}/width{w}/refit"] for w in cfg["widths"]]} if refit else {}),
                           "gp": res[f"{key}/gp"]})
    return {"panels": panels}


def schedule_note(cfg: dict) -> str:
    """``lr x decay^step, up to N steps (sum of the learning rates S)``."""
    total = cfg["lr"] * (1 - cfg["decay"] ** cfg["max_steps"]) / (1 - cfg["decay"]) if cfg["decay"] < 1 else \
        cfg["lr"] * cfg["max_steps"]
    return f"lr {cfg['lr']:g} × {cfg['decay']:g}^step, up to {cfg['max_steps']} steps (Σ lr = {total:.3g})"


def claims(cfg: dict, results: dict) -> dict:
    fitted = [w["fraction_fitted_to_tol"] for p in results["panels"] for w in p["widths"] if w["pairs"]]
    worst = max((w["max_relative_error"] for p in results["panels"] for w in p["widths"] if w["pairs"]), default=None)
    gaps = []
    for p in results["panels"]:
        for w in p["widths"]:
            if w["pairs"] >= 2:
                se = math.hypot(w["sampled_sem"], w["trained_sem"])
                gaps.append((abs(w["sampled_mean"] - w["trained_mean"]), se, p["pair"], p["seed"], w["width"]))
    close = [g for g in gaps if g[0] <= max(3 * g[1], 0.05)]
    found = all(w["pairs"] > 0 for p in results["panels"] for w in p["widths"])
    out = {}
    refit = refit_config(cfg)
    if refit:
        pairs = [(w, r) for p in results["panels"] for w, r in zip(p["widths"], p["refit"]) if w["pairs"]]
        bad = [(w["width"], w["max_relative_error"], r["max_relative_error"]) for w, r in pairs
               if w["fraction_fitted_to_tol"] < 1.0]
        if bad:
            fixed = all(r <= cfg["refit_tol"] for _, _, r in bad)
            detail = "; ".join(f"width {wd}: worst relative error {a:.2e} -> {b:.2e}" for wd, a, b in bad)
            out["unfit_twins_are_a_step_budget"] = C.claim(
                fixed, f"the same sampled nets and initial twins refit with {schedule_note(refit)} instead of "
                       f"{schedule_note(cfg)}: every width where twins missed the tolerance gets within "
                       f"{cfg['refit_tol']:g} ({detail})")
    return {**out,
        "sampled_nets_found": C.claim(found, "every width found at least one net classifying all 5 training points"),
        "twins_fit_targets": C.claim(bool(fitted) and min(fitted) == 1.0,
                                     f"fraction of trained twins within relative error {cfg['tol']:g} of their "
                                     f"targets: min over widths {min(fitted) if fitted else float('nan'):.3f}; "
                                     f"worst relative error {worst if worst is not None else float('nan'):.2e}"),
        "trained_matches_sampled": C.claim(bool(gaps) and len(close) == len(gaps),
                                           f"{len(close)}/{len(gaps)} (panel, width) points with |sampled - trained| "
                                           f"mean test accuracy <= max(3 s.e., 0.05)"),
    }


def plot_panel(ax, cfg: dict, panel: dict, xlabel: str, legend: bool = True) -> None:
    ws = [w for w in panel["widths"] if w["pairs"]]
    x = [w["width"] for w in ws]
    ax.errorbar(x, [w["sampled_mean"] for w in ws], yerr=[w["sampled_sem"] for w in ws], fmt="o-", color="C0",
                capsize=3, label="sampled nets (all 5 train points correct)")
    ax.errorbar(x, [w["trained_mean"] for w in ws], yerr=[w["trained_sem"] for w in ws], fmt="s--", color="C1",
                capsize=3, label="trained twins (Nero, fit sampled outputs)")
    for w in ws:  # say where twins did not all reach the tolerance (their accuracy is then not a fair twin)
        if w["fraction_fitted_to_tol"] < 1.0:
            ax.annotate(f"{w['fraction_fitted_to_tol']:.0%} fitted", (w["width"], w["trained_mean"]),
                        textcoords="offset points", xytext=(0, -16), ha="center", fontsize=7, color="C1")
    refit = [(w, r) for w, r in zip(panel["widths"], panel.get("refit", [])) if w["pairs"]]
    if refit:
        ax.errorbar([w["width"] * 1.04 for w, _ in refit], [r["trained_mean"] for _, r in refit],
                    yerr=[r["trained_sem"] for _, r in refit], fmt="^:", color="C2", capsize=3,
                    label=f"trained twins, {schedule_note(refit_config(cfg))}")
    gp = panel["gp"]
    if gp["test_accuracy"] is not None:
        ax.axhline(gp["test_accuracy"], color="k", lw=1.3, label="NNGP (infinite width), rejection-sampled")
        ax.axhspan(gp["test_accuracy"] - 2 * gp["test_accuracy_sem"], gp["test_accuracy"] + 2 * gp["test_accuracy_sem"],
                   color="k", alpha=0.12)
    ax.axhline(0.5, color="0.5", ls=":", label="chance")
    ax.set_xscale("log")
    if x:
        ax.set_xticks(x, [str(v) for v in x])
        ax.minorticks_off()
        ax.set_xlim(min(x) / 1.4, max(x) * 1.4)
    ax.set_ylim(0.4, 1.02)
    n = min((w["pairs"] for w in ws), default=0)
    C.style(ax, title=f"{panel['pair']}, data seed {panel['seed']} (≥{n} pairs/width)", xlabel=xlabel,
            ylabel="test accuracy (50 points)", legend=legend, fontsize="x-small")
