"""Margin sweeps: ensembles of networks trained at each margin and compared with a prediction.

:class:`MarginSweep` is the experiment kind of ``fig6``, ``gd`` and ``minnorm``: the unit of
work is one (margin, seed), ``members`` networks trained together as one batched ensemble
(member ``j`` with seed ``1000 * seed + j``) to targets ``alpha * y`` on the seed's own data split
(split seed ``data_seed + seed``, so seeds are independent repetitions)
(:func:`validation.training.ensemble.margin_record`), and the report sets their accuracies
against the GP theory (:func:`validation.theory.comparison.compare`).  Ensemble accuracies for
a size ``k`` are measured on the disjoint groups ``{0..k-1}, {k..2k-1}, ...`` of the members
(``members // k`` groups), so every member is used for every ``k``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from gpmargin.errors import GpmarginError
from validation.harness.experiment import DATA_FIELDS, POSITIVE, Experiment
from validation.harness.fields import Field, choice, integer, listed, number, optional
from validation.training.fullbatch import OPTIMIZERS
from validation.training.losses import LOSSES

#: ``mlp``: the paper's MLP in the standard parameterisation; ``ntk-mlp``: the same network
#: (``paper_mlp(depth).network(...)``) in the NTK parameterisation, for gradient descent
MODELS = ("mlp", "ntk-mlp")
#: the trained architecture (``depth`` is its depth): ``mlp`` the paper's MLP on flattened inputs;
#: ``wide_resnet`` (depth 6n + 4) and ``myrtle`` (depth 5, 7, 10) the gpmargin presets on images,
#: whose kernel is the theory and whose ``network()`` the trained networks (``model``: ``mlp``
#: standard parameterisation, ``ntk-mlp`` NTK parameterisation)
ARCHS = ("mlp", "wide_resnet", "myrtle")


def _ensembles(v: str) -> tuple[int, ...]:
    from gpmargin.predict.inputs import parse_ensemble

    return parse_ensemble(v)


def _margins(v: str) -> tuple[float, ...]:
    from gpmargin.predict.inputs import parse_margins

    if v.lower() == "auto":
        raise GpmarginError("a sweep needs explicit margins: LO:HI:N or a comma list")
    return tuple(float(m) for m in parse_margins(v))


@dataclasses.dataclass(frozen=True)
class MarginSweep(Experiment):
    """Networks trained at controlled margins (module docstring); the data fields plus:

    ``arch``/``model``/``depth``/``width`` the networks; ``optimizer``, ``loss``, ``lr`` (decayed by
    ``decay`` per step), ``steps``, ``tol`` (stop at this relative error) their training;
    ``margins`` x ``seeds`` the units, ``members`` networks per unit, ``ensembles`` the sizes
    measured; ``gp_kind``: ``"nngp"`` (NNGP predictions) or ``"ntk"`` (gradient-descent ones).
    """

    model: str = "mlp"
    arch: str = "mlp"
    depth: int = 5
    width: int = 2048
    optimizer: str = "nero"
    loss: str = "norm"
    lr: float = 0.01
    decay: float = 0.99
    steps: int = 500
    tol: float | None = None
    margins: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0,)
    members: int = 16
    ensembles: tuple[int, ...] = (1, 2, 4, 8, 16)
    gp_kind: str = "nngp"

    FIELDS: ClassVar[dict[str, Field]] = {
        **DATA_FIELDS, "model": choice(*MODELS), "arch": choice(*ARCHS), "depth": integer(1), "width": integer(1),
        "optimizer": choice(*OPTIMIZERS), "loss": choice(*LOSSES), "lr": POSITIVE,
        "decay": number(0, 1, above=True), "steps": integer(1), "tol": optional(POSITIVE),
        "margins": Field(_margins, listed(POSITIVE, empty=True).ok, "LO:HI:N or a comma list of positive finite numbers"),
        "seeds": listed(integer(0), distinct=True), "members": integer(1),
        "ensembles": Field(_ensembles, listed(integer(1)).ok, "a comma list of ensemble sizes >= 1 (at most members)"),
        "gp_kind": choice("nngp", "ntk"),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.margins:
            raise GpmarginError("an experiment needs at least one margin")
        if any(k > self.members for k in self.ensembles):
            raise GpmarginError(f"ensemble sizes {self.ensembles} must lie in [1, members={self.members}]")
        self.kernel()  # a depth the architecture cannot have fails here, naming it

    def kernel(self, constrained: bool = False):
        """The kernel object of the trained networks (``constrained``: with Nero's constraint, MLP only)."""
        from gpmargin import kernels as gk

        if self.arch == "mlp":
            return gk.paper_mlp(self.depth, constrained=constrained)
        if constrained:
            raise GpmarginError(f"arch={self.arch}: the Nero-constrained kernel exists for the MLP only")
        return gk.wide_resnet(self.depth) if self.arch == "wide_resnet" else gk.myrtle(self.depth)

    def load_task(self):
        """The experiment's data split: flattened for the MLP, images for the CNN architectures."""
        from gpmargin.data import make_task

        return make_task(dataset=self.dataset, task=self.task, n_train=self.n_train, n_test=self.n_test,
                         seed=self.data_seed, flatten=self.arch == "mlp", carve_from=self.carve_from)

    def units(self) -> list[dict[str, Any]]:
        """``{"margin_index", "margin", "seed"}``, seeds outermost (a partial sweep covers every margin)."""
        return [{"margin_index": i, "margin": float(m), "seed": int(s)}
                for s in self.seeds for i, m in enumerate(self.margins)]

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        return (repr(float(unit["margin"])), int(unit["seed"]))

    def unit_data(self, unit: dict[str, Any]) -> "MarginSweep":
        """Seed ``s`` draws its own data split, ``data_seed + s``, besides its own networks: repeated
        seeds are independent repetitions of the whole experiment."""
        return self.seed_data(int(unit["seed"]))

    def seed_data(self, seed: int) -> "MarginSweep":
        return self if seed == 0 else dataclasses.replace(self, data_seed=self.data_seed + seed)

    def run_unit(self, task, unit: dict[str, Any], device) -> dict[str, Any]:
        from validation.training.ensemble import margin_record

        return margin_record(self, task, unit["margin"], unit["seed"], device)

    def report(self, out, records: list[dict], task=None, device=None, verbose: bool = True) -> dict[str, Any]:
        from validation.theory.comparison import compare

        return compare(self, out, records, task=task, device=device, verbose=verbose)

    def memory_estimate(self) -> int:
        """Weights, gradients and two optimiser buffers of ``members`` networks with ``depth - 1``
        square ``width x width`` layers."""
        item = 4 if self.dtype == "float32" else 8
        return 4 * item * self.members * max(self.depth - 1, 1) * self.width ** 2

    def memory_note(self) -> tuple[str, str]:
        return (f"width={self.width} (depth {self.depth}, {self.members} members, {self.dtype})",
                "lower width or members with --set")

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Extra settings of ``make_optimizer(model, optimizer, lr, **kwargs)`` (none here)."""
        return {}

    def trained_time(self) -> tuple[float, float]:
        """``(time, learning_rate)`` of neural-tangents' gradient flow that this training is.

        ``steps`` gradient steps of size ``lr * decay**s`` on ``(1/2) mean((f - alpha y)^2)`` (the
        ``half_mse`` loss, NT's normalisation) move the linearised network by
        ``exp(-lr * T * Theta / N)`` to first order in the step, ``T = sum_{s < steps} decay**s``
        (``= steps`` without decay).
        """
        d = float(self.decay)
        T = float(self.steps) if d == 1.0 else (1.0 - d ** self.steps) / (1.0 - d)
        return T, float(self.lr)
