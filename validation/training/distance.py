"""Distance from initialisation, ``d(t) = ||w_t - w_0||``, and which law it follows.

Hoffer, Hubara & Soudry (2017) model SGD as a "random walk on a random landscape", whose
distance grows *logarithmically*, ``d(t) ~ a + b log t``, unlike a free random walk,
``d(t) ~ c t^(1/2)``.  :func:`fit_distance` fits both laws by least squares and says which
explains the curve better:

log law     ``d = a + b log t``       (linear least squares in ``(1, log t)``)
power law   ``d = c t^p``              (linear least squares of ``log d`` on ``(1, log t)``)

Both are compared by the residual sum of squares *in d* (``rss_log``, ``rss_power``); the
smaller one is ``better``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from gpmargin.errors import GpmarginError


def distance(params: Iterable[torch.Tensor], init: Sequence[torch.Tensor]) -> float:
    """``sqrt(sum_l ||W_l - W_l(0)||_F^2)`` over all parameters."""
    with torch.no_grad():
        return float(sum(float((p.detach() - q).double().square().sum()) for p, q in zip(params, init)) ** 0.5)


def fit_distance(t: Sequence[float], d: Sequence[float]) -> dict[str, Any]:
    """Fit ``d(t)`` by the log and power laws (module docstring); ``t > 0``, ``d > 0``, >= 3 points."""
    t = np.asarray(t, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if t.shape != d.shape or t.ndim != 1 or t.size < 3:
        raise GpmarginError(f"fit_distance needs two 1-D arrays of the same length >= 3, got {t.shape} and {d.shape}")
    if not (np.all(t > 0) and np.all(d > 0) and np.all(np.isfinite(t)) and np.all(np.isfinite(d))):
        raise GpmarginError("fit_distance needs positive finite times and distances (drop t = 0)")
    A = np.stack([np.ones_like(t), np.log(t)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, d, rcond=None)
    (logc, p), *_ = np.linalg.lstsq(A, np.log(d), rcond=None)
    rss_log = float(np.sum((a + b * np.log(t) - d) ** 2))
    rss_pow = float(np.sum((np.exp(logc) * t ** p - d) ** 2))
    tss = float(np.sum((d - d.mean()) ** 2)) or 1.0
    return {"log_intercept": float(a), "log_slope": float(b), "power_coef": float(np.exp(logc)),
            "power_exponent": float(p), "rss_log": rss_log, "rss_power": rss_pow,
            "r2_log": 1 - rss_log / tss, "r2_power": 1 - rss_pow / tss,
            "better": "log" if rss_log <= rss_pow else "power"}
