"""Which measure ranks networks like their generalization: Kendall's tau, overall and granulated.

Jiang et al. (2020), *Fantastic generalization measures and where to find them*: for a
population trained on a grid of hyperparameters, the overall ``tau_b`` of a measure with a target
(test accuracy, generalization gap), and per hyperparameter the mean tau over the groups of
networks that differ in that hyperparameter only (granulated); ``psi`` is their mean.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


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


def granulated(values: np.ndarray, target: np.ndarray, hyper: list[dict], name: str,
               hyperparameters: Sequence[str]) -> float:
    """Mean over settings of the other hyperparameters of the tau across values of ``name``."""
    groups: dict[tuple, list[int]] = {}
    for i, h in enumerate(hyper):
        groups.setdefault(tuple(h[k] for k in hyperparameters if k != name), []).append(i)
    taus = [kendall(values[g], target[g]) for g in groups.values() if len(g) >= 2]
    taus = [t for t in taus if math.isfinite(t)]
    return float(np.mean(taus)) if taus else math.nan


def tau_table(records: list[dict], measures: dict[str, np.ndarray], hyperparameters: Sequence[str],
              targets: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (measure, target): ``overall``, one granulated tau per hyperparameter, ``psi``."""
    hyper = [r["hyperparameters"] for r in records]
    varied = [k for k in hyperparameters if len({h[k] for h in hyper}) > 1]
    rows = []
    for target in targets:
        t = np.array([r[target] for r in records], dtype=np.float64)
        for name, v in measures.items():
            row: dict[str, Any] = {"measure": name, "target": target, "overall": kendall(v, t)}
            gran = {k: granulated(v, t, hyper, k, hyperparameters) for k in varied}
            row.update(gran)
            finite = [g for g in gran.values() if math.isfinite(g)]
            row["psi"] = float(np.mean(finite)) if finite else math.nan
            rows.append(row)
    return rows
