"""What a kernel call accepts: the ``get=`` argument, the input arrays, their shape description."""

from __future__ import annotations

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from gpmargin.errors import GpmarginError
from gpmargin.kernels.state import Spec

GETS = ("nngp", "ntk")


def parse_get(get) -> tuple[bool, bool, bool]:
    """Return (want_nngp, want_ntk, as_tuple) for ``get`` in "nngp", "ntk" or ("nngp", "ntk")."""
    if isinstance(get, str):
        if get not in GETS:
            raise GpmarginError(f"get={get!r} is not supported; use 'nngp', 'ntk' or ('nngp', 'ntk')")
        return get == "nngp", get == "ntk", False
    get = tuple(get)
    if get != GETS:
        raise GpmarginError(f"get={get!r} is not supported; use 'nngp', 'ntk' or ('nngp', 'ntk')")
    return True, True, True


def as_input(x, name: str, device=None, keep_graph: bool = False) -> torch.Tensor:
    """Validate one input array and return it as a float64 torch tensor.

    Accepts numpy arrays and torch tensors of a floating dtype, shape (N, d), (N, C, L)
    (sequences, returned as images of height 1, ``(N, C, 1, L)``) or (N, C, H, W), non-empty and
    finite; anything else raises :class:`GpmarginError`.  A tensor is detached unless
    ``keep_graph`` (a differentiable kernel call, see :mod:`gpmargin.kernels.engine`).
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise GpmarginError(
                f"{name} has dtype {x.dtype}; kernels need floating-point inputs (convert with x.astype(float))"
            )
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise GpmarginError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise GpmarginError(f"{name} has dtype {x.dtype}; kernels need floating-point inputs (convert with x.double())")
    if x.dim() not in (2, 3, 4):
        raise GpmarginError(
            f"{name} has shape {tuple(x.shape)}; expected (N, d) for dense networks, (N, C, L) for sequences or "
            "(N, C, H, W) for convolutional ones"
        )
    if x.numel() == 0:
        raise GpmarginError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one example with at least one feature")
    if not keep_graph:
        x = x.detach()
    if x.dim() == 3:  # a sequence is an image of height 1
        x = x.unsqueeze(2)
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise GpmarginError(f"{name} contains {bad} NaN or infinite value(s); clean the inputs first")
    return x


def differentiated(*values) -> bool:
    """Whether autograd differentiates a function of ``values``: a tensor among them requires grad
    (grad mode on) or carries a forward-mode tangent (``torch.autograd.forward_ad``)."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return any(fwAD.unpack_dual(t).tangent is not None for t in tensors)


def refuse_gradients(path: str, how: str, *xs, kernel=None) -> None:
    """A one-line error when autograd would ask ``path`` for gradients it cannot give: an input
    (or a tensor hyperparameter of ``kernel``) is :func:`differentiated`."""
    names = [f"x{i + 1}" if len(xs) > 1 else "x" for i in range(len(xs))]
    wanting = [n for n, x in zip(names, xs) if differentiated(x)]
    if kernel is not None and hasattr(kernel, "tensors") and differentiated(*kernel.tensors()):
        wanting.append("the kernel's hyperparameters")
    if wanting:
        raise GpmarginError(f"{' and '.join(wanting)} require(s) grad, but {path} cannot be differentiated ({how}); "
                            "compute the kernel with gpmargin.kernels layers in memory, or detach")


def input_spec(x: torch.Tensor) -> Spec:
    if x.dim() == 2:
        return Spec("vector", (x.shape[1],), gaussian=True)
    return Spec("image", tuple(x.shape[1:]), gaussian=True)
