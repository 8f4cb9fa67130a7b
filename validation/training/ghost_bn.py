"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, *Train longer, generalize better*).

In training mode a batch of ``N`` examples is split into ``N / G`` consecutive chunks of ``G``
("ghost batches") and every chunk is normalised with its own statistics:

    y = gamma * (x - mean_chunk) / sqrt(var_chunk + eps) + beta,

``var_chunk`` the biased (``1/G``) variance per channel.  The running statistics move towards
the *average over chunks* of the chunk means and unbiased (``1/(G-1)``) variances,
``r <- (1 - momentum) r + momentum * avg``, so with ``G = N`` the module is exactly
``torch.nn.BatchNorm1d``; in eval mode it normalises with the running statistics as BatchNorm does.
"""

from __future__ import annotations

import torch
from torch import nn

from gpmargin.errors import GpmarginError


def check_ghost_batch(ghost_batch_size: int, batch_size: int) -> None:
    """One-line error unless ``1 <= G <= batch`` and ``G`` divides the batch."""
    if not (isinstance(ghost_batch_size, int) and ghost_batch_size >= 1):
        raise GpmarginError(f"ghost_batch_size must be a positive integer, got {ghost_batch_size!r}")
    if ghost_batch_size > batch_size:
        raise GpmarginError(f"ghost_batch_size={ghost_batch_size} is larger than the batch ({batch_size}): "
                            "use a ghost batch size <= the batch size")
    if batch_size % ghost_batch_size:
        raise GpmarginError(f"ghost_batch_size={ghost_batch_size} does not divide the batch ({batch_size}): "
                            "use a divisor of the batch size")


class GhostBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` over ghost batches of ``ghost_batch_size`` examples (module docstring).

    Input ``(N, C)``; ``N`` must be a multiple of ``ghost_batch_size`` in training mode.
    """

    def __init__(self, num_features: int, ghost_batch_size: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, **kwargs) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, **kwargs)
        if not (isinstance(ghost_batch_size, int) and ghost_batch_size >= 1):
            raise GpmarginError(f"ghost_batch_size must be a positive integer, got {ghost_batch_size!r}")
        self.ghost_batch_size = ghost_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if x.dim() != 2:
            raise GpmarginError(f"GhostBatchNorm1d takes (N, C) inputs, got shape {tuple(x.shape)}")
        G = self.ghost_batch_size
        check_ghost_batch(G, x.shape[0])
        chunks = x.reshape(x.shape[0] // G, G, x.shape[1])
        mean = chunks.mean(dim=1, keepdim=True)
        var = chunks.var(dim=1, unbiased=False, keepdim=True)
        y = ((chunks - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            y = y * self.weight + self.bias
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (G / (G - 1)) if G > 1 else var
                self.running_mean.mul_(1 - m).add_(mean.mean(dim=0).reshape(-1), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.mean(dim=0).reshape(-1), alpha=m)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_batch_size={self.ghost_batch_size}"
