"""Theory vs experiment: measured accuracies of trained networks against the predictions.

The predictions depend on how the networks were trained (``config.gp_kind``):

* ``"nngp"`` (Nero with constraints, fig6): the paper's NNGP posterior with the paper's kernel
  (``paper_mlp(depth)``) and with the exact kernel of Nero-constrained networks;
* ``"ntk"`` (gradient descent on the squared error, ``gd``): the NNGP posterior, the
  gradient-descent prediction at infinite time and at the time actually trained
  (:func:`trained_time`), see :mod:`gpmargin.predict.gradient`.

Measured points are the test accuracies of the trained ensembles (for size ``k``: the majority
vote -- sign / argmax of the summed outputs -- of each disjoint group of ``k`` members, pooled
over seeds); error bars are standard errors over those groups.

Every prediction gets the same gap statistics (:func:`gap_statistics`): mean and max |gap|
(and where the max is), signed mean, and the margin-shift factor ``c`` for which the prediction
evaluated at ``c * alpha`` is closest to the measurements.  Writes ``<experiment>-comparison.csv``,
``.png`` and ``.json`` (with run metadata), all atomically, so several experiments share one
results folder.  Accuracies are fractions in the files; gaps are shown in percentage points
(100 x the accuracy difference) on the plot and in the printed summary.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gpmargin.io import atomic_savefig, atomic_write_json, atomic_write_text, run_metadata
from validation.experiments import ExperimentConfig, trained_time

#: per ``config.gp_kind``: (column, legend label, kernel constrained?, prediction kind, at the trained time?)
PREDICTIONS: dict[str, tuple[tuple[str, str, bool, str, bool], ...]] = {
    "nngp": (("gp_accuracy", "NNGP, paper kernel", False, "nngp", False),
             ("gp_constrained_accuracy", "NNGP, constrained kernel", True, "nngp", False)),
    "ntk": (("nngp_accuracy", "NNGP posterior", False, "nngp", False),
            ("ntk_accuracy", "gradient descent, t = ∞", False, "ntk", False),
            ("ntk_time_accuracy", "gradient descent at the trained time", False, "ntk", True)),
}
SHIFT_RANGE = (0.1, 10.0)


def columns(config: ExperimentConfig) -> list[str]:
    """Prediction columns of this experiment's comparison."""
    return [c[0] for c in PREDICTIONS[config.gp_kind]]


def in_margin_order(sorted_margins, values, margins) -> np.ndarray:
    """``values[:, j]`` given at ascending ``sorted_margins`` (a curve's), rearranged to the order of
    ``margins`` (the caller's, any order)."""
    v = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    cols = np.searchsorted(np.asarray(sorted_margins, dtype=np.float64), np.asarray(margins, dtype=np.float64))
    return v.reshape(v.shape[0], -1)[:, cols]


class Predictor:
    """One prediction for the experiment's split: exact accuracies at any margins (one posterior)."""

    def __init__(self, config: ExperimentConfig, task, spec, device=None):
        import torch

        from gpmargin.kernels import paper_mlp
        from gpmargin.predict import posterior
        from gpmargin.predict.inputs import check_labels

        self.column, self.label, constrained, self.kind, at_time = spec
        self.time, self.learning_rate = trained_time(config) if at_time else (None, 1.0)
        if at_time:
            self.label = f"gradient descent at t = {self.time:g} (lr {self.learning_rate:g})"
        self.ensembles = tuple(int(k) for k in config.ensembles)

        def t(a):
            x = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
            return x.to(device) if device is not None else x

        self.labels = check_labels(t(task.y_train), t(task.y_test), num_classes=None)
        self.posterior = posterior(paper_mlp(config.depth, constrained=constrained), t(task.x_train).double(),
                                   self.labels.targets(), t(task.x_test).double(), kind=self.kind, time=self.time,
                                   learning_rate=self.learning_rate)

    def curve(self, margins):
        from gpmargin.predict import curve_from_posterior

        lab = self.labels
        return curve_from_posterior(self.posterior, lab.y_test, [float(m) for m in margins], self.ensembles,
                                    num_classes=lab.num_classes, y_train=lab.y_train)

    def accuracy(self, margins) -> np.ndarray:
        """Predicted test accuracy ``(len(ensembles), len(margins))``, in the caller's margin order
        (a curve's margins are sorted)."""
        curve = self.curve(margins)
        return in_margin_order(curve.margins, curve.accuracy, margins)

    def train_fit(self, margins) -> dict[str, list[float]]:
        """Predicted training accuracy and relative error ``sqrt(E||f(X) - aY||^2) / ||aY||`` of one network."""
        post = self.posterior.train
        if post is None:  # GP conditioning: the training outputs are alpha * Y exactly
            return {"train_accuracy": [1.0] * len(margins), "relative_error": [0.0] * len(margins)}
        Y = self.labels.targets()
        Y = Y.reshape(Y.shape[0], -1).to(post.mean.device)
        mean = post.mean.reshape(Y.shape[0], -1)
        bias2, noise = float((mean - Y).square().sum()), float(post.std.square().sum()) * Y.shape[1]
        ynorm2 = float(Y.square().sum())
        rel = [math.sqrt(bias2 + noise / (a * a)) / math.sqrt(ynorm2) for a in margins]
        curve = self.curve(margins)
        acc = in_margin_order(curve.margins, curve.train_accuracy, margins)
        return {"train_accuracy": [float(v) for v in acc[0]], "relative_error": rel}


def predictors(config: ExperimentConfig, task, device=None) -> dict[str, Predictor]:
    """``{column: Predictor}`` for the experiment's predictions (see :data:`PREDICTIONS`)."""
    return {spec[0]: Predictor(config, task, spec, device) for spec in PREDICTIONS[config.gp_kind]}


def predicted_accuracy(config: ExperimentConfig, task, device=None, margins=None) -> dict[str, np.ndarray]:
    """``{column: accuracy[len(ensembles), len(margins)]}`` (``margins`` default: the experiment's)."""
    margins = list(config.margins) if margins is None else [float(m) for m in margins]
    return {c: p.accuracy(margins) for c, p in predictors(config, task, device).items()}


def measured_accuracy(config: ExperimentConfig, records: list[dict]) -> dict[tuple[float, int], dict[str, Any]]:
    """``(margin, k) -> {mean, sem, n, values}`` of ensemble test accuracies over groups and seeds."""
    out = {}
    for m in config.margins:
        recs = [r for r in records if math.isclose(r["margin"], m, rel_tol=1e-12)]
        for k in config.ensembles:
            vals = [a for r in recs for a in r["ensembles"][str(k)]["test_accuracy"]]
            n = len(vals)
            mean = float(np.mean(vals)) if n else None
            sem = float(np.std(vals, ddof=1) / math.sqrt(n)) if n > 1 else None
            out[(float(m), int(k))] = {"mean": mean, "sem": sem, "n": n, "seeds": sorted({r["seed"] for r in recs})}
    return out


def measured_grid(config: ExperimentConfig, measured) -> np.ndarray:
    """Measured means as ``(len(ensembles), len(margins))``, NaN where missing."""
    return np.array([[np.nan if measured[(float(m), int(k))]["mean"] is None else measured[(float(m), int(k))]["mean"]
                      for m in config.margins] for k in config.ensembles], dtype=np.float64)


# ----------------------------------------------------------------------------- gap statistics
def _stats(gap: np.ndarray, margins: np.ndarray, ensembles, where: np.ndarray) -> dict[str, Any]:
    a = np.abs(gap[where])
    i = int(np.argmax(np.where(where, np.abs(gap), -1.0)))
    ki, mi = np.unravel_index(i, gap.shape)
    return {"mean_abs_gap": float(a.mean()), "max_abs_gap": float(a.max()), "max_gap_margin": float(margins[mi]),
            "max_gap_ensemble": int(ensembles[ki]), "max_gap_signed": float(gap[ki, mi]),
            "mean_signed_gap": float(gap[where].mean())}


def gap_statistics(margins, ensembles, measured, predict: Callable[[np.ndarray], np.ndarray],
                   shift_range: tuple[float, float] = SHIFT_RANGE) -> dict[str, Any] | None:
    """How far one prediction is from the measurements (``gap = measured - predicted``).

    margins (A,), ensembles (K,), measured (K, A) accuracies (NaN: not measured);
    ``predict(margins) -> (K, len(margins))`` evaluates the prediction exactly at any margins.

    Returns ``mean_abs_gap``, ``max_abs_gap`` with ``max_gap_margin`` / ``max_gap_ensemble`` /
    ``max_gap_signed`` (where it occurs), ``mean_signed_gap`` (> 0: networks beat the prediction),
    the same per ensemble size in ``by_ensemble``, and ``margin_shift``: the factor ``c`` in
    ``shift_range`` minimising ``mean |measured(alpha) - predicted(c alpha)|`` (a scan of 41 values
    of ``log c``, then a bounded Brent search between the best scan point's neighbours, each step
    an exact evaluation of the prediction) with the mean and max |gap| left after the shift.
    None when nothing was measured.
    """
    from scipy.optimize import minimize_scalar

    margins = np.asarray(margins, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    where = np.isfinite(measured)
    if not where.any():
        return None
    ens = [int(k) for k in ensembles]
    gap = measured - predict(margins)
    out = _stats(gap, margins, ens, where)
    out["by_ensemble"] = {str(k): _stats(gap[j:j + 1], margins, [k], where[j:j + 1])
                          for j, k in enumerate(ens) if where[j].any()}

    def cost(logc: float) -> float:
        return float(np.abs(measured - predict(math.exp(logc) * margins))[where].mean())

    lo, hi = math.log(shift_range[0]), math.log(shift_range[1])
    grid = np.linspace(lo, hi, 41)
    vals = [cost(v) for v in grid]
    b = int(np.argmin(vals))
    a, c = grid[max(b - 1, 0)], grid[min(b + 1, len(grid) - 1)]
    res = minimize_scalar(cost, bounds=(a, c), method="bounded", options={"xatol": 1e-5})
    best = float(res.x) if res.fun <= vals[b] else float(grid[b])
    shifted = _stats(measured - predict(math.exp(best) * margins), margins, ens, where)
    out["margin_shift"] = {"factor": math.exp(best), "mean_abs_gap": shifted["mean_abs_gap"],
                           "max_abs_gap": shifted["max_abs_gap"], "max_gap_margin": shifted["max_gap_margin"],
                           "at_search_bound": bool(b in (0, len(grid) - 1) and min(abs(best - lo), abs(best - hi)) < 1e-3),
                           "search_range": list(shift_range)}
    return out


def gap_summary_line(name: str, g: dict[str, Any]) -> str:
    """One line: mean / max |gap| (where) / signed mean / shift factor, in accuracy points."""
    s = g["margin_shift"]
    return (f"{name}: mean |gap| {100 * g['mean_abs_gap']:.2f} pts, max {100 * g['max_abs_gap']:.2f} pts "
            f"(α={g['max_gap_margin']:.3g}, k={g['max_gap_ensemble']}), signed mean {100 * g['mean_signed_gap']:+.2f}; "
            f"best shift c={s['factor']:.3g}: mean {100 * s['mean_abs_gap']:.2f}, max {100 * s['max_abs_gap']:.2f} pts")


# ----------------------------------------------------------------------------- output
def comparison_rows(config: ExperimentConfig, measured, predicted) -> list[dict[str, Any]]:
    rows = []
    for ki, k in enumerate(config.ensembles):
        for mi, m in enumerate(config.margins):
            nn = measured[(float(m), int(k))]
            row = {"margin": float(m), "ensemble": int(k), "nn_accuracy": nn["mean"], "nn_accuracy_sem": nn["sem"],
                   "nn_groups": nn["n"]}
            for col, acc in predicted.items():
                row[col] = float(acc[ki, mi])
            rows.append(row)
    return rows


def dense_margins(config: ExperimentConfig, per_decade: int = 12) -> np.ndarray:
    lo, hi = np.log10(min(config.margins)), np.log10(max(config.margins))
    return np.logspace(lo, hi, max(2, int(round((hi - lo) * per_decade)) + 1))


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) > 4:
        return f"[{len(v)} values {v[0]:g}..{v[-1]:g}]"
    return str(v)


STYLES = ("-", "--", "-.", ":")


def plot(config: ExperimentConfig, rows: list[dict[str, Any]], path: Path, gap: dict[str, Any],
         curves: tuple[np.ndarray, dict[str, np.ndarray]], labels: dict[str, str]) -> Path:
    """One panel per ensemble size: measured points, every prediction on a dense grid, and each
    prediction's largest gap in that panel drawn as a segment (its size in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(config.ensembles)
    cm, cacc = curves
    fig, axes = plt.subplots(1, len(ks), figsize=(3.6 * len(ks), 3.9), sharey=True, squeeze=False)
    for ki, (ax, k) in enumerate(zip(axes[0], ks)):
        rk = [r for r in rows if r["ensemble"] == k]
        m = np.array([r["margin"] for r in rk])
        nn = np.array([np.nan if r["nn_accuracy"] is None else r["nn_accuracy"] for r in rk])
        sem = np.array([0.0 if r["nn_accuracy_sem"] is None else r["nn_accuracy_sem"] for r in rk])
        worst = []
        for j, col in enumerate(cacc):
            g = (gap.get(col) or {}).get("by_ensemble", {}).get(str(k))
            ax.plot(cm, cacc[col][ki], STYLES[j % 4], color=f"C{j}", lw=1.3, label=labels[col])
            if g is not None:
                worst.append(f"{100 * g['max_abs_gap']:.1f}")
                i = int(np.argmin(np.abs(m - g["max_gap_margin"])))
                ax.plot([m[i], m[i]], [nn[i], nn[i] - g["max_gap_signed"]], "-", color=f"C{j}", lw=3, alpha=0.45)
        ax.errorbar(m, nn, yerr=sem, fmt="o", color="k", ms=4, capsize=2, label="trained networks (mean ± s.e.)")
        ax.set_xscale("log")
        title = f"ensemble of {k}" if k > 1 else "single network (Gibbs)"
        if worst:  # the largest gap of each prediction in this panel (the shaded segments)
            title += f"\nmax |gap| {' / '.join(worst)} points"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("margin α (targets α·y)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    # one legend below the panels, outside every axes, so it can never cover a data point; each
    # panel's largest gaps are in its title
    handles, _ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, [*(labels[c] for c in cacc), "trained networks (mean ± s.e.)"], loc="lower center",
               ncol=min(4, len(cacc) + 1), fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.0))
    changed = config.overrides()
    label = config.scale + (", set " + " ".join(f"{k}={_short(v)}" for k, v in changed.items()) if changed else "")
    mean = "; ".join(f"{labels[c]} {100 * g['mean_abs_gap']:.2f} points (max {100 * g['max_abs_gap']:.1f})"
                     for c, g in gap.items() if g is not None) or "nothing measured"
    fig.suptitle(f"{config.name} ({label}): {config.dataset} {config.task}, n_train={config.n_train}, "
                 f"depth {config.depth}, width {config.width}, {config.optimizer}, {config.steps} steps\n"
                 f"mean |nn − prediction|: {mean}", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def training_fit(config: ExperimentConfig, records: list[dict], preds: dict[str, Predictor]) -> list[dict]:
    """Per margin: how close the trained networks' training outputs came to ``alpha * y`` (mean over
    members of ``||f(X) - aY|| / ||aY||`` and train accuracy) next to what each prediction says."""
    out = []
    for m in config.margins:
        mem = [x for r in records if math.isclose(r["margin"], m, rel_tol=1e-12) for x in r["members"]]
        row = {"margin": float(m), "nn_relative_error": float(np.mean([x["relative_error"] for x in mem])),
               "nn_train_accuracy": float(np.mean([x["train_accuracy"] for x in mem]))}
        for col, p in preds.items():
            fit = p.train_fit([m])
            row[f"{col}_relative_error"] = fit["relative_error"][0]
            row[f"{col}_train_accuracy"] = fit["train_accuracy"][0]
        out.append(row)
    return out


def compare(config: ExperimentConfig, out: str | os.PathLike, records: list[dict], task=None,
            device=None, verbose: bool = True) -> dict[str, Any]:
    """Write ``<experiment>-comparison.{csv,png,json}`` in ``out`` and return the JSON summary."""
    out = Path(out)
    if task is None:
        from validation.sweep import load_task

        task = load_task(config)
    measured = measured_accuracy(config, records)
    grid = measured_grid(config, measured)
    preds = predictors(config, task, device)
    dense = dense_margins(config)
    predicted = {c: p.accuracy(config.margins) for c, p in preds.items()}
    curves = (dense, {c: p.accuracy(dense) for c, p in preds.items()})
    gap = {c: gap_statistics(config.margins, config.ensembles, grid, p.accuracy) for c, p in preds.items()}
    rows = comparison_rows(config, measured, predicted)
    buf = io.StringIO()
    cols = ["margin", "ensemble", "nn_accuracy", "nn_accuracy_sem", *preds, "nn_groups"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r[c] is None else r[c]) for c in cols})
    from validation.sweep import output_path

    files = {ext: str(output_path(config, out, f"comparison.{ext}")) for ext in ("csv", "png", "json")}
    atomic_write_text(files["csv"], buf.getvalue())
    labels = {c: p.label for c, p in preds.items()}
    plot(config, rows, files["png"], gap, curves, labels)
    summary = {"experiment": config.name, "scale": config.scale, "overrides": config.overrides(),
               "config_hash": config.config_hash(),
               "predictions": {c: {"label": p.label, "kind": p.kind, "time": p.time, "learning_rate": p.learning_rate,
                                   "jitter": float(p.posterior.jitter)} for c, p in preds.items()},
               "gaps": gap, "rows": rows, "units": len(records), "files": files,
               "metadata": run_metadata(device, data_info=getattr(task, "info", None))}
    if config.gp_kind == "ntk":
        summary["training_fit"] = training_fit(config, records, preds)
    atomic_write_json(files["json"], summary)
    if verbose:
        for col, g in gap.items():
            if g is not None:
                print(gap_summary_line(labels[col], g))
    return summary
