r"""Empirical NTK and NNGP of any ``torch.nn.Module``, through ``torch.func``.

For a model :math:`f_\theta` with ``O`` outputs, the empirical NTK is the Gram matrix of its
parameter Jacobian,

.. math::
    \hat\Theta_{ab}(x, x') = \sum_p \frac{\partial f_a(x)}{\partial\theta_p}\,\frac{\partial f_b(x')}{\partial\theta_p},

and the empirical NNGP the Gram matrix of its outputs, :math:`\hat K_{ab}(x, x') = f_a(x) f_b(x')`.
``trace_outputs=True`` returns the mean over the diagonal outputs, :math:`\frac1O\sum_a \hat\Theta_{aa}`
(neural-tangents' ``trace_axes=(-1,)`` divided by ``O``: for a network with ``O`` independent
readouts it estimates the one-output kernel); ``False`` the full ``(n1, n2, O, O)`` block.

Two methods (they agree to rounding, ``tests/test_empirical.py``): ``"jacobian"`` forms the
Jacobians of a tile of inputs (``jacrev``) and contracts them, memory ``n O P`` for ``P``
parameters; ``"ntk_vp"`` forms NTK-vector products (``vjp`` then ``jvp``, one per output of the
second tile), memory ``O P``, slower for many outputs.  Inputs are tiled (``batch_size`` rows), so
peak memory stays bounded; for one input set only the upper triangle of tiles is formed and
mirrored, so ``empirical_ntk(model, x)`` is exactly symmetric.

A stacked gpmargin :class:`~gpmargin.kernels.Network` (``members = k``, outputs ``(k, n, O)``)
gives one kernel per member, ``(k, n1, n2[, O, O])``: member ``j``'s outputs depend only on its
own slice of the stacked parameters, so one Jacobian of the sum over members holds them all.
"""

from __future__ import annotations


import torch

from gpmargin.errors import GpmarginError
from gpmargin.linalg import mirror_upper

METHODS = ("jacobian", "ntk_vp")


def _as_batch(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise GpmarginError(f"{name} must be a torch tensor of inputs (n, ...), got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise GpmarginError(f"{name} has shape {tuple(x.shape)}; give at least one example along dim 0")
    return x.detach()


class _Functional:
    """The model as a function of its parameters: ``f(params, x) -> (members, n, O)``."""

    def __init__(self, model: torch.nn.Module):
        if not isinstance(model, torch.nn.Module):
            raise GpmarginError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise GpmarginError(f"{type(model).__name__} has no parameters that require grad; its NTK is 0")
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.members = getattr(model, "members", None) if getattr(model, "batch_dims", 0) == 1 else None

    def __call__(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        out = functional_call(self.model, (params, self.buffers), (x,))
        if self.members is None:
            return out.reshape(1, x.shape[0], -1)
        return out.reshape(self.members, x.shape[0], -1)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self(self.params, x)


def _jacobian(fn: _Functional, x: torch.Tensor) -> list[torch.Tensor]:
    """Per parameter, the Jacobian of the sum over members: ``(n, O, k, P_j)`` (``k = 1`` unstacked)."""
    from torch.func import jacrev

    jac = jacrev(lambda p: fn(p, x).sum(0))(fn.params)  # name -> (n, O, *param_shape)
    k = fn.members or 1
    return [j.reshape(j.shape[0], j.shape[1], k, -1) if fn.members else j.reshape(j.shape[0], j.shape[1], 1, -1)
            for j in jac.values()]


def _ntk_jacobian(fn, x1, x2, j1=None) -> torch.Tensor:
    """``(k, n1, n2, O, O)`` by contracting the two tiles' Jacobians."""
    j1 = _jacobian(fn, x1) if j1 is None else j1
    j2 = j1 if x2 is None else _jacobian(fn, x2)
    return sum(torch.einsum("naks,mbks->knmab", a, b) for a, b in zip(j1, j2))


def _ntk_vp(fn, x1, x2) -> torch.Tensor:
    """``(k, n1, n2, O, O)`` from NTK-vector products ``J1 (J2^T v)`` over the basis vectors ``v``."""
    from torch.func import jvp, vjp, vmap

    x2 = x1 if x2 is None else x2
    out2, pullback = vjp(lambda p: fn(p, x2), fn.params)  # (k, n2, O)

    def column(v):
        (cotangent,) = pullback(v)
        return jvp(lambda p: fn(p, x1), (fn.params,), (cotangent,))[1]  # (k, n1, O)

    basis = torch.eye(out2.numel(), dtype=out2.dtype, device=out2.device).reshape(-1, *out2.shape)
    cols = vmap(column)(basis).reshape(*out2.shape, *out2.shape[:1], x1.shape[0], out2.shape[2])
    # cols[k2, m, b, k1, n, a]: only k1 == k2 is nonzero (members share no parameters)
    k = out2.shape[0]
    idx = torch.arange(k, device=out2.device)
    return cols[idx, :, :, idx].permute(0, 3, 1, 4, 2)  # (k, n1, n2, O, O)


def _tiles(n1: int, n2: int, step: int, same: bool):
    for r0 in range(0, n1, step):
        for c0 in range(r0 if same else 0, n2, step):
            yield r0, min(r0 + step, n1), c0, min(c0 + step, n2)


def _finish(out: torch.Tensor, fn: _Functional, trace_outputs: bool, same: bool) -> torch.Tensor:
    """``(k, n1, n2, O, O)`` -> the requested form, exactly symmetric for one input set."""
    if trace_outputs:
        out = out.diagonal(dim1=-2, dim2=-1).mean(-1)
        if same:
            for m in range(out.shape[0]):
                mirror_upper(out[m])
    elif same:  # K[j, i, b, a] = K[i, j, a, b]: mirror the upper triangle of examples
        n = out.shape[1]
        iu = torch.triu_indices(n, n, 1, device=out.device)
        out[:, iu[1], iu[0]] = out[:, iu[0], iu[1]].transpose(-1, -2)
    return out if fn.members is not None else out[0]


def _check(method: str, batch_size) -> None:
    if method not in METHODS:
        raise GpmarginError(f"method={method!r} is not supported; use 'jacobian' or 'ntk_vp'")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise GpmarginError(f"batch_size={batch_size!r} must be a positive integer")


def empirical_ntk(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                  trace_outputs: bool = True, method: str = "jacobian", batch_size: int | None = None) -> torch.Tensor:
    """The empirical NTK of ``model`` at its current parameters (module docstring).

    Parameters
    ----------
    model : any ``torch.nn.Module`` mapping ``(n, ...)`` to ``(n, O)`` (or ``(n,)``); a stacked
        gpmargin ``Network`` gives one kernel per member.
    x1, x2 : input tensors ``(n1, ...)``, ``(n2, ...)``; ``x2=None`` is ``x1`` (exactly symmetric).
    trace_outputs : mean over the diagonal outputs ``(n1, n2)``, or the full ``(n1, n2, O, O)``.
    method : ``"jacobian"`` or ``"ntk_vp"``.
    batch_size : rows per tile (default 64 for "jacobian", 16 for "ntk_vp").

    Returns a tensor in the model's dtype and device; raises :class:`GpmarginError` on bad input.
    """
    _check(method, batch_size)
    fn = _Functional(model)
    x1 = _as_batch(x1, "x1")
    same = x2 is None
    x2 = x1 if same else _as_batch(x2, "x2")
    step = batch_size or (64 if method == "jacobian" else 16)
    k, outs = (fn.members or 1), fn.outputs(x1[:1]).shape[-1]
    n1, n2 = x1.shape[0], x2.shape[0]
    dtype = next(iter(fn.params.values())).dtype
    out = torch.zeros((k, n1, n2, outs, outs), dtype=dtype, device=x1.device)
    for r0, r1, c0, c1 in _tiles(n1, n2, step, same):
        a, b = x1[r0:r1], x2[c0:c1]
        diagonal_tile = same and r0 == c0
        tile = (_ntk_jacobian(fn, a, None if diagonal_tile else b) if method == "jacobian"
                else _ntk_vp(fn, a, None if diagonal_tile else b))
        out[:, r0:r1, c0:c1] = tile
    return _finish(out, fn, trace_outputs, same)


def empirical_nngp(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                   trace_outputs: bool = True) -> torch.Tensor:
    """The empirical NNGP ``f(x1) f(x2)^T`` of ``model``'s outputs: ``(n1, n2)`` (the mean over
    outputs of ``f_a(x) f_a(x')``) or ``(n1, n2, O, O)``; per member for a stacked ``Network``."""
    fn = _Functional(model)
    x1 = _as_batch(x1, "x1")
    same = x2 is None
    f1 = fn.outputs(x1)
    f2 = f1 if same else fn.outputs(_as_batch(x2, "x2"))
    out = torch.einsum("kna,kmb->knmab", f1, f2)
    return _finish(out, fn, trace_outputs, same)
