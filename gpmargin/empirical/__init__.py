"""Empirical kernels of finite networks: the NTK and NNGP of any ``torch.nn.Module``
(:func:`empirical_ntk`, :func:`empirical_nngp`), Monte Carlo estimates of a kernel object from its
own networks (:func:`monte_carlo_kernel`), and the linearised model (:func:`linearize`).
``torch.func`` only."""

from gpmargin.empirical.linearize import Linearized, linearize
from gpmargin.empirical.monte_carlo import MonteCarloKernel, monte_carlo_kernel
from gpmargin.empirical.tangent import empirical_nngp, empirical_ntk

__all__ = ["Linearized", "MonteCarloKernel", "empirical_nngp", "empirical_ntk", "linearize", "monte_carlo_kernel"]
