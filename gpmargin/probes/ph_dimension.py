"""Persistent-homology dimension of a set of points (Birdal et al. 2021, *Intrinsic dimension,
persistent homology and generalization*; Tan et al. 2024, *On the limitations of fractal
dimension as a measure of generalization*).

The 0-dimensional persistent homology of a finite metric space is its minimum spanning tree:
the total persistence ``E(n) = sum of MST edge lengths`` of ``n`` points drawn from a set of
(upper box-counting) dimension ``d`` grows like ``n^{(d - 1)/d}``.  So, fitting

    log E(n) = slope * log n + c      over n from n_min (200) to n_max (1000),

the PH dimension is ``d = 1 / (1 - slope)``.  Each ``n`` uses a random subset (without
replacement) of the given points; ``repeats`` subsets per ``n`` are averaged.

Metrics: Euclidean distance between points (e.g. flattened parameter vectors of the last
iterates of a training run), or the loss pseudometric
``rho(theta, theta') = mean_k |l_k(theta) - l_k(theta')|`` on per-example losses ``l_k``
(:func:`loss_distances`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from gpmargin.errors import GpmarginError


def mst_length(distances: np.ndarray) -> float:
    """Total edge length of the minimum spanning tree of a dense symmetric ``(n, n)`` distance
    matrix (Prim's algorithm, ``O(n^2)``: one vectorised pass over a row per added vertex)."""
    d = np.asarray(distances, dtype=np.float64)
    n = d.shape[0]
    if n < 2:
        return 0.0
    best = d[0].copy()  # cheapest edge from the tree to every vertex
    inside = np.zeros(n, dtype=bool)
    inside[0] = True
    best[0] = np.inf
    total = 0.0
    for _ in range(n - 1):
        j = int(np.argmin(best))
        total += best[j]
        inside[j] = True
        best[j] = np.inf
        np.minimum(best, np.where(inside, np.inf, d[j]), out=best)
    return float(total)


def euclidean_distances(points: np.ndarray) -> np.ndarray:
    """``(N, N)`` Euclidean distances between the rows of ``points`` ``(N, P)`` (float64, via
    the Gram matrix, clipped at 0)."""
    x = np.asarray(points, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0))


def loss_distances(losses: Any) -> np.ndarray:
    """Loss pseudometric ``mean_k |l_k(theta_i) - l_k(theta_j)|`` from ``(N, n)`` per-example losses."""
    a = np.asarray(losses, dtype=np.float64) if losses is not None else None
    if a is None or a.ndim != 2 or a.shape[1] < 1:
        raise GpmarginError("the loss pseudometric needs per-example losses: an (iterates, examples) array, got "
                            + ("None" if a is None else f"shape {a.shape}")
                            + " (record them with TrajectoryRecorder(..., loss_fn=, data=))")
    if not np.all(np.isfinite(a)):
        raise GpmarginError("per-example losses contain NaN or inf: the loss pseudometric is undefined")
    return cdist(a, a, metric="cityblock") / a.shape[1]


def ph_dimension(points: Any = None, *, distances: Any = None, losses: Any = None, n_min: int = 200,
                 n_max: int = 1000, n_steps: int = 9, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """PH dimension (module docstring) of ``points`` ``(N, P)`` (Euclidean), of per-example
    ``losses`` ``(N, n)`` (loss pseudometric), or of a precomputed ``distances`` ``(N, N)``.

    Needs ``N >= n_max`` points.  Returns ``{"dimension", "slope", "n", "mst_length", "metric"}``.
    """
    given = [v is not None for v in (points, distances, losses)]
    if sum(given) != 1:
        raise GpmarginError("pass exactly one of points=, distances= or losses=")
    if losses is not None:
        d, metric = loss_distances(losses), "loss"
    elif distances is not None:
        d, metric = np.asarray(distances, dtype=np.float64), "precomputed"
        if d.ndim != 2 or d.shape[0] != d.shape[1]:
            raise GpmarginError(f"distances must be a square (N, N) matrix, got shape {d.shape}")
    else:
        p = np.asarray(points, dtype=np.float64)
        if p.ndim != 2:
            raise GpmarginError(f"points must be an (N, P) array, got shape {p.shape}")
        if not np.all(np.isfinite(p)):
            raise GpmarginError("points contain NaN or inf")
        d, metric = None, "euclidean"
    total = (p if d is None else d).shape[0]
    if not (2 <= n_min < n_max and n_steps >= 2):
        raise GpmarginError(f"need 2 <= n_min < n_max and n_steps >= 2, got n_min={n_min}, n_max={n_max}, "
                            f"n_steps={n_steps}")
    if total < n_max:
        raise GpmarginError(f"a PH-dimension estimate over n = {n_min}..{n_max} needs at least {n_max} points "
                            f"(iterates), got {total}: record more iterates or lower n_max")
    if d is None:
        d = euclidean_distances(p)
    rng = np.random.default_rng(seed)
    ns = np.unique(np.round(np.linspace(n_min, n_max, n_steps)).astype(int))
    lengths = []
    for n in ns:
        reps = 1 if n == total else repeats
        vals = []
        for _ in range(reps):
            idx = rng.choice(total, size=n, replace=False)
            vals.append(mst_length(d[np.ix_(idx, idx)]))
        lengths.append(float(np.mean(vals)))
    e = np.asarray(lengths)
    if np.any(e <= 0):
        raise GpmarginError("the points coincide (MST length 0): the PH dimension is undefined")
    slope = float(np.polyfit(np.log(ns), np.log(e), 1)[0])
    dim = 1.0 / (1.0 - slope) if slope < 1 else float("inf")
    return {"dimension": dim, "slope": slope, "n": ns, "mst_length": e, "metric": metric}
