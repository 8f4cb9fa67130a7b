"""``gpmargin validate large_batch``: the large-batch generalization gap and its remedies.

Hoffer, Hubara & Soudry (2017), *Train longer, generalize better*: Fashion-MNIST with the
paper's F1 network (an MLP of five 512-unit layers, each ``Linear -> BatchNorm -> ReLU``, then
a linear layer to the 10 classes), trained by SGD with momentum on the cross-entropy.  One
unit per (arm, seed), one network each:

``small``     batch ``B`` (``batch_size``), learning rate ``lr``, ``epochs`` epochs;
``large``     batch ``B_L = large_batch_size`` (>= 16 B), everything else as ``small``;
``+sqrt``     ... with ``lr * sqrt(B_L / B)`` (:func:`validation.training.schedules.sqrt_lr`);
``+ghost``    ... and ghost batch norm over chunks of ``ghost_batch_size`` (:mod:`validation.training.ghost_bn`);
``+regime``   ... and ``B_L / B`` times the epochs and lr milestones (:func:`validation.training.schedules.regime_adaptation`).

Each network records fig6's measures (:func:`gpmargin.measures.network_measures` on its
linear layers' weights; batch norm is not part of the norm products) and its distance from
initialisation ``||w_t - w_0||`` at log-spaced iterations, fitted by a log and a power law
(:func:`validation.training.distance.fit_distance`).  Optional gradient-norm clipping (``clip``).

The report (``large_batch-comparison.{csv,png,json}``): one row per arm (means over seeds) with
batch, lr, epochs, updates, test and train accuracy, the generalization gap ``train - test``, the
large-batch gap ``test(small) - test(arm)``, the share of the ``large`` arm's gap the arm closes
and the distance-from-init fit; the figure shows (a) accuracy per arm, (b) the two gaps, (c)
``||w_t - w_0||`` against ``log t`` per arm.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from gpmargin.errors import GpmarginError
from gpmargin.io import atomic_savefig, atomic_write_json, atomic_write_text, run_metadata
from validation.harness.experiment import DATA_FIELDS, POSITIVE, Experiment
from validation.harness.fields import choice, integer, listed, number, optional
from validation.harness.folders import output_path
from validation.training.distance import distance, fit_distance
from validation.training.ghost_bn import check_ghost_batch
from validation.training.minibatch import train_minibatch
from validation.training.models import as_tensor, f1_network, forward_chunked, linear_weights
from validation.training.schedules import regime_adaptation, sqrt_lr, step_lr

ARMS = ("small", "large", "large+sqrt", "large+sqrt+ghost", "large+sqrt+ghost+regime")


@dataclasses.dataclass(frozen=True)
class LargeBatch(Experiment):
    """The data fields, the F1 net (``width``-unit layers, ``depth`` = hidden layers + 1), ``lr``
    the small batch's learning rate, the arms and seeds, and the batch settings."""

    name: ClassVar[str] = "large_batch"
    summary: ClassVar[str] = ("Fashion-MNIST F1 net: small vs large batch and the remedies ghost BN, sqrt lr, "
                              "regime adaptation; distance from init")

    dataset: str = "fashion_mnist"
    task: str = "multiclass"
    carve_from: str | None = None
    depth: int = 6
    width: int = 512
    lr: float = 0.1
    seeds: tuple[int, ...] = (0,)
    arms: tuple[str, ...] = ARMS
    batch_size: int = 128
    large_batch_size: int = 2048
    ghost_batch_size: int | None = None  # default: batch_size
    epochs: float = 2.0
    milestones: tuple[float, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float | None = None

    FIELDS: ClassVar[dict] = {
        **DATA_FIELDS, "depth": integer(2), "width": integer(1), "lr": POSITIVE,
        "seeds": listed(integer(0), distinct=True), "arms": listed(choice(*ARMS), distinct=True),
        "batch_size": integer(1), "large_batch_size": integer(1), "ghost_batch_size": optional(integer(1)),
        "epochs": POSITIVE, "milestones": listed(POSITIVE, empty=True), "momentum": number(0, 1, below=True),
        "weight_decay": number(0), "clip": optional(POSITIVE)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_train < self.large_batch_size:
            raise GpmarginError(f"large_batch_size={self.large_batch_size} is larger than the training set "
                                f"(n_train={self.n_train})")
        if self.large_batch_size < self.batch_size or self.large_batch_size % self.batch_size:
            raise GpmarginError(f"large_batch_size={self.large_batch_size} must be a multiple of "
                                f"batch_size={self.batch_size}")
        check_ghost_batch(self.ghost, self.large_batch_size)

    @classmethod
    def settings(cls, scale: str) -> dict[str, Any]:
        """``paper``: all 60,000 training images, batch 128 vs 2048 (16x), lr 0.1, 10 epochs with
        milestones at 5 and 8 (regime: x16), 3 seeds.  ``quick``: 4096 training images (a
        subset), batch 32 vs 512 (16x), lr 0.01, 2 epochs, one seed (the regime arm trains 32
        epochs).  ``smoke``: tests."""
        if scale == "paper":
            return dict(n_train=60000, n_test=10000, lr=0.1, batch_size=128, large_batch_size=2048, epochs=10,
                        milestones=(5.0, 8.0), seeds=(0, 1, 2))
        if scale == "quick":
            return dict(n_train=4096, n_test=10000, lr=0.01, batch_size=32, large_batch_size=512, epochs=2)
        return dict(n_train=256, n_test=500, width=32, depth=3, lr=0.05, batch_size=8, large_batch_size=128, epochs=1)

    @property
    def ghost(self) -> int:
        return self.batch_size if self.ghost_batch_size is None else self.ghost_batch_size

    def units(self) -> list[dict[str, Any]]:
        return [{"arm": a, "seed": int(s)} for s in self.seeds for a in self.arms]

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        return (unit["arm"], int(unit["seed"]))

    def run_unit(self, task, unit: dict[str, Any], device) -> dict[str, Any]:
        return large_batch_unit(self, task, unit, device)

    def report(self, out, records, task=None, device=None, verbose: bool = True) -> dict[str, Any]:
        return compare_large_batch(self, out, records, task=task, device=device, verbose=verbose)

    def arm_settings(self, arm: str) -> dict[str, Any]:
        """Batch, ghost batch, learning rate, epochs and milestones of ``arm``."""
        if arm not in ARMS:
            raise GpmarginError(f"unknown arm {arm!r}: use one of {', '.join(ARMS)}")
        s = dict(batch_size=self.batch_size if arm == "small" else self.large_batch_size, ghost_batch_size=None,
                 lr=self.lr, epochs=self.epochs, milestones=tuple(self.milestones))
        if "sqrt" in arm:
            s["lr"] = sqrt_lr(self.lr, self.large_batch_size, self.batch_size)
        if "ghost" in arm:
            s["ghost_batch_size"] = self.ghost
        if "regime" in arm:
            s["epochs"], s["milestones"] = regime_adaptation(self.epochs, self.milestones, self.large_batch_size,
                                                             self.batch_size)
        return s


EXPERIMENT = LargeBatch


def log_checkpoints(total: int, per_decade: int = 16) -> list[int]:
    """Iterations ``1 .. total`` at about ``per_decade`` log-spaced points per decade."""
    pts = np.unique(np.round(np.logspace(0, np.log10(max(total, 1)), int(per_decade * np.log10(max(total, 10))) + 1)))
    return [int(p) for p in pts if 1 <= p <= total]


def train_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, epochs: float, lr: float,
              milestones=(), lr_decay: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
              clip: float | None = None, seed: int = 0) -> dict[str, Any]:
    """SGD with momentum on the cross-entropy (:func:`validation.training.minibatch.train_minibatch`),
    learning rate ``step_lr(lr, epoch, milestones, lr_decay)``, gradient norm clipped to ``clip``.

    Returns ``iterations``, ``distance`` (``||w_t - w_0||`` at :func:`log_checkpoints`), ``final_loss``
    and ``updates``.
    """
    per_epoch = x.shape[0] // max(batch_size, 1)
    total = int(round(epochs * per_epoch))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    params = list(model.parameters())
    init = [p.detach().clone() for p in params]
    marks = set(log_checkpoints(total))
    its, dist = [], []

    def record(t: int) -> None:
        if t in marks:
            its.append(t)
            dist.append(distance(params, init))

    model.train()
    final = train_minibatch(model, x, y, opt, steps=total, batch_size=batch_size, seed=seed,
                            loss=nn.functional.cross_entropy, lr_at=lambda t: step_lr(lr, t / per_epoch, milestones,
                                                                                     lr_decay),
                            clip=clip, hook=record)
    return {"iterations": its, "distance": dist, "final_loss": final, "updates": total}


def large_batch_unit(config: LargeBatch, task, unit: dict[str, Any], device) -> dict[str, Any]:
    """Train and measure one F1 network of ``unit["arm"]`` with seed ``unit["seed"]``."""
    from gpmargin import measures as M

    s = config.arm_settings(unit["arm"])
    dtype = getattr(torch, config.dtype)
    x_tr, x_te = as_tensor(task.x_train, device, dtype), as_tensor(task.x_test, device, dtype)
    y_tr, y_te = as_tensor(task.y_train, device).long(), as_tensor(task.y_test, device).long()
    model = f1_network(x_tr.shape[1], int(task.num_classes), config.width, config.depth - 1, s["ghost_batch_size"],
                       seed=unit["seed"]).to(device=device, dtype=dtype)
    w0 = [w.clone() for w in linear_weights(model)]
    t0 = time.perf_counter()
    tr = train_sgd(model, x_tr, y_tr, batch_size=s["batch_size"], epochs=s["epochs"], lr=s["lr"],
                  milestones=s["milestones"], momentum=config.momentum, weight_decay=config.weight_decay,
                  clip=config.clip, seed=unit["seed"])
    train_s = time.perf_counter() - t0
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
    model.eval()
    f_tr = forward_chunked(model, x_tr, 4096).double().cpu()
    f_te = forward_chunked(model, x_te, 4096).double().cpu()
    finite = math.isfinite(tr["final_loss"]) and bool(torch.isfinite(f_tr).all() and torch.isfinite(f_te).all())
    if not finite or not all(bool(torch.isfinite(w).all()) for w in linear_weights(model)):
        # diverged (e.g. too large a learning rate): recorded as such, with no measures
        return {"settings": settings, "updates": tr["updates"], "final_train_loss": None, "diverged": True,
                "gibbs_test_accuracy": None, "members": [],
                "distance": {"iterations": [], "distance": [], "fit": None}, "training": {"train_wall_s": train_s}}
    meas = M.network_measures([w.double() for w in linear_weights(model)], f_tr, y_tr.cpu(), x_tr.double().cpu(),
                              f_te, y_te.cpu(), init_weights=[w.double() for w in w0], lipschitz=1.0)
    fit = fit_distance(tr["iterations"], tr["distance"]) if len(tr["iterations"]) >= 3 else None
    return {"settings": settings, "updates": tr["updates"], "final_train_loss": tr["final_loss"], "diverged": False,
            "gibbs_test_accuracy": meas["test_accuracy"], "members": [meas],
            "distance": {"iterations": tr["iterations"], "distance": tr["distance"], "fit": fit},
            "training": {"train_wall_s": train_s}}


# ----------------------------------------------------------------------------- the report
def arm_table(config, records: list[dict]) -> list[dict[str, Any]]:
    """One row per arm, means over seeds (see module docstring)."""
    rows = []
    for arm in config.arms:
        every = [r for r in records if r["arm"] == arm]
        if not every:
            continue
        rs = [r for r in every if not r.get("diverged")]  # a diverged run has no measures
        m = [r["members"][0] for r in rs]
        fits = [r["distance"]["fit"] for r in rs if r["distance"]["fit"]]
        s = every[0]["settings"]

        def mean(key):
            vals = [x[key] for x in m if x[key] is not None]
            return float(np.mean(vals)) if vals else None

        row = {"arm": arm, "batch_size": s["batch_size"], "ghost_batch_size": s["ghost_batch_size"], "lr": s["lr"],
               "epochs": s["epochs"], "updates": every[0]["updates"], "seeds": len(rs),
               "diverged": len(every) - len(rs),
               "test_accuracy": mean("test_accuracy"), "train_accuracy": mean("train_accuracy"),
               "frobenius_normalized_margin": mean("frobenius_normalized_margin"),
               "distance_log_slope": float(np.mean([f["log_slope"] for f in fits])) if fits else None,
               "distance_power_exponent": float(np.mean([f["power_exponent"] for f in fits])) if fits else None,
               "distance_better_law": ",".join(sorted({f["better"] for f in fits})) if fits else None}
        row["generalization_gap"] = None if not rs else row["train_accuracy"] - row["test_accuracy"]
        rows.append(row)
    small = next((r for r in rows if r["arm"] == "small"), None)
    large = next((r for r in rows if r["arm"] == "large"), None)
    small = small if small and small["test_accuracy"] is not None else None
    large = large if large and large["test_accuracy"] is not None else None
    for r in rows:
        ok = r["test_accuracy"] is not None
        r["gap_vs_small"] = small["test_accuracy"] - r["test_accuracy"] if small and ok else None
        base = large["test_accuracy"] - small["test_accuracy"] if small and large else None
        r["fraction_of_large_batch_gap_closed"] = ((r["test_accuracy"] - large["test_accuracy"]) / -base
                                                   if base and base < 0 and ok else None) if r["arm"] != "small" else None
    return rows


def compare_large_batch(config, out, records: list[dict], task=None, device=None, verbose: bool = True):
    files = {ext: str(output_path(config, out, f"comparison.{ext}")) for ext in ("csv", "png", "json")}
    rows = arm_table(config, records)
    cols = list(rows[0].keys()) if rows else []
    lines = [",".join(cols)] + [",".join("" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float)
                                                                    else str(r[c])) for c in cols) for r in rows]
    atomic_write_text(files["csv"], "\n".join(lines) + "\n")
    _plot(config, rows, records, files["png"])
    summary = {"experiment": config.name, "scale": config.scale, "overrides": config.overrides(),
               "config_hash": config.config_hash(), "arms": rows,
               "networks": [{"arm": r["arm"], "seed": r["seed"], **(r["members"][0] if r["members"] else {"diverged": True}),
                             "distance": r["distance"]} for r in records],
               "units": len(records), "files": files,
               "metadata": run_metadata(device, data_info=getattr(task, "info", None))}
    atomic_write_json(files["json"], summary)
    if verbose:
        for r in rows:
            if r["test_accuracy"] is None:
                print(f"{r['arm']:>24}: B={r['batch_size']:<5} lr={r['lr']:.3g}: all {r['diverged']} run(s) diverged")
                continue
            gv = r["gap_vs_small"]
            print(f"{r['arm']:>24}: B={r['batch_size']:<5} lr={r['lr']:.3g} epochs={r['epochs']:g} "
                  f"test {r['test_accuracy']:.4f} train {r['train_accuracy']:.4f} gap vs small "
                  f"{'' if gv is None else f'{gv:+.4f}'}  distance: {r['distance_better_law']} law, "
                  f"log slope {r['distance_log_slope'] if r['distance_log_slope'] is None else round(r['distance_log_slope'], 4)}")
    return summary


def _plot(config, rows, records, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    gone = [r["arm"] for r in rows if r["test_accuracy"] is None]
    rows = [r for r in rows if r["test_accuracy"] is not None]
    if gone:
        fig.suptitle("diverged (not drawn): " + ", ".join(gone), fontsize=9)
    names = [r["arm"].replace("+", "\n+") for r in rows]
    xs = np.arange(len(rows))
    ax = axes[0]
    ax.bar(xs - 0.2, [r["train_accuracy"] for r in rows], 0.4, label="train", color="0.75")
    ax.bar(xs + 0.2, [r["test_accuracy"] for r in rows], 0.4, label="test", color="C0")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r["test_accuracy"], f"{r['test_accuracy']:.3f}", ha="center", va="bottom", fontsize=7)
    lo = min((r["test_accuracy"] for r in rows), default=0.0)
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_title("(a) accuracy per arm")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(xs - 0.2, [np.nan if r["gap_vs_small"] is None else r["gap_vs_small"] for r in rows], 0.4, color="C3", label="test(small) − test(arm)")
    ax.bar(xs + 0.2, [r["generalization_gap"] for r in rows], 0.4, color="C1", label="train − test")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylabel("accuracy difference")
    ax.set_title("(b) large-batch gap and generalization gap")
    ax.legend(fontsize=8)
    ax = axes[2]
    for i, arm in enumerate(config.arms):
        for r in (r for r in records if r["arm"] == arm):
            d = r["distance"]
            fit = d["fit"]
            lab = f"{arm} (B={r['settings']['batch_size']})" + (f", {fit['better']} law" if fit else "")
            ax.plot(d["iterations"], d["distance"], "-", color=f"C{i}", lw=2.5 - 0.4 * i,
                    label=lab if r["seed"] == config.seeds[0] else None)
    ax.set_xscale("log")
    ax.set_xlabel("iteration t (log scale)")
    ax.set_ylabel("‖w_t − w_0‖")
    ax.set_title("(c) distance from initialisation\n(large-batch arms share their first steps)", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(f"large_batch ({config.scale}): {config.dataset}, {config.n_train} training images"
                 f"{' (a subset)' if config.n_train < 60000 else ''}, F1 MLP ({config.depth - 1}×{config.width} + BN), "
                 f"batch {config.batch_size} vs {config.large_batch_size}, {config.epochs:g} epochs, "
                 f"{len(config.seeds)} seed(s)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
