"""Predicted test accuracy against margin: :func:`margin_curve` and :class:`MarginCurve`.

The GP model of Farhang et al. (ICML 2022): a network trained to fit its training
set with normalized margin ``alpha`` behaves like a draw from the GP posterior
conditioned on ``f(X_train) = alpha * Y``.  :func:`margin_curve` computes that
posterior once (mean ``alpha * mu``, standard deviation ``s``, see
:mod:`gpmargin.predict.posterior`) and evaluates the exact expected test accuracy
(:mod:`gpmargin.predict.accuracy`) on a whole grid of margins and ensemble sizes in
one shot.
"""

from __future__ import annotations

import csv
import io
import math
import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from gpmargin.errors import GpmarginError
from gpmargin.predict import accuracy as acc
from gpmargin.predict.inputs import (
    as_tensor,
    check_conflicting_duplicates,
    check_ensemble,
    check_features,
    check_labels,
    check_margins,
)
from gpmargin.predict.posterior import check_prediction, posterior
from gpmargin.predict.result import Posterior

__all__ = ["MarginCurve", "margin_curve", "curve_from_posterior", "default_margins", "margin_at_fraction"]

DEFAULT_NUM_MARGINS = 41


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


def default_margins(
    post: Posterior, y_test: torch.Tensor, binary: bool, max_ensemble: int = 1, num: int = DEFAULT_NUM_MARGINS
) -> tuple[np.ndarray, str]:
    """Automatic margins covering chance to the ``alpha -> inf`` limit.

    Point ``i`` responds to ``tau = alpha * sqrt(k)`` through ``tau * r_i``:
    binary ``r_i = |mu_i| / s_i``; multi-class the normalised gaps ``|d_ic|`` to the
    other classes (largest gap for the low end, the decisive gap to the strongest
    rival for the high end).  The grid is ``num`` log-spaced values from

        alpha_lo = 0.1 / (sqrt(k_max) * q90(r))     (90% of points have tau r < 0.1: ~chance)
        alpha_hi = 3 / q10(r)                       (90% of points have |alpha r| > 3: ~limit)

    with ``q10`` / ``q90`` quantiles over points with finite ``r > 0``; the span is
    kept within 1 to 8 decades (widened or cut around the geometric middle).
    """
    mean, std = post.mean, post.std
    if binary:
        r = acc.binary_ratio(mean, std, torch.ones_like(mean)).abs()
        r_lo = r_hi = r
    else:
        gaps = acc.multiclass_gaps(mean, std, y_test).abs()
        r_lo = gaps.amax(1)
        true = mean.gather(1, y_test.reshape(-1, 1))[:, 0]
        rival = mean.scatter(1, y_test.reshape(-1, 1), -math.inf).amax(1)
        safe = torch.where(std > 0, std, torch.ones_like(std))
        r_hi = torch.where(std > 0, (true - rival).abs() / safe, torch.full_like(std, math.inf))

    def q(r, p):
        r = r.detach().cpu().numpy()
        r = r[np.isfinite(r) & (r > 0)]
        return float(np.quantile(r, p)) if r.size else float("nan")

    q90, q10 = q(r_lo, 0.9), q(r_hi, 0.1)
    if not math.isfinite(q90):  # every point determined (s = 0) or all means zero
        return np.logspace(-3, 1, num), "fallback 1e-3..1e1 (no point has a finite, positive mean/std ratio)"
    if not math.isfinite(q10):
        q10 = q90
    lo = 0.1 / (math.sqrt(max_ensemble) * q90)
    hi = 3.0 / q10
    llo, lhi = math.log10(lo), math.log10(hi)
    if lhi - llo < 1.0 or lhi - llo > 8.0:
        mid, half = 0.5 * (llo + lhi), min(max(0.5 * (lhi - llo), 0.5), 4.0)
        llo, lhi = mid - half, mid + half
    rule = (
        "auto: log-spaced from 0.1/(sqrt(max ensemble)*q90(r)) to 3/q10(r), r = |mean|/std per test point "
        "(multi-class: normalised gaps to the other classes)"
    )
    return np.logspace(llo, lhi, num), rule


def curve_from_posterior(
    post: Posterior,
    y_test,
    margins=None,
    ensemble: Sequence[int] = (1,),
    *,
    num_classes: int | None = None,
    y_train=None,
) -> MarginCurve:
    """Accuracy grid from an already computed posterior (``alpha = 1`` mean and std).

    ``y_test``: +-1 labels when ``post.mean`` is 1-D, class indices when it is (m, C).
    With ``y_train`` and a posterior that carries training outputs (``post.train``, the
    gradient-descent kinds), ``train_accuracy`` is filled in on the same grid.
    """
    t0 = _time.perf_counter()
    ensemble = check_ensemble(ensemble)
    binary = post.mean.ndim == 1
    dev = post.mean.device
    if binary:
        y = as_tensor(y_test, device=dev, name="y_test")
        C = 2
    else:
        y = as_tensor(y_test, device=dev, dtype=torch.int64, name="y_test")
        C = post.mean.shape[1] if num_classes is None else int(num_classes)
    if y.shape != (post.mean.shape[0],):
        raise GpmarginError(f"y_test has shape {tuple(y.shape)} but the posterior has {post.mean.shape[0]} test points")
    if margins is None:
        margins, rule = default_margins(post, y, binary, max(ensemble))
    else:
        margins, rule = check_margins(margins), "given"

    # alpha and k enter only through tau = alpha * sqrt(k): evaluate each distinct tau once
    tau = np.sqrt(np.asarray(ensemble, dtype=np.float64))[:, None] * margins[None, :]
    uniq, inverse = np.unique(tau.ravel(), return_inverse=True)
    scales = torch.as_tensor(uniq, dtype=torch.float64, device=dev)
    if binary:
        ratio = acc.binary_ratio(post.mean, post.std, y)
        probs = acc.binary_correct_prob(ratio, scales)
        limit = acc.binary_limit(post.mean, y)
    else:
        gaps = acc.multiclass_gaps(post.mean, post.std, y)
        probs = acc.multiclass_correct_prob(gaps, scales)
        limit = acc.multiclass_limit(post.mean, y)
    probs = probs.cpu().numpy()
    per_example = probs[inverse].reshape(len(ensemble), len(margins), -1)
    limit = limit.cpu().numpy()
    train_accuracy = None
    if post.train is not None and y_train is not None:
        train_accuracy = curve_from_posterior(post.train, y_train, margins, ensemble, num_classes=num_classes).accuracy
    timings = dict(post.timings)
    timings["accuracy"] = _time.perf_counter() - t0
    return MarginCurve(
        margins=np.asarray(margins, dtype=np.float64),
        ensemble=ensemble,
        accuracy=per_example.mean(-1),
        limit_accuracy=float(limit.mean()),
        per_example=per_example,
        limit_per_example=limit,
        jitter=float(post.jitter),
        num_classes=C,
        kind=post.kind,
        time=post.time,
        learning_rate=float(post.learning_rate),
        train_accuracy=train_accuracy,
        mean=post.mean.detach().cpu().numpy(),
        std=post.std.detach().cpu().numpy(),
        margins_rule=rule,
        timings=timings,
    )


def margin_curve(
    kernel,
    x_train,
    y_train,
    x_test,
    y_test,
    margins=None,
    ensemble: Sequence[int] = (1,),
    kind: str = "nngp",
    *,
    time: float | None = None,
    learning_rate: float = 1.0,
    num_classes: int | None = None,
    device=None,
    progress: bool = False,
    kernel_store=None,
    memory: int | None = None,
) -> MarginCurve:
    """Predicted test accuracy of networks trained to each margin.

    ``kind="nngp"`` (the paper's model) conditions the NNGP on ``f(x_train) = alpha * Y``
    without noise; ``kind="ntk"`` is the infinite ensemble of networks trained by gradient
    descent on the squared error to ``alpha * Y`` (for ``time``, default to convergence,
    with step ``learning_rate``; see :mod:`gpmargin.predict.gradient`); ``kind="ntkgp"``
    conditions a GP with the NTK as covariance.  Returns the exact expected test accuracy
    of one network (``k = 1``) and of the sign / argmax of a ``k``-network average, for
    every margin and ensemble size.

    Parameters
    ----------
    kernel : callable ``kernel(x1, x2=None, get=kind)`` with ``kernel.diag(x, get=kind)``
        E.g. :func:`gpmargin.kernels.paper_mlp`.
    x_train, x_test : (n, ...) and (m, ...) arrays or tensors with the same feature shape.
    y_train, y_test : labels.  +-1 floats: binary, targets ``alpha * y``.  Integer class
        indices ``0..C-1``: one output per class, targets ``alpha * one_hot(y)``.
    margins : 1-D sequence of ``alpha > 0``, or None for the automatic range of
        :func:`default_margins` (41 log-spaced margins from about chance to about the limit).
    ensemble : ensemble sizes ``k`` (positive integers).
    kind : ``"nngp"``, ``"ntk"`` or ``"ntkgp"``.
    time : None (trained to convergence) or a training time > 0 for ``"ntk"`` and ``"nngp"``
        (the readout-only gradient flow), scaled as neural-tangents'
        ``gradient_descent_mse_ensemble``: ``exp(-learning_rate * time * Theta / N)``, ``N``
        the number of target entries.  The training-set accuracy at that time is in
        ``curve.train_accuracy``.
    learning_rate : gradient-descent step size (> 0).
    num_classes : multi-class only, defaults to ``1 + max(label)``.
    device : torch device for the computation (default: that of ``x_train`` if a tensor, else CPU).
    progress : show a tqdm bar while the test kernel is computed.
    kernel_store : path of a store made by ``gpmargin kernel`` /
        :func:`gpmargin.distributed.compute_kernel_store` for exactly these inputs (and ``kernel``,
        which may then be None): its matrices are used instead of calling the kernel, and the
        posterior is solved out of core (:func:`gpmargin.distributed.blocked.stored_posterior`,
        ``memory`` bytes of working memory, default 8 GiB), the factor kept in the store.

    Returns
    -------
    MarginCurve
        ``accuracy`` is ``[len(ensemble), len(margins)]``; the posterior is computed once
        and all margins and ensemble sizes are evaluated from its mean and std.

    Raises
    ------
    GpmarginError
        Bad margins or ensemble sizes, labels that are neither +-1 nor class indices,
        mismatched or empty inputs, duplicated training inputs with conflicting labels,
        unknown ``kind``, ``time`` or ``learning_rate`` not > 0, ``"ntk"``/``"ntkgp"`` with a
        kernel without an NTK, or a kernel matrix that stays indefinite even with jitter.  Exactly duplicated
        training inputs with equal labels are fine: jitter is added, reported in
        ``curve.jitter`` and announced by a ``JitterWarning``.
    """
    kind, time, learning_rate = check_prediction(kernel, kind, time, learning_rate,
                                                 kernel_optional=kernel_store is not None)
    ensemble = check_ensemble(ensemble)
    margins = None if margins is None else check_margins(margins)
    if device is None:
        device = x_train.device if isinstance(x_train, torch.Tensor) else "cpu"
    else:
        from gpmargin.io import resolve_device

        device = resolve_device(device)
    xtr = as_tensor(x_train, device=device, name="x_train")
    xte = as_tensor(x_test, device=device, name="x_test")
    labels = check_labels(y_train, y_test, num_classes=num_classes, device=device)
    check_features(xtr, xte, labels.y_train.shape[0], labels.y_test.shape[0])
    t0 = _time.perf_counter()
    duplicates = check_conflicting_duplicates(xtr, labels)
    t_check = _time.perf_counter() - t0
    if kernel_store is not None:
        from gpmargin.distributed.blocked import DEFAULT_MEMORY, stored_posterior

        if kind == "ntk" or time is not None:
            raise GpmarginError(
                "kernel_store: a stored kernel gives the NNGP posterior (kind='nngp') or the NTK-GP "
                "(kind='ntkgp') at convergence; the gradient-descent prediction (kind='ntk', time=) "
                "needs the in-memory path: drop kernel_store")
        matrix = "nngp" if kind == "nngp" else "ntk"  # the store names matrices by get=
        post = stored_posterior(kernel_store, xtr, xte, labels.targets(), kind=matrix, kernel=kernel,
                                memory=memory or DEFAULT_MEMORY, progress=progress, device=device)
        post.kind = kind
    else:
        post = posterior(kernel, xtr, labels.targets(), xte, kind=kind, time=time, learning_rate=learning_rate,
                         progress=progress)
    post.timings["checks"] = t_check
    curve = curve_from_posterior(post, labels.y_test, margins, ensemble, num_classes=labels.num_classes,
                                 y_train=labels.y_train)
    curve.info.update({"n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0]), "duplicated_train_inputs": duplicates})
    return curve


def margin_at_fraction(curve: MarginCurve, fraction: float = 0.5, ensemble: int = 1) -> float:
    """Margin at which accuracy first gets ``fraction`` of the way from chance to its limit.

    The target is ``chance + fraction * (limit_accuracy - chance)``; the first grid
    interval where the curve of ``ensemble`` reaches it is interpolated linearly in
    ``log(alpha)``.  Returns ``nan`` when the curve does not cross the target inside the
    margin grid (already past it at the smallest margin, or never reaching it), and when the
    limit is not above chance (:attr:`MarginCurve.rises_above_chance` is False: the curve is
    meaningless).  Margins are read in increasing order whatever order the curve stores.
    """
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise GpmarginError(f"fraction must be strictly between 0 and 1, got {fraction:g}")
    order = np.argsort(curve.margins, kind="stable")
    y = curve.row(ensemble)[order]
    margins = np.asarray(curve.margins)[order]
    span = curve.limit_accuracy - curve.chance
    if not curve.rises_above_chance or len(margins) == 0:
        return float("nan")
    target = curve.chance + fraction * span
    h = y - target  # >= 0 once the target is reached
    reached = np.nonzero(h >= 0)[0]
    if reached.size == 0:
        return float("nan")
    j = int(reached[0])
    if j == 0:
        return float(margins[0]) if h[0] == 0 else float("nan")
    la, lb = math.log(margins[j - 1]), math.log(margins[j])
    t = h[j - 1] / (h[j - 1] - h[j])
    return float(math.exp(la + t * (lb - la)))
