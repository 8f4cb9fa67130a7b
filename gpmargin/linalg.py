"""Safe float64 Cholesky factorisation with adaptive, reported jitter.

Kernel matrices of deep NNGP/NTK kernels are positive semi-definite but can be
numerically singular (exactly duplicated inputs, nearly parallel inputs after many
layers).  :func:`safe_cholesky` first tries the plain factorisation; only if that
fails does it add ``jitter * I`` to the diagonal, starting at
``1e-10 * mean(diag(K))`` and growing by a factor of 10 up to ``max_rel_jitter *
mean(diag(K))``.  The jitter used is returned, and a non-zero jitter is announced
with :func:`warnings.warn` so that it never goes unnoticed.

A factorisation "fails" when LAPACK reports a non-positive pivot, or when a pivot
``L_jj**2`` falls below the round-off floor ``10 * n * eps * mean(diag(K))``: such
a pivot is noise (e.g. the Schur complement of an exactly duplicated row), and
solving with it would amplify round-off by ``1 / L_jj``.
"""

from __future__ import annotations

import mmap
import warnings

import torch

from gpmargin.errors import GpmarginError

__all__ = ["empty_matrix", "mirror_upper", "safe_cholesky", "cholesky_solve", "JitterWarning", "jitter_ladder", "pivot_floor", "factor_ok",
           "warn_jitter", "not_positive_definite"]

HUGE_PAGE_MIN_BYTES = 8 * 2**20  # below this the page faults cost less than the mmap call
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


def empty_matrix(rows: int, cols: int, device="cpu") -> torch.Tensor:
    """An uninitialised ``(rows, cols)`` float64 matrix.

    On a Linux CPU, from 8 MiB up, its memory is an anonymous mapping advised to use transparent
    huge pages and populated by the kernel in one call, so writing the fresh matrix takes no page
    faults: on a 2-core VM the first write of a 10000 x 10000 matrix cost 0.38-0.54 s through
    ``torch.empty`` (4 KiB pages, one fault each) and 0.15 s this way, allocation included (see
    docs/performance.md).  Elsewhere, or where the kernel refuses the advice, ordinary pages."""
    nbytes = rows * cols * 8
    device = torch.device(device)
    if device.type != "cpu" or nbytes < HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty((rows, cols), dtype=torch.float64, device=device)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for advice in (mmap.MADV_HUGEPAGE, _MADV_POPULATE_WRITE):
        try:
            buf.madvise(advice)
        except OSError:  # an older kernel, or no transparent huge pages: faults as usual
            pass
    return torch.frombuffer(buf, dtype=torch.float64).view(rows, cols)  # the tensor keeps buf alive


def mirror_upper(K: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Copy the upper triangle of the square matrix ``K`` onto its lower one, in place, one
    column block at a time: ``K[i, j] = K[j, i]`` for ``i > j``, so ``K`` is exactly symmetric
    (a Gram matrix from a BLAS need not be: its two triangles may round differently)."""
    n = K.shape[0]
    for c0 in range(0, n, block):
        c1 = min(c0 + block, n)
        diag = K[c0:c1, c0:c1]
        upper = torch.ones(c1 - c0, c1 - c0, dtype=torch.bool, device=K.device).triu_()
        diag.copy_(torch.where(upper, diag, diag.T))
        K[c1:, c0:c1] = K[c0:c1, c1:].T
    return K


START_REL_JITTER = 1e-10
MAX_REL_JITTER = 1e-3


class JitterWarning(RuntimeWarning):
    """Jitter had to be added to a kernel matrix before it could be factorised."""


def _as_float64(K) -> torch.Tensor:
    if not isinstance(K, torch.Tensor):
        K = torch.as_tensor(K)
    if K.dtype != torch.float64:
        K = K.to(torch.float64)
    return K


def factor_ok(L: torch.Tensor, info: torch.Tensor, floor: float) -> bool:
    """Did ``cholesky_ex`` succeed with every pivot ``L_jj**2`` above ``floor``?"""
    if int(info) != 0:
        return False
    d = torch.diagonal(L)
    if not bool(torch.isfinite(d).all()):
        return False
    return bool((d * d).min() > floor)


def pivot_floor(n: int, scale: float) -> float:
    """Round-off floor ``10 * n * eps * scale`` below which a squared pivot counts as a failure."""
    return 10.0 * n * torch.finfo(torch.float64).eps * scale


def jitter_ladder(scale: float, start_rel_jitter: float = START_REL_JITTER,
                  max_rel_jitter: float = MAX_REL_JITTER):
    """The (relative, absolute) jitters tried after the plain factorisation failed:
    ``start * scale``, then x10 each time, up to ``max * scale``."""
    rel = start_rel_jitter
    while rel <= max_rel_jitter * (1 + 1e-9):
        yield rel, rel * scale
        rel *= 10.0


def warn_jitter(name: str, jitter: float, rel: float, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{name} is numerically singular; added jitter {jitter:.3g} "
        f"({rel:.0e} x mean diagonal) to factorise it",
        JitterWarning,
        stacklevel=stacklevel,
    )


def not_positive_definite(name: str, n: int, max_rel_jitter: float) -> GpmarginError:
    return GpmarginError(
        f"{name} ({n}x{n}) is not positive definite even with jitter "
        f"{max_rel_jitter:.0e} x mean diagonal; check for NaNs, an invalid kernel, or inputs "
        f"that make it indefinite"
    )


def safe_cholesky(
    K,
    *,
    max_rel_jitter: float = MAX_REL_JITTER,
    start_rel_jitter: float = START_REL_JITTER,
    warn: bool = True,
    name: str = "kernel matrix",
) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of a symmetric PSD matrix, adding jitter only if needed.

    Parameters
    ----------
    K : (n, n) tensor or array
        Symmetric positive (semi-)definite matrix; converted to float64.
    max_rel_jitter : float
        Largest jitter tried, relative to ``mean(diag(K))``; beyond it a
        :class:`~gpmargin.errors.GpmarginError` is raised.
    start_rel_jitter : float
        First jitter tried (relative to ``mean(diag(K))``); each further try is x10.
    warn : bool
        Issue a :class:`JitterWarning` when a non-zero jitter was needed.
    name : str
        How the matrix is called in messages.

    Returns
    -------
    (L, jitter) : (torch.Tensor, float)
        ``L`` lower triangular with ``L @ L.T == K + jitter * I``; ``jitter`` is the
        absolute value added to the diagonal (0.0 when the plain factorisation worked).
    """
    K = _as_float64(K)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise GpmarginError(f"{name} must be square, got shape {tuple(K.shape)}")
    n = K.shape[0]
    if n == 0:
        raise GpmarginError(f"{name} is empty (no training points)")
    if not bool(torch.isfinite(K).all()):
        raise GpmarginError(f"{name} contains NaN or infinite entries; check the inputs and the kernel")
    diag = torch.diagonal(K)
    scale = float(diag.mean())
    if scale == 0 or 0 < scale < 1e-290:
        raise GpmarginError(f"{name} is {'zero' if scale == 0 else f'{scale:.3g} on its diagonal'}: the inputs are all "
                            "zero, or so small that the kernel underflowed; rescale the inputs (e.g. each row to norm "
                            "sqrt(d), as the paper's preprocessing does)")
    if not scale > 0:
        raise GpmarginError(f"{name} has a non-positive mean diagonal ({scale:g}); it is not a covariance")
    floor = pivot_floor(n, scale)

    L, info = torch.linalg.cholesky_ex(K)
    if factor_ok(L, info, floor):
        return L, 0.0

    eye = torch.eye(n, dtype=K.dtype, device=K.device)
    for rel, jitter in jitter_ladder(scale, start_rel_jitter, max_rel_jitter):
        L, info = torch.linalg.cholesky_ex(K + jitter * eye)
        if factor_ok(L, info, floor):
            if warn:
                warn_jitter(name, jitter, rel)
            return L, float(jitter)
    raise not_positive_definite(name, n, max_rel_jitter)


def cholesky_solve(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Solve ``(L L^T) X = B`` for ``X`` given the lower Cholesky factor ``L``.

    ``B`` may be a vector (n,) or a matrix (n, k); the result has the same shape.
    """
    vec = B.ndim == 1
    if vec:
        B = B[:, None]
    X = torch.cholesky_solve(B, L, upper=False)
    return X[:, 0] if vec else X
