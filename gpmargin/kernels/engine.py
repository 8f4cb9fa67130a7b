"""The engine that evaluates a network description: kernels computed in memory-bounded tiles.

A description (:class:`~gpmargin.kernels.Serial`, or one layer) is a tuple of layers; the engine
checks it for the inputs (:meth:`Engine.plan`), then runs it tile by tile, each torch call on
torch's threads.

Computation of ``k(x1, x2)``:

1. *Self pass* (tiled over examples): every input is propagated against itself, recording at
   each layer its same-position variance and its mean over units.  This yields ``k.diag`` and
   the per-example statistics the activations (variances) and ``Centred`` (means) need.
2. *Pair pass* (tiled over rows and columns of the output): each tile starts from the input
   kernel (one matrix product for vectors) and is pushed through the layers, elementwise maps
   working in place.  When a tile spans whole rows of a dense network's output it is computed
   directly inside the output matrices (the BLAS writes the input kernel into the output's
   row-strided block), so peak memory is the output plus a few tile-sized scratch buffers
   (bounded by ``max_memory``).  On a CPU the layers then run over row chunks of about
   ``_CHUNK_PAIRS_PER_THREAD`` entries per thread, small enough for the cache, large enough that
   the Python between torch calls costs little; the outputs sit on pre-populated huge pages
   (:func:`~gpmargin.linalg.empty_matrix`).
3. *Nearly coinciding pairs* (see :mod:`gpmargin.kernels.state`): image tiles carry the pair
   distance through every layer; vector tiles do not (a dense network keeps it exact entry by
   entry), but each arc-cosine layer records the entries within ``NEAR_ONE`` of correlation 1,
   and those pairs are recomputed individually with their distance.  For one input set the
   upper triangle is mirrored onto the lower one and the diagonal is the self pass's, so the
   matrix is exactly symmetric and ``torch.diagonal(k(x)) == k.diag(x)`` bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, replace

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.inputs import as_input, differentiated, input_spec, parse_get
from gpmargin.kernels.state import KernelState, Spec, spatial_diagonal
from gpmargin.linalg import empty_matrix, mirror_upper

DEFAULT_MAX_MEMORY = 256 * 2**20  # bytes of tile working memory besides the outputs
_SCRATCH = 5  # tile-sized temporaries alive at once inside a layer (nngp/ntk excluded, dist included)
# kernel entries per CPU work item and thread: 1 MiB per float64 tensor and thread, so a layer's
# few temporaries stay in the last-level cache while each torch call still splits over the
# threads, and the Python between torch calls is a few per cent of a chunk's time
# (docs/performance.md: 32768 entries on a thread pool cost 25-40 % more on 2 cores)
_CHUNK_PAIRS_PER_THREAD = 131072
_INPLACE_TILE_BYTES = 32 * 2**20  # rows per matmul block when tiles are written into the outputs


def _input_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the input features over units: over features (vectors) or channels (images)."""
    return x.mean(dim=1)


def _input_self(x: torch.Tensor, layout: str, want_ntk: bool, want_dist: bool) -> KernelState:
    if layout in ("vector", "diag"):
        nngp = (x * x).sum(1) / x.shape[1]
    else:
        nngp = torch.einsum("nchw,ncij->nhwij", x, x) / x.shape[1]
    ntk = torch.zeros_like(nngp) if want_ntk else None
    mean = _input_mean(x)
    var = spatial_diagonal(nngp, layout).clone()
    st = KernelState(nngp, ntk, var, var, mean, mean, layout, pair=False)
    if want_dist and layout == "full":  # pairs of positions of one image
        st.dist = _image_dist(x, x, "self")
    return st


def _image_dist(x1: torch.Tensor, x2: torch.Tensor, layout: str) -> torch.Tensor:
    """``(1/C) sum_c (x1 - x2)^2`` for every pair the layout holds: ``(N1, N2, H, W)`` ("diag"),
    ``(N1, N2, H, W, H, W)`` ("full") or one image's positions ``(N, H, W, H, W)`` ("self")."""
    out = None
    for c in range(x1.shape[1]):
        a, b = x1[:, c], x2[:, c]
        if layout == "diag":
            diff = a[:, None] - b[None, :]
        elif layout == "full":
            diff = a[:, None, :, :, None, None] - b[None, :, None, None, :, :]
        else:
            diff = a[:, :, :, None, None] - a[:, None, None, :, :]
        out = diff.square_() if out is None else out.addcmul_(diff, diff)
    return out.div_(x1.shape[1])


def _input_pair(x1, x2, layout, want_ntk, out_nngp=None, out_ntk=None) -> KernelState:
    """The input kernel of a tile (its distance is added row chunk by row chunk)."""
    if layout == "vector":
        if out_nngp is not None:
            # straight into the (row-strided) block of the output: the BLAS writes with its
            # leading dimension, no temporary and no copy
            nngp = torch.mm(x1, x2.T, out=out_nngp)
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


@dataclass(frozen=True)
class Step:
    """One layer of a description as the engine runs it: ``layer`` acts on the branch at ``path``
    (indices into the nested tuple of branches, ``()`` outside any ``parallel``); ``where`` names
    its position for errors.  ``check`` marks a ``parallel``'s own step, which only checks that it
    gets one input per branch (its branches follow as steps of their own)."""

    layer: object
    path: tuple
    where: str
    check: bool = False


def compile_steps(layers, path: tuple = (), where: str = "") -> list[Step]:
    """The steps of ``layers`` in the order they run: a ``parallel``'s branches one after the other."""
    steps = []
    for i, layer in enumerate(layers):
        here = f"{where}layer {i + 1} of {len(layers)}"
        branches = getattr(layer, "branches", None)
        if branches is None:
            steps.append(Step(layer, path, here))
            continue
        steps.append(Step(layer, path, here, check=True))
        for j, branch in enumerate(branches):
            steps += compile_steps(branch.engine_layers(), path + (j,), f"{here}, branch {j + 1} of {len(branches)}: ")
    return steps


def _get(tree, path: tuple):
    for j in path:
        tree = tree[j]
    return tree


def _put(tree, path: tuple, value):
    """``tree`` with the entry at ``path`` replaced by ``value`` (nested tuples, rebuilt along the path)."""
    if not path:
        return value
    parts = list(tree)
    parts[path[0]] = _put(parts[path[0]], path[1:], value)
    return tuple(parts)


def _leaves(tree) -> int:
    return 1 if not isinstance(tree, tuple) else sum(_leaves(t) for t in tree)


def _walk(steps: list[Step], spec: Spec):
    """Shape-check ``steps`` for inputs of ``spec``: ``(output spec, input spec of every step,
    largest image size, whether any image layer reads distinct positions, most branches at once)``."""
    tree, specs, biggest, needs_full, width = spec, [], 1, False, 1
    for step in steps:
        s = _get(tree, step.path)
        specs.append(s)
        layer = step.layer
        try:
            if step.check:
                layer.check_branches(s)
                continue
            if not layer.takes_branches and not isinstance(s, Spec):
                raise GpmarginError(f"{layer!r} gets {len(s)} branches; join them first with FanInSum(), "
                                    "FanInConcat() or FanInProd()")
            out = layer.out_spec(s)
        except GpmarginError as exc:
            raise GpmarginError(f"{step.where}: {exc}") from None
        for leaf in (s if isinstance(s, tuple) else (s,)):
            if isinstance(leaf, Spec) and leaf.kind == "image":
                biggest = max(biggest, leaf.shape[1] * leaf.shape[2])
                needs_full = needs_full or layer.needs_full_spatial
        if not layer.takes_branches:
            out = replace(out, gaussian=s.gaussian if layer.gaussian_out is None else layer.gaussian_out)
        tree = _put(tree, step.path, out)
        width = max(width, _leaves(tree))
    return tree, specs, biggest, needs_full, width


def propagate(layers, spec: Spec):
    """The output spec (or tuple of branch specs) of ``layers`` for inputs of ``spec``."""
    return _walk(compile_steps(layers), spec)[0]


class Engine:
    """Evaluates the kernel of ``layers`` (applied in order); ``name`` is the description in errors."""

    def __init__(self, layers: tuple):
        self.layers = tuple(layers)
        self.steps = compile_steps(self.layers)
        self.name = "serial(" + ", ".join(repr(layer) for layer in self.layers) + ")"
        self.hyperparameters = [t for layer in self.layers for t in layer.tensors()]

    def differentiable(self, *xs) -> bool:
        """Whether this call is differentiated: grad mode is on and an input or a tensor
        hyperparameter of a layer requires grad, or one carries a forward-mode tangent.  Such a call runs its tiles one at a time and
        out of place at the tile level (the plain float call keeps its threads and in-place
        outputs)."""
        return differentiated(*xs, *self.hyperparameters)

    # -- planning ---------------------------------------------------------------------
    def plan(self, spec: Spec, kernel: bool = True) -> tuple[str, int, list[Spec]]:
        """Check the composition for inputs of ``spec`` (``kernel``: also that every activation
        gets the zero-mean Gaussian pre-activations its closed form needs; a finite network of
        activations back to back is fine, its kernel is not computed).

        Returns the input layout, the memory of a kernel entry in numbers (largest spatial size,
        times the most branches alive at once), and the input spec of every step.
        """
        out, specs, biggest, needs_full, width = _walk(self.steps, spec)
        for step, s in zip(self.steps, specs):
            if kernel and step.layer.needs_gaussian and not s.gaussian:
                raise GpmarginError(
                    f"{step.where}: {step.layer!r} gets the outputs of a nonlinearity, not the zero-mean Gaussian "
                    "pre-activations its closed form needs; put a Dense/Conv2d layer before it (as neural-tangents requires)")
        if isinstance(out, tuple):
            raise GpmarginError(f"the network {self.name} ends with {len(out)} branches; join them with FanInSum(), "
                                "FanInConcat() or FanInProd()")
        if out.kind != "vector":
            raise GpmarginError(
                f"the network {self.name} ends with {out.describe()} outputs; finish it with Flatten() or "
                "GlobalAvgPool() so the kernel is one number per pair of inputs"
            )
        if spec.kind == "vector":
            return "vector", width, specs
        layout = "full" if needs_full else "diag"
        return layout, (biggest**2 if layout == "full" else biggest) * width, specs

    def _dist_needed(self) -> list[bool]:
        """``needs[i]``: whether layer ``i`` or a later one uses the pair distance (one entry
        per layer, plus a last ``False``)."""
        needs = [False] * (len(self.steps) + 1)
        for i in range(len(self.steps) - 1, -1, -1):
            needs[i] = needs[i + 1] or (not self.steps[i].check and self.steps[i].layer.uses_dist)
        return needs

    def _layers_pass(self, st, stats1, stats2, aux1, aux2, specs, needs, at1, at2) -> KernelState:
        """Push a pair state through every step; ``at1``/``at2`` select its first / second members
        in the per-example statistics (slices for a tile, index tensors for ``points``)."""
        tree = st
        for i, step in enumerate(self.steps):
            if step.check:
                continue
            if step.layer.takes_branches:
                tree = _put(tree, step.path, step.layer.combine(_get(tree, step.path), specs[i], needs[i + 1]))
                continue
            st = _get(tree, step.path)
            var1, mean1 = stats1[i]
            var2, mean2 = stats2[i]
            st.var1, st.var2 = var1[at1], var2[at2]
            st.mean1 = None if mean1 is None else mean1[at1]
            st.mean2 = None if mean2 is None else mean2[at2]
            st.spec = specs[i]
            st.aux1 = _rows_of(aux1[i], at1)
            st.aux2 = _rows_of(aux2[i], at2)
            tree = _put(tree, step.path, _apply(step.layer, st, needs, i))
        return tree

    @staticmethod
    def _points(x1, x2, i, j, want_ntk, stats1, stats2) -> KernelState:
        """The input state of the vector pairs ``(x1[i], x2[j])``, with their distance from the differences."""
        a, b = x1[i], x2[j]
        d = a.shape[1]
        nngp = (a * b).sum(1).div_(d)
        st = KernelState(nngp, torch.zeros_like(nngp) if want_ntk else None, None, None,
                         None, None, "vector", pair=False, points=True)
        st.dist = (a - b).square_().sum(1).div_(d)
        return st

    def _check_ntk(self, want_ntk: bool) -> None:
        if want_ntk:
            for step in self.steps:
                if not step.check and not step.layer.supports_ntk:
                    raise GpmarginError(step.layer.ntk_unsupported_reason())

    def _precomputed(self, stats) -> list:
        """Every layer's ``precompute`` of its input statistics (``None`` for combinators)."""
        return [None if var is None else step.layer.precompute(var, mean)
                for step, (var, mean) in zip(self.steps, stats)]

    # -- the self pass ------------------------------------------------------------------
    def _self_pass(self, x, plan, want_ntk, max_memory, progress):
        """Per-layer statistics [(var, mean)] for the inputs of each layer, and the final diagonal."""
        layout, spatial, specs = plan
        n = x.shape[0]
        per_example = 8 * spatial * (3 + _SCRATCH)
        chunk = max(1, min(n, max_memory // max(per_example, 1)))
        stats: list[list] = [[[], []] for _ in self.steps]
        out_nngp, out_ntk = [], []
        starts = range(0, n, chunk)
        needs = self._dist_needed()
        for r0 in _progress(starts, progress, "kernel diag"):
            xs = x[r0 : r0 + chunk]
            tree = _input_self(xs, layout, want_ntk, needs[0])
            for i, step in enumerate(self.steps):
                layer = step.layer
                if step.check or layer.takes_branches:
                    stats[i] = None
                    if not step.check:
                        tree = _put(tree, step.path, layer.combine(_get(tree, step.path), specs[i], needs[i + 1]))
                    continue
                st = _get(tree, step.path)
                var = spatial_diagonal(st.nngp, st.layout).clone()
                st.var1 = st.var2 = var
                st.spec = specs[i]
                st.aux1 = st.aux2 = layer.precompute(var, st.mean1)
                stats[i][0].append(var)
                stats[i][1].append(st.mean1)
                mean = layer.out_mean(st.mean1, var, specs[i])
                st = _apply(layer, st, needs, i)
                st.mean1 = st.mean2 = mean
                tree = _put(tree, step.path, st)
            out_nngp.append(tree.nngp)
            out_ntk.append(tree.ntk)
        merged = []
        for entry in stats:
            if entry is None:
                merged.append((None, None))
                continue
            var_list, mean_list = entry
            mean = None if any(m is None for m in mean_list) else torch.cat(mean_list)
            merged.append((torch.cat(var_list), mean))
        nngp = torch.cat(out_nngp)
        ntk = torch.cat(out_ntk) if want_ntk else None
        return merged, nngp, ntk

    # -- public API -------------------------------------------------------------------
    def _prepare(self, x1, x2, get):
        want_nngp, want_ntk, as_tuple = parse_get(get)
        self._check_ntk(want_ntk)
        graph = self.differentiable(x1, x2)
        x1 = as_input(x1, "x1", keep_graph=graph)
        same = x2 is None
        x2 = x1 if same else as_input(x2, "x2", device=None, keep_graph=graph)
        # equal inputs are computed once (exactly symmetric); not when each has its own gradient
        if not same and not graph and x2.shape == x1.shape and torch.equal(x1, x2):
            x2, same = x1, True
        if x2.device != x1.device:
            raise GpmarginError(f"x1 is on {x1.device} but x2 is on {x2.device}; put both on one device")
        if x1.shape[1:] != x2.shape[1:]:
            raise GpmarginError(
                f"x1 has examples of shape {tuple(x1.shape[1:])} but x2 has {tuple(x2.shape[1:])}; "
                "both inputs need the same feature shape"
            )
        layout, spatial, specs = self.plan(input_spec(x1))
        return x1, x2, same, want_nngp, want_ntk, as_tuple, (layout, spatial, specs), graph

    def diag(self, x, get="nngp", *, max_memory=None, progress=None, batch_size=None):
        """The 1-D diagonal ``k(x_i, x_i)``, computed without forming the matrix."""
        x, _, _, want_nngp, want_ntk, as_tuple, plan, graph = self._prepare(x, None, get)
        engine, xin, _, plan = self._computed_as(x, x, True, plan)
        max_memory = _memory(max_memory, batch_size, plan[1])
        with _recording(graph):
            _, nngp, ntk = engine._self_pass(xin, plan, want_ntk, max_memory, progress)
        _check_finite(nngp, ntk, x, x)
        return _select(nngp, ntk, want_nngp, want_ntk, as_tuple)

    def _computed_as(self, x1, x2, same, plan):
        """``(engine, x1', x2', plan')``: the engine that computes this kernel and the inputs it
        takes.  A first ``Centred`` layer is computed from centred inputs (see
        :meth:`~gpmargin.kernels.Centred.input_map`); image patches are formed tile by tile."""
        first = self.layers[0]
        if not hasattr(first, "input_map"):
            return self, x1, x2, plan
        fn, layer = first.input_map()
        engine = Engine((layer,) + self.layers[1:])
        if x1.dim() == 2:
            m1 = fn(x1)
            m2 = m1 if same else fn(x2)
        else:
            m1 = _Mapped(x1, fn)
            m2 = m1 if same else _Mapped(x2, fn)
        return engine, m1, m2, engine.plan(input_spec(m1[:1]))

    def __call__(self, x1, x2=None, get="nngp", *, batch_size=None, max_memory=None, progress=None):
        x1, x2, same, want_nngp, want_ntk, as_tuple, plan, graph = self._prepare(x1, x2, get)
        engine, xin1, xin2, plan = self._computed_as(x1, x2, same, plan)
        with _recording(graph):
            nngp, ntk = engine._pairs(xin1, xin2, same, want_ntk, plan, batch_size, max_memory, progress, (x1, x2),
                                      graph)
        return _select(nngp, ntk, want_nngp, want_ntk, as_tuple)

    def _pairs(self, x1, x2, same, want_ntk, plan, batch_size, max_memory, progress, originals, graph=False):
        """The ``(N1, N2)`` NNGP and NTK (or None) of inputs already prepared for these layers
        (``graph``: a differentiable call, see :meth:`differentiable`)."""
        layout, spatial, specs = plan
        mem = _memory(max_memory, batch_size, spatial)
        stats1, diag_nngp, diag_ntk = self._self_pass(x1, plan, want_ntk, mem, False)
        stats2 = stats1 if same else self._self_pass(x2, plan, want_ntk, mem, False)[0]

        n1, n2 = x1.shape[0], x2.shape[0]
        out_nngp = empty_matrix(n1, n2, x1.device)
        out_ntk = empty_matrix(n1, n2, x1.device) if want_ntk else None

        needs = self._dist_needed()
        aux1 = self._precomputed(stats1)
        aux2 = aux1 if same else self._precomputed(stats2)
        rows, cols = _tile_shape(n1, n2, spatial, layout, batch_size, mem)
        in_place = layout == "vector" and cols >= n2 and not graph
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
        chunk_pairs = _CHUNK_PAIRS_PER_THREAD * max(1, torch.get_num_threads())

        def chunk(st, r0, c0, s0, s1):
            """Push rows s0:s1 of the tile starting at (r0, c0) through all layers; store them."""
            a0, a1, c1 = r0 + s0, r0 + s1, c0 + st.nngp.shape[1]
            sub = KernelState(st.nngp[s0:s1], None if st.ntk is None else st.ntk[s0:s1].zero_(),
                              None, None, None, None, st.layout, pair=True)
            if needs[0] and st.layout == "vector":
                sub.near = []  # nearly coinciding pairs are recomputed below, with their distance
                if same and not graph:
                    # each input with itself: its entry is the self pass's (written last), so it is
                    # blanked here and no arc-cosine layer counts it among the nearly coinciding
                    sub.nngp.diagonal(a0 - c0).zero_()
            elif needs[0]:
                sub.dist = _image_dist(x1[a0:a1], x2[c0:c1], st.layout)
            sub = self._layers_pass(sub, stats1, stats2, aux1, aux2, specs, needs,
                                    slice(a0, a1), slice(c0, c1))
            ri, ci = _union(sub.near, sub.nngp.shape[1], a0 - c0 if same else None)
            if ri.numel():
                pts = self._points(x1, x2, a0 + ri, c0 + ci, want_ntk, stats1, stats2)
                pts = self._layers_pass(pts, stats1, stats2, aux1, aux2, specs, needs, a0 + ri, c0 + ci)
                sub.nngp[ri, ci] = pts.nngp
                if want_ntk:
                    sub.ntk[ri, ci] = pts.ntk
            _check_finite(sub.nngp, sub.ntk, *originals)
            _store(out_nngp, sub.nngp, a0, a1, c0, c1)
            if want_ntk:
                _store(out_ntk, sub.ntk, a0, a1, c0, c1)

        for r0, r1, c0, c1 in _progress(tiles, progress, "kernel"):
            tgt_nngp = out_nngp[r0:r1, c0:c1] if in_place else None
            tgt_ntk = out_ntk[r0:r1, c0:c1] if (in_place and want_ntk) else None
            st = _input_pair(x1[r0:r1], x2[c0:c1], layout, want_ntk, tgt_nngp, tgt_ntk)
            # On CPU the layers run on row chunks of about chunk_pairs entries: every elementwise
            # pass then works in cache, split over torch's threads
            per_row = (c1 - c0) * (st.nngp[0, 0].numel())
            step = max(1, chunk_pairs // per_row) if cpu else r1 - r0
            for s0 in range(0, r1 - r0, step):
                chunk(st, r0, c0, s0, min(s0 + step, r1 - r0))
        if same:  # exactly symmetric by construction, whatever the BLAS did on the diagonal tiles,
            # and the diagonal is the self pass's (each input with itself: theta = 0 exactly)
            mirror_upper(out_nngp).diagonal().copy_(diag_nngp)
            if want_ntk:
                mirror_upper(out_ntk).diagonal().copy_(diag_ntk)
        return out_nngp, out_ntk


class _Mapped:
    """Inputs seen through a map applied to the examples a slice selects (the centred patches
    of a first ``Centred(Conv2d)``, formed tile by tile rather than all at once)."""

    def __init__(self, x: torch.Tensor, fn):
        self.x, self.fn = x, fn
        self.shape = (x.shape[0],)
        self.device = x.device

    def __getitem__(self, rows) -> torch.Tensor:
        return self.fn(self.x[rows])




def kernel_matrix(layers, x1, x2=None, get="nngp", *, batch_size=None, max_memory=None, progress=None):
    """``k(x1, x2)`` of the network ``layers`` (:class:`Engine`)."""
    return Engine(layers)(x1, x2, get, batch_size=batch_size, max_memory=max_memory, progress=progress)


def kernel_diagonal(layers, x, get="nngp", *, max_memory=None, progress=None, batch_size=None):
    """``k(x_i, x_i)`` of the network ``layers`` without forming the matrix (:class:`Engine`)."""
    return Engine(layers).diag(x, get, max_memory=max_memory, progress=progress, batch_size=batch_size)


def plan(layers, spec: Spec, kernel: bool = True):
    """Check the network ``layers`` for inputs of ``spec`` (see :meth:`Engine.plan`)."""
    return Engine(layers).plan(spec, kernel)


# -- helpers ---------------------------------------------------------------------------
def _recording(graph: bool):
    """Inside a differentiable call, autograd keeps its own copy of every tensor it saves, so
    the layers' in-place updates (the float path's) cannot invalidate what a backward needs."""
    if not graph:
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(torch.clone, _unchanged)


def _unchanged(t):
    return t


def _apply(layer, st: KernelState, needs: list[bool], i: int) -> KernelState:
    """Apply layer ``i``, handing it the pair distance only when it or a later layer uses it."""
    if not (needs[i] and layer.maps_dist):
        st.dist = None
    st.keep_dist = needs[i + 1] and st.near is None
    st = layer.apply(st)
    if not needs[i + 1]:
        st.dist = None
    return st


def _store(out, tile, r0, r1, c0, c1):
    view = out[r0:r1, c0:c1]
    if tile.data_ptr() != view.data_ptr():
        view.copy_(tile)


def _rows_of(aux, at):
    """Examples ``at`` (a slice or an index tensor) of a layer's precomputed per-example
    statistics (tensors indexed, scalars kept)."""
    if aux is None:
        return None
    return {k: (v[at] if isinstance(v, torch.Tensor) else v) for k, v in aux.items()}


def _union(near: list | None, cols: int, diagonal: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct (row, column) entries of a list of index tuples into a ``(rows, cols)`` tile,
    leaving out those with ``row + diagonal == column`` (an input with itself) when ``diagonal``
    is given."""
    if not near:
        return torch.zeros(0, dtype=torch.long), None
    rows, cols_ = torch.cat([r for r, _ in near]), torch.cat([c for _, c in near])
    if diagonal is not None:
        keep = rows + diagonal != cols_
        rows, cols_ = rows[keep], cols_[keep]
    flat = torch.unique(rows * cols + cols_)
    return flat // cols, flat % cols


def _check_finite(nngp, ntk, x1, x2):
    """Raise instead of returning NaN/inf.  A sum is finite iff every entry is (barring a sum
    overflowing near 1e308, reported the same way), and costs one read without temporaries."""
    for name, t in (("NNGP", nngp), ("NTK", ntk)):
        if t is not None and not math.isfinite(float(t.detach().sum())):
            big = max(float(x1.abs().max()), float(x2.abs().max()))
            raise GpmarginError(
                f"the {name} overflowed to a non-finite value (largest |input| is {big:.3g}); rescale the inputs"
            )


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
        per_pair = 8 * _SCRATCH * spatial  # spatial: the most branches alive at once
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
    """``items``, wrapped in a tqdm bar when ``progress`` is True, or when it is None, there are
    more than 8 tiles and stderr is a terminal (a library call is quiet in a script or log)."""
    items = list(items)
    show = progress if progress is not None else (len(items) > 8 and sys.stderr is not None and sys.stderr.isatty())
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="tile", leave=False)
