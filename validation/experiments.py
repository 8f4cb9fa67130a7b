"""Declarative experiment definitions.

An experiment is an :class:`ExperimentConfig` (data task, architecture, optimiser, margins,
seeds, ensemble sizes, schedule); :func:`get_experiment` returns it at a named scale:

``paper``  the paper's settings (needs a GPU to finish in reasonable time);
``quick``  same task, depth and learning-rate schedule, smaller width and fewer margins:
           a few minutes on a 2-core CPU;
``smoke``  a seconds-long version for tests and CI (smaller everything).

The unit of work of a sweep is one (margin, seed): ``members`` networks trained together as
one batched ensemble, member ``j`` with seed ``1000 * seed + j``.  Ensemble accuracies for a
size ``k`` are measured on the disjoint groups ``{0..k-1}, {k..2k-1}, ...`` of those members
(``members // k`` groups), so every member is used for every ``k``; the group of the first
``k`` members is one of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Callable, Sequence

import numpy as np

from gpmargin.errors import GpmarginError

SCALES = ("quick", "paper", "smoke")


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
    # theory
    gp_kind: str = "nngp"

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["margins"] = [float(m) for m in self.margins]
        d["seeds"] = [int(s) for s in self.seeds]
        d["ensembles"] = [int(k) for k in self.ensembles]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        d = dict(d)
        for key in ("margins", "seeds", "ensembles"):
            d[key] = tuple(d[key])
        return cls(**d)

    def config_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the canonical JSON of the config."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, assignments: Sequence[str]) -> "ExperimentConfig":
        """A copy with fields set from ``KEY=VALUE`` strings (the CLI's ``--set``), e.g.
        ``width=2048``, ``members=4``, ``margins=1e-3:1e1:7`` (or ``0.1,1,10``),
        ``seeds=0,1``, ``ensembles=1,2,4``, ``n_test=none``.  The result is validated."""
        changes: dict[str, Any] = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in OVERRIDABLE:
                raise GpmarginError(f"--set {item!r}: write KEY=VALUE with KEY one of {', '.join(OVERRIDABLE)}")
            try:
                changes[key] = OVERRIDABLE[key](value)
            except (ValueError, GpmarginError) as exc:
                raise GpmarginError(f"--set {item!r}: {exc}") from None
        return dataclasses.replace(self, **changes)

    def overrides(self) -> dict[str, Any]:
        """Fields that differ from the named experiment at this scale (what ``--set`` changed)."""
        base = EXPERIMENTS[self.name](self.scale).to_dict() if self.name in EXPERIMENTS else {}
        return {k: v for k, v in self.to_dict().items() if k in base and base[k] != v and k != "seeds"}

    def with_seed(self, seed: int) -> "ExperimentConfig":
        """The same experiment with network seeds ``seed, seed + 1, ...`` (as many as before)."""
        return dataclasses.replace(self, seeds=tuple(int(seed) + i for i in range(len(self.seeds))))


def validate_config(c: ExperimentConfig) -> None:
    """Raise :class:`GpmarginError` naming the first bad field."""
    if c.scale not in SCALES:
        raise GpmarginError(f"unknown scale {c.scale!r}: use one of {', '.join(SCALES)}")
    if not c.margins:
        raise GpmarginError("an experiment needs at least one margin")
    for m in c.margins:
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
            raise GpmarginError(f"margins must be positive finite numbers, got {m!r}")
    if c.members < 1 or any(k < 1 or k > c.members for k in c.ensembles):
        raise GpmarginError(f"ensemble sizes {c.ensembles} must lie in [1, members={c.members}]")
    if not c.seeds or len(set(c.seeds)) != len(c.seeds) or any(s < 0 for s in c.seeds):
        raise GpmarginError(f"seeds must be distinct non-negative integers, got {c.seeds}")
    for field_name in ("depth", "width", "n_train"):
        if getattr(c, field_name) < 1:
            raise GpmarginError(f"{field_name} must be a positive integer, got {getattr(c, field_name)}")
    if c.steps < 0:
        raise GpmarginError(f"steps must be a non-negative integer, got {c.steps}")
    if c.model not in ("mlp",):
        raise GpmarginError(f"unknown model {c.model!r} for a sweep: use 'mlp'")
    if c.dtype not in ("float32", "float64"):
        raise GpmarginError(f"dtype must be 'float32' or 'float64', got {c.dtype!r}")
    from validation.train import LOSSES, OPTIMIZERS

    if c.optimizer not in OPTIMIZERS:
        raise GpmarginError(f"unknown optimizer {c.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if c.loss not in LOSSES:
        raise GpmarginError(f"unknown loss {c.loss!r}: use one of {', '.join(LOSSES)}")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda v: None if v.lower() == "none" else parse(v)


def _int_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split(","))
    except ValueError:
        raise GpmarginError(f"expected comma-separated integers, got {v!r}") from None


def _ensembles(v: str) -> tuple[int, ...]:
    from gpmargin.predict.inputs import parse_ensemble

    return parse_ensemble(v)


def _margins(v: str) -> tuple[float, ...]:
    from gpmargin.predict.inputs import parse_margins

    if v.lower() == "auto":
        raise GpmarginError("a sweep needs explicit margins: LO:HI:N or a comma list")
    return tuple(float(m) for m in parse_margins(v))


#: fields ``--set`` may change, with the parser of their value
OVERRIDABLE: dict[str, Callable[[str], Any]] = {
    "dataset": str, "task": str, "n_train": int, "n_test": _optional(int), "data_seed": int,
    "carve_from": str, "depth": int, "width": int, "optimizer": str, "loss": str, "lr": float,
    "decay": float, "steps": int, "tol": _optional(float), "dtype": str, "margins": _margins,
    "seeds": _int_tuple, "members": int, "ensembles": _ensembles, "gp_kind": str,
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


EXPERIMENTS: dict[str, Callable[[str], ExperimentConfig]] = {"fig6": fig6}


def get_experiment(name: str, scale: str = "quick") -> ExperimentConfig:
    """The experiment ``name`` at ``scale``; unknown names or scales raise GpmarginError."""
    if name not in EXPERIMENTS:
        raise GpmarginError(f"unknown experiment {name!r}: available: {', '.join(sorted(EXPERIMENTS))}")
    if scale not in SCALES:
        raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    return EXPERIMENTS[name](scale)
