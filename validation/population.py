"""The ``measures`` experiment, part 1: a population of trained networks and their measures.

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

The GP-predicted accuracies at each network's own margin are computed afterwards from the
records (:mod:`validation.generalization`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from gpmargin import measures as M
from gpmargin.errors import GpmarginError
from validation.fields import Field, check_fields, choice, integer, listed, number, parse_overrides

HYPERPARAMETERS = ("margin", "lr", "batch_size", "width", "label_noise")


@dataclasses.dataclass(frozen=True)
class MeasuresConfig:
    name: str = "measures"
    scale: str = "quick"
    # data
    dataset: str = "mnist"
    task: str = "parity"
    n_train: int = 500
    n_test: int | None = 2000
    data_seed: int = 0
    carve_from: str = "auto"
    # networks and training
    depth: int = 3
    optimizer: str = "nero"
    steps: int = 150
    dtype: str = "float32"
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

    FIELDS: ClassVar[dict[str, Field]]  # set below

    def __post_init__(self) -> None:
        from validation.experiments import SCALES

        if self.scale not in SCALES:
            raise GpmarginError(f"unknown scale {self.scale!r}: use one of {', '.join(SCALES)}")
        check_fields(self, self.FIELDS)
        if any(b > self.n_train for b in self.batch_sizes):
            raise GpmarginError(f"batch_sizes must lie in [1, n_train={self.n_train}], got {self.batch_sizes}")
        if not self.ph_n_min < self.ph_n_max:
            raise GpmarginError(f"ph_n_min={self.ph_n_min} must be below ph_n_max={self.ph_n_max}")
        if self.ph_examples > self.n_train:
            raise GpmarginError(f"ph_examples must be at most n_train={self.n_train}")

    # ------------------------------------------------------------------ config protocol
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def config_hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def overrides(self) -> dict[str, Any]:
        base = measures(self.scale).to_dict()
        return {k: v for k, v in self.to_dict().items() if base.get(k) != v}

    def with_overrides(self, assignments: Sequence[str]) -> "MeasuresConfig":
        """A copy with fields set from ``KEY=VALUE`` (tuples as comma lists), each checked by its field."""
        return dataclasses.replace(self, **parse_overrides(assignments, self.FIELDS))

    def with_seed(self, seed: int) -> "MeasuresConfig":
        return dataclasses.replace(self, seed=int(seed))

    def grid(self) -> list[dict[str, Any]]:
        """Every network's hyperparameters (the full grid), in a fixed order."""
        axes = (self.margins, self.lrs, self.batch_sizes, self.widths, self.label_noise)
        return [dict(zip(HYPERPARAMETERS, v)) for v in itertools.product(*axes)]

    def units(self) -> list[dict[str, Any]]:
        """One unit per network of the grid: ``{"network": i, "hyperparameters": {...}}``."""
        return [{"network": i, "hyperparameters": h} for i, h in enumerate(self.grid())]

    @staticmethod
    def key(h: dict[str, Any]) -> tuple:
        return tuple((k, repr(h[k])) for k in HYPERPARAMETERS)

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        """A unit (or its record) is identified by its hyperparameters."""
        return self.key(unit["hyperparameters"])

    def unit_function(self) -> Callable[..., dict[str, Any]]:
        return measure_unit

    def compare(self, out, records: list[dict], task=None, device=None, verbose: bool = True):
        """Kendall tau of every measure (``DIR/measures-tau.{csv,json,png}``, ``DIR/measures-networks.csv``)."""
        from validation.generalization import analyse

        return analyse(self, out, records, task=task, device=device)


def _measures_fields() -> dict[str, Field]:
    from validation.experiments import POSITIVE, ExperimentConfig
    from validation.train import OPTIMIZERS

    common = ExperimentConfig.FIELDS
    return {
        **{k: common[k] for k in ("dataset", "task", "n_train", "n_test", "data_seed", "carve_from", "depth", "dtype")},
        "optimizer": choice(*OPTIMIZERS), "steps": integer(1), "threads": integer(1), "seed": integer(0),
        "margins": listed(POSITIVE), "lrs": listed(POSITIVE), "batch_sizes": listed(integer(1)),
        "widths": listed(integer(1)), "label_noise": listed(number(0, 1, below=True)),
        "sharpness_rho": POSITIVE, "sharpness_samples": integer(1), "ascent_steps": integer(0),
        "basin_directions": integer(1), "basin_rise": POSITIVE, "ph_n_min": integer(2), "ph_n_max": integer(3),
        "ph_examples": integer(1), "gp_kinds": listed(choice("nngp", "ntk"), distinct=True),
    }


MeasuresConfig.FIELDS = _measures_fields()


def measures(scale: str) -> MeasuresConfig:
    """Which measure tracks generalization: MNIST parity, depth-3 Nero-constrained MLPs.

    ``quick``: 500 train / 2000 test images, the grid 3 margins x 2 lrs x 2 batch sizes x
    2 widths x 2 label-noise levels = 48 networks, 150 + 150 steps (the last 150 iterates
    for the PH dimension, n = 50..150); ``paper``: 1000 / 9000 images, 4 margins, 3 lrs and
    batch sizes, widths 256 / 1024, 3 noise levels (648 networks) and n = 200..1000;
    ``smoke``: 8 small networks for tests.
    """
    if scale == "quick":
        return MeasuresConfig(scale="quick")
    if scale == "paper":
        return MeasuresConfig(scale="paper", n_train=1000, n_test=9000, steps=2000, margins=(0.01, 0.1, 1.0, 10.0),
                              lrs=(0.003, 0.01, 0.03), batch_sizes=(32, 128, 1000), widths=(256, 1024),
                              label_noise=(0.0, 0.1, 0.3), basin_directions=20, sharpness_samples=20,
                              ph_n_min=200, ph_n_max=1000, ph_examples=1000)
    if scale == "smoke":
        return MeasuresConfig(scale="smoke", n_train=120, n_test=300, steps=20, margins=(0.3, 3.0), lrs=(0.02,),
                              batch_sizes=(30, 120), widths=(16,), label_noise=(0.0, 0.3), sharpness_samples=2,
                              ascent_steps=2, basin_directions=2, ph_n_min=10, ph_n_max=30, ph_examples=40)
    from validation.experiments import SCALES

    raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")


# ---------------------------------------------------------------------- one network
def noisy_labels(y: Any, fraction: float, seed: int, num_classes: int | None = None) -> torch.Tensor:
    """``y`` with ``floor(fraction * n)`` entries (chosen by a generator seeded ``(seed, fraction)``)
    replaced by a different label: the sign flipped (+-1 floats) or another class (int)."""
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).clone()
    n = y.shape[0]
    k = int(math.floor(fraction * n))
    if k == 0:
        return y
    rng = np.random.default_rng([int(seed), int(round(fraction * 1e6))])
    idx = torch.as_tensor(rng.choice(n, size=k, replace=False))
    if y.is_floating_point():
        y[idx] = -y[idx]
    else:
        c = int(num_classes or int(y.max()) + 1)
        shift = torch.as_tensor(rng.integers(1, c, size=k))
        y[idx] = (y[idx] + shift) % c
    return y


def _targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return y.reshape(-1, 1) if y.is_floating_point() else torch.nn.functional.one_hot(y.long(), num_classes)


class ScaledSquareLoss:
    """Per-example ``||f(x) / alpha - t(x)||^2`` with ``t`` = +-1 or one-hot (the probes' loss)."""

    def __init__(self, alpha: float, num_classes: int):
        self.alpha, self.num_classes = float(alpha), num_classes

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = _targets(y, self.num_classes).to(out.dtype)
        return (out / self.alpha - t).square().sum(-1)


def train_minibatch(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, optimizer, steps: int,
                    batch_size: int, seed: int, loss: str = "norm", hook: Callable[[], None] | None = None) -> list[float]:
    """``steps`` optimiser steps on ``loss(f(X_B), T_B)`` over minibatches drawn without replacement
    (reshuffled each epoch by a generator seeded ``seed``); ``hook()`` after each step.
    Returns the minibatch losses."""
    from validation.train import per_network_loss

    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    order, pos, history = torch.randperm(n, generator=gen), 0, []
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size].to(x.device)
        pos += batch_size
        optimizer.zero_grad(set_to_none=True)
        value = per_network_loss(model(x[idx]), targets[idx], loss)
        value.backward()
        optimizer.step()
        history.append(float(value.detach()))
        if hook is not None:
            hook()
    return history


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def measure_unit(config: MeasuresConfig, task, unit: dict[str, Any], device: torch.device) -> dict[str, Any]:
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


def _measure(config: MeasuresConfig, task, h: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from gpmargin.probes import TrajectoryRecorder, basin_radius, evaluate, ph_dimension, sharpness
    from validation.models import MLP
    from validation.train import make_optimizer

    t0 = time.perf_counter()
    dtype = getattr(torch, config.dtype)
    x_tr = torch.as_tensor(np.asarray(task.x_train), dtype=dtype, device=device)
    x_te = torch.as_tensor(np.asarray(task.x_test), dtype=dtype, device=device)
    binary = np.asarray(task.y_train).dtype.kind == "f"
    c = 1 if binary else int(task.num_classes)
    y_tr = noisy_labels(task.y_train, h["label_noise"], config.data_seed, None if binary else c).to(device)
    y_te = torch.as_tensor(np.asarray(task.y_test)).to(device)
    targets = (h["margin"] * _targets(y_tr, c)).to(dtype)
    model = MLP(x_tr.shape[1], config.depth, h["width"], c, seed=config.seed, dtype=dtype).to(device)
    opt = make_optimizer(model, config.optimizer, h["lr"])  # Nero projects the initial weights here
    init = [w.detach().clone() for w in model.weights]
    loss_fn = ScaledSquareLoss(h["margin"], c)
    sub = (x_tr[:config.ph_examples], y_tr[:config.ph_examples])
    history = train_minibatch(model, x_tr, targets, opt, config.steps, h["batch_size"], config.seed)
    traj = TrajectoryRecorder(model, keep=config.ph_n_max, loss_fn=loss_fn, data=sub)
    history += train_minibatch(model, x_tr, targets, opt, config.ph_n_max, h["batch_size"], config.seed + 1,
                               hook=traj.record)
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
                    "ph_n": ph_euclid["n"].tolist(), "minibatch_loss_last": history[-1]},
        "train_s": train_s,
        "probe_s": probe_s,
    }
