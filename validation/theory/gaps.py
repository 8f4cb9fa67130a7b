"""How far measurements are from a prediction: measured accuracies and gap statistics.

Measured points are the test accuracies of the trained ensembles (for size ``k``: the majority
vote -- sign / argmax of the summed outputs -- of each disjoint group of ``k`` members, pooled
over seeds); their uncertainty is the standard error over those groups.  Every prediction gets
the same statistics (:func:`gap_statistics`): mean and max |gap| (and where the max is), signed
mean, and the margin-shift factor ``c`` for which the prediction evaluated at ``c * alpha`` is
closest to the measurements.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

SHIFT_RANGE = (0.1, 10.0)


def measured_accuracy(config, records: list[dict]) -> dict[tuple[float, int], dict[str, Any]]:
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


def measured_grid(config, measured) -> np.ndarray:
    """Measured means as ``(len(ensembles), len(margins))``, NaN where missing."""
    return np.array([[np.nan if measured[(float(m), int(k))]["mean"] is None else measured[(float(m), int(k))]["mean"]
                      for m in config.margins] for k in config.ensembles], dtype=np.float64)


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


#: the scalar gap statistics summarised over seeds (``margin_shift`` ones prefixed ``shift_``)
SEED_STATISTICS = ("mean_abs_gap", "max_abs_gap", "mean_signed_gap", "shift_factor", "shift_mean_abs_gap",
                   "shift_max_abs_gap")


def over_seeds(values: list[float]) -> dict[str, Any]:
    """``mean``, standard error ``sem`` (``std(ddof=1) / sqrt(S)``, None for one seed), ``min``,
    ``max`` and the ``values`` of one statistic across ``S`` seeds."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sem": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}


def gap_statistics_over_seeds(config, records: list[dict], per_seed_predict: dict[int, Callable]) -> dict[str, Any] | None:
    """The gap statistics of each seed on its own (its networks against the prediction on its own
    data split, ``per_seed_predict[seed](margins)``), and each scalar statistic's mean, standard
    error and range over seeds (:data:`SEED_STATISTICS`): how much the gap itself varies between
    independent repetitions.  ``by_seed`` keeps every seed's full statistics (where the max is...)."""
    by_seed = {}
    for seed, predict in per_seed_predict.items():
        mine = [r for r in records if int(r["seed"]) == int(seed)]
        grid = measured_grid(config, measured_accuracy(config, mine))
        g = gap_statistics(config.margins, config.ensembles, grid, predict)
        if g is not None:
            by_seed[int(seed)] = g
    if not by_seed:
        return None
    flat = {name: [] for name in SEED_STATISTICS}
    for g in by_seed.values():
        for name in SEED_STATISTICS:
            if name.startswith("shift_"):
                key = name.removeprefix("shift_")
                flat[name].append(g["margin_shift"]["factor" if key == "factor" else key])
            else:
                flat[name].append(g[name])
    return {"seeds": sorted(by_seed), **{name: over_seeds(v) for name, v in flat.items()},
            "by_seed": {str(s): g for s, g in by_seed.items()}}


def transition_margins(margins, predicted: np.ndarray, chance: float, limit: float,
                       band: tuple[float, float] = (0.1, 0.9)) -> list[float]:
    """The margins where a single network's predicted accuracy ``predicted`` (one per margin) lies
    between 10 % and 90 % of the way from ``chance`` to ``limit`` (the transition, where a gap can show)."""
    if not limit > chance:
        return []
    frac = (np.asarray(predicted, dtype=np.float64) - chance) / (limit - chance)
    return [float(m) for m, f in zip(margins, frac) if band[0] <= f <= band[1]]
