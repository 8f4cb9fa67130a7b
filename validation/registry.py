"""The experiments ``gpmargin validate`` knows, by name.

Each experiment is one module of :mod:`validation.experiments` whose ``EXPERIMENT`` is an
:class:`~validation.harness.experiment.Experiment` subclass; adding one is that module and its
entry in :data:`BUILT_IN`.  :func:`register` adds an experiment defined elsewhere (a user's, a
test's) for this process.
"""

from __future__ import annotations

from typing import Any

from gpmargin.errors import GpmarginError
from validation.experiments import fig6, gd, large_batch, measures, minnorm
from validation.harness.experiment import Experiment, check_scale

#: the experiments of the package, in the order ``gpmargin validate --help`` lists them
BUILT_IN = (fig6, gd, minnorm, large_batch, measures)

EXPERIMENTS: dict[str, type[Experiment]] = {}


def register(cls: type[Experiment]) -> type[Experiment]:
    """Add ``cls`` (an :class:`Experiment` subclass with a ``name``) to :data:`EXPERIMENTS`; returns it."""
    if not (isinstance(cls, type) and issubclass(cls, Experiment) and cls.name):
        raise GpmarginError(f"{cls!r} is not an Experiment subclass with a name")
    known = EXPERIMENTS.get(cls.name)
    if known is not None and known is not cls:
        raise GpmarginError(f"an experiment named {cls.name!r} is registered already ({known.__module__})")
    EXPERIMENTS[cls.name] = cls
    return cls


for _module in BUILT_IN:
    register(_module.EXPERIMENT)


def experiment_class(name: str) -> type[Experiment]:
    if name not in EXPERIMENTS:
        raise GpmarginError(f"unknown experiment {name!r}: available: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def get_experiment(name: str, scale: str = "quick") -> Experiment:
    """The experiment ``name`` at ``scale``; unknown names or scales raise GpmarginError."""
    cls = experiment_class(name)
    return cls.at_scale(check_scale(scale))


def experiment_from_dict(d: dict[str, Any]) -> Experiment:
    """The config a state folder's ``config.json`` holds (``Experiment.to_dict``), as its experiment's class."""
    return experiment_class(d.get("name", "")).from_dict(d)
