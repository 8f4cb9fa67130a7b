"""Declarative experiment definitions.

An experiment is an :class:`ExperimentConfig` (data task, architecture, optimiser, margins,
seeds, ensemble sizes, schedule); :func:`get_experiment` returns it at a named scale:

``paper``  the paper's settings (needs a GPU to finish in reasonable time);
``quick``  same task, depth and learning-rate schedule, smaller width and fewer margins:
           a few minutes on a 2-core CPU;
``smoke``  a seconds-long version for tests and CI (smaller everything).

Every experiment has the same shape: a config class (:class:`ExperimentConfig` or a
subclass adding its own fields), a factory per name in :data:`EXPERIMENTS`, and three hooks
on the config that the sweep and the CLI call: :meth:`~ExperimentConfig.units` (the units of
work, plain dicts), :meth:`~ExperimentConfig.unit_function` (a top-level function
``fn(config, task, unit, device) -> record``, picklable, run by
:func:`validation.sweep.run_sweep`) and :meth:`~ExperimentConfig.compare` (the comparison
files written from the records).  ``minnorm`` (:mod:`validation.minnorm_experiment`) and
``large_batch`` (:mod:`validation.large_batch`) are subclasses.

The unit of work of ``fig6`` is one (margin, seed): ``members`` networks trained together as
one batched ensemble, member ``j`` with seed ``1000 * seed + j``.  Ensemble accuracies for a
size ``k`` are measured on the disjoint groups ``{0..k-1}, {k..2k-1}, ...`` of those members
(``members // k`` groups), so every member is used for every ``k``; the group of the first
``k`` members is one of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from gpmargin.errors import GpmarginError
from validation.fields import Field, check_fields, choice, integer, listed, number, optional, parse_overrides, text
from validation.train import LOSSES, OPTIMIZERS

SCALES = ("quick", "paper", "smoke")
#: ``mlp``: the paper's MLP in the standard parameterisation; ``ntk-mlp``: the same network
#: (``paper_mlp(depth).network(...)``) in the NTK parameterisation, for gradient descent
MODELS = ("mlp", "ntk-mlp")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    scale: str
    # data
    dataset: str = "mnist"
    task: str = "parity"
    n_train: int = 1000
    n_test: int | None = 9000
    data_seed: int = 0
    carve_from: str = "auto"
    # architecture
    model: str = "mlp"
    depth: int = 5
    width: int = 2048
    # optimisation
    optimizer: str = "nero"
    loss: str = "norm"
    lr: float = 0.01
    decay: float = 0.99
    steps: int = 500
    tol: float | None = None
    dtype: str = "float32"
    # sweep
    margins: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0,)
    members: int = 16
    ensembles: tuple[int, ...] = (1, 2, 4, 8, 16)
    # theory: "nngp" (NNGP predictions, Nero-trained nets) or "ntk" (gradient-descent predictions)
    gp_kind: str = "nngp"

    #: whether the experiment's units are indexed by margin (``margins`` must be non-empty)
    needs_margins: ClassVar[bool] = True
    #: what every field ``--set`` may change can hold (see :mod:`validation.fields`); set below
    FIELDS: ClassVar[dict[str, Field]]

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["margins"] = [float(m) for m in self.margins]
        d["seeds"] = [int(s) for s in self.seeds]
        d["ensembles"] = [int(k) for k in self.ensembles]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        d = dict(d)
        if cls is ExperimentConfig and d.get("name") in EXPERIMENTS:
            cls = type(EXPERIMENTS[d["name"]](d["scale"]))  # the experiment's own config class
        for key, f in ((f.name, f) for f in dataclasses.fields(cls)):
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        return cls(**d)

    # --------------------------------------------------------- hooks of the sweep and the CLI
    def units(self) -> list[dict[str, Any]]:
        """The units of work: ``{"margin_index", "margin", "seed"}``, seeds outermost."""
        return [{"margin_index": i, "margin": float(m), "seed": int(s)}
                for s in self.seeds for i, m in enumerate(self.margins)]

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        """What identifies a unit (or the record it produced) when a sweep resumes."""
        return (repr(float(unit["margin"])), int(unit["seed"]))

    def memory_estimate(self) -> int:
        """Bytes one unit's networks need at the least: weights, gradients and two optimiser
        buffers of ``members`` networks with ``depth - 1`` square ``width x width`` layers."""
        item = 4 if self.dtype == "float32" else 8
        return 4 * item * self.members * max(self.depth - 1, 1) * self.width ** 2

    def lr_key(self) -> str:
        """The ``--set`` key of the learning rate a unit trains with."""
        return "lr"

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Extra settings of ``make_optimizer(model, optimizer, lr, **kwargs)`` (none here)."""
        return {}

    def unit_function(self) -> Callable:
        """Top-level ``fn(config, task, unit, device) -> record`` that runs one unit."""
        from validation.sweep import margin_unit

        return margin_unit

    def compare(self, out, records: list[dict], task=None, device=None, verbose: bool = True) -> dict[str, Any]:
        """Write the comparison files in ``out`` (here: ``validation.compare.compare``)."""
        from validation.compare import compare

        return compare(self, out, records, task=task, device=device, verbose=verbose)

    def config_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the canonical JSON of the config."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, assignments: Sequence[str]) -> "ExperimentConfig":
        """A copy with fields set from ``KEY=VALUE`` strings (the CLI's ``--set``), e.g.
        ``width=2048``, ``members=4``, ``margins=1e-3:1e1:7`` (or ``0.1,1,10``),
        ``seeds=0,1``, ``ensembles=1,2,4``, ``n_test=none``.  The result is validated."""
        return dataclasses.replace(self, **parse_overrides(assignments, self.FIELDS))

    def overrides(self) -> dict[str, Any]:
        """Fields that differ from the named experiment at this scale (what ``--set`` changed)."""
        base = EXPERIMENTS[self.name](self.scale).to_dict() if self.name in EXPERIMENTS else {}
        return {k: v for k, v in self.to_dict().items() if k in base and base[k] != v and k != "seeds"}

    def with_seed(self, seed: int) -> "ExperimentConfig":
        """The same experiment with network seeds ``seed, seed + 1, ...`` (as many as before)."""
        return dataclasses.replace(self, seeds=tuple(int(seed) + i for i in range(len(self.seeds))))


def validate_config(c: ExperimentConfig) -> None:
    """Raise :class:`GpmarginError` naming the first bad field (each field against its
    declaration in ``FIELDS``, then what involves several)."""
    if c.scale not in SCALES:
        raise GpmarginError(f"unknown scale {c.scale!r}: use one of {', '.join(SCALES)}")
    check_fields(c, c.FIELDS)
    if c.needs_margins and not c.margins:
        raise GpmarginError("an experiment needs at least one margin")
    if any(k > c.members for k in c.ensembles):
        raise GpmarginError(f"ensemble sizes {c.ensembles} must lie in [1, members={c.members}]")


def _ensembles(v: str) -> tuple[int, ...]:
    from gpmargin.predict.inputs import parse_ensemble

    return parse_ensemble(v)


def _margins(v: str) -> tuple[float, ...]:
    from gpmargin.predict.inputs import parse_margins

    if v.lower() == "auto":
        raise GpmarginError("a sweep needs explicit margins: LO:HI:N or a comma list")
    return tuple(float(m) for m in parse_margins(v))


POSITIVE = number(0, above=True)
#: the fields of every experiment (subclasses add their own)
ExperimentConfig.FIELDS = {
    "dataset": text(), "task": text(), "n_train": integer(1), "n_test": optional(integer(1)),
    "data_seed": integer(0), "carve_from": optional(choice("auto", "train", "test")), "model": choice(*MODELS),
    "depth": integer(1), "width": integer(1), "optimizer": choice(*OPTIMIZERS), "loss": choice(*LOSSES),
    "lr": POSITIVE, "decay": number(0, 1, above=True), "steps": integer(1), "tol": optional(POSITIVE),
    "dtype": choice("float32", "float64"),
    "margins": Field(_margins, listed(POSITIVE, empty=True).ok, "LO:HI:N or a comma list of positive finite numbers"),
    "seeds": listed(integer(0), distinct=True), "members": integer(1),
    "ensembles": Field(_ensembles, listed(integer(1)).ok, "a comma list of ensemble sizes >= 1 (at most members)"),
    "gp_kind": choice("nngp", "ntk"),
}


def _logspace(lo: float, hi: float, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.logspace(lo, hi, n))


def fig6(scale: str) -> ExperimentConfig:
    """Fig 6: MNIST parity, depth-5 MLP trained with constrained Nero at 20 margins.

    Paper: 1000 train / 9000 test images (here carved from MNIST's test split when the
    training split is absent), width 2048, lr 0.01 decayed by 0.99 per step, 500 steps,
    margins ``logspace(-3, 1, 20)``, ensembles of 1, 2, 4, 8, 16 networks.
    """
    common = dict(name="fig6", dataset="mnist", task="parity", depth=5, optimizer="nero", loss="norm",
                  lr=0.01, decay=0.99, steps=500)
    if scale == "paper":
        return ExperimentConfig(scale="paper", n_train=1000, n_test=9000, width=2048,
                                margins=_logspace(-3, 1, 20), seeds=(0, 1, 2), members=16,
                                ensembles=(1, 2, 4, 8, 16), **common)
    if scale == "quick":
        # same data, depth and lr schedule; width 256, 7 margins, one seed of 8 members
        return ExperimentConfig(scale="quick", n_train=1000, n_test=9000, width=256,
                                margins=_logspace(-3, 1, 7), seeds=(0,), members=8,
                                ensembles=(1, 2, 4, 8), **common)
    if scale == "smoke":
        common.update(depth=3, steps=150)
        return ExperimentConfig(scale="smoke", n_train=200, n_test=1000, width=64,
                                margins=(0.01, 0.3, 3.0), seeds=(0,), members=4, ensembles=(1, 2, 4), **common)
    raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")


def gd(scale: str) -> ExperimentConfig:
    """Gradient descent against its infinite-width theory (Lee et al. 2019).

    MNIST parity (1000 train / 9000 test, as fig6), the depth-3 paper MLP (no biases, sqrt(2)
    ReLU) in the NTK parameterisation (``paper_mlp(3).network(width, parameterization="ntk")``),
    full-batch gradient descent with a constant learning rate on ``(1/2) mean((f(X) - alpha y)^2)``
    -- neural-tangents' loss, so ``steps`` steps of size ``lr`` are its time ``t = steps`` with
    learning rate ``lr`` (:func:`trained_time`).  ``lr = 1`` is stable: the largest NTK eigenvalue
    on this split is 1067 = 1.07 N, below 2 N.  Margins from chance (0.01) to the limit (6.3,
    where the predicted accuracy is within 0.1 point of its alpha -> inf value) every 0.7 decade;
    the next one, 31.6, diverges with lr 1 at widths 128 and 512 (docs/gd_gap.md).  Ensembles 1-8.
    Predictions: NNGP posterior, gradient descent at t = inf and at t = steps.
    """
    margins = _logspace(-2, 1.5, 6)[:5]  # 0.01 ... 6.31 (these exact floats: the committed runs')
    common = dict(name="gd", dataset="mnist", task="parity", depth=3, model="ntk-mlp", optimizer="sgd",
                  loss="half_mse", lr=1.0, decay=1.0, gp_kind="ntk")
    if scale == "paper":
        return ExperimentConfig(scale="paper", n_train=1000, n_test=9000, width=4096, steps=300,
                                margins=_logspace(-2, 0.8, 9), seeds=(0, 1), members=8, ensembles=(1, 2, 4, 8),
                                **common)
    if scale == "quick":
        return ExperimentConfig(scale="quick", n_train=1000, n_test=9000, width=512, steps=300,
                                margins=margins, seeds=(0,), members=8, ensembles=(1, 2, 4, 8), **common)
    if scale == "smoke":
        return ExperimentConfig(scale="smoke", n_train=200, n_test=1000, width=128, steps=60,
                                margins=(0.03, 0.3, 3.0), seeds=(0,), members=4, ensembles=(1, 2, 4), **common)
    raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")


def trained_time(config: ExperimentConfig) -> tuple[float, float]:
    """``(time, learning_rate)`` of neural-tangents' gradient flow that ``config``'s training is.

    ``steps`` gradient steps of size ``lr * decay**s`` on ``(1/2) mean((f - alpha y)^2)`` (the
    ``half_mse`` loss, NT's normalisation) move the linearised network by ``exp(-lr * T * Theta / N)``
    to first order in the step, with ``T = sum_{s < steps} decay**s`` (``= steps`` without decay).
    """
    d = float(config.decay)
    T = float(config.steps) if d == 1.0 else (1.0 - d ** config.steps) / (1.0 - d)
    return T, float(config.lr)



def _minnorm(scale: str) -> ExperimentConfig:
    from validation.minnorm_experiment import minnorm

    return minnorm(scale)


def _large_batch(scale: str) -> ExperimentConfig:
    from validation.large_batch import large_batch

    return large_batch(scale)


def _measures(scale: str):
    from validation.population import measures

    return measures(scale)


EXPERIMENTS: dict[str, Callable[[str], ExperimentConfig]] = {"fig6": fig6, "gd": gd, "minnorm": _minnorm,
                                                               "large_batch": _large_batch,
                                                               "measures": _measures}


def get_experiment(name: str, scale: str = "quick") -> ExperimentConfig:
    """The experiment ``name`` at ``scale``; unknown names or scales raise GpmarginError."""
    if name not in EXPERIMENTS:
        raise GpmarginError(f"unknown experiment {name!r}: available: {', '.join(sorted(EXPERIMENTS))}")
    if scale not in SCALES:
        raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    return EXPERIMENTS[name](scale)
