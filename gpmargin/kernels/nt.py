"""Bridge from neural-tangents: give any ``kernel_fn`` gpmargin's kernel call signature.

Needs the optional extra ``nt`` (``pip install gpmargin[nt]``).  Importing this module switches
JAX to 64-bit floats (``jax_enable_x64``), which every gpmargin kernel uses.

Example::

    from neural_tangents import stax
    from gpmargin.kernels.nt import from_neural_tangents
    _, _, kernel_fn = stax.serial(stax.Dense(1), stax.Relu(), stax.Dense(1))
    k = from_neural_tangents(kernel_fn)
    K = k(x_torch, get="nngp")          # float64 torch tensor
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.inputs import as_input, parse_get, refuse_gradients
from gpmargin.linalg import mirror_upper

# neural-tangents imports TensorFlow, whose C++ start-up lines (oneDNN, CUDA drivers, CPU features)
# are written straight to file descriptor 2 before TensorFlow reads TF_CPP_MIN_LOG_LEVEL; so the
# variable is set for later messages and the imports run with descriptor 2 pointed at /dev/null.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Send file descriptor 2 (native libraries' logging) to /dev/null while the block runs."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_native_stderr():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "gpmargin.kernels.nt needs JAX and neural-tangents: pip install 'gpmargin[nt]'"
        ) from exc
    with contextlib.suppress(ImportError):
        import neural_tangents  # noqa: F401  (imported here, quietly, so the user's import is silent)

jax.config.update("jax_enable_x64", True)


class NeuralTangentsKernel:
    """A neural-tangents ``kernel_fn`` with the call signature of gpmargin kernels.

    Images are given as ``(N, C, H, W)`` like everywhere in gpmargin and transposed to
    neural-tangents' ``NHWC`` before the call (``transpose_images=False`` passes them as they are).
    ``jit=True`` compiles ``kernel_fn`` with ``jax.jit(..., static_argnames="get")``.
    ``diag`` evaluates ``kernel_fn`` on blocks of ``diag_block`` examples and keeps the diagonals.
    """

    def __init__(self, kernel_fn, *, jit: bool = False, transpose_images: bool = True, diag_block: int = 256):
        self.kernel_fn = jax.jit(kernel_fn, static_argnames="get") if jit else kernel_fn
        self.transpose_images = transpose_images
        self.diag_block = int(diag_block)

    def _to_jax(self, x: torch.Tensor):
        a = x.detach().cpu().numpy()
        if a.ndim == 4 and self.transpose_images:
            a = np.transpose(a, (0, 2, 3, 1))
        return jnp.asarray(a, dtype=jnp.float64)

    def _run(self, a1, a2, get):
        want_nngp, want_ntk, as_tuple = parse_get(get)
        nt_get = ("nngp", "ntk") if as_tuple else ("nngp" if want_nngp else "ntk")
        out = self.kernel_fn(a1, a2, get=nt_get)
        if as_tuple:
            return tuple(np.asarray(o, dtype=np.float64) for o in out)
        return np.asarray(out, dtype=np.float64)

    def __call__(self, x1, x2=None, get="nngp", **_ignored):
        refuse_gradients("a wrapped neural-tangents kernel_fn", "its values come back from JAX as numbers", x1, x2)
        t1 = as_input(x1, "x1")
        t2 = None if x2 is None else as_input(x2, "x2")
        if t2 is not None and t1.shape[1:] != t2.shape[1:]:
            raise GpmarginError(f"x1 has examples of shape {tuple(t1.shape[1:])} but x2 has {tuple(t2.shape[1:])}")
        out = self._run(self._to_jax(t1), None if t2 is None else self._to_jax(t2), get)

        def conv(o):
            o = torch.from_numpy(np.array(o))
            return (mirror_upper(o) if t2 is None else o).to(t1.device)  # one input set: exactly symmetric

        return tuple(conv(o) for o in out) if isinstance(out, tuple) else conv(out)

    def network(self, width, **_ignored):
        """Not available: a bare ``kernel_fn`` carries no layers to build (raises)."""
        raise GpmarginError(
            "network(): a wrapped neural-tangents kernel_fn has no finite network to build; use the init_fn/apply_fn "
            "that stax returned with it, or describe the network with gpmargin.kernels layers")

    def diag(self, x, get="nngp", **_ignored):
        refuse_gradients("a wrapped neural-tangents kernel_fn", "its values come back from JAX as numbers", x)
        t = as_input(x, "x")
        _, _, as_tuple = parse_get(get)
        parts = []
        for s in range(0, t.shape[0], self.diag_block):
            a = self._to_jax(t[s : s + self.diag_block])
            out = self._run(a, None, get)
            parts.append(tuple(np.diagonal(o).copy() for o in out) if as_tuple else np.diagonal(out).copy())
        if as_tuple:
            return tuple(torch.from_numpy(np.concatenate(p)).to(t.device) for p in zip(*parts))
        return torch.from_numpy(np.concatenate(parts)).to(t.device)


def from_neural_tangents(kernel_fn, **kwargs) -> NeuralTangentsKernel:
    """Wrap a neural-tangents ``kernel_fn`` (see :class:`NeuralTangentsKernel` for options)."""
    return NeuralTangentsKernel(kernel_fn, **kwargs)
