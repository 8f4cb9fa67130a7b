"""Layer interface shared by every kernel layer, and input validation.

A layer maps the :class:`~gpmargin.kernels.state.KernelState` of its input (NNGP, NTK and the
per-example statistics it needs) to the state of its output, in the infinite-width limit and in
neural-tangents' NTK parameterisation.  Layers are combined with :func:`gpmargin.kernels.serial`;
every layer is itself a kernel object (``Dense()(x)`` is the kernel of one dense layer).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.state import KernelState, Spec

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


def as_input(x, name: str, device=None) -> torch.Tensor:
    """Validate one input array and return it as a float64 torch tensor.

    Accepts numpy arrays and torch tensors of a floating dtype, shape (N, d) or (N, C, H, W),
    non-empty and finite; anything else raises :class:`GpmarginError`.
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
    if x.dim() not in (2, 4):
        raise GpmarginError(
            f"{name} has shape {tuple(x.shape)}; expected (N, d) for dense networks or (N, C, H, W) for convolutional ones"
        )
    if x.numel() == 0:
        raise GpmarginError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one example with at least one feature")
    x = x.detach()
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise GpmarginError(f"{name} contains {bad} NaN or infinite value(s); clean the inputs first")
    return x


def input_spec(x: torch.Tensor) -> Spec:
    if x.dim() == 2:
        return Spec("vector", (x.shape[1],))
    return Spec("image", tuple(x.shape[1:]))


class _Frozen(type):
    """Metaclass of layers: once constructed, an instance's attributes cannot be rebound."""

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        object.__setattr__(obj, "_frozen", True)
        return obj


class Layer(metaclass=_Frozen):
    """One layer of a kernel network (see the module docstring).

    Layers are immutable values, like stax's pure functions: two layers are equal (and hash
    alike) when they are of the same class with the same arguments, ``repr`` prints every
    argument (``eval(repr(k)) == k`` for the public layers), and pickling or copying gives an
    equal layer.

    Subclasses implement ``out_spec`` (shape checking), ``apply`` (the kernel map, in place
    where possible) and ``out_mean`` (mean over units of the output features, used by
    ``Centred``), and may set ``needs_full_spatial`` (reads pairs of distinct positions) or
    ``supports_ntk = False``.  A layer that maps the pair distance ``st.dist`` (see
    :mod:`gpmargin.kernels.state`) sets ``maps_dist = True``; one that needs it (an angle near 0)
    sets ``uses_dist = True``.  The driver drops ``dist`` before a layer that does not map it.

    Finite networks: ``module(in_shape, units, init)`` builds the layer's finite, batched torch
    module (see :mod:`gpmargin.kernels.finite`); layers with learnable units (``Dense``,
    ``Conv2d``, ``Centred``) set ``has_units = True`` and take the number of output units.
    """

    needs_full_spatial = False
    supports_ntk = True
    has_units = False
    maps_dist = False
    uses_dist = False

    # -- interface -------------------------------------------------------------------
    def out_spec(self, spec: Spec) -> Spec:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, st: KernelState) -> KernelState:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_mean(self, mean: torch.Tensor | None, var: torch.Tensor, spec: Spec) -> torch.Tensor | None:
        """Mean over units of the output features, given the input's mean, variance and spec."""
        return mean

    def precompute(self, var: torch.Tensor, mean: torch.Tensor | None) -> dict | None:
        """Per-example quantities derived from the input statistics, computed once per call
        (tensors with examples along dim 0, or plain numbers); passed back as ``st.aux1/aux2``."""
        return None

    def module(self, in_shape: tuple, units: int | None, init) -> tuple[torch.nn.Module, tuple]:
        """The finite layer for per-example inputs of shape ``in_shape``: ``(module, out_shape)``.

        ``module`` maps a :class:`~gpmargin.kernels.finite.Flow` to a ``Flow``; ``init`` is a
        :class:`~gpmargin.kernels.finite.Init`.  Layers without a finite form raise.
        """
        raise GpmarginError(
            f"network(): the layer {self!r} has no finite network to build (it defines only a kernel map); "
            "use layers from gpmargin.kernels (Dense, Conv2d, activations, Flatten, GlobalAvgPool, Centred)"
        )

    def fail(self, spec: Spec, why: str) -> GpmarginError:
        return GpmarginError(f"{self!r} cannot take input of shape {spec.describe()}: {why}")

    # -- every layer is a kernel object ------------------------------------------------
    def __call__(self, x1, x2=None, get="nngp", **kwargs):
        from gpmargin.kernels.serial import serial

        return serial(self)(x1, x2, get=get, **kwargs)

    def diag(self, x, get="nngp", **kwargs):
        from gpmargin.kernels.serial import serial

        return serial(self).diag(x, get=get, **kwargs)

    def network(self, width, **kwargs):
        """The finite network of this one layer: see :meth:`gpmargin.kernels.Serial.network`."""
        from gpmargin.kernels.serial import serial

        return serial(self).network(width, **kwargs)

    # -- a layer is a value ----------------------------------------------------------------
    def arguments(self) -> dict:
        """The constructor arguments that define this layer, by name."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        if all(n in self.__dict__ for n in names):
            return {n: self.__dict__[n] for n in names}
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.arguments() == other.arguments()

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, tuple(self.arguments().items())))

    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen"):
            raise GpmarginError(f"{type(self).__name__} layers are immutable values; build a new one instead of "
                                f"setting .{name}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"
