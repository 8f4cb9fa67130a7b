"""The predictions a margin sweep is compared with, each one :class:`gpmargin.predict.MarginPredictor`.

Which ones depend on how the networks were trained (``config.gp_kind``, :data:`PREDICTIONS`):

* ``"nngp"`` (Nero with constraints, fig6): the paper's NNGP posterior with the paper's kernel
  (``paper_mlp(depth)``) and with the exact kernel of Nero-constrained networks;
* ``"ntk"`` (gradient descent on the squared error, ``gd``): the NNGP posterior, the
  gradient-descent prediction at infinite time and at the time actually trained
  (``config.trained_time()``), see :mod:`gpmargin.predict.gradient`.

Each seed of a sweep trains on its own data split, so each prediction is made per seed and
averaged (:class:`SeedAveraged`).
"""

from __future__ import annotations

import numpy as np

#: per ``config.gp_kind``: (column, legend label, kernel constrained?, prediction kind, at the trained time?)
PREDICTIONS: dict[str, tuple[tuple[str, str, bool, str, bool], ...]] = {
    "nngp": (("gp_accuracy", "NNGP, paper kernel", False, "nngp", False),
             ("gp_constrained_accuracy", "NNGP, constrained kernel", True, "nngp", False)),
    "ntk": (("nngp_accuracy", "NNGP posterior", False, "nngp", False),
            ("ntk_accuracy", "gradient descent, t = ∞", False, "ntk", False),
            ("ntk_time_accuracy", "gradient descent at the trained time", False, "ntk", True)),
}


def columns(config) -> list[str]:
    """Prediction columns of this experiment's comparison."""
    return [c[0] for c in prediction_specs(config)]


def prediction_specs(config) -> tuple:
    """The rows of :data:`PREDICTIONS` this experiment has (the constrained kernel: MLPs only)."""
    mlp = getattr(config, "arch", "mlp") == "mlp"
    return tuple(spec for spec in PREDICTIONS[config.gp_kind] if mlp or not spec[2])


class Predictor:
    """One row of :data:`PREDICTIONS` for the experiment's split: its ``column``, ``label``,
    ``kind``, ``time`` and the :class:`~gpmargin.predict.MarginPredictor` (``predictor``) that
    gives exact accuracies at any margins from one posterior."""

    def __init__(self, config, task, spec, device=None):
        from gpmargin.predict import MarginPredictor

        self.column, self.label, constrained, self.kind, at_time = spec
        self.time, self.learning_rate = config.trained_time() if at_time else (None, 1.0)
        if at_time:
            self.label = f"gradient descent at t = {self.time:g} (lr {self.learning_rate:g})"
        arch = getattr(config, "arch", "mlp")
        if arch != "mlp":  # the preset's kernel, not the paper's MLP
            self.label = self.label.replace("paper kernel", f"{arch.replace('_', ' ')} kernel")
        self.predictor = MarginPredictor(
            config.kernel(constrained), np.asarray(task.x_train), np.asarray(task.y_train),
            np.asarray(task.x_test), np.asarray(task.y_test), kind=self.kind, time=self.time,
            learning_rate=self.learning_rate, ensemble=config.ensembles, device=device)
        self.posterior = self.predictor.posterior

    def accuracy(self, margins) -> np.ndarray:
        """Predicted test accuracy ``(len(ensembles), len(margins))`` in the caller's margin order."""
        return self.predictor.accuracy(margins)

    def train_fit(self, margins) -> dict[str, list[float]]:
        """Predicted training accuracy and relative error of one network (see
        :meth:`gpmargin.predict.MarginPredictor.train_fit`)."""
        return self.predictor.train_fit(margins)


class SeedAveraged:
    """One prediction over the seeds of a sweep, each seed with its own data split: the mean over
    seeds of the per-seed predictions (the expected accuracy over data draws); ``per_seed`` keeps
    them (``{seed: Predictor}``).  With one seed it is that seed's prediction exactly."""

    def __init__(self, per_seed: dict[int, Predictor]):
        self.per_seed = per_seed
        first = next(iter(per_seed.values()))
        self.column, self.label, self.kind = first.column, first.label, first.kind
        self.time, self.learning_rate = first.time, first.learning_rate
        self.jitter = max(float(p.posterior.jitter) for p in per_seed.values())

    def accuracy(self, margins) -> np.ndarray:
        return np.mean([p.accuracy(margins) for p in self.per_seed.values()], axis=0)

    def train_fit(self, margins) -> dict[str, list[float]]:
        fits = [p.train_fit(margins) for p in self.per_seed.values()]
        return {k: [float(v) for v in np.mean([f[k] for f in fits], axis=0)] for k in fits[0]}

    def limit_accuracy(self) -> float:
        """Accuracy as ``alpha -> inf``, averaged over seeds."""
        return float(np.mean([p.predictor.curve([1.0]).limit_accuracy for p in self.per_seed.values()]))


def predictors(config, task=None, device=None) -> dict[str, SeedAveraged]:
    """``{column: SeedAveraged}`` for the experiment's predictions (see :data:`PREDICTIONS`), one
    per seed on the seed's data split (``config.seed_data(seed)``; ``task``: ``config.load_task()``
    when the caller has it, used for the seed whose split it is)."""
    per_seed: dict[str, dict[int, Predictor]] = {spec[0]: {} for spec in prediction_specs(config)}
    for seed in config.seeds:
        data = config.seed_data(seed)
        split = task if (task is not None and data is config) else data.load_task()
        for spec in prediction_specs(config):
            per_seed[spec[0]][int(seed)] = Predictor(config, split, spec, device)
    return {c: SeedAveraged(p) for c, p in per_seed.items()}


def predicted_accuracy(config, task, device=None, margins=None) -> dict[str, np.ndarray]:
    """``{column: accuracy[len(ensembles), len(margins)]}`` (``margins`` default: the experiment's)."""
    margins = list(config.margins) if margins is None else [float(m) for m in margins]
    return {c: p.accuracy(margins) for c, p in predictors(config, task, device).items()}
