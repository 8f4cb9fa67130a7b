"""Layer interface shared by every kernel layer.

A layer maps the :class:`~gpmargin.kernels.state.KernelState` of its input (NNGP, NTK and the
per-example statistics it needs) to the state of its output, in the infinite-width limit and in
neural-tangents' NTK parameterisation.  Layers are combined with :func:`gpmargin.kernels.serial`;
every layer is itself a kernel object (``Dense()(x)`` is the kernel of one dense layer), computed
by :mod:`gpmargin.kernels.engine`, and builds its finite network (:mod:`gpmargin.kernels.network`).
"""

from __future__ import annotations

import inspect
import math

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.engine import kernel_diagonal, kernel_matrix
from gpmargin.kernels.network import network
from gpmargin.kernels.state import KernelState, Spec

def hyperparameter(value, name: str, owner: str):
    """A numeric layer argument: a Python ``float``, or a one-number floating tensor kept as given
    (a ``torch.nn.Parameter``, or any tensor that requires grad), so that autograd reaches it
    through every kernel the layer computes.  Anything else raises a one-line error naming it."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise GpmarginError(f"{owner}: {name} must be a number or a one-element floating tensor, got a "
                                f"{value.dtype} tensor of shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value.detach()).all()):
            raise GpmarginError(f"{owner}: {name}={float(value)} must be finite")
        return value if value.dim() == 0 else value.reshape(())
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GpmarginError(f"{owner}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise GpmarginError(f"{owner}: {name}={number} must be finite")
    return number


def _tensors(value) -> list:
    """The tensors among a layer argument (nested layers, tuples and lists searched)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Layer):
        return value.tensors()
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _mapped(value, fn):
    if isinstance(value, Layer):
        return value.map_layers(fn)
    if isinstance(value, (tuple, list)) and any(isinstance(v, Layer) for v in value):
        return type(value)(_mapped(v, fn) for v in value)
    return value


def _floats(value):
    if isinstance(value, torch.Tensor):
        return float(value.detach())
    if isinstance(value, Layer):
        return value.with_floats()
    if isinstance(value, (tuple, list)):
        return type(value)(_floats(v) for v in value)
    return value


def _hashable(value):
    if isinstance(value, torch.Tensor):
        return float(value.detach())
    if isinstance(value, (tuple, list)):
        return tuple(_hashable(v) for v in value)
    return value


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
    ``supports_ntk = False``; ``gaussian_out`` says whether its outputs are zero-mean Gaussian
    processes (True for affine layers, False for nonlinearities, None: as its inputs), which the
    fan-in combinators require of their branches, as neural-tangents does.  A layer that maps the pair distance ``st.dist`` (see
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
    gaussian_out: bool | None = None  # output zero-mean Gaussian: True (affine), False, None (as the input)
    takes_branches = False  # a combinator acting on the tuple of branch states (FanOut, parallel, FanIn*)
    needs_gaussian = False  # its kernel map needs zero-mean Gaussian inputs (the activations)

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

    def build(self, in_shape, units, init) -> tuple[torch.nn.Module, tuple]:
        """The finite layer, drawing its number of units from ``units()`` when it has some
        (combinators build their branches, see :func:`gpmargin.kernels.finite.build_chain`)."""
        return self.module(in_shape, units() if self.has_units else None, init)

    def fail(self, spec: Spec, why: str) -> GpmarginError:
        return GpmarginError(f"{self!r} cannot take input of shape {spec.describe()}: {why}")

    # -- every layer is a kernel object ------------------------------------------------
    def engine_layers(self) -> tuple["Layer", ...]:
        """The layers the engine runs, in order: this one (a composition lists its own)."""
        return (self,)

    def __call__(self, x1, x2=None, get="nngp", *, batch_size=None, max_memory=None, progress=None):
        """``k(x1, x2)`` (``x2=None``: ``x1`` against itself, exactly symmetric), computed by
        :mod:`gpmargin.kernels.engine`; see :class:`gpmargin.kernels.Serial` for the options."""
        return kernel_matrix(self.engine_layers(), x1, x2, get, batch_size=batch_size, max_memory=max_memory,
                             progress=progress)

    def diag(self, x, get="nngp", *, max_memory=None, progress=None, batch_size=None):
        """The 1-D diagonal ``k(x_i, x_i)``, computed without forming the matrix."""
        return kernel_diagonal(self.engine_layers(), x, get, max_memory=max_memory, progress=progress, batch_size=batch_size)

    def network(self, width, *, in_shape, parameterization: str = "ntk", members: int = 1, seed: int = 0,
                outputs: int = 1, dtype: torch.dtype = torch.float32, device="cpu"):
        """The finite networks this kernel is the infinite-width limit of (stax's ``init_fn/apply_fn``).

        ``width`` units (channels) in every affine layer but the last, which has ``outputs``;
        ``in_shape`` is one example's shape, ``d`` or ``(C, H, W)``; ``parameterization`` "ntk"
        (``h = W_std/sqrt(n) theta x + b_std beta``, standard normal parameters) or "standard"
        (``W ~ N(0, W_std^2/n)``, ``b ~ N(0, b_std^2)``); ``members`` stacked networks, member
        ``j`` drawn from the generator seeded ``1000 * seed + j``.  Returns a
        :class:`~gpmargin.kernels.network.Network`, ``(n, *in_shape) -> (members, n, outputs)``.
        """
        return network(self, width, in_shape=in_shape, parameterization=parameterization, members=members,
                       seed=seed, outputs=outputs, dtype=dtype, device=device)

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
        return hash((type(self).__qualname__, tuple((k, _hashable(v)) for k, v in self.arguments().items())))

    def tensors(self) -> list[torch.Tensor]:
        """The tensor arguments of this layer and of the layers inside it (the hyperparameters
        autograd can reach; see :func:`hyperparameter`)."""
        return [t for v in self.arguments().values() for t in _tensors(v)]

    def map_layers(self, fn) -> "Layer":
        """This description with every layer replaced by ``fn(layer)``, innermost first (a
        composition, a branch or a ``Centred`` is rebuilt around its mapped members)."""
        args = self.arguments()
        mapped = {k: _mapped(v, fn) for k, v in args.items()}
        changed = any(mapped[k] is not args[k] for k in args)
        return fn(type(self)(**mapped) if changed else self)

    def with_floats(self) -> "Layer":
        """This layer with every tensor argument replaced by its value as a float (what a
        finite network is drawn from)."""
        if not self.tensors():
            return self
        return type(self)(**{k: _floats(v) for k, v in self.arguments().items()})

    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen"):
            raise GpmarginError(f"{type(self).__name__} layers are immutable values; build a new one instead of "
                                f"setting .{name}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"
