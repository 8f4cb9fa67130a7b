"""Margin grids: the automatic range of a curve (:func:`default_margins`) and the half-way margin
of a computed one (:func:`margin_at_fraction`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from gpmargin.errors import GpmarginError
from gpmargin.predict import accuracy as acc
from gpmargin.predict.result import Posterior

__all__ = ["default_margins", "margin_at_fraction", "DEFAULT_NUM_MARGINS"]

DEFAULT_NUM_MARGINS = 41


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


def margin_at_fraction(curve, fraction: float = 0.5, ensemble: int = 1) -> float:
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
