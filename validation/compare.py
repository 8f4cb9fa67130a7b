"""Theory vs experiment: measured accuracies of trained networks against NNGP predictions.

For the experiment's data split, the predicted test accuracy at every margin and ensemble
size is computed twice with ``gpmargin.predict.margin_curve``: with the paper's kernel
(``paper_mlp(depth, constrained=False)``) and with the exact kernel of Nero-constrained
networks (``constrained=True``).  Measured points are the test accuracies of the trained
ensembles (for size ``k``: the majority vote -- sign / argmax of the summed outputs -- of
each disjoint group of ``k`` members, pooled over seeds); error bars are standard errors
over those groups.

Writes ``<experiment>-comparison.csv``, ``.png`` and ``.json`` (mean absolute gaps ``|nn - gp|``
per kernel, with run metadata), all atomically.  Accuracies are fractions in the files; gaps are
shown in percentage points (100 x the accuracy difference) on the plot and in the printed summary.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpmargin.io import atomic_savefig, atomic_write_json, atomic_write_text, run_metadata
from validation.experiments import ExperimentConfig

KERNELS = {"gp_accuracy": False, "gp_constrained_accuracy": True}


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


def predicted_accuracy(config: ExperimentConfig, task, device=None, margins=None) -> dict[str, np.ndarray]:
    """``{column: accuracy[len(ensembles), len(margins)]}`` for both kernels.

    ``margins`` defaults to the experiment's; the posterior is computed once per kernel, so
    extra margins (a dense grid for the plotted curves) cost almost nothing.
    """
    margins = list(config.margins) if margins is None else [float(m) for m in margins]
    import torch

    from gpmargin.kernels import paper_mlp
    from gpmargin.predict import margin_curve

    def t(a):
        x = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
        return x.to(device) if device is not None else x

    x_tr, x_te = t(task.x_train).double(), t(task.x_test).double()
    y_tr, y_te = t(task.y_train), t(task.y_test)
    res = {}
    for col, constrained in KERNELS.items():
        curve = margin_curve(paper_mlp(config.depth, constrained=constrained), x_tr, y_tr, x_te, y_te,
                             margins, ensemble=tuple(config.ensembles), kind=config.gp_kind)
        acc = curve.accuracy
        acc = acc.detach().cpu().numpy() if hasattr(acc, "detach") else np.asarray(acc)
        cols = np.searchsorted(curve.margins, margins)  # the curve's margins are sorted; keep the caller's order
        res[col] = np.asarray(acc, dtype=np.float64).reshape(len(config.ensembles), -1)[:, cols]
    return res


def comparison_rows(config: ExperimentConfig, measured, predicted) -> list[dict[str, Any]]:
    rows = []
    for ki, k in enumerate(config.ensembles):
        for mi, m in enumerate(config.margins):
            nn = measured[(float(m), int(k))]
            row = {"margin": float(m), "ensemble": int(k), "nn_accuracy": nn["mean"], "nn_accuracy_sem": nn["sem"],
                   "nn_groups": nn["n"]}
            for col in KERNELS:
                row[col] = float(predicted[col][ki, mi])
            rows.append(row)
    return rows


def gaps(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and max) ``|nn - gp|`` over all (margin, ensemble) points, per kernel and per ensemble size."""
    out: dict[str, Any] = {}
    for col in KERNELS:
        d = [abs(r["nn_accuracy"] - r[col]) for r in rows if r["nn_accuracy"] is not None]
        by_k = {}
        for k in sorted({r["ensemble"] for r in rows}):
            dk = [abs(r["nn_accuracy"] - r[col]) for r in rows if r["ensemble"] == k and r["nn_accuracy"] is not None]
            by_k[str(k)] = float(np.mean(dk)) if dk else None
        signed = [r["nn_accuracy"] - r[col] for r in rows if r["nn_accuracy"] is not None]
        out[col] = {"mean_abs_gap": float(np.mean(d)) if d else None, "max_abs_gap": float(np.max(d)) if d else None,
                    "mean_signed_gap_nn_minus_gp": float(np.mean(signed)) if signed else None,
                    "mean_abs_gap_by_ensemble": by_k}
    return out


def dense_margins(config: ExperimentConfig, per_decade: int = 12) -> np.ndarray:
    lo, hi = np.log10(min(config.margins)), np.log10(max(config.margins))
    return np.logspace(lo, hi, max(2, int(round((hi - lo) * per_decade)) + 1))


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) > 4:
        return f"[{len(v)} values {v[0]:g}..{v[-1]:g}]"
    return str(v)


def plot(config: ExperimentConfig, rows: list[dict[str, Any]], path: Path, gap: dict[str, Any],
         curves: tuple[np.ndarray, dict[str, np.ndarray]] | None = None) -> Path:
    """One panel per ensemble size; ``curves = (margins, {column: acc[len(ensembles), len]})``
    draws the predictions on a dense grid (else through the measured margins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(config.ensembles)
    fig, axes = plt.subplots(1, len(ks), figsize=(3.3 * len(ks), 3.4), sharey=True, squeeze=False)
    for ki, (ax, k) in enumerate(zip(axes[0], ks)):
        rk = [r for r in rows if r["ensemble"] == k]
        m = np.array([r["margin"] for r in rk])
        if curves is not None:
            cm, cacc = curves
            g0, g1 = cacc["gp_accuracy"][ki], cacc["gp_constrained_accuracy"][ki]
        else:
            cm = m
            g0 = [r["gp_accuracy"] for r in rk]
            g1 = [r["gp_constrained_accuracy"] for r in rk]
        ax.plot(cm, g0, "-", color="C0", label="NNGP, paper kernel")
        ax.plot(cm, g1, "--", color="C1", label="NNGP, constrained kernel")
        nn = np.array([np.nan if r["nn_accuracy"] is None else r["nn_accuracy"] for r in rk])
        sem = np.array([0.0 if r["nn_accuracy_sem"] is None else r["nn_accuracy_sem"] for r in rk])
        ax.errorbar(m, nn, yerr=sem, fmt="o", color="k", ms=4, capsize=2, label="trained networks (mean ± s.e.)")
        ax.set_xscale("log")
        ax.set_title(f"ensemble of {k}" if k > 1 else "single network (Gibbs)")
        ax.set_xlabel("margin α (targets α·y)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    # one legend below the panels, outside every axes, so it can never cover a data point
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.02))
    g0 = gap["gp_accuracy"]["mean_abs_gap"]
    g1 = gap["gp_constrained_accuracy"]["mean_abs_gap"]
    changed = config.overrides()
    label = config.scale + (", set " + " ".join(f"{k}={_short(v)}" for k, v in changed.items()) if changed else "")
    fig.suptitle(f"{config.name} ({label}): {config.dataset} {config.task}, n_train={config.n_train}, "
                 f"depth {config.depth}, width {config.width}, {config.optimizer}, {config.steps} steps\n"
                 f"mean |nn−gp|: paper kernel {100 * g0:.2f} points, constrained {100 * g1:.2f} points", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def compare(config: ExperimentConfig, out: str | os.PathLike, records: list[dict], task=None,
            device=None, verbose: bool = True) -> dict[str, Any]:
    """Write ``<experiment>-comparison.{csv,png,json}`` in ``out`` and return the JSON summary."""
    out = Path(out)
    if task is None:
        from validation.sweep import load_task

        task = load_task(config)
    measured = measured_accuracy(config, records)
    dense = dense_margins(config)
    both = predicted_accuracy(config, task, device, margins=list(config.margins) + list(dense))
    nm = len(config.margins)
    predicted = {c: a[:, :nm] for c, a in both.items()}
    curves = (dense, {c: a[:, nm:] for c, a in both.items()})
    rows = comparison_rows(config, measured, predicted)
    gap = gaps(rows)
    buf = io.StringIO()
    cols = ["margin", "ensemble", "nn_accuracy", "nn_accuracy_sem", "gp_accuracy", "gp_constrained_accuracy", "nn_groups"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r[c] is None else r[c]) for c in cols})
    stem = out / f"{config.name}-comparison"
    files = {ext: str(stem.with_suffix(f".{ext}")) for ext in ("csv", "png", "json")}
    atomic_write_text(files["csv"], buf.getvalue())
    plot(config, rows, files["png"], gap, curves)
    summary = {"experiment": config.name, "scale": config.scale, "overrides": config.overrides(),
               "config_hash": config.config_hash(),
               "gaps": gap, "rows": rows, "units": len(records), "files": files,
               "metadata": run_metadata(device, data_info=getattr(task, "info", None))}
    atomic_write_json(files["json"], summary)
    if verbose:
        for col, name in (("gp_accuracy", "paper kernel"), ("gp_constrained_accuracy", "constrained kernel")):
            g = gap[col]
            per_k = ", ".join(f"k={k}: {100 * v:.2f}" for k, v in g["mean_abs_gap_by_ensemble"].items() if v is not None)
            print(f"mean |nn - gp| ({name}): {100 * g['mean_abs_gap']:.2f} points  "
                  f"(max {100 * g['max_abs_gap']:.2f}; {per_k})")
    return summary
