"""``serial``: compose layers into a kernel object, and compute kernels in memory-bounded tiles.

Computation of ``k(x1, x2)``:

1. *Self pass* (tiled over examples): every input is propagated against itself, recording at
   each layer its same-position variance and its mean over units.  This yields ``k.diag`` and
   the per-example statistics the activations (variances) and ``Centred`` (means) need.
2. *Pair pass* (tiled over rows and columns of the output): each tile starts from the input
   kernel (one matrix product for vectors) and is pushed through the layers, elementwise maps
   working in place.  When a tile spans whole rows of a dense network's output it is computed
   directly inside the output matrices, so peak memory is the output plus a few tile-sized
   scratch buffers (bounded by ``max_memory``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer, as_input, input_spec, parse_get
from gpmargin.kernels.state import KernelState, Spec, spatial_diagonal

DEFAULT_MAX_MEMORY = 256 * 2**20  # bytes of tile working memory besides the outputs
_SCRATCH = 4  # tile-sized temporaries alive at once inside a layer (nngp/ntk excluded)
_CHUNK_PAIRS = 32768  # kernel entries per CPU work item: in cache, below torch's parallel grain
_INPLACE_TILE_BYTES = 32 * 2**20  # rows per matmul block when tiles are written into the outputs


def _input_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the input features over units: over features (vectors) or channels (images)."""
    return x.mean(dim=1)


def _input_self(x: torch.Tensor, layout: str, want_ntk: bool) -> KernelState:
    if layout == "vector":
        nngp = (x * x).sum(1) / x.shape[1]
    elif layout == "diag":
        nngp = (x * x).sum(1) / x.shape[1]
    else:
        nngp = torch.einsum("nchw,ncij->nhwij", x, x) / x.shape[1]
    ntk = torch.zeros_like(nngp) if want_ntk else None
    mean = _input_mean(x)
    var = spatial_diagonal(nngp, layout).clone()
    return KernelState(nngp, ntk, var, var, mean, mean, layout, pair=False)


def _input_pair(x1, x2, layout, want_ntk, out_nngp=None, out_ntk=None) -> KernelState:
    if layout == "vector":
        if out_nngp is not None and out_nngp.is_contiguous():
            nngp = torch.matmul(x1, x2.T, out=out_nngp)
        elif out_nngp is not None:
            nngp = out_nngp.copy_(x1 @ x2.T)
        else:
            nngp = x1 @ x2.T
        nngp.div_(x1.shape[1])
    elif layout == "diag":
        nngp = torch.einsum("nchw,mchw->nmhw", x1, x2).div_(x1.shape[1])
    else:
        nngp = torch.einsum("nchw,mcij->nmhwij", x1, x2).div_(x1.shape[1])
    ntk = None
    if want_ntk:
        # filled with zeros chunk by chunk (in cache) by the caller
        ntk = out_ntk if (out_ntk is not None and layout == "vector") else torch.empty_like(nngp)
    return KernelState(nngp, ntk, None, None, None, None, layout, pair=True)


class Serial(Layer):
    """A network: layers applied in order.  Callable as ``k(x1, x2=None, get="nngp")``.

    Keyword arguments of the call and of ``diag``:

    batch_size : int, optional
        Tile edge (rows and columns per tile).  Default: chosen from ``max_memory``.
    max_memory : int, optional
        Bytes of working memory per tile besides the outputs (default 256 MiB).
    progress : bool, optional
        Show a tqdm progress bar; default: only when there are more than 8 tiles.
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
        for layer in self.layers:
            spec = layer.out_spec(spec)
        return spec

    # -- the finite network ------------------------------------------------------------------
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
        from gpmargin.kernels.network import network

        return network(self, width, in_shape=in_shape, parameterization=parameterization, members=members,
                       seed=seed, outputs=outputs, dtype=dtype, device=device)

    # -- planning ---------------------------------------------------------------------
    def _plan(self, spec: Spec) -> tuple[str, int, list[Spec]]:
        """Check the composition for inputs of ``spec``.

        Returns the input layout, the largest spatial size of a kernel entry, and the input
        spec of every layer.
        """
        biggest = 1
        needs_full = False
        s = spec
        specs = []
        for i, layer in enumerate(self.layers):
            specs.append(s)
            if s.kind == "image":
                biggest = max(biggest, s.shape[1] * s.shape[2])
                needs_full = needs_full or layer.needs_full_spatial
            try:
                s = layer.out_spec(s)
            except GpmarginError as exc:
                raise GpmarginError(f"layer {i + 1} of {len(self.layers)}: {exc}") from None
        if s.kind != "vector":
            raise GpmarginError(
                f"the network {self!r} ends with {s.describe()} outputs; finish it with Flatten() or "
                "GlobalAvgPool() so the kernel is one number per pair of inputs"
            )
        if spec.kind == "vector":
            return "vector", 1, specs
        layout = "full" if needs_full else "diag"
        return layout, (biggest**2 if layout == "full" else biggest), specs

    def _check_ntk(self, want_ntk: bool) -> None:
        if want_ntk:
            for layer in self.layers:
                if not layer.supports_ntk:
                    raise GpmarginError(layer.ntk_unsupported_reason())

    # -- the self pass ------------------------------------------------------------------
    def _self_pass(self, x, plan, want_ntk, max_memory, progress):
        """Per-layer statistics [(var, mean)] for the inputs of each layer, and the final diagonal."""
        layout, spatial, specs = plan
        n = x.shape[0]
        per_example = 8 * spatial * (3 + _SCRATCH)
        chunk = max(1, min(n, max_memory // max(per_example, 1)))
        stats: list[list] = [[[], []] for _ in self.layers]
        out_nngp, out_ntk = [], []
        starts = range(0, n, chunk)
        for r0 in _progress(starts, progress, "kernel diag"):
            xs = x[r0 : r0 + chunk]
            st = _input_self(xs, layout, want_ntk)
            for i, layer in enumerate(self.layers):
                var = spatial_diagonal(st.nngp, st.layout).clone()
                st.var1 = st.var2 = var
                st.spec = specs[i]
                st.aux1 = st.aux2 = layer.precompute(var, st.mean1)
                stats[i][0].append(var)
                stats[i][1].append(st.mean1)
                mean = layer.out_mean(st.mean1, var, specs[i])
                st = layer.apply(st)
                st.mean1 = st.mean2 = mean
            out_nngp.append(st.nngp)
            out_ntk.append(st.ntk)
        merged = []
        for var_list, mean_list in stats:
            mean = None if any(m is None for m in mean_list) else torch.cat(mean_list)
            merged.append((torch.cat(var_list), mean))
        nngp = torch.cat(out_nngp)
        ntk = torch.cat(out_ntk) if want_ntk else None
        return merged, nngp, ntk

    # -- public API -------------------------------------------------------------------
    def _prepare(self, x1, x2, get):
        want_nngp, want_ntk, as_tuple = parse_get(get)
        self._check_ntk(want_ntk)
        x1 = as_input(x1, "x1")
        same = x2 is None
        x2 = x1 if same else as_input(x2, "x2", device=None)
        if not same and x2.shape == x1.shape and torch.equal(x1, x2):
            x2, same = x1, True
        if x2.device != x1.device:
            raise GpmarginError(f"x1 is on {x1.device} but x2 is on {x2.device}; put both on one device")
        if x1.shape[1:] != x2.shape[1:]:
            raise GpmarginError(
                f"x1 has examples of shape {tuple(x1.shape[1:])} but x2 has {tuple(x2.shape[1:])}; "
                "both inputs need the same feature shape"
            )
        layout, spatial, specs = self._plan(input_spec(x1))
        return x1, x2, same, want_nngp, want_ntk, as_tuple, (layout, spatial, specs)

    def diag(self, x, get="nngp", *, max_memory=None, progress=None, batch_size=None):
        """The 1-D diagonal ``k(x_i, x_i)``, computed without forming the matrix."""
        x, _, _, want_nngp, want_ntk, as_tuple, plan = self._prepare(x, None, get)
        max_memory = _memory(max_memory, batch_size, plan[1])
        _, nngp, ntk = self._self_pass(x, plan, want_ntk, max_memory, progress)
        _check_finite(nngp, ntk, x, x)
        return _select(nngp, ntk, want_nngp, want_ntk, as_tuple)

    def __call__(self, x1, x2=None, get="nngp", *, batch_size=None, max_memory=None, progress=None):
        x1, x2, same, want_nngp, want_ntk, as_tuple, plan = self._prepare(x1, x2, get)
        layout, spatial, specs = plan
        mem = _memory(max_memory, batch_size, spatial)
        stats1, _, _ = self._self_pass(x1, plan, want_ntk, mem, False)
        stats2 = stats1 if same else self._self_pass(x2, plan, want_ntk, mem, False)[0]

        n1, n2 = x1.shape[0], x2.shape[0]
        out_nngp = torch.empty((n1, n2), dtype=torch.float64, device=x1.device)
        out_ntk = torch.empty((n1, n2), dtype=torch.float64, device=x1.device) if want_ntk else None

        ids1, ids2 = (None, None) if same else _example_ids(x1, x2)
        aux1 = [layer.precompute(var, mean) for layer, (var, mean) in zip(self.layers, stats1)]
        aux2 = aux1 if same else [layer.precompute(var, mean) for layer, (var, mean) in zip(self.layers, stats2)]
        rows, cols = _tile_shape(n1, n2, spatial, layout, batch_size, mem)
        in_place = layout == "vector" and cols >= n2
        # (r0, r1, c0, c1) tiles; for x1 against itself only the upper triangle (block-wise) is
        # computed and mirrored afterwards
        tiles = []
        for r0 in range(0, n1, rows):
            r1 = min(r0 + rows, n1)
            if cols >= n2:
                tiles.append((r0, r1, r0 if same else 0, n2))
                continue
            tiles += [(r0, r1, c0, min(c0 + cols, n2)) for c0 in range(0, n2, cols) if not same or c0 + cols > r0]
        cpu = x1.device.type == "cpu"
        workers = max(1, torch.get_num_threads()) if cpu else 1
        pool = ThreadPoolExecutor(workers) if workers > 1 else None

        def chunk(st, r0, c0, s0, s1):
            """Push rows s0:s1 of the tile starting at (r0, c0) through all layers; store them."""
            a0, a1, c1 = r0 + s0, r0 + s1, c0 + st.nngp.shape[1]
            sub = KernelState(st.nngp[s0:s1], None if st.ntk is None else st.ntk[s0:s1].zero_(),
                              None, None, None, None, st.layout, pair=True)
            if same:
                sub.self_pairs = _self_pairs(a0, a1, c0, c1, x1.device)
            else:
                hit = (ids1[a0:a1, None] == ids2[None, c0:c1]).nonzero(as_tuple=True)
                sub.self_pairs = hit if hit[0].numel() else None
            for i, layer in enumerate(self.layers):
                var1, mean1 = stats1[i]
                var2, mean2 = stats2[i]
                sub.var1, sub.var2 = var1[a0:a1], var2[c0:c1]
                sub.mean1 = None if mean1 is None else mean1[a0:a1]
                sub.mean2 = None if mean2 is None else mean2[c0:c1]
                sub.spec = specs[i]
                sub.aux1 = _rows_of(aux1[i], a0, a1)
                sub.aux2 = _rows_of(aux2[i], c0, c1)
                sub = layer.apply(sub)
            _check_finite(sub.nngp, sub.ntk, x1, x2)
            _store(out_nngp, sub.nngp, a0, a1, c0, c1)
            if want_ntk:
                _store(out_ntk, sub.ntk, a0, a1, c0, c1)

        try:
            for r0, r1, c0, c1 in _progress(tiles, progress, "kernel"):
                tgt_nngp = out_nngp[r0:r1, c0:c1] if in_place else None
                tgt_ntk = out_ntk[r0:r1, c0:c1] if (in_place and want_ntk) else None
                st = _input_pair(x1[r0:r1], x2[c0:c1], layout, want_ntk, tgt_nngp, tgt_ntk)
                # On CPU the layers run on row chunks of about _CHUNK_PAIRS entries: every
                # elementwise pass then works in cache, single-threaded inside torch, and the
                # chunks are spread over a thread pool (torch releases the GIL).
                per_row = (c1 - c0) * (st.nngp[0, 0].numel())
                step = max(1, _CHUNK_PAIRS // per_row) if cpu else r1 - r0
                bounds = [(s, min(s + step, r1 - r0)) for s in range(0, r1 - r0, step)]
                if pool is None or len(bounds) == 1:
                    for s0, s1 in bounds:
                        chunk(st, r0, c0, s0, s1)
                else:
                    for f in [pool.submit(chunk, st, r0, c0, s0, s1) for s0, s1 in bounds]:
                        f.result()
        finally:
            if pool is not None:
                pool.shutdown()
        if same:
            _mirror_upper(out_nngp, rows)
            if want_ntk:
                _mirror_upper(out_ntk, rows)
        return _select(out_nngp, out_ntk, want_nngp, want_ntk, as_tuple)


def serial(*layers: Layer) -> Serial:
    """Compose layers (or other serials) into one kernel object, applied left to right."""
    return Serial(layers)


# -- helpers ---------------------------------------------------------------------------
def _store(out, tile, r0, r1, c0, c1):
    view = out[r0:r1, c0:c1]
    if tile.data_ptr() != view.data_ptr():
        view.copy_(tile)


def _rows_of(aux, a0, a1):
    """Rows a0:a1 of a layer's precomputed per-example statistics (tensors sliced, scalars kept)."""
    if aux is None:
        return None
    return {k: (v[a0:a1] if isinstance(v, torch.Tensor) else v) for k, v in aux.items()}


def _mirror_upper(out, rows):
    """Copy the computed upper block triangle onto the lower one, one row block at a time."""
    n = out.shape[0]
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        out[r1:, r0:r1].copy_(out[r0:r1, r1:].T)


def _example_ids(x1, x2):
    """Integer ids such that examples of x1 and x2 share an id exactly when they are identical."""
    rows = torch.cat([x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)])
    _, inv = torch.unique(rows, dim=0, return_inverse=True)
    return inv[: x1.shape[0]], inv[x1.shape[0] :]


def _check_finite(nngp, ntk, x1, x2):
    """Raise instead of returning NaN/inf.  A sum is finite iff every entry is (barring a sum
    overflowing near 1e308, reported the same way), and costs one read without temporaries."""
    for name, t in (("NNGP", nngp), ("NTK", ntk)):
        if t is not None and not math.isfinite(float(t.sum())):
            big = max(float(x1.abs().max()), float(x2.abs().max()))
            raise GpmarginError(
                f"the {name} overflowed to a non-finite value (largest |input| is {big:.3g}); rescale the inputs"
            )


def _self_pairs(r0, r1, c0, c1, device):
    """Local indices of the entries (i, i) of the tile rows r0:r1, columns c0:c1."""
    lo, hi = max(r0, c0), min(r1, c1)
    if lo >= hi:
        return None
    i = torch.arange(lo, hi, device=device)
    return (i - r0, i - c0)


def _select(nngp, ntk, want_nngp, want_ntk, as_tuple):
    if as_tuple:
        return nngp, ntk
    return nngp if want_nngp else ntk


def _memory(max_memory, batch_size, spatial):
    if max_memory is None:
        max_memory = DEFAULT_MAX_MEMORY
    if max_memory <= 0:
        raise GpmarginError(f"max_memory={max_memory} must be a positive number of bytes")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise GpmarginError(f"batch_size={batch_size!r} must be a positive integer")
    return int(max_memory)


def _tile_shape(n1, n2, spatial, layout, batch_size, max_memory):
    if batch_size is not None:
        return int(batch_size), int(batch_size)
    if layout == "vector":
        per_pair = 8 * _SCRATCH
        if n2 * per_pair <= max_memory:
            # whole rows, computed inside the outputs: the block size only shapes the matmul
            return max(1, min(n1, _INPLACE_TILE_BYTES // (8 * n2), max_memory // (n2 * per_pair))), n2
    else:
        per_pair = 8 * spatial * (2 + _SCRATCH)
    pairs = max(1, max_memory // per_pair)
    if pairs >= n2:
        return max(1, min(n1, pairs // n2)), n2
    edge = max(1, int(math.isqrt(pairs)))
    return min(edge, n1), min(edge, n2)


def _progress(items, progress, desc):
    items = list(items)
    show = progress if progress is not None else len(items) > 8
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="tile", leave=False)
