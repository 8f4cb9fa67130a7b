"""The ``measures`` experiment: a population of trained networks, their measures, and which one tracks generalization.

A full grid over five hyperparameters (so that Jiang et al.'s granulated Kendall tau, which
compares networks differing in one hyperparameter only, is defined): the margin ``alpha`` of
the loss ``||f(X_B) - alpha Y_B||`` on minibatches ``B``, the learning rate, the batch size, the
width, and the fraction of training labels replaced by random ones.  One unit of the sweep is
one network (:func:`measure_unit`, a plain top-level function); its record holds the
hyperparameters, the test accuracy (clean test labels), the generalization gap (train accuracy
on the labels it was trained on minus test accuracy) and the measures:

- margins: the median train margin ``gamma`` (raw; for Nero-constrained networks every layer's
  norm is fixed, so this is also the normalized margin in the GP's units) and the Frobenius- and
  spectrally-normalized margins of :mod:`gpmargin.measures` (median-margin variants, robust to
  mislabelled points), Bartlett et al.'s spectral complexity (reference: the initial weights);
- norms: the sum of squared weights, the distance from initialisation ``||theta - theta_0||``;
- flatness (:mod:`gpmargin.probes.landscape`, loss ``mean ||f(x)/alpha - t(x)||^2``, so that
  networks of different margins are comparable): average and worst sharpness in the
  filter-normalised ball of radius ``rho``, basin radius at a rise ``basin_rise`` of that loss;
- trajectory: the PH dimension (:mod:`gpmargin.probes.ph_dimension`) of the last ``ph_n_max``
  iterates, Euclidean and with the loss pseudometric on ``ph_examples`` training examples.

The report (:func:`analyse`) adds the NNGP and NTK predicted test accuracy of a single network
conditioned on ``f(train) = gamma * y`` (``y`` the noisy labels the network was trained on,
``gamma`` its own median train margin; one posterior per label set) and ranks every measure
against test accuracy and against the gap by Kendall's tau, overall and granulated
(:mod:`validation.theory.kendall`; a measure constant within a group, e.g. Frobenius norms under
Nero's constraints, has no tau there: NaN, ``null`` in JSON, blank in plots).  Files, named after
the experiment: ``measures-networks.csv`` (one row per network), ``measures-tau.csv``,
``measures-tau.json`` (the table, config, run metadata) and ``measures-tau.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from gpmargin import measures as M
from gpmargin.errors import GpmarginError
from validation.harness.experiment import DATA_FIELDS, POSITIVE, Experiment
from validation.harness.fields import Field, choice, integer, listed, number
from validation.harness.folders import output_path
from validation.theory.kendall import tau_table
from validation.training.fullbatch import OPTIMIZERS, make_optimizer
from validation.training.labels import noisy_labels
from validation.training.losses import ScaledSquareLoss, label_targets, per_network_loss
from validation.training.minibatch import train_minibatch
from validation.training.models import MLP

HYPERPARAMETERS = ("margin", "lr", "batch_size", "width", "label_noise")
TARGETS = ("test_accuracy", "gap")


@dataclasses.dataclass(frozen=True)
class Measures(Experiment):
    """The population's grid (``margins`` x ``lrs`` x ``batch_sizes`` x ``widths`` x
    ``label_noise``), its training (``depth``, ``optimizer``, ``steps``, one ``seed``, ``threads``
    per network), the probes' settings and the GP kinds predicted."""

    name: ClassVar[str] = "measures"
    summary: ClassVar[str] = ("a population of networks; Kendall tau of generalization measures "
                              "(DIR/measures-tau.csv/.json/.png)")
    SEED_FIELDS: ClassVar[tuple[str, ...]] = ()

    n_train: int = 500
    n_test: int | None = 2000
    # networks and training
    depth: int = 3
    optimizer: str = "nero"
    steps: int = 150
    threads: int = 1
    seed: int = 0
    # the grid
    margins: tuple[float, ...] = (0.1, 1.0, 10.0)
    lrs: tuple[float, ...] = (0.01, 0.03)
    batch_sizes: tuple[int, ...] = (50, 500)
    widths: tuple[int, ...] = (64, 128)
    label_noise: tuple[float, ...] = (0.0, 0.2)
    # probes
    sharpness_rho: float = 0.05
    sharpness_samples: int = 5
    ascent_steps: int = 5
    basin_directions: int = 5
    basin_rise: float = 0.1
    ph_n_min: int = 50
    ph_n_max: int = 150
    ph_examples: int = 200
    # theory
    gp_kinds: tuple[str, ...] = ("nngp", "ntk")

    FIELDS: ClassVar[dict[str, Field]] = {
        **DATA_FIELDS, "depth": integer(1), "optimizer": choice(*OPTIMIZERS), "steps": integer(1),
        "threads": integer(1), "seed": integer(0),
        "margins": listed(POSITIVE), "lrs": listed(POSITIVE), "batch_sizes": listed(integer(1)),
        "widths": listed(integer(1)), "label_noise": listed(number(0, 1, below=True)),
        "sharpness_rho": POSITIVE, "sharpness_samples": integer(1), "ascent_steps": integer(0),
        "basin_directions": integer(1), "basin_rise": POSITIVE, "ph_n_min": integer(2), "ph_n_max": integer(3),
        "ph_examples": integer(1), "gp_kinds": listed(choice("nngp", "ntk"), distinct=True),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(b > self.n_train for b in self.batch_sizes):
            raise GpmarginError(f"batch_sizes must lie in [1, n_train={self.n_train}], got {self.batch_sizes}")
        if not self.ph_n_min < self.ph_n_max:
            raise GpmarginError(f"ph_n_min={self.ph_n_min} must be below ph_n_max={self.ph_n_max}")
        if self.ph_examples > self.n_train:
            raise GpmarginError(f"ph_examples must be at most n_train={self.n_train}")

    @classmethod
    def settings(cls, scale: str) -> dict[str, Any]:
        """Which measure tracks generalization: MNIST parity, depth-3 Nero-constrained MLPs.

        ``quick``: 500 train / 2000 test images, the grid 3 margins x 2 lrs x 2 batch sizes x
        2 widths x 2 label-noise levels = 48 networks, 150 + 150 steps (the last 150 iterates
        for the PH dimension, n = 50..150); ``paper``: 1000 / 9000 images, 4 margins, 3 lrs and
        batch sizes, widths 256 / 1024, 3 noise levels (648 networks) and n = 200..1000;
        ``smoke``: 8 small networks for tests.
        """
        if scale == "paper":
            return dict(n_train=1000, n_test=9000, steps=2000, margins=(0.01, 0.1, 1.0, 10.0),
                        lrs=(0.003, 0.01, 0.03), batch_sizes=(32, 128, 1000), widths=(256, 1024),
                        label_noise=(0.0, 0.1, 0.3), basin_directions=20, sharpness_samples=20,
                        ph_n_min=200, ph_n_max=1000, ph_examples=1000)
        if scale == "smoke":
            return dict(n_train=120, n_test=300, steps=20, margins=(0.3, 3.0), lrs=(0.02,), batch_sizes=(30, 120),
                        widths=(16,), label_noise=(0.0, 0.3), sharpness_samples=2, ascent_steps=2,
                        basin_directions=2, ph_n_min=10, ph_n_max=30, ph_examples=40)
        return {}

    def with_seed(self, seed: int) -> "Measures":
        return dataclasses.replace(self, seed=int(seed))

    def grid(self) -> list[dict[str, Any]]:
        """Every network's hyperparameters (the full grid), in a fixed order."""
        axes = (self.margins, self.lrs, self.batch_sizes, self.widths, self.label_noise)
        return [dict(zip(HYPERPARAMETERS, v)) for v in itertools.product(*axes)]

    def units(self) -> list[dict[str, Any]]:
        """One unit per network of the grid: ``{"network": i, "hyperparameters": {...}}``."""
        return [{"network": i, "hyperparameters": h} for i, h in enumerate(self.grid())]

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        """A unit (or its record) is identified by its hyperparameters."""
        return tuple((k, repr(unit["hyperparameters"][k])) for k in HYPERPARAMETERS)

    def run_unit(self, task, unit: dict[str, Any], device) -> dict[str, Any]:
        return measure_unit(self, task, unit, device)

    def report(self, out, records: list[dict], task=None, device=None, verbose: bool = True) -> dict[str, Any]:
        """Kendall tau of every measure (``DIR/measures-tau.{csv,json,png}``, ``DIR/measures-networks.csv``)."""
        return analyse(self, out, records, task=task, device=device)


EXPERIMENT = Measures


# ---------------------------------------------------------------------- one network
def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def measure_unit(config: "Measures", task, unit: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Train the network with hyperparameters ``unit["hyperparameters"]`` and measure it (module docstring).

    Runs on ``config.threads`` torch threads (restored afterwards): these networks are small, and
    on a shared CPU extra threads spin rather than compute (one thread: 4 CPU-s per quick-scale
    network, two threads under load: about 27).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _measure(config, task, unit["hyperparameters"], device)
    finally:
        torch.set_num_threads(threads)


def _measure(config: "Measures", task, h: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from gpmargin.probes import TrajectoryRecorder, basin_radius, evaluate, ph_dimension, sharpness

    t0 = time.perf_counter()
    dtype = getattr(torch, config.dtype)
    x_tr = torch.as_tensor(np.asarray(task.x_train), dtype=dtype, device=device)
    x_te = torch.as_tensor(np.asarray(task.x_test), dtype=dtype, device=device)
    binary = np.asarray(task.y_train).dtype.kind == "f"
    c = 1 if binary else int(task.num_classes)
    y_tr = noisy_labels(task.y_train, h["label_noise"], config.data_seed, None if binary else c).to(device)
    y_te = torch.as_tensor(np.asarray(task.y_test)).to(device)
    targets = (h["margin"] * label_targets(y_tr, c)).to(dtype)
    model = MLP(x_tr.shape[1], config.depth, h["width"], c, seed=config.seed, dtype=dtype).to(device)
    opt = make_optimizer(model, config.optimizer, h["lr"])  # Nero projects the initial weights here
    init = [w.detach().clone() for w in model.weights]
    loss_fn = ScaledSquareLoss(h["margin"], c)
    sub = (x_tr[:config.ph_examples], y_tr[:config.ph_examples])
    norm = functools.partial(per_network_loss, loss="norm")
    train_minibatch(model, x_tr, targets, opt, steps=config.steps, batch_size=h["batch_size"], seed=config.seed,
                    loss=norm)
    traj = TrajectoryRecorder(model, keep=config.ph_n_max, loss_fn=loss_fn, data=sub)
    last_loss = train_minibatch(model, x_tr, targets, opt, steps=config.ph_n_max, batch_size=h["batch_size"],
                                seed=config.seed + 1, loss=norm, hook=lambda t: traj.record())
    train_s = time.perf_counter() - t0

    with torch.no_grad():
        f_tr, f_te = model(x_tr).double().cpu(), model(x_te).double().cpu()
    ws = [w.detach().double().cpu() for w in model.weights]
    if not (bool(torch.isfinite(f_tr).all() and torch.isfinite(f_te).all())
            and all(bool(torch.isfinite(w).all()) and float(w.abs().max()) > 0 for w in ws)):
        raise GpmarginError(f"training diverged for the network with {h} (non-finite or vanished weights after "
                            f"{config.steps + config.ph_n_max} steps of {config.optimizer}); lower it with "
                            "--set lrs=...")
    w0 = [w.double().cpu() for w in init]
    base = M.network_measures(ws, f_tr, y_tr.cpu(), x_tr.double().cpu(), f_te, y_te.cpu(), init_weights=w0,
                              lipschitz=M.mlp_lipschitz(config.depth))
    acc_tr = base["train_accuracy"]
    acc_te = base["test_accuracy"]
    train = (x_tr, y_tr)
    t1 = time.perf_counter()
    own = evaluate(model, loss_fn, train)["loss"]
    sharp_avg = sharpness(model, loss_fn, train, config.sharpness_rho, "average", config.sharpness_samples,
                          seed=config.seed)
    sharp_worst = sharpness(model, loss_fn, train, config.sharpness_rho, "worst", config.sharpness_samples,
                            config.ascent_steps, seed=config.seed)
    basin = basin_radius(model, loss_fn, train, own + config.basin_rise, config.basin_directions,
                         max_radius=2.0, grid=8, bisections=6, seed=config.seed)
    n_ph = dict(n_min=config.ph_n_min, n_max=config.ph_n_max, seed=config.seed)
    ph_euclid = ph_dimension(traj.points(), **n_ph)
    ph_loss = ph_dimension(losses=traj.losses(), **n_ph)
    probe_s = time.perf_counter() - t1
    gamma_med = base["train_margin"]["quantiles"]["0.5"]
    measures_ = {
        "margin": gamma_med,
        "frobenius_normalized_margin": base["frobenius_normalized_margin_median"],
        "spectrally_normalized_margin": base["spectrally_normalized_margin_init_ref_median"],
        "spectral_complexity": base["spectral_complexity_init_ref"],
        "weight_norm": float(sum(float(w.square().sum()) for w in ws)),
        "distance_from_init": float(math.sqrt(sum(float((a - b).square().sum()) for a, b in zip(ws, w0)))),
        "sharpness_average": sharp_avg["sharpness"],
        "sharpness_worst": sharp_worst["sharpness"],
        "basin_radius": basin["radius"],
        "ph_dimension_euclidean": ph_euclid["dimension"],
        "ph_dimension_loss": ph_loss["dimension"],
    }
    return {
        "hyperparameters": {k: h[k] for k in HYPERPARAMETERS},
        "test_accuracy": acc_te,
        "train_accuracy": acc_tr,
        "gap": acc_tr - acc_te,
        "train_loss_scaled": own,
        "measures": {k: _finite(v) for k, v in measures_.items()},
        "details": {"train_margin": base["train_margin"], "spectral_norms": base["spectral_norms"],
                    "basin_radii": basin["radii"].tolist(), "basin_censored": basin["censored"].tolist(),
                    "ph_euclidean_mst": ph_euclid["mst_length"].tolist(), "ph_loss_mst": ph_loss["mst_length"].tolist(),
                    "ph_n": ph_euclid["n"].tolist(), "minibatch_loss_last": last_loss},
        "train_s": train_s,
        "probe_s": probe_s,
    }


# ---------------------------------------------------------------------- the report
def gp_predictions(config: "Measures", records: list[dict], task, device=None) -> dict[str, list[float | None]]:
    """``{"<kind>_predicted_accuracy": [per record]}``: the GP's accuracy at each network's margin."""
    from gpmargin.kernels import paper_mlp
    from gpmargin.predict import MarginPredictor

    x_tr = torch.as_tensor(np.asarray(task.x_train), dtype=torch.float64, device=device)
    x_te = torch.as_tensor(np.asarray(task.x_test), dtype=torch.float64, device=device)
    out: dict[str, list[float | None]] = {f"{k}_predicted_accuracy": [None] * len(records) for k in config.gp_kinds}
    binary = np.asarray(task.y_train).dtype.kind == "f"
    for noise in sorted({r["hyperparameters"]["label_noise"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["hyperparameters"]["label_noise"] == noise]
        margins = {i: records[i]["measures"]["margin"] for i in idx}
        ok = sorted({m for m in margins.values() if m is not None and m > 0})
        if not ok:
            continue
        y = noisy_labels(task.y_train, noise, config.data_seed, None if binary else int(task.num_classes))
        for kind in config.gp_kinds:
            predictor = MarginPredictor(paper_mlp(config.depth), x_tr, y, x_te, np.asarray(task.y_test), kind=kind)
            at = dict(zip(ok, predictor.accuracy(ok)[0]))
            for i in idx:
                m = margins[i]
                out[f"{kind}_predicted_accuracy"][i] = float(at[m]) if m in at else None
    return out


def _none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def plot(rows: list[dict[str, Any]], records: list[dict], measures: dict[str, np.ndarray], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpmargin.io import atomic_savefig

    cols = [c for c in ("overall", *HYPERPARAMETERS, "psi") if c in rows[0]]
    names = list(measures)
    fig, axes = plt.subplots(1, 3, figsize=(19, 0.42 * len(names) + 2.6),
                             gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, target in zip(axes[:2], TARGETS):
        grid = np.array([[next(r for r in rows if r["measure"] == n and r["target"] == target)[c] for c in cols]
                         for n in names], dtype=np.float64)
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:+.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(cols)), [c if c != "psi" else "Ψ (mean)" for c in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names))
        ax.set_title(f"Kendall τ with {target.replace('_', ' ')}\n(overall; granulated per hyperparameter)")
    fig.colorbar(im, ax=axes[:2], shrink=0.6, label="Kendall τ (−1 … 1)")
    ax = axes[2]
    test = np.array([r["test_accuracy"] for r in records])
    noise = np.array([r["hyperparameters"]["label_noise"] for r in records])
    for key, marker in (("nngp_predicted_accuracy", "o"), ("ntk_predicted_accuracy", "s")):
        if key in measures:
            p = measures[key]
            ok = np.isfinite(p)
            sc = ax.scatter(p[ok], test[ok], c=noise[ok], cmap="viridis", marker=marker, s=28, edgecolor="k",
                            linewidths=0.3, label=key.replace("_predicted_accuracy", "").upper() + " prediction")
    lo = float(np.nanmin([test.min()] + [np.nanmin(measures[k]) for k in measures if k.endswith("predicted_accuracy")]))
    ax.plot([lo, 1], [lo, 1], "k--", lw=0.8, label="prediction = measurement")
    ax.set_xlabel("GP-predicted test accuracy at the network's own margin")
    ax.set_ylabel("measured test accuracy")
    ax.set_title("GP prediction vs trained networks\n(colour: fraction of random labels)")
    ax.legend(fontsize=8, loc="upper left")
    fig.colorbar(sc, ax=ax, label="random-label fraction")
    fig.suptitle(title, fontsize=10)
    atomic_savefig(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def analyse(config: "Measures", out: str | os.PathLike, records: list[dict], task=None, device=None) -> dict:
    """GP predictions, the tau table and its figure for a finished population (module docstring)."""
    import time

    from gpmargin.io import atomic_write_json, atomic_write_text, run_metadata

    t0 = time.perf_counter()
    files = {"networks": str(output_path(config, out, "networks.csv")),
             **{ext: str(output_path(config, out, f"tau.{ext}")) for ext in ("csv", "png", "json")}}
    task = task if task is not None else config.load_task()
    records = sorted(records, key=lambda r: r["network"])
    gp = gp_predictions(config, records, task, device)
    names = list(records[0]["measures"])
    measures = {n: np.array([np.nan if r["measures"][n] is None else r["measures"][n] for r in records]) for n in names}
    measures.update({k: np.array([np.nan if v is None else v for v in vals]) for k, vals in gp.items()})
    rows = tau_table(records, measures, HYPERPARAMETERS, TARGETS)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["network", *HYPERPARAMETERS, "test_accuracy", "train_accuracy", "gap", *measures])
    for i, r in enumerate(records):
        w.writerow([r["network"], *(r["hyperparameters"][k] for k in HYPERPARAMETERS), r["test_accuracy"],
                    r["train_accuracy"], r["gap"], *("" if not np.isfinite(measures[n][i]) else repr(float(measures[n][i]))
                                                      for n in measures)])
    atomic_write_text(files["networks"], buf.getvalue())
    cols = list(rows[0])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([("" if isinstance(r[c], float) and not math.isfinite(r[c]) else
                     (f"{r[c]:.4f}" if isinstance(r[c], float) else r[c])) for c in cols])
    atomic_write_text(files["csv"], buf.getvalue())
    title = (f"Which measure tracks generalization? {len(records)} depth-{config.depth} MLPs on "
             f"{config.dataset} {config.task} ({config.n_train} train), {config.scale} scale; "
             f"τ > 0: networks with a larger value have higher {'/'.join(TARGETS)}")
    plot(rows, records, measures, files["png"], title)
    summary = {"config": config.to_dict(), "networks": len(records),
               "tau": [{k: _none(v) for k, v in r.items()} for r in rows],
               "gp_predicted_accuracy": gp, "analysis_s": time.perf_counter() - t0,
               "population_train_s": float(sum(r["train_s"] for r in records)),
               "population_probe_s": float(sum(r["probe_s"] for r in records)),
               "files": files, "metadata": run_metadata(device)}
    atomic_write_json(files["json"], summary)
    return summary
