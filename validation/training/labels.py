"""Label noise: a fraction of the training labels replaced by wrong ones, reproducibly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def noisy_labels(y: Any, fraction: float, seed: int, num_classes: int | None = None) -> torch.Tensor:
    """``y`` with ``floor(fraction * n)`` entries (chosen by a generator seeded ``(seed, fraction)``)
    replaced by a different label: the sign flipped (+-1 floats) or another class (int)."""
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).clone()
    n = y.shape[0]
    k = int(math.floor(fraction * n))
    if k == 0:
        return y
    rng = np.random.default_rng([int(seed), int(round(fraction * 1e6))])
    idx = torch.as_tensor(rng.choice(n, size=k, replace=False))
    if y.is_floating_point():
        y[idx] = -y[idx]
    else:
        c = int(num_classes or int(y.max()) + 1)
        shift = torch.as_tensor(rng.integers(1, c, size=k))
        y[idx] = (y[idx] + shift) % c
    return y
