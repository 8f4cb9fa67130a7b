"""The report of a margin sweep: measured accuracies of trained networks against the predictions.

The predictions are :mod:`validation.theory.predictors`' (which depend on ``config.gp_kind``), the
measurements and gap statistics :mod:`validation.theory.gaps`'.  Writes
``<experiment>-comparison.csv``, ``.png`` and ``.json`` (with run metadata), all atomically, so
several experiments share one results folder.  Accuracies are fractions in the files; gaps are
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
from validation.harness.folders import output_path
from validation.theory.gaps import (
    gap_statistics,
    gap_statistics_over_seeds,
    gap_summary_line,
    measured_accuracy,
    measured_grid,
    transition_margins,
)
from validation.theory.predictors import SeedAveraged, predictors


def comparison_rows(config, measured, predicted) -> list[dict[str, Any]]:
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


def dense_margins(config, per_decade: int = 12) -> np.ndarray:
    lo, hi = np.log10(min(config.margins)), np.log10(max(config.margins))
    return np.logspace(lo, hi, max(2, int(round((hi - lo) * per_decade)) + 1))


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)) and len(v) > 4:
        return f"[{len(v)} values {v[0]:g}..{v[-1]:g}]"
    return str(v)


STYLES = ("-", "--", "-.", ":")


def plot(config, rows: list[dict[str, Any]], path: Path, gap: dict[str, Any],
         curves: tuple[np.ndarray, dict[str, np.ndarray]], labels: dict[str, str],
         seeds: dict[str, Any] | None = None) -> Path:
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
    def spread(c, name):  # "± s.e. over seeds" when the sweep has several
        sg = (seeds or {}).get(c)
        return f" ± {100 * sg[name]['sem']:.2f}" if sg and sg[name]["sem"] is not None else ""

    mean = "; ".join(f"{labels[c]} {100 * g['mean_abs_gap']:.2f}{spread(c, 'mean_abs_gap')} points "
                     f"(max {100 * g['max_abs_gap']:.1f}{spread(c, 'max_abs_gap')})"
                     for c, g in gap.items() if g is not None) or "nothing measured"
    if seeds:
        mean += f"; ± : s.e. over {len(config.seeds)} seeds, each on its own data split"
    fig.suptitle(f"{config.name} ({label}): {config.dataset} {config.task}, n_train={config.n_train}, "
                 f"{getattr(config, 'arch', 'mlp').replace('_', ' ')} depth {config.depth}, width {config.width}, {config.optimizer}, {config.steps} steps\n"
                 f"mean |nn − prediction|: {mean}", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    atomic_savefig(fig, path)
    plt.close(fig)
    return path


def training_fit(config, records: list[dict], preds: dict[str, SeedAveraged]) -> list[dict]:
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


def compare(config, out: str | os.PathLike, records: list[dict], task=None,
            device=None, verbose: bool = True) -> dict[str, Any]:
    """Write ``<experiment>-comparison.{csv,png,json}`` in ``out`` and return the JSON summary."""
    out = Path(out)
    if task is None:
        task = config.load_task()
    measured = measured_accuracy(config, records)
    grid = measured_grid(config, measured)
    preds = predictors(config, task, device)
    dense = dense_margins(config)
    predicted = {c: p.accuracy(config.margins) for c, p in preds.items()}
    curves = (dense, {c: p.accuracy(dense) for c, p in preds.items()})
    gap = {c: gap_statistics(config.margins, config.ensembles, grid, p.accuracy) for c, p in preds.items()}
    seeds = {c: gap_statistics_over_seeds(config, records, {s: q.accuracy for s, q in p.per_seed.items()})
             for c, p in preds.items()} if len(config.seeds) > 1 else None
    chance = 0.5 if getattr(task, "num_classes", 2) <= 2 else 1.0 / task.num_classes
    transition = {c: transition_margins(config.margins, predicted[c][0], chance, p.limit_accuracy())
                  for c, p in preds.items()}
    rows = comparison_rows(config, measured, predicted)
    buf = io.StringIO()
    cols = ["margin", "ensemble", "nn_accuracy", "nn_accuracy_sem", *preds, "nn_groups"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r[c] is None else r[c]) for c in cols})
    files = {ext: str(output_path(config, out, f"comparison.{ext}")) for ext in ("csv", "png", "json")}
    atomic_write_text(files["csv"], buf.getvalue())
    labels = {c: p.label for c, p in preds.items()}
    plot(config, rows, files["png"], gap, curves, labels, seeds)
    summary = {"experiment": config.name, "scale": config.scale, "overrides": config.overrides(),
               "config_hash": config.config_hash(),
               "predictions": {c: {"label": p.label, "kind": p.kind, "time": p.time, "learning_rate": p.learning_rate,
                                   "jitter": p.jitter, "transition_margins": transition[c]} for c, p in preds.items()},
               "gaps": gap, "gaps_over_seeds": seeds, "rows": rows, "units": len(records), "files": files,
               "metadata": run_metadata(device, data_info=getattr(task, "info", None))}
    if config.gp_kind == "ntk":
        summary["training_fit"] = training_fit(config, records, preds)
    atomic_write_json(files["json"], summary)
    if verbose:
        for col, g in gap.items():
            if g is not None:
                print(gap_summary_line(labels[col], g))
            if seeds and seeds[col]:
                sg = seeds[col]

                def pm(name):
                    return f"{100 * sg[name]['mean']:.2f} ± {100 * sg[name]['sem']:.2f}"

                print(f"  over {len(sg['seeds'])} seeds (each on its own split, mean ± s.e.): mean |gap| "
                      f"{pm('mean_abs_gap')} pts, max {pm('max_abs_gap')} pts, signed {pm('mean_signed_gap')}; "
                      f"shift c = {sg['shift_factor']['mean']:.3g} ± {sg['shift_factor']['sem']:.2g}; "
                      f"{len(transition[col])} margins in the transition")
    return summary
