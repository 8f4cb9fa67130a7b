"""The predicted test-accuracy curve: :class:`MarginCurve`, its files (CSV, JSON) and its plot.

Computed by :func:`gpmargin.predict.margin_curve` / :class:`gpmargin.predict.MarginPredictor`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpmargin.errors import GpmarginError
from gpmargin.predict.margin_grid import margin_at_fraction

__all__ = ["MarginCurve"]


@dataclass
class MarginCurve:
    """Predicted test accuracy of networks trained to each margin.

    Attributes
    ----------
    margins : (A,) float64 array
        Margins ``alpha``.
    ensemble : tuple of int
        Ensemble sizes ``k`` (the prediction of a ``k``-network average; ``k = 1`` is a
        single "Gibbs" network).
    accuracy : (K, A) array
        Expected test accuracy, ``accuracy[j, a]`` for ``ensemble[j]`` and ``margins[a]``.
    limit_accuracy : float
        Accuracy as ``alpha -> inf`` (the kernel interpolator ``argmax / sign`` of the
        posterior mean), the same for every ensemble size.
    per_example : (K, A, m) array
        Probability that each test point is classified correctly.
    limit_per_example : (m,) array
        The same as ``alpha -> inf`` (1, 0, or a tie share).
    jitter : float
        Jitter added to the training kernel's diagonal (0.0 if none was needed).
    num_classes : int
        2 for +-1 labels, else the number of classes; chance accuracy is ``1 / num_classes``.
    kind : str
        Prediction: ``"nngp"``, ``"ntk"`` (gradient-descent ensemble) or ``"ntkgp"`` (NTK as GP covariance).
    time, learning_rate : float or None, float
        Training time (None: to convergence) and step size of the gradient-descent kinds.
    train_accuracy : (K, A) array or None
        Predicted accuracy on the training set at ``time`` (gradient-descent kinds; 1 at
        infinite time, where the training outputs equal ``alpha * y``).
    mean, std : arrays
        Posterior mean for ``alpha = 1`` ((m,) binary, (m, C) multi-class) and standard deviation (m,).
    margins_rule : str
        ``"given"`` or a description of the automatic choice.
    timings : dict
        Seconds per stage.
    info : dict
        Free-form JSON-able description (data, architecture, ...), saved by :meth:`to_json`.
    """

    margins: np.ndarray
    ensemble: tuple[int, ...]
    accuracy: np.ndarray
    limit_accuracy: float
    per_example: np.ndarray
    limit_per_example: np.ndarray
    jitter: float
    num_classes: int
    kind: str = "nngp"
    time: float | None = None
    learning_rate: float = 1.0
    train_accuracy: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    margins_rule: str = "given"
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        """Chance accuracy ``1 / num_classes``."""
        return 1.0 / self.num_classes

    @property
    def rises_above_chance(self) -> bool:
        """Whether the ``alpha -> inf`` limit is above chance.  Only then does the curve rise from
        chance to a limit and :func:`margin_at_fraction` (the half-way margin) mean anything."""
        return bool(self.limit_accuracy > self.chance + 1e-12)

    def not_above_chance_note(self) -> str | None:
        """A sentence saying the curve is meaningless when its limit is not above chance, else None."""
        if self.rises_above_chance:
            return None
        return (f"the alpha -> inf limit accuracy {self.limit_accuracy:.4f} is not above chance {self.chance:.3g}: "
                "the GP does not beat guessing on this task (too few or uninformative training examples), "
                "so the curve is meaningless and has no half-way margin")

    @property
    def n_test(self) -> int:
        return int(self.per_example.shape[-1])

    def row(self, ensemble: int = 1) -> np.ndarray:
        """The accuracy curve (A,) for one ensemble size."""
        if int(ensemble) not in self.ensemble:
            raise GpmarginError(f"ensemble size {ensemble} is not in this curve (it has {list(self.ensemble)})")
        return self.accuracy[self.ensemble.index(int(ensemble))]

    # ------------------------------------------------------------------ output
    def rows(self) -> list[dict[str, Any]]:
        """One record per (ensemble size, margin)."""
        out = []
        for j, k in enumerate(self.ensemble):
            for a, alpha in enumerate(self.margins):
                out.append(
                    {
                        "margin": float(alpha),
                        "ensemble": int(k),
                        "accuracy": float(self.accuracy[j, a]),
                        "limit_accuracy": float(self.limit_accuracy),
                        "chance": self.chance,
                        "kind": self.kind,
                        "time": math.inf if self.time is None else float(self.time),
                        "learning_rate": float(self.learning_rate),
                    }
                )
                if self.train_accuracy is not None:
                    out[-1]["train_accuracy"] = float(self.train_accuracy[j, a])
        return out

    def to_csv(self, path) -> Path:
        """Write ``margin,ensemble,accuracy,limit_accuracy,chance,kind,time,learning_rate``
        (``time`` is ``inf`` when trained to convergence; plus ``train_accuracy`` when known),
        one row per pair, atomically."""
        from gpmargin.io import atomic_write_text

        if Path(path).is_dir():
            raise GpmarginError(f"to_csv: {path} is a folder; give a file path such as {Path(path) / 'curve.csv'}")
        buf = io.StringIO()
        rows = self.rows()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        return atomic_write_text(path, buf.getvalue())

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        """JSON-able summary; per-test-point arrays only with ``per_example=True``."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "time": self.time,
            "learning_rate": float(self.learning_rate),
            "num_classes": self.num_classes,
            "chance": self.chance,
            "n_test": self.n_test,
            "margins": self.margins.tolist(),
            "margins_rule": self.margins_rule,
            "ensemble": list(self.ensemble),
            "accuracy": self.accuracy.tolist(),
            "limit_accuracy": float(self.limit_accuracy),
            "train_accuracy": None if self.train_accuracy is None else self.train_accuracy.tolist(),
            "limit_above_chance": self.rises_above_chance,
            "note": self.not_above_chance_note(),
            "margin_at_half": {
                str(k): _none_if_nan(margin_at_fraction(self, 0.5, ensemble=k)) for k in self.ensemble
            },
            "jitter": float(self.jitter),
            "timings": dict(self.timings),
            "info": self.info,
        }
        if per_example:
            d["per_example"] = self.per_example.tolist()
            d["limit_per_example"] = self.limit_per_example.tolist()
            d["mean"] = None if self.mean is None else self.mean.tolist()
            d["std"] = None if self.std is None else self.std.tolist()
        return d

    def to_json(self, path, per_example: bool = False, **extra: Any) -> Path:
        """Write :meth:`to_dict` (plus ``extra`` top-level keys, e.g. ``metadata``) atomically."""
        from gpmargin.io import atomic_write_json

        d = self.to_dict(per_example=per_example)
        d.update(extra)
        return atomic_write_json(path, d)

    @classmethod
    def from_json(cls, path) -> "MarginCurve":
        """Read a curve written by :meth:`to_json` (per-example arrays empty if not saved)."""
        import json

        d = json.loads(Path(path).read_text())
        K, A = len(d["ensemble"]), len(d["margins"])
        pe = np.asarray(d.get("per_example", np.zeros((K, A, 0))), dtype=np.float64)
        return cls(
            margins=np.asarray(d["margins"], dtype=np.float64),
            ensemble=tuple(int(k) for k in d["ensemble"]),
            accuracy=np.asarray(d["accuracy"], dtype=np.float64).reshape(K, A),
            limit_accuracy=float(d["limit_accuracy"]),
            per_example=pe.reshape(K, A, -1),
            limit_per_example=np.asarray(d.get("limit_per_example", []), dtype=np.float64),
            jitter=float(d["jitter"]),
            num_classes=int(d["num_classes"]),
            kind=d.get("kind", "nngp"),
            time=d.get("time"),
            learning_rate=float(d.get("learning_rate", 1.0)),
            train_accuracy=None if d.get("train_accuracy") is None
            else np.asarray(d["train_accuracy"], dtype=np.float64).reshape(K, A),
            mean=None if d.get("mean") is None else np.asarray(d["mean"]),
            std=None if d.get("std") is None else np.asarray(d["std"]),
            margins_rule=d.get("margins_rule", "given"),
            timings=d.get("timings", {}),
            info=d.get("info", {}),
        )

    def plot(self, ax=None, title: str | None = None):
        """Accuracy against log margin: one line per ensemble size, the ``alpha -> inf``
        limit dashed, chance dotted, and the half-way margin of the smallest ensemble
        (:func:`margin_at_fraction`) marked; a curve whose limit is not above chance says
        so instead.  Returns the matplotlib axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6.4, 4.4))
        colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(self.ensemble), 1)))
        for j, k in enumerate(self.ensemble):
            label = "single network" if k == 1 else f"average of {k} networks"
            ax.plot(self.margins, self.accuracy[j], "-", color=colors[j], lw=1.8, label=label)
        what = "kernel interpolator" if self.time is None else f"sign of the mean at t={self.time:g}"
        ax.axhline(self.limit_accuracy, color="k", ls="--", lw=1.2,
                   label=f"$\\alpha\\to\\infty$ ({what}): {self.limit_accuracy:.3f}")
        ax.axhline(self.chance, color="0.5", ls=":", lw=1.2, label=f"chance: {self.chance:.3g}")
        k0 = self.ensemble[0]
        half = margin_at_fraction(self, 0.5, ensemble=k0)
        if math.isfinite(half):
            target = self.chance + 0.5 * (self.limit_accuracy - self.chance)
            ax.axvline(half, color="C3", ls="-.", lw=1.0)
            ax.plot([half], [target], "o", color="C3", ms=6,
                    label=f"half-way from chance to limit ({'single network' if k0 == 1 else f'k={k0}'}): "
                          f"$\\alpha$ = {half:.3g}")
        elif not self.rises_above_chance:
            ax.text(0.5, 0.5, "limit not above chance:\nthe curve is meaningless", transform=ax.transAxes,
                    ha="center", va="center", color="C3", fontsize="medium")
        ax.set_xscale("log")
        ax.set_xlabel("normalized margin $\\alpha$ (log scale)")
        ax.set_ylabel("predicted test accuracy")
        lo = min(self.chance, float(np.nanmin(self.accuracy)), self.limit_accuracy)
        hi = max(float(np.nanmax(self.accuracy)), self.limit_accuracy)
        pad = 0.04 * max(hi - lo, 0.05)
        ax.set_ylim(lo - pad, hi + pad)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
        if title:
            ax.set_title(title)
        return ax


def _none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)
