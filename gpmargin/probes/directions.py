"""Filter-normalised random directions in parameter space (Li et al. 2018, *Visualizing the
loss landscape of neural nets*).

A direction is a list of tensors, one per parameter of the model, in ``model.parameters()``
order.  For a weight tensor ``W`` of shape ``(out, ...)`` (a ``Linear`` matrix, a conv filter
bank) the Gaussian draw ``d ~ N(0, I)`` is rescaled row by row (filter by filter):

    d_i  <-  d_i * ||W_i|| / ||d_i||          (i = output row / filter)

so every row of the direction has exactly the norm of the corresponding weight row, and a
step ``theta + t d`` moves each filter by the same *relative* amount ``t``.  This makes 1-D and
2-D slices comparable between networks whose layers have different scales (and invariant to
a rescaling of a layer that a normalisation layer undoes).  Parameters with at most one
dimension per network (biases, batch-norm scales and shifts) get a zero direction, or with
``bias="copy"`` a copy of themselves.

Batched ensembles (modules with ``batch_dims = b``, weights ``(k, out, ...)``) are handled by
treating the first ``b + 1`` dimensions as the row index: rows of different members are
normalised separately.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterable, Iterator, Sequence

import torch

from gpmargin.errors import GpmarginError

Direction = list[torch.Tensor]


def model_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """``list(model.parameters())``; a model without parameters raises :class:`GpmarginError`."""
    if not isinstance(model, torch.nn.Module):
        raise GpmarginError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    if not params:
        raise GpmarginError(f"model {type(model).__name__} has no parameters: there is no direction to probe")
    return params


def get_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """Detached copies of the model's parameters (a point ``theta`` in parameter space)."""
    return [p.detach().clone() for p in model_parameters(model)]


@contextlib.contextmanager
def buffers_kept(model: torch.nn.Module) -> Iterator[None]:
    """Restore the model's buffers (BatchNorm running statistics, ...) on exit: a probe
    evaluates the model in the mode it is in (``train()`` or ``eval()``) and leaves it, buffers
    as well as parameters, as it found it.  Nested blocks on one model (a probe evaluating the
    loss many times) save the buffers once, in the outermost."""
    if id(model) in _KEEPING:
        yield
        return
    saved = [b.detach().clone() for b in model.buffers()]
    _KEEPING.add(id(model))
    try:
        yield
    finally:
        _KEEPING.discard(id(model))
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)


_KEEPING: set[int] = set()  # ids of the models whose buffers an enclosing buffers_kept restores


def keeps_buffers(fn):
    """Decorator of a probe ``fn(model, ...)``: see :func:`buffers_kept`."""
    @functools.wraps(fn)
    def probe(model, *args, **kwargs):
        with buffers_kept(model):
            return fn(model, *args, **kwargs)

    return probe


@torch.no_grad()
def set_weights(model: torch.nn.Module, base: Sequence[torch.Tensor],
                directions: Sequence[Sequence[torch.Tensor]] = (), coefficients: Sequence[float] = ()) -> None:
    """Set the parameters to ``base + sum_k coefficients[k] * directions[k]`` (in place)."""
    for i, p in enumerate(model_parameters(model)):
        v = base[i].to(p.device, p.dtype).clone()
        for d, c in zip(directions, coefficients):
            if c != 0:
                v.add_(d[i].to(p.device, p.dtype), alpha=float(c))
        p.copy_(v)


def _row_dims(p: torch.Tensor, batch_dims: int) -> int:
    """Number of leading dimensions that index a row/filter (``batch_dims + 1``)."""
    return batch_dims + 1


def is_weight(p: torch.Tensor, batch_dims: int = 0) -> bool:
    """A weight (has rows of several entries) rather than a bias / normalisation parameter."""
    return p.dim() > batch_dims + 1


def row_norms(t: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """Norm of every output row / filter: shape ``t.shape[:batch_dims + 1]``."""
    r = _row_dims(t, batch_dims)
    return t.reshape(*t.shape[:r], -1).norm(dim=-1)


def filter_normalize(direction: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], batch_dims: int = 0,
                     bias: str = "zero") -> Direction:
    """Rescale ``direction`` row by row to the norms of ``weights``' rows (module docstring).

    ``bias``: ``"zero"`` (default) sets the direction of every parameter with no rows (biases,
    normalisation parameters) to 0; ``"copy"`` sets it to the parameter itself.
    A weight row that is exactly zero gets a zero direction row.
    """
    if bias not in ("zero", "copy"):
        raise GpmarginError(f"bias={bias!r}: use 'zero' or 'copy'")
    out: Direction = []
    for d, w in zip(direction, weights):
        if not is_weight(w, batch_dims):
            out.append(torch.zeros_like(w) if bias == "zero" else w.detach().clone())
            continue
        r = _row_dims(w, batch_dims)
        dn = row_norms(d, batch_dims)
        wn = row_norms(w.detach(), batch_dims)
        scale = torch.where(dn > 0, wn / dn.clamp_min(torch.finfo(dn.dtype).tiny), torch.zeros_like(dn))
        out.append(d * scale.reshape(*scale.shape, *([1] * (w.dim() - r))))
    return out


def random_direction(model: torch.nn.Module, seed: int = 0, bias: str = "zero",
                     weights: Sequence[torch.Tensor] | None = None) -> Direction:
    """A filter-normalised Gaussian direction for ``model`` (at ``weights`` if given).

    Draws ``d ~ N(0, I)`` from a CPU generator seeded with ``seed`` (same seed, same draw,
    whatever the weights) and applies :func:`filter_normalize` with the model's
    ``batch_dims`` (0 for an ordinary module).
    """
    params = model_parameters(model)
    w = list(weights) if weights is not None else [p.detach() for p in params]
    gen = torch.Generator().manual_seed(int(seed))
    raw = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype) for p in params]
    return filter_normalize(raw, w, getattr(model, "batch_dims", 0), bias)


def flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """One float64 vector of all entries (for norms, distances and trajectory points)."""
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def norm(tensors: Iterable[torch.Tensor]) -> float:
    """Euclidean norm over all entries."""
    return math.sqrt(sum(float(t.detach().double().square().sum()) for t in tensors))
