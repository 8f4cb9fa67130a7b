"""``gpmargin validate minnorm``: Minnorm networks beside Nero and SGD on the fig6 data.

Do networks that reach a margin by *minimising their norms* (Minnorm, Bansal et al. 2018)
fall on the same accuracy-vs-normalized-margin curve as networks whose norms are *fixed*
(Nero with constraints, the paper's control)?  MNIST parity (fig6's split), the depth-5 paper
MLP, one unit per (arm, margin, seed), each a batched ensemble of ``members`` networks
trained full-batch to the margin targets ``alpha Y``:

``minnorm``    :class:`~validation.training.minnorm.Minnorm` (``y f(x) >= alpha``, squared norms, Adam
               underneath; settings :data:`validation.training.fullbatch.MINNORM_DEFAULTS`, weight step
               ``minnorm_lr``, multiplier step ``multiplier_lr``, norm weight ``norm_weight``);
``nero``       Nero with constraints on ``||f(X) - alpha Y||`` (fig6's training);
``sgd-early``  plain SGD (step ``sgd_lr``) on the same loss ``||f(X) - alpha Y||`` from a Gaussian
               init, stopped early: once every network's relative error
               ``||f(X) - alpha Y|| / ||alpha Y||`` is at most ``early_tol``;
``sgd-wd``     the same SGD run for all steps with L2 weight decay ``weight_decay``.

Every network is measured as in fig6 (:func:`validation.training.ensemble.margin_record`, same records).
The NNGP prediction for a network is taken at the margin ``alpha`` at which a Nero network
(row norms 1, so ``prod_l ||W_l||_F = width^((L-1)/2)``) has the same Frobenius-normalized
margin:  ``alpha_gp = gamma / prod_l ||W_l||_F * width^((L-1)/2)`` (``gamma`` the minimum
training margin), computed with :func:`validation.theory.predictors.predicted_accuracy`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from gpmargin.errors import GpmarginError
from gpmargin.io import atomic_savefig, atomic_write_json, atomic_write_text, run_metadata
from validation.harness.experiment import POSITIVE, logspace
from validation.harness.fields import choice, listed, number
from validation.harness.folders import output_path
from validation.harness.margin_sweep import MarginSweep
from validation.theory.predictors import predicted_accuracy
from validation.training.ensemble import margin_record

ARMS = ("minnorm", "nero", "sgd-early", "sgd-wd")
#: a Minnorm net counts as a minimum-norm solution when every KKT residual (primal feasibility,
#: multiplier sign, complementary slackness, stationarity; scale-free, see
#: ``Minnorm.kkt_residuals``) is at most this; float32 training bounds them below by ~1e-6
KKT_TOL = 1e-2


@dataclasses.dataclass(frozen=True)
class MinnormComparison(MarginSweep):
    """fig6's fields (``lr``/``decay``/``steps`` are Nero's) plus the other arms' settings."""

    name: ClassVar[str] = "minnorm"
    summary: ClassVar[str] = ("Minnorm vs Nero vs SGD with early stopping / weight decay: accuracy against "
                              "normalized margins, with the NNGP at each net's margin")

    arms: tuple[str, ...] = ARMS
    arm: str = ""  # set on the per-arm copy a unit trains with (empty in the experiment's config)
    minnorm_lr: float = 1e-3
    multiplier_lr: float = 0.01
    norm_weight: float = 0.1
    sgd_lr: float = 0.001
    early_tol: float = 0.5
    weight_decay: float = 0.1

    FIELDS: ClassVar[dict] = {
        **MarginSweep.FIELDS, "arms": listed(choice(*ARMS), distinct=True), "minnorm_lr": POSITIVE,
        "multiplier_lr": POSITIVE, "norm_weight": POSITIVE, "sgd_lr": POSITIVE, "early_tol": POSITIVE,
        "weight_decay": number(0)}

    def units(self) -> list[dict[str, Any]]:
        return [{"arm": a, "margin_index": i, "margin": float(m), "seed": int(s)}
                for s in self.seeds for a in self.arms for i, m in enumerate(self.margins)]

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        return (unit["arm"],) + super().unit_key(unit)

    def run_unit(self, task, unit: dict[str, Any], device) -> dict[str, Any]:
        """One (arm, margin, seed): the arm's ensemble trained and measured by ``margin_record``."""
        rec = margin_record(self.arm_config(unit["arm"]), task, unit["margin"], unit["seed"], device)
        for m in rec["members"]:  # a diverged SGD net (non-finite outputs) is recorded as such, not as NaN
            m["diverged"] = not math.isfinite(m["relative_error"])
        return _finite(rec)

    def report(self, out, records, task=None, device=None, verbose: bool = True) -> dict[str, Any]:
        return compare_minnorm(self, out, records, task=task, device=device, verbose=verbose)

    @classmethod
    def settings(cls, scale: str) -> dict[str, Any]:
        """fig6's data, depth and Nero schedule.  ``paper``: fig6's width 2048 and 20 margins, 8
        networks per unit, 3 seeds; ``quick``: width 32, 3 of fig6's margins (0.0215, 0.464, 10),
        500 steps, 2 networks per unit; ``smoke``: tests."""
        common = dict(dataset="mnist", task="parity", depth=5, optimizer="nero", loss="norm", lr=0.01, decay=0.99,
                      ensembles=(1,))
        if scale == "paper":
            return dict(n_train=1000, n_test=9000, width=2048, steps=500, margins=logspace(-3, 1, 20),
                        seeds=(0, 1, 2), members=8, **common)
        if scale == "quick":
            return dict(n_train=1000, n_test=9000, width=32, steps=500, margins=logspace(-3, 1, 7)[2::2],
                        seeds=(0,), members=2, **common)
        common.update(depth=3)
        return dict(n_train=200, n_test=1000, width=32, steps=60, margins=(0.1, 3.0), seeds=(0,), members=2,
                    **common)

    def arm_config(self, arm: str) -> "MinnormComparison":
        """The config one arm trains with (``optimizer``, ``lr``, ``loss``, ``steps``, ``tol``)."""
        if arm == "nero":
            return dataclasses.replace(self, arm=arm)
        if arm == "minnorm":
            return dataclasses.replace(self, arm=arm, optimizer="minnorm", lr=self.minnorm_lr, decay=1.0)
        if arm == "sgd-early":
            return dataclasses.replace(self, arm=arm, optimizer="sgd", lr=self.sgd_lr, decay=1.0, tol=self.early_tol)
        if arm == "sgd-wd":
            return dataclasses.replace(self, arm=arm, optimizer="sgd", lr=self.sgd_lr, decay=1.0)
        raise GpmarginError(f"unknown arm {arm!r}: use one of {', '.join(ARMS)}")

    def lr_key(self) -> str:
        return {"minnorm": "minnorm_lr", "sgd-early": "sgd_lr", "sgd-wd": "sgd_lr"}.get(self.arm, "lr")

    def optimizer_kwargs(self) -> dict[str, Any]:
        if self.arm == "minnorm":
            return {"multiplier_lr": self.multiplier_lr, "norm_weight": self.norm_weight}
        if self.arm == "sgd-wd":
            return {"weight_decay": self.weight_decay}
        return {}



EXPERIMENT = MinnormComparison


def _finite(v):
    """``v`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


# ----------------------------------------------------------------------------- comparison
def nero_norm_product(config) -> float:
    """``prod_l ||W_l||_F`` of a Nero-constrained MLP (unit rows): ``width^((L-1)/2)`` (one output)."""
    return float(config.width) ** ((config.depth - 1) / 2)


def kkt_columns(arm: str, member: dict) -> dict[str, Any]:
    """``kkt_residual`` (the largest of a Minnorm net's KKT residuals, None when not recorded) and
    ``kkt_reached`` (at most :data:`KKT_TOL`; None for the other arms)."""
    if arm != "minnorm":
        return {"kkt_residual": None, "kkt_reached": None}
    res = member.get("kkt_residuals")
    worst = None if res is None else max(res.values())
    return {"kkt_residual": worst, "kkt_reached": worst is not None and worst <= KKT_TOL}


def network_rows(config: MinnormComparison, records: list[dict]) -> list[dict[str, Any]]:
    """One row per trained network: arm, margin, seed, member, accuracies and normalized margins."""
    rows = []
    for r in records:
        for m in r["members"]:
            if m.get("diverged") or m.get("frobenius_normalized_margin") is None:
                rows.append({"arm": r["arm"], "margin": r["margin"], "seed": r["seed"], "member": m["member"],
                             "test_accuracy": m.get("test_accuracy"), "diverged": True,
                             "frobenius_normalized_margin": None, "spectrally_normalized_margin": None})
                continue
            rows.append({"arm": r["arm"], "margin": r["margin"], "seed": r["seed"], "member": m["member"],
                         "test_accuracy": m["test_accuracy"], "train_accuracy": m["train_accuracy"],
                         "min_train_margin": m["train_margin"]["min"],
                         "frobenius_normalized_margin": m["frobenius_normalized_margin"],
                         "spectrally_normalized_margin": m.get("spectrally_normalized_margin_init_ref"),
                         "frobenius_norm_product": float(np.prod(m["frobenius_norms"])),
                         "support_vectors": (m.get("support_vectors") or {}).get("count"),
                         **kkt_columns(r["arm"], m)})
    return rows


def compare_minnorm(config: MinnormComparison, out, records: list[dict], task=None, device=None,
                    verbose: bool = True) -> dict[str, Any]:
    """``<experiment>-comparison.{csv,json,png}`` and ``<experiment>-support_vectors.png`` in ``out``."""
    files = {ext: str(output_path(config, out, f"comparison.{ext}")) for ext in ("csv", "png", "json")}
    files["support_vectors"] = str(output_path(config, out, "support_vectors.png"))
    if task is None:
        task = config.load_task()
    rows = network_rows(config, records)
    scale = nero_norm_product(config)
    fit = [r for r in rows if (r["frobenius_normalized_margin"] or 0) > 0]
    alphas = [r["frobenius_normalized_margin"] * scale for r in fit]
    lo, hi = min(alphas + list(config.margins)), max(alphas + list(config.margins))
    grid = list(np.logspace(np.log10(lo), np.log10(hi), 40))
    base = dataclasses.replace(config, ensembles=(1,))
    pred = predicted_accuracy(base, task, device, margins=grid)  # the curve: the mean over the seeds' splits
    for seed in config.seeds:  # each net against the prediction on its own seed's split
        mine = [r for r in fit if r["seed"] == seed]
        if not mine:
            continue
        at = predicted_accuracy(dataclasses.replace(base, seeds=(seed,)), task, device,
                                margins=[r["frobenius_normalized_margin"] * scale for r in mine])
        for col, acc in at.items():
            for r, a in zip(mine, acc[0]):
                r[col] = float(a)
    for r in fit:
        r["gp_margin_alpha"] = r["frobenius_normalized_margin"] * scale
    curve = {"alpha": grid, **{c: a[0].tolist() for c, a in pred.items()}}
    summary_arms = {}
    for arm in config.arms:
        ra = [r for r in rows if r["arm"] == arm]
        # a Minnorm net that did not reach its KKT point is not a minimum-norm solution: marked, not counted
        fa = [r for r in ra if "gp_accuracy" in r and r.get("kkt_reached") is not False]
        summary_arms[arm] = {
            "networks": len(ra), "with_positive_margin": len([r for r in ra if "gp_accuracy" in r]),
            "kkt_not_reached": sum(1 for r in ra if r.get("kkt_reached") is False) if arm == "minnorm" else None,
            "compared": len(fa),
            "diverged": sum(1 for r in ra if r.get("diverged")),
            "mean_test_accuracy": float(np.mean([r["test_accuracy"] for r in ra if r["test_accuracy"] is not None]))
            if ra else None,
            "mean_abs_gap_nn_minus_gp": float(np.mean([abs(r["test_accuracy"] - r["gp_accuracy"]) for r in fa]))
            if fa else None,
            "mean_signed_gap_nn_minus_gp": float(np.mean([r["test_accuracy"] - r["gp_accuracy"] for r in fa]))
            if fa else None,
            "median_frobenius_normalized_margin": float(np.median([r["frobenius_normalized_margin"] for r in fa]))
            if fa else None,
            "median_spectrally_normalized_margin": float(np.median([r["spectrally_normalized_margin"] for r in fa
                                                                    if r["spectrally_normalized_margin"]]))
            if fa else None}
    cols = ["arm", "margin", "seed", "member", "test_accuracy", "train_accuracy", "min_train_margin",
            "frobenius_normalized_margin", "spectrally_normalized_margin", "frobenius_norm_product",
            "gp_margin_alpha", "gp_accuracy", "gp_constrained_accuracy", "support_vectors", "kkt_residual",
            "kkt_reached", "diverged"]
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else str(r.get(c)) for c in cols) for r in rows]
    atomic_write_text(files["csv"], "\n".join(lines) + "\n")
    _plot(config, rows, curve, scale, summary_arms, files["png"])
    sv = _plot_support(config, records, task, files["support_vectors"])
    summary = {"experiment": config.name, "scale": config.scale, "overrides": config.overrides(),
               "config_hash": config.config_hash(), "arms": summary_arms, "nero_norm_product": scale,
               "gp_curve": curve, "networks": rows, "support_vectors": sv, "units": len(records), "files": files,
               "metadata": run_metadata(device, data_info=getattr(task, "info", None))}
    atomic_write_json(files["json"], summary)
    if verbose:
        for arm, s in summary_arms.items():
            g = s["mean_abs_gap_nn_minus_gp"]
            print(f"{arm:>9}: test acc {s['mean_test_accuracy']:.3f}, mean |nn - gp| "
                  f"{'n/a' if g is None else f'{g:.3f}'} over {s['compared']}/{s['networks']} nets"
                  + (f" ({s['kkt_not_reached']} Minnorm nets not at a KKT point, residual > {KKT_TOL:g})"
                     if s["kkt_not_reached"] else ""))
    return summary


ARM_STYLE = {"minnorm": ("C3", "o"), "nero": ("k", "s"), "sgd-early": ("C0", "^"), "sgd-wd": ("C2", "v")}


def _plot(config, rows, curve, scale, summary_arms, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "frobenius_normalized_margin", "Frobenius-normalized margin  γ / Π‖W_l‖_F"),
                           (axes[1], "spectrally_normalized_margin",
                            "spectrally-normalized margin  γ / (R_A ‖X‖_F / n)")):
        if key == "frobenius_normalized_margin":
            ax.plot(np.asarray(curve["alpha"]) / scale, curve["gp_accuracy"], "-", color="0.6", lw=1,
                    label="NNGP at α = margin × Nero's Π‖W_l‖_F")
        for arm in config.arms:
            ra = [r for r in rows if r["arm"] == arm and "gp_accuracy" in r and r[key]]
            off = [r for r in ra if r.get("kkt_reached") is False]
            if off:  # Minnorm nets away from their KKT point: drawn apart, not as Minnorm solutions
                ax.scatter([r[key] for r in off], [r["test_accuracy"] for r in off], color="0.55", marker="x", s=24,
                           label=f"minnorm nets not at a KKT point (residual > {KKT_TOL:g})")
            ra = [r for r in ra if r.get("kkt_reached") is not False]
            if not ra:
                continue
            color, marker = ARM_STYLE[arm]
            x = [r[key] for r in ra]
            gap = summary_arms[arm]["mean_abs_gap_nn_minus_gp"]
            what = "nets at a KKT point" if arm == "minnorm" else "nets"
            ax.scatter(x, [r["test_accuracy"] for r in ra], color=color, marker=marker, s=28,
                       label=f"{arm} {what} (mean |nn−gp| {gap:.3f})")
            ax.scatter(x, [r["gp_accuracy"] for r in ra], facecolors="none", edgecolors=color, marker=marker, s=60,
                       lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7, loc="lower right", title="filled: trained net; open: NNGP at its margin",
                   title_fontsize=7)
    dropped = sum(1 for r in rows if "gp_accuracy" not in r)  # non-positive margin or diverged
    fig.suptitle(f"minnorm ({config.scale}): {config.dataset} {config.task}, n_train={config.n_train}, depth "
                 f"{config.depth}, width {config.width}, {config.members} nets × {len(config.margins)} margins per arm"
                 + (f"; {dropped} nets with a non-positive margin (or diverged) not drawn" if dropped else ""), fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def _plot_support(config, records, task, path) -> dict[str, Any] | None:
    """The (up to 16) training images with the largest multipliers of the Minnorm net that has the
    most support vectors."""
    nets = [(r, m) for r in records if r["arm"] == "minnorm" for m in r["members"] if m.get("support_vectors")]
    if not nets:
        return None
    r, m = max(nets, key=lambda rm: (rm[1]["support_vectors"]["count"], rm[0]["margin"]))
    sv = m["support_vectors"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = sv["top_indices"][:16]
    x = np.asarray(task.x_train)
    side = int(round(math.sqrt(x.shape[1])))
    fig, axes = plt.subplots(2, 8, figsize=(10, 4))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, lam in zip(axes.flat, idx, sv["top_multipliers"]):
        ax.imshow(x[i].reshape(side, side), cmap="gray")
        ax.set_title(f"#{i} y={int(np.asarray(task.y_train)[i]):+d}\nλ={lam:.2g}", fontsize=7)
    fig.suptitle(f"Minnorm support vectors (largest multipliers first) of net {m['member']} at α={r['margin']:.3g}: "
                 f"{sv['count']} of {config.n_train} training images have λ > 0", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
    return {"margin": r["margin"], "seed": r["seed"], "member": m["member"], **sv}
