"""Large-batch learning-rate rules (Hoffer, Hubara & Soudry 2017, *Train longer, generalize better*).

``sqrt_lr``             ``lr(B) = lr_ref * sqrt(B / B_ref)``: keeps the variance of the weight
                        update per example as at the reference batch ``B_ref``.
``regime_adaptation``   train ``r = B / B_ref`` times as many epochs and multiply every
                        learning-rate milestone (in epochs) by ``r``: the same number of updates
                        as the reference regime.
``step_lr``             the piecewise-constant schedule ``lr * decay^(milestones passed)``.
"""

from __future__ import annotations

import math
from typing import Sequence

from gpmargin.errors import GpmarginError


def _batch(name: str, v) -> int:
    if not (isinstance(v, int) and v >= 1):
        raise GpmarginError(f"{name} must be a positive integer, got {v!r}")
    return v


def sqrt_lr(lr_ref: float, batch_size: int, ref_batch_size: int) -> float:
    """``lr_ref * sqrt(batch_size / ref_batch_size)``."""
    if not (math.isfinite(lr_ref) and lr_ref > 0):
        raise GpmarginError(f"lr_ref must be a positive finite number, got {lr_ref!r}")
    return float(lr_ref) * math.sqrt(_batch("batch_size", batch_size) / _batch("ref_batch_size", ref_batch_size))


def regime_adaptation(epochs: float, milestones: Sequence[float], batch_size: int,
                      ref_batch_size: int) -> tuple[float, tuple[float, ...]]:
    """``(epochs * r, tuple(m * r for m in milestones))`` with ``r = batch_size / ref_batch_size``."""
    r = _batch("batch_size", batch_size) / _batch("ref_batch_size", ref_batch_size)
    if not epochs > 0:
        raise GpmarginError(f"epochs must be positive, got {epochs!r}")
    return float(epochs) * r, tuple(float(m) * r for m in milestones)


def step_lr(lr: float, epoch: float, milestones: Sequence[float], decay: float = 0.1) -> float:
    """``lr * decay ** #{m in milestones : epoch >= m}``."""
    return float(lr) * decay ** sum(1 for m in milestones if epoch >= m)
