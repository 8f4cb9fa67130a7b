"""The protocol every experiment follows: :class:`Experiment`.

An experiment is a frozen dataclass whose fields are its whole configuration (data, networks,
training, theory), so a config is plain data: saved as JSON (:meth:`~Experiment.to_dict`),
hashed (:meth:`~Experiment.config_hash`) to tell one sweep's results from another's, and changed
field by field from the command line (``--set KEY=VALUE``, :meth:`~Experiment.with_overrides`,
each field checked by its declaration in ``FIELDS``, :mod:`validation.harness.fields`).

The methods are the protocol the sweep (:func:`validation.harness.sweep.run_sweep`) and the CLI
call, the same for every experiment:

==============================  ==========================================================
``at_scale(scale)``             the experiment at ``smoke`` (tests), ``quick`` (a 2-core CPU)
                                or ``paper`` (the paper's settings, a GPU); from ``settings``
``units()``                     the units of work, plain dicts (one network, one ensemble...)
``unit_key(unit)``              what identifies a unit, or the record it produced, on resume
``run_unit(task, unit, dev)``   train and measure one unit; returns its record (a dict)
``report(out, records, ...)``   the comparison files written from all records
``load_task()``                 the data split (``gpmargin.data.make_task``); ``unit_data(unit)``
                                the config whose split a unit trains on
==============================  ==========================================================

Adding an experiment is one module in :mod:`validation.experiments` with a subclass (``name``,
``summary``, its fields, ``FIELDS``, ``settings`` and the protocol methods) and one line in
:mod:`validation.registry`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar, Sequence

import numpy as np

from gpmargin.errors import GpmarginError
from validation.harness.fields import Field, check_fields, choice, integer, number, optional, parse_overrides, text

SCALES = ("quick", "paper", "smoke")
POSITIVE = number(0, above=True)
#: the data fields every experiment has (``make_task``'s arguments)
DATA_FIELDS: dict[str, Field] = {
    "dataset": text(), "task": text(), "n_train": integer(1), "n_test": optional(integer(1)),
    "data_seed": integer(0), "carve_from": optional(choice("auto", "train", "test")),
    "dtype": choice("float32", "float64"),
}


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    return scale


def logspace(lo: float, hi: float, n: int) -> tuple[float, ...]:
    """``n`` margins ``10**lo .. 10**hi`` as Python floats (the exact values every committed sweep used)."""
    return tuple(float(v) for v in np.logspace(lo, hi, n))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Base of every experiment (module docstring): the data fields and the protocol."""

    #: the experiment's name (``gpmargin validate NAME``; files ``DIR/NAME-*``)
    name: ClassVar[str] = ""
    #: one line for ``gpmargin validate --help``
    summary: ClassVar[str] = ""
    #: what every field ``--set`` may change can hold
    FIELDS: ClassVar[dict[str, Field]] = DATA_FIELDS
    #: fields a change of which is not an "override" of the named experiment (``--seed`` sets them)
    SEED_FIELDS: ClassVar[tuple[str, ...]] = ("seeds",)

    scale: str
    dataset: str = "mnist"
    task: str = "parity"
    n_train: int = 1000
    n_test: int | None = 9000
    data_seed: int = 0
    carve_from: str | None = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_scale(self.scale)
        check_fields(self, self.FIELDS)

    # ------------------------------------------------------------------ config as data
    @classmethod
    def settings(cls, scale: str) -> dict[str, Any]:
        """The fields that make the named experiment at ``scale`` (subclasses say which)."""
        raise NotImplementedError

    @classmethod
    def at_scale(cls, scale: str) -> "Experiment":
        """The named experiment at ``scale`` (one of :data:`SCALES`)."""
        return cls(scale=check_scale(scale), **cls.settings(scale))

    def to_dict(self) -> dict[str, Any]:
        """Every field (tuples as lists) and the experiment's ``name``: what is saved and hashed."""
        d = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        """The config :meth:`to_dict` wrote (lists back to tuples); ``name`` must be this experiment's."""
        d = dict(d)
        name = d.pop("name", cls.name)
        if name != cls.name:
            raise GpmarginError(f"a config of experiment {name!r} is not one of {cls.name!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise GpmarginError(f"{cls.name} has no field(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def config_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, assignments: Sequence[str]) -> "Experiment":
        """A copy with fields set from ``KEY=VALUE`` strings (the CLI's ``--set``), e.g.
        ``width=2048``, ``margins=1e-3:1e1:7`` (or ``0.1,1,10``), ``seeds=0,1``, ``n_test=none``;
        every value is checked by its field and the result validated."""
        return dataclasses.replace(self, **parse_overrides(assignments, self.FIELDS))

    def overrides(self) -> dict[str, Any]:
        """Fields that differ from the named experiment at this scale (what ``--set`` changed)."""
        base = type(self).at_scale(self.scale).to_dict()
        return {k: v for k, v in self.to_dict().items()
                if k in base and base[k] != v and k not in self.SEED_FIELDS}

    def with_seed(self, seed: int) -> "Experiment":
        """The same experiment with network seeds ``seed, seed + 1, ...`` (as many as before)."""
        return dataclasses.replace(self, seeds=tuple(int(seed) + i for i in range(len(self.seeds))))

    # ------------------------------------------------------------------ the protocol
    def load_task(self):
        """The experiment's data split (``gpmargin.data.make_task``, flattened)."""
        from gpmargin.data import make_task

        return make_task(dataset=self.dataset, task=self.task, n_train=self.n_train, n_test=self.n_test,
                         seed=self.data_seed, flatten=True, carve_from=self.carve_from)

    def task_key(self) -> tuple:
        """What identifies the data split (a worker keeps one split per key)."""
        return (self.dataset, self.task, self.n_train, self.n_test, self.data_seed, self.carve_from)

    def unit_data(self, unit: dict[str, Any]) -> "Experiment":
        """The config whose :meth:`load_task` is ``unit``'s data split (default: one split for all)."""
        return self

    def units(self) -> list[dict[str, Any]]:
        """The units of work, plain dicts, in the order they run."""
        raise NotImplementedError

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        """What identifies a unit (or the record it produced) when a sweep resumes."""
        raise NotImplementedError

    def run_unit(self, task, unit: dict[str, Any], device) -> dict[str, Any]:
        """Train and measure one unit on ``task`` (:meth:`load_task`); returns its record."""
        raise NotImplementedError

    def report(self, out, records: list[dict], task=None, device=None, verbose: bool = True) -> dict[str, Any]:
        """Write the experiment's result files ``out/NAME-*`` from ``records``; returns the summary
        (with ``files``)."""
        raise NotImplementedError

    def memory_estimate(self) -> int:
        """Bytes one unit needs at the least (the sweep refuses a unit that cannot fit); 0: unknown."""
        return 0

    def memory_note(self) -> tuple[str, str]:
        """What :meth:`memory_estimate` counts and how to lower it, for the error that refuses a unit."""
        return f"one unit of {self.name}", "make its networks smaller with --set"

    def lr_key(self) -> str:
        """The ``--set`` key of the learning rate a unit trains with (named in divergence errors)."""
        return "lr"
