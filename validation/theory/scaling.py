"""How theory-vs-experiment gaps change with one setting (width, depth, n_train): ladders of runs.

A *ladder* is a list of finished comparison folders of one experiment (``gpmargin validate gd
--set width=W --out DIR`` for several ``W``) that differ in one config field.  For each rung the
per-seed statistics of one prediction are read from ``DIR/EXPERIMENT-comparison.json``
(``gaps_over_seeds``): the mean and max |gap| of ensembles of ``k`` networks, the signed mean, and
the margin-shift factor ``c``; each gets its mean and standard error over seeds.

Power laws ``y = a x^p`` (:func:`power_law`) are fitted to the per-rung means by least squares
on ``log y`` against ``log x``; the slope's interval is the percentile interval of a bootstrap
that resamples seeds within each rung (independent networks and data draws), and its
regression standard error is given beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gpmargin.errors import GpmarginError

STATS = ("max_abs_gap", "mean_abs_gap", "mean_signed_gap", "shift_factor")


def _seed_value(by_seed: dict, stat: str, ensemble: int) -> float:
    if stat == "shift_factor":
        return float(by_seed["margin_shift"]["factor"])
    return float(by_seed["by_ensemble"][str(ensemble)][stat])


def read_rung(folder: str | Path, experiment: str, prediction: str, ensemble: int = 1) -> dict[str, Any]:
    """One rung: the folder's config and, for every statistic in :data:`STATS`, its per-seed values
    (single networks when ``ensemble=1``) with their mean and standard error."""
    folder = Path(folder)
    path = folder / f"{experiment}-comparison.json"
    state = folder / ".state" / f"validate-{experiment}" / "config.json"
    if not path.is_file() or not state.is_file():
        raise GpmarginError(f"{folder}: no finished '{experiment}' comparison ({path.name} and "
                            f".state/validate-{experiment}/config.json); run 'gpmargin validate {experiment} "
                            f"--out {folder}' first")
    comp = json.loads(path.read_text())
    over = comp.get("gaps_over_seeds", {}).get(prediction)
    if over is None:
        have = ", ".join(sorted(comp.get("gaps_over_seeds", {}))) or "none"
        raise GpmarginError(f"{path}: no per-seed statistics for prediction {prediction!r} (it has: {have})")
    config = json.loads(state.read_text())["config"]
    if ensemble not in config.get("ensembles", []):
        raise GpmarginError(f"{folder}: ensemble size {ensemble} was not measured (ensembles {config.get('ensembles')})")
    seeds = [str(s) for s in over["seeds"]]
    stats = {}
    for stat in STATS:
        vals = np.array([_seed_value(over["by_seed"][s], stat, ensemble) for s in seeds], dtype=np.float64)
        sem = float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else None
        stats[stat] = {"mean": float(vals.mean()), "sem": sem, "values": vals.tolist()}
    return {"folder": str(folder), "config": config, "seeds": over["seeds"], "stats": stats}


def power_law(x, values_per_rung, n_boot: int = 4000, seed: int = 0) -> dict[str, Any]:
    """Fit ``log mean(y) = log a + p log x`` over the rungs.

    x : (R,) positive settings; values_per_rung : R sequences of positive per-seed values.
    Returns ``slope`` p, ``prefactor`` a, ``slope_se`` (regression standard error, R - 2 degrees
    of freedom; None for two rungs), ``interval`` (2.5 / 97.5 % bootstrap percentiles, seeds
    resampled within each rung) and ``n_boot``."""
    x = np.asarray(x, dtype=np.float64)
    vals = [np.asarray(v, dtype=np.float64) for v in values_per_rung]
    if x.size < 2 or len(vals) != x.size:
        raise GpmarginError("a power law needs at least two rungs, one list of values per rung")
    if np.any(x <= 0) or any(v.size == 0 or np.any(v <= 0) for v in vals):
        raise GpmarginError("a power law needs positive settings and positive values (log-log fit)")
    lx = np.log(x)

    def fit(means):
        p, c = np.polyfit(lx, np.log(means), 1)
        return float(p), float(c)

    means = np.array([v.mean() for v in vals])
    slope, c = fit(means)
    if x.size > 2:
        resid = np.log(means) - (c + slope * lx)
        se = float(math.sqrt(resid @ resid / (x.size - 2) / ((lx - lx.mean()) @ (lx - lx.mean()))))
    else:
        se = None
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        boot[b] = fit(np.array([rng.choice(v, size=v.size, replace=True).mean() for v in vals]))[0]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"slope": slope, "prefactor": math.exp(c), "slope_se": se, "interval": [float(lo), float(hi)],
            "n_boot": n_boot}


def ladder(folders, experiment: str, prediction: str, by: str, ensemble: int = 1,
           fit: tuple[str, ...] = ("max_abs_gap", "mean_abs_gap")) -> dict[str, Any]:
    """The rungs of ``folders`` ordered by config field ``by`` (the only field allowed to differ,
    apart from the seeds), with power-law fits of the statistics ``fit`` against it."""
    rungs = [read_rung(f, experiment, prediction, ensemble) for f in folders]
    if len(rungs) < 2:
        raise GpmarginError("a ladder needs at least two folders")
    for r in rungs:
        if by not in r["config"]:
            raise GpmarginError(f"{r['folder']}: the config has no field {by!r}")
    base = rungs[0]["config"]
    unrecorded = set()
    for r in rungs[1:]:
        cfg = r["config"]
        unrecorded |= set(base) ^ set(cfg)  # a field added to the config after a folder was made
        other = sorted(k for k in set(base) & set(cfg) if k not in (by, "seeds") and not _same(base[k], cfg[k]))
        if other:
            raise GpmarginError(f"{r['folder']} differs from {rungs[0]['folder']} in {', '.join(other)}, not only "
                                f"in {by!r}: a ladder varies one setting")
    rungs.sort(key=lambda r: r["config"][by])
    xs = [r["config"][by] for r in rungs]
    if len(set(xs)) != len(xs):
        raise GpmarginError(f"two folders have the same {by} = {xs}")
    fits = {}
    for stat in fit:
        vals = [r["stats"][stat]["values"] for r in rungs]
        fits[stat] = power_law(xs, vals)
    return {"experiment": experiment, "prediction": prediction, "by": by, "ensemble": ensemble, "settings": xs,
            "rungs": rungs, "fits": fits, "fields_not_in_every_config": sorted(unrecorded)}


def _same(a, b) -> bool:
    """Config values equal, floats to 1e-12 (a margin grid recomputed by another numpy may differ in the last bit)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def plot_ladder(result: dict[str, Any]):
    """Log-log plot of the fitted statistics against the setting (one panel), and the shift factor."""
    import matplotlib.pyplot as plt

    xs = np.asarray(result["settings"], dtype=np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for stat, color in zip(result["fits"], ("C3", "C0", "C2")):
        m = np.array([r["stats"][stat]["mean"] for r in result["rungs"]])
        e = np.array([r["stats"][stat]["sem"] or 0.0 for r in result["rungs"]])
        f = result["fits"][stat]
        lab = stat.replace("_", " ").replace("abs", "|").replace("gap", "gap|")
        axes[0].errorbar(xs, 100 * m, yerr=100 * e, fmt="o", color=color, capsize=3,
                         label=f"{lab}: slope {f['slope']:.2f}, 95 % [{f['interval'][0]:.2f}, {f['interval'][1]:.2f}]")
        grid = np.geomspace(xs.min(), xs.max(), 50)
        axes[0].plot(grid, 100 * f["prefactor"] * grid ** f["slope"], "-", color=color, lw=1, alpha=0.7)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    k = result["ensemble"]
    axes[0].set_title(f"gap of {'single networks' if k == 1 else f'{k}-network ensembles'} vs {result['by']}\n"
                      "(mean ± s.e. over seeds; bootstrap interval of the slope)", fontsize=10)
    axes[0].set_xlabel(result["by"])
    axes[0].set_ylabel("accuracy points")
    axes[0].grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="small")
    m = np.array([r["stats"]["shift_factor"]["mean"] for r in result["rungs"]])
    e = np.array([r["stats"]["shift_factor"]["sem"] or 0.0 for r in result["rungs"]])
    axes[1].errorbar(xs, m, yerr=e, fmt="o-", color="k", capsize=3)
    axes[1].axhline(1.0, color="0.5", lw=0.8, ls=":")
    axes[1].set_xscale("log")
    axes[1].set_title("margin-shift factor c (prediction at c·α closest to the networks)\nmean ± s.e. over seeds",
                      fontsize=10)
    axes[1].set_xlabel(result["by"])
    axes[1].set_ylabel("c")
    axes[1].grid(alpha=0.3, which="both")
    fig.suptitle(f"{result['experiment']}: networks vs {result['prediction']} across {result['by']}", fontsize=11)
    fig.tight_layout()
    return fig


def write_ladder(result: dict[str, Any], stem: str | Path) -> list[Path]:
    """``stem.csv`` (one row per setting: every statistic's mean and s.e.), ``stem.png``
    (:func:`plot_ladder`) and ``stem.json`` (the result and run metadata), each written atomically."""
    import csv
    import io

    import matplotlib

    from gpmargin.io import atomic_savefig, atomic_write_json, atomic_write_text, run_metadata

    by = result["by"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([by, "seeds"] + [f"{s}_{x}" for s in STATS for x in ("mean", "sem")] + ["folder"])
    for r in result["rungs"]:
        w.writerow([r["config"][by], len(r["seeds"])]
                   + ["" if r["stats"][s][x] is None else f"{r['stats'][s][x]:.6g}" for s in STATS
                      for x in ("mean", "sem")] + [r["folder"]])
    csv_path = atomic_write_text(f"{stem}.csv", buf.getvalue())
    matplotlib.use("Agg")
    png_path = atomic_savefig(plot_ladder(result), f"{stem}.png", dpi=130)
    json_path = atomic_write_json(f"{stem}.json", {**result, "metadata": run_metadata("cpu")})
    return [csv_path, png_path, json_path]
