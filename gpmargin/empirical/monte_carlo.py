r"""Monte Carlo estimates of a kernel object's NNGP or NTK from its own finite networks.

``monte_carlo_kernel(k, width, members, x1, x2)`` draws ``members`` networks of width ``width``
from ``k.network(...)`` (member ``j`` seeded ``1000 * seed + j``) and averages their empirical
kernels (:mod:`gpmargin.empirical.tangent`).  Each network has ``outputs`` independent readouts;
for the NNGP the per-network estimate is :math:`\frac1O\sum_a f_a(x) f_a(x')`, unbiased for the
kernel of width-``width`` networks (which approaches ``k(x1, x2)`` as ``O(1/width)``).  The
standard error is the spread over networks divided by :math:`\sqrt{members}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gpmargin.empirical.tangent import empirical_nngp, empirical_ntk
from gpmargin.errors import GpmarginError
from gpmargin.kernels.finite import member_seed, positive_int
from gpmargin.kernels.network import Network


@dataclass(frozen=True)
class MonteCarloKernel:
    """``mean`` and ``standard_error`` ``(n1, n2)`` over ``members`` networks of ``width``."""

    mean: torch.Tensor
    standard_error: torch.Tensor
    members: int
    width: int

    def z_scores(self, exact: torch.Tensor) -> torch.Tensor:
        """``|mean - exact| / standard_error`` entry by entry (agreement: below about 4)."""
        return (self.mean - exact.to(self.mean)).abs() / self.standard_error


def monte_carlo_kernel(kernel, width, members: int, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                       get: str = "nngp", outputs: int = 64, seed: int = 0, parameterization: str = "ntk",
                       batch: int = 16, dtype: torch.dtype = torch.float64) -> MonteCarloKernel:
    """Average the empirical ``get`` kernel (``"nngp"`` or ``"ntk"``) of ``members`` finite networks
    of ``kernel`` (built ``batch`` at a time); see the module docstring."""
    if get not in ("nngp", "ntk"):
        raise GpmarginError(f"get={get!r} is not supported; use 'nngp' or 'ntk'")
    members, batch = positive_int(members, "members"), positive_int(batch, "batch")
    if members < 2:
        raise GpmarginError(f"members={members}: a standard error needs at least 2 networks")
    x1 = x1.to(dtype)
    x2 = None if x2 is None else x2.to(dtype)
    readouts = outputs if get == "nngp" else 1
    samples = []
    for start in range(0, members, batch):  # member j has the seed it has in k.network(members=...)
        seeds = [member_seed(seed, j) for j in range(start, min(start + batch, members))]
        net = Network(kernel, width, in_shape=tuple(x1.shape[1:]), parameterization=parameterization, seeds=seeds,
                      outputs=readouts, dtype=dtype, device=x1.device)
        samples.append(empirical_nngp(net, x1, x2) if get == "nngp" else empirical_ntk(net, x1, x2))
    s = torch.cat(samples)
    return MonteCarloKernel(s.mean(0), s.std(0) / math.sqrt(s.shape[0]), members, width)
