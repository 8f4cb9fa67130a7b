"""The ``measures`` experiment, part 2: which measure tracks generalization (Kendall's tau).

From the population's records (:mod:`validation.population`) this adds the GP predictions and
ranks every measure against test accuracy and against the generalization gap:

GP-predicted accuracy   the NNGP (``kind="nngp"``) and NTK gradient-descent ensemble
                        (``kind="ntk"``, trained to convergence) predicted test accuracy of a
                        single network of the population's depth conditioned on
                        ``f(train) = gamma * y`` with ``y`` the (noisy) labels the network was
                        trained on and ``gamma`` its own median train margin
                        (:func:`gpmargin.predict.margin_curve`, one posterior per label set).
Kendall's tau           ``tau_b`` (scipy) of a measure with the target over all networks.
Granulated tau          Jiang et al. 2020: for hyperparameter ``i``, the mean over every setting
                        of the *other* hyperparameters of the tau over the networks that differ
                        only in ``i``; ``Psi`` is the mean of these over ``i``.  A measure that
                        is constant within a group (e.g. Frobenius norms under Nero's
                        constraints) has no tau there (NaN, ``null`` in JSON, blank in plots).

Outputs in the results folder, named after the experiment (``measures-networks.csv``, ...):
``<experiment>-networks.csv`` (one row per network), ``<experiment>-tau.csv`` and
``<experiment>-tau.json`` (the table, config, run metadata) and ``<experiment>-tau.png``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from validation.population import HYPERPARAMETERS, MeasuresConfig, noisy_labels

TARGETS = ("test_accuracy", "gap")


def gp_predictions(config: MeasuresConfig, records: list[dict], task, device=None) -> dict[str, list[float | None]]:
    """``{"<kind>_predicted_accuracy": [per record]}``: the GP's accuracy at each network's margin."""
    import torch

    from gpmargin.kernels import paper_mlp
    from gpmargin.predict import margin_curve

    x_tr = torch.as_tensor(np.asarray(task.x_train), dtype=torch.float64, device=device)
    x_te = torch.as_tensor(np.asarray(task.x_test), dtype=torch.float64, device=device)
    out: dict[str, list[float | None]] = {f"{k}_predicted_accuracy": [None] * len(records) for k in config.gp_kinds}
    binary = np.asarray(task.y_train).dtype.kind == "f"
    for noise in sorted({r["hyperparameters"]["label_noise"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["hyperparameters"]["label_noise"] == noise]
        margins = {i: records[i]["measures"]["margin"] for i in idx}
        ok = sorted({m for m in margins.values() if m is not None and m > 0})
        if not ok:
            continue
        y = noisy_labels(task.y_train, noise, config.data_seed, None if binary else int(task.num_classes))
        for kind in config.gp_kinds:
            curve = margin_curve(paper_mlp(config.depth), x_tr, y, x_te, np.asarray(task.y_test), ok,
                                 ensemble=(1,), kind=kind)
            acc = np.asarray(curve.accuracy.detach().cpu() if hasattr(curve.accuracy, "detach") else curve.accuracy,
                             dtype=np.float64).reshape(-1)
            at = dict(zip(ok, acc))
            for i in idx:
                m = margins[i]
                out[f"{kind}_predicted_accuracy"][i] = float(at[m]) if m in at else None
    return out


def kendall(a: Any, b: Any) -> float:
    """Kendall's ``tau_b`` of two sequences (NaN when fewer than 2 finite pairs or one is constant
    to 1e-6 relative: float32 round-off of a quantity fixed by design is not a ranking)."""
    from scipy.stats import kendalltau

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    def constant(v):
        return np.ptp(v) <= 1e-6 * np.max(np.abs(v))

    if keep.sum() < 2 or constant(x[keep]) or constant(y[keep]):
        return math.nan
    return float(kendalltau(x[keep], y[keep]).statistic)


def granulated(values: np.ndarray, target: np.ndarray, hyper: list[dict], name: str) -> float:
    """Mean over settings of the other hyperparameters of the tau across values of ``name``."""
    groups: dict[tuple, list[int]] = {}
    for i, h in enumerate(hyper):
        groups.setdefault(tuple(h[k] for k in HYPERPARAMETERS if k != name), []).append(i)
    taus = [kendall(values[g], target[g]) for g in groups.values() if len(g) >= 2]
    taus = [t for t in taus if math.isfinite(t)]
    return float(np.mean(taus)) if taus else math.nan


def tau_table(records: list[dict], measures: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per (measure, target): ``overall``, one granulated tau per hyperparameter, ``psi``."""
    hyper = [r["hyperparameters"] for r in records]
    varied = [k for k in HYPERPARAMETERS if len({h[k] for h in hyper}) > 1]
    rows = []
    for target in TARGETS:
        t = np.array([r[target] for r in records], dtype=np.float64)
        for name, v in measures.items():
            row: dict[str, Any] = {"measure": name, "target": target, "overall": kendall(v, t)}
            gran = {k: granulated(v, t, hyper, k) for k in varied}
            row.update(gran)
            finite = [g for g in gran.values() if math.isfinite(g)]
            row["psi"] = float(np.mean(finite)) if finite else math.nan
            rows.append(row)
    return rows


def _none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def plot(rows: list[dict[str, Any]], records: list[dict], measures: dict[str, np.ndarray], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpmargin.io import atomic_savefig

    cols = [c for c in ("overall", *HYPERPARAMETERS, "psi") if c in rows[0]]
    names = list(measures)
    fig, axes = plt.subplots(1, 3, figsize=(19, 0.42 * len(names) + 2.6),
                             gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, target in zip(axes[:2], TARGETS):
        grid = np.array([[next(r for r in rows if r["measure"] == n and r["target"] == target)[c] for c in cols]
                         for n in names], dtype=np.float64)
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:+.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(cols)), [c if c != "psi" else "Ψ (mean)" for c in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names))
        ax.set_title(f"Kendall τ with {target.replace('_', ' ')}\n(overall; granulated per hyperparameter)")
    fig.colorbar(im, ax=axes[:2], shrink=0.6, label="Kendall τ (−1 … 1)")
    ax = axes[2]
    test = np.array([r["test_accuracy"] for r in records])
    noise = np.array([r["hyperparameters"]["label_noise"] for r in records])
    for key, marker in (("nngp_predicted_accuracy", "o"), ("ntk_predicted_accuracy", "s")):
        if key in measures:
            p = measures[key]
            ok = np.isfinite(p)
            sc = ax.scatter(p[ok], test[ok], c=noise[ok], cmap="viridis", marker=marker, s=28, edgecolor="k",
                            linewidths=0.3, label=key.replace("_predicted_accuracy", "").upper() + " prediction")
    lo = float(np.nanmin([test.min()] + [np.nanmin(measures[k]) for k in measures if k.endswith("predicted_accuracy")]))
    ax.plot([lo, 1], [lo, 1], "k--", lw=0.8, label="prediction = measurement")
    ax.set_xlabel("GP-predicted test accuracy at the network's own margin")
    ax.set_ylabel("measured test accuracy")
    ax.set_title("GP prediction vs trained networks\n(colour: fraction of random labels)")
    ax.legend(fontsize=8, loc="upper left")
    fig.colorbar(sc, ax=ax, label="random-label fraction")
    fig.suptitle(title, fontsize=10)
    atomic_savefig(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def analyse(config: MeasuresConfig, out: str | os.PathLike, records: list[dict], task=None, device=None) -> dict:
    """GP predictions, the tau table and its figure for a finished population (module docstring)."""
    import time

    from gpmargin.io import atomic_write_json, atomic_write_text, run_metadata
    from validation.sweep import load_task

    from validation.sweep import output_path

    t0 = time.perf_counter()
    files = {"networks": str(output_path(config, out, "networks.csv")),
             **{ext: str(output_path(config, out, f"tau.{ext}")) for ext in ("csv", "png", "json")}}
    task = task if task is not None else load_task(config)
    records = sorted(records, key=lambda r: r["network"])
    gp = gp_predictions(config, records, task, device)
    names = list(records[0]["measures"])
    measures = {n: np.array([np.nan if r["measures"][n] is None else r["measures"][n] for r in records]) for n in names}
    measures.update({k: np.array([np.nan if v is None else v for v in vals]) for k, vals in gp.items()})
    rows = tau_table(records, measures)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["network", *HYPERPARAMETERS, "test_accuracy", "train_accuracy", "gap", *measures])
    for i, r in enumerate(records):
        w.writerow([r["network"], *(r["hyperparameters"][k] for k in HYPERPARAMETERS), r["test_accuracy"],
                    r["train_accuracy"], r["gap"], *("" if not np.isfinite(measures[n][i]) else repr(float(measures[n][i]))
                                                      for n in measures)])
    atomic_write_text(files["networks"], buf.getvalue())
    cols = list(rows[0])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([("" if isinstance(r[c], float) and not math.isfinite(r[c]) else
                     (f"{r[c]:.4f}" if isinstance(r[c], float) else r[c])) for c in cols])
    atomic_write_text(files["csv"], buf.getvalue())
    title = (f"Which measure tracks generalization? {len(records)} depth-{config.depth} MLPs on "
             f"{config.dataset} {config.task} ({config.n_train} train), {config.scale} scale; "
             f"τ > 0: networks with a larger value have higher {'/'.join(TARGETS)}")
    plot(rows, records, measures, files["png"], title)
    summary = {"config": config.to_dict(), "networks": len(records),
               "tau": [{k: _none(v) for k, v in r.items()} for r in rows],
               "gp_predicted_accuracy": gp, "analysis_s": time.perf_counter() - t0,
               "population_train_s": float(sum(r["train_s"] for r in records)),
               "population_probe_s": float(sum(r["probe_s"] for r in records)),
               "files": files, "metadata": run_metadata(device)}
    atomic_write_json(files["json"], summary)
    return summary
