"""Minibatch training: shuffled batches from a seeded generator, one optimiser step per batch.

Batches are drawn without replacement: a permutation of the ``n`` examples from a CPU
``torch.Generator`` seeded ``seed``, cut into ``n // batch_size`` batches (the incomplete rest
dropped), then the next permutation.  The same seed gives the same batches on every device.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from gpmargin.errors import GpmarginError


def minibatches(n: int, batch_size: int, seed: int, device=None) -> Iterator[torch.Tensor]:
    """Endless index batches ``(batch_size,)`` (module docstring)."""
    if not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise GpmarginError(f"batch_size={batch_size!r} must be a positive integer at most the training set ({n})")
    gen = torch.Generator().manual_seed(int(seed))
    while True:
        order = torch.randperm(n, generator=gen)
        for b in range(n // batch_size):
            yield order[b * batch_size:(b + 1) * batch_size].to(device)


def train_minibatch(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                    optimizer: torch.optim.Optimizer, *, steps: int, batch_size: int, seed: int,
                    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    lr_at: Callable[[int], float] | None = None, clip: float | None = None,
                    hook: Callable[[int], None] | None = None) -> float:
    """``steps`` optimiser steps on ``loss(model(x[B]), targets[B])`` over :func:`minibatches`.

    ``lr_at(t)``: the learning rate of step ``t`` (0-based; default: the optimiser's);
    ``clip``: the gradient norm is clipped to it; ``hook(t)`` after step ``t`` (1-based count of
    steps done).  Returns the last batch's loss (NaN when ``steps`` is 0).
    """
    if clip is not None and not clip > 0:
        raise GpmarginError(f"clip must be positive (a gradient-norm bound) or None, got {clip!r}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    value = torch.tensor(float("nan"))
    for t, idx in zip(range(steps), minibatches(x.shape[0], batch_size, seed, x.device)):
        if lr_at is not None:
            for g in optimizer.param_groups:
                g["lr"] = lr_at(t)
        optimizer.zero_grad(set_to_none=True)
        value = loss(model(x[idx]), targets[idx])
        value.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if hook is not None:
            hook(t + 1)
    return float(value.detach())
