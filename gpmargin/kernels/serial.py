"""``serial``: layers applied in order, a description that :mod:`gpmargin.kernels.engine` evaluates."""

from __future__ import annotations

from typing import Iterable

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer
from gpmargin.kernels.engine import propagate
from gpmargin.kernels.state import Spec


class Serial(Layer):
    """A network: layers applied in order.  Callable as ``k(x1, x2=None, get="nngp")``.

    Keyword arguments of the call and of ``diag``:

    batch_size : int, optional
        Tile edge (rows and columns per tile).  Default: chosen from ``max_memory``.
    max_memory : int, optional
        Bytes of working memory per tile besides the outputs (default 256 MiB).
    progress : bool, optional
        Show a tqdm progress bar; default: only when stderr is a terminal and there are more
        than 8 tiles (so a call from a script or a notebook log stays quiet).
    """

    def __init__(self, layers: Iterable[Layer]):
        flat: list[Layer] = []
        for layer in layers:
            if isinstance(layer, Serial):
                flat.extend(layer.layers)
            elif isinstance(layer, Layer):
                flat.append(layer)
            else:
                raise GpmarginError(f"serial() takes kernel layers, got {type(layer).__name__}")
        if not flat:
            raise GpmarginError("serial() needs at least one layer")
        self.layers = tuple(flat)

    def __repr__(self) -> str:
        return "serial(" + ", ".join(repr(layer) for layer in self.layers) + ")"

    # -- composition as a layer (so serials nest) ---------------------------------------
    @property
    def needs_full_spatial(self):  # type: ignore[override]
        return any(layer.needs_full_spatial for layer in self.layers)

    @property
    def supports_ntk(self):  # type: ignore[override]
        return all(layer.supports_ntk for layer in self.layers)

    def out_spec(self, spec: Spec) -> Spec:
        return propagate(self.layers, spec)

    def engine_layers(self) -> tuple[Layer, ...]:
        return self.layers


def serial(*layers: Layer) -> Serial:
    """Compose layers (or other serials) into one kernel object, applied left to right."""
    return Serial(layers)
