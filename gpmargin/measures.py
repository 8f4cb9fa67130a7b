"""Margins and norm-based measures of trained networks.

Plain functions on a list of weight matrices ``[W_1, ..., W_L]`` (each ``(out, in)``, as in
``torch.nn.Linear``; numpy arrays or torch tensors) and on network outputs.  Everything is
computed in float64 and returned as Python floats / numpy arrays.

Margins
    binary (outputs ``(n,)`` or ``(n, 1)``, labels ``+-1``): ``y * f(x)``;
    multi-class (outputs ``(n, C)``, labels int): ``f_y(x) - max_{c != y} f_c(x)``.
    A point is classified correctly iff its margin is positive (ties count as errors).
Frobenius-normalized margin
    ``gamma / prod_l ||W_l||_F``.
Spectral complexity (Bartlett, Foster & Telgarsky 2017, "Spectrally-normalized margin bounds")
    ``R_A = (prod_l rho_l ||W_l||_2) * (sum_l ||(W_l - M_l)^T||_{2,1}^{2/3} / ||W_l||_2^{2/3})^{3/2}``
    with ``rho_l`` the Lipschitz constants of the activations and ``M_l`` reference matrices
    (the initial weights, or 0).  Norm convention as in Bartlett et al.:
    ``||A||_{2,1} = sum_j ||A_{:, j}||_2`` (sum of the 2-norms of the columns), applied to the
    transpose ``(W - M)^T`` whose columns are the rows of ``W - M``: it is the sum over
    neurons (rows of ``W``) of the 2-norm of their weight change.
    For the paper's MLP (activation ``sqrt(2) relu`` after every layer but the last) the
    product of Lipschitz constants is ``sqrt(2)^(L-1)``: pass ``lipschitz=mlp_lipschitz(L)``.
Spectrally-normalized margin
    ``gamma / (R_A * ||X||_F / n)``, with ``X`` the ``(n, d)`` training inputs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

DEFAULT_QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def margins(outputs: Any, y: Any) -> np.ndarray:
    """Per-example margins (see module docstring); shape ``(n,)``."""
    f = _np(outputs)
    yv = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    if f.ndim == 1 or (f.ndim == 2 and f.shape[1] == 1):
        f = f.reshape(-1)
        if f.shape[0] != yv.shape[0]:
            raise ValueError(f"outputs ({f.shape[0]}) and labels ({yv.shape[0]}) differ in length")
        return yv.astype(np.float64).reshape(-1) * f
    if f.ndim != 2:
        raise ValueError(f"outputs must be (n,), (n, 1) or (n, C), got shape {f.shape}")
    idx = yv.astype(np.int64).reshape(-1)
    n = f.shape[0]
    fy = f[np.arange(n), idx]
    other = f.copy()
    other[np.arange(n), idx] = -np.inf
    return fy - other.max(axis=1)


def accuracy(outputs: Any, y: Any) -> float:
    """Fraction of examples with a positive margin."""
    return float(np.mean(margins(outputs, y) > 0))


def margin_summary(m: Any, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
    """Minimum, mean and quantiles of a margin distribution."""
    m = _np(m).reshape(-1)
    qs = np.quantile(m, quantiles)
    return {"min": float(m.min()), "mean": float(m.mean()),
            "quantiles": {f"{q:g}": float(v) for q, v in zip(quantiles, qs)}}


def frobenius_norms(weights: Sequence[Any]) -> list[float]:
    """``||W_l||_F`` of every layer."""
    return [float(np.linalg.norm(_np(w).reshape(_np(w).shape[0], -1))) for w in weights]


def spectral_norms(weights: Sequence[Any]) -> list[float]:
    """``||W_l||_2`` (largest singular value) of every layer (conv kernels: reshaped to 2-D)."""
    out = []
    for w in weights:
        if hasattr(w, "detach"):  # torch: stay on the tensor's device (fast on GPU), float64
            a = w.detach().double()
            out.append(float(torch_svdvals(a.reshape(a.shape[0], -1))[0]))
        else:
            a = _np(w)
            out.append(float(np.linalg.svd(a.reshape(a.shape[0], -1), compute_uv=False)[0]))
    return out


def torch_svdvals(a):
    import torch

    return torch.linalg.svdvals(a)


def norm_2_1(a: Any) -> float:
    """``||A||_{2,1} = sum_j ||A_{:, j}||_2``: the sum of the 2-norms of the columns."""
    a = _np(a)
    return float(np.linalg.norm(a, axis=0).sum())


def mlp_lipschitz(depth: int, act_lipschitz: float = math.sqrt(2.0)) -> float:
    """Product of activation Lipschitz constants of a depth-``depth`` MLP (``depth - 1`` activations)."""
    return float(act_lipschitz) ** (depth - 1)


def spectral_complexity(weights: Sequence[Any], reference: Sequence[Any] | None = None,
                        lipschitz: float = 1.0, spectral: Sequence[float] | None = None) -> float:
    """Bartlett et al.'s ``R_A`` (module docstring); ``reference=None`` means ``M_l = 0``.

    ``lipschitz`` is the product of the activations' Lipschitz constants; ``spectral`` may
    pass precomputed ``spectral_norms(weights)``.
    """
    spec = list(spectral) if spectral is not None else spectral_norms(weights)
    total = 0.0
    for i, (w, s) in enumerate(zip(weights, spec)):
        a = _np(w)
        a = a.reshape(a.shape[0], -1)
        if reference is not None:
            a = a - _np(reference[i]).reshape(a.shape)
        total += (norm_2_1(a.T) ** (2.0 / 3.0)) / (s ** (2.0 / 3.0))
    return float(lipschitz * math.prod(spec) * total ** 1.5)


def frobenius_normalized_margin(gamma: float, weights: Sequence[Any]) -> float:
    """``gamma / prod_l ||W_l||_F``."""
    return float(gamma / math.prod(frobenius_norms(weights)))


def spectrally_normalized_margin(gamma: float, r_a: float, x: Any) -> float:
    """``gamma / (R_A * ||X||_F / n)`` with ``X`` of shape ``(n, ...)``."""
    xa = _np(x)
    n = xa.shape[0]
    denom = r_a * np.linalg.norm(xa.reshape(n, -1)) / n
    return float(gamma / denom) if denom > 0 else math.copysign(math.inf, gamma)


def network_measures(weights: Sequence[Any], train_outputs: Any, y_train: Any, x_train: Any,
                     test_outputs: Any = None, y_test: Any = None, init_weights: Sequence[Any] | None = None,
                     lipschitz: float = 1.0, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
    """All measures of one trained network, as a JSON-able dict.

    ``gamma`` for the normalized margins is the *minimum* training margin (the margin of the
    network); ``*_median`` variants use the median training margin.
    """
    m_tr = margins(train_outputs, y_train)
    out: dict[str, Any] = {"train_accuracy": float(np.mean(m_tr > 0))}
    if test_outputs is not None:
        m_te = margins(test_outputs, y_test)
        out["test_accuracy"] = float(np.mean(m_te > 0))
        out["test_margin"] = margin_summary(m_te, quantiles)
    out["train_margin"] = margin_summary(m_tr, quantiles)
    gamma, gamma_med = float(m_tr.min()), float(np.median(m_tr))
    fro = frobenius_norms(weights)
    spec = spectral_norms(weights)
    out["frobenius_norms"] = fro
    out["spectral_norms"] = spec
    out["frobenius_normalized_margin"] = gamma / math.prod(fro)
    out["frobenius_normalized_margin_median"] = gamma_med / math.prod(fro)
    r0 = spectral_complexity(weights, None, lipschitz, spec)
    out["spectral_complexity_zero_ref"] = r0
    out["spectrally_normalized_margin_zero_ref"] = spectrally_normalized_margin(gamma, r0, x_train)
    out["spectrally_normalized_margin_zero_ref_median"] = spectrally_normalized_margin(gamma_med, r0, x_train)
    if init_weights is not None:
        ri = spectral_complexity(weights, init_weights, lipschitz, spec)
        out["spectral_complexity_init_ref"] = ri
        out["spectrally_normalized_margin_init_ref"] = spectrally_normalized_margin(gamma, ri, x_train)
        out["spectrally_normalized_margin_init_ref_median"] = spectrally_normalized_margin(gamma_med, ri, x_train)
    # JSON has no infinities: an undefined ratio (R_A = 0 when nothing moved) is stored as None
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in out.items()}
