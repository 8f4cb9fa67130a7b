"""Out-of-core GP solves over a kernel store: blocked Cholesky, triangular solves, the posterior.

Blocked Cholesky (left-looking, by panels).  The training kernel ``K`` (n x n, tiles of edge t)
is factorised ``K + jitter I = L L^T`` one *panel* of ``w`` columns (a whole number of tiles) at
a time, ``p`` its first row::

    A      = K[p:, p:p+w]                              (read from the stored upper tiles)
    A     -= L[p:, k] L[p:p+w, k]^T    for every earlier tile column k (read back from the store)
    L_pp   = chol(A[:w])                               (LAPACK, on w x w)
    L[p+w:, p:p+w] = A[w:] L_pp^{-T}                   (triangular solve, in row chunks)

and the panel's tiles of ``L`` are written to ``STORE/arrays.zarr/<kind>/factor`` and marked done
(a killed factorisation resumes at the first unmarked panel).  Memory is one panel, one tile
column of ``L`` and one solve chunk, about ``8 n (w + 2t)`` bytes, ``w`` chosen from ``memory``;
the kernel is read once and ``L`` about ``n / (2w)`` times.  Left-looking is the usual
out-of-core order (each panel of ``L`` is written once, never re-read for update): a
right-looking order would read *and rewrite* the whole trailing matrix after every panel.

Every tile operation is one torch call, so the cores (or a GPU, ``device="cuda"``) are used by
BLAS/LAPACK inside it; no Dask here: one machine's memory and cores are what a factorisation
of one matrix can use, and a task graph would only add copies (``dask.array.linalg.cholesky``
holds many tiles in flight and needs the whole square matrix, both triangles).

Jitter policy: as :func:`gpmargin.linalg.safe_cholesky`: the plain factorisation first; a
diagonal block whose LAPACK factorisation fails or has a squared pivot below the round-off
floor ``10 n eps mean(diag K)`` restarts the whole factorisation with the next jitter of
:func:`gpmargin.linalg.jitter_ladder` (1e-10 x mean diagonal, x10 each, up to 1e-3); a jitter
is announced with a :class:`~gpmargin.linalg.JitterWarning` and recorded in the store.

Posterior: :class:`StoredKernel` is the store as a prediction's kernel source
(:class:`gpmargin.predict.source.KernelSource`); its factor solves ``Z = L^{-1} [Y, K_X*]`` by
forward substitution over the tile rows of ``L`` (:func:`blocked_solve`), test points in chunks of
columns, and :func:`gpmargin.predict.source.conditioned` does the rest, exactly as in memory.

Every function takes an open :class:`~gpmargin.distributed.store.KernelStore` (``store``).
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import torch

from gpmargin.distributed.faults import NO_SPACE, DamagedStore, no_space_error
from gpmargin.errors import GpmarginError
from gpmargin.predict.result import Posterior
from gpmargin.predict.source import KernelSource, TrainFactor, conditioned
from gpmargin.linalg import (
    MAX_REL_JITTER,
    START_REL_JITTER,
    factor_ok,
    jitter_ladder,
    not_positive_definite,
    pivot_floor,
    warn_jitter,
)

__all__ = ["blocked_cholesky", "blocked_solve", "stored_posterior", "discard_factor", "verify_factor", "panel_tiles",
           "StoredKernel", "DEFAULT_MEMORY"]

#: Working memory of the blocked solves (bytes) unless told otherwise.
DEFAULT_MEMORY = 8 * 2**30


def panel_tiles(n: int, tile: int, memory: int) -> int:
    """Tiles per panel so that a panel (n x w), a tile column of L and a solve chunk fit in ``memory``."""
    if not memory or memory <= 0:
        raise GpmarginError(f"memory must be a positive number of bytes, got {memory!r}")
    w = memory // (8 * max(n, 1)) - 2 * tile
    return max(1, min(-(-n // tile), w // tile))


def _state_path(store, kind: str):
    return store.path / f"factor-{kind}.json"


def _read_state(store, kind: str) -> dict | None:
    p = _state_path(store, kind)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_state(store, kind: str, state: dict) -> None:
    from gpmargin.io import atomic_write_json

    try:
        atomic_write_json(_state_path(store, kind), state)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space_error(exc, f"the {kind} factor's state", store.path) from None
        raise


def discard_factor(store, kind: str = "nngp") -> None:
    """Forget the stored factor of ``kind`` (the next solve factorises again, e.g. with another ``memory``)."""
    ks = store
    _state_path(ks, kind).unlink(missing_ok=True)
    for marker in (ks.path / "done").glob(f"factor-{kind}-*"):
        marker.unlink()


def verify_factor(store, kind: str = "nngp") -> DamagedStore | None:
    """Re-read every tile of the finished panels of the stored factor of ``kind`` (existence and
    checksums); when one is missing or damaged, discard the factor and return the error (the
    next solve factorises again), else return None."""
    ks = store
    state = _read_state(ks, kind)
    if state is None:
        return None
    n, (nb, _) = ks.n_train, ks.tiles
    pt = int(state.get("panel_tiles", 1))
    try:
        for P, j0 in enumerate(range(0, nb, pt)):
            if ks.is_done(("factor", kind, P)):
                for j in range(j0, min(nb, j0 + pt)):  # tile column j: its tiles (i >= j, j)
                    c0, c1 = ks.bounds(j, n)
                    ks.read(kind, "factor", (slice(c0, n), slice(c0, c1)))
    except DamagedStore as exc:
        discard_factor(ks, kind)
        return exc
    return None


def _ensure_factor_array(store, kind: str) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec

    group = zarr.open_group(store.path / "arrays.zarr", mode="a")
    if f"{kind}/factor" not in group:
        n, t = store.n_train, store.tile_size
        group.create_array(f"{kind}/factor", shape=(n, n), chunks=(t, t), dtype="float64", fill_value=np.nan,
                           compressors=[Crc32cCodec()], chunk_key_encoding={"name": "default", "separator": "/"})


def _train_scale(store, kind: str) -> float:
    """mean(diag K) from the diagonal tiles."""
    nb, _ = store.tiles
    total = sum(float(np.trace(store.tile(kind, "train", i, i))) for i in range(nb))
    return total / store.n_train


def _read_panel(store, kind: str, j0: int, j1: int, device) -> torch.Tensor:
    """``K[p:, p:p+w]`` for the panel of tile columns ``j0:j1`` (``p = j0 * t``), full (both
    triangles of its diagonal block), from the stored upper tiles."""
    t, n = store.tile_size, store.n_train
    p, q = j0 * t, min(n, j1 * t)
    A = np.empty((n - p, q - p))
    for j in range(j0, j1):
        c0, c1 = store.bounds(j, n)
        strip = store.read(kind, "train", (slice(c0, c1), slice(c0, n)))  # tiles (j, i >= j)
        A[c0 - p :, c0 - p : c1 - p] = strip.T  # rows i >= j of tile column j
    for j in range(j0, j1 - 1):  # tiles above the diagonal inside the panel: mirrors of those below
        c0, c1 = store.bounds(j, n)
        A[c0 - p : c1 - p, c1 - p :] = A[c1 - p : q - p, c0 - p : c1 - p].T
    return torch.from_numpy(A).to(device)


def blocked_cholesky(store, kind: str = "nngp", *, memory: int = DEFAULT_MEMORY, progress: bool = False,
                     device=None, max_rel_jitter: float = MAX_REL_JITTER,
                     start_rel_jitter: float = START_REL_JITTER, warn: bool = True) -> float:
    """Factorise the stored training kernel out of core into ``<kind>/factor``; returns the jitter.

    Resumes a factorisation stopped half-way (same jitter, same panels); returns at once when
    it is complete.  ``memory`` (bytes) bounds the working set (panel width), ``device`` is
    where tile operations run (default CPU).  Raises a one-line
    :class:`~gpmargin.errors.GpmarginError` when the matrix stays indefinite with the largest
    jitter, or when the disk fills (the panel being written is left unmarked).
    """
    ks = store
    if kind not in ks.kinds:
        raise GpmarginError(f"kernel store {ks.path} holds {', '.join(ks.kinds)} matrices, not {kind}")
    dev = torch.device(device or "cpu")
    n, t = ks.n_train, ks.tile_size
    nb, _ = ks.tiles
    state = _read_state(ks, kind)
    name = f"training {kind.upper()} matrix"
    if state and state.get("status") == "done":  # reused: reported like a fresh factorisation
        if state["jitter"] and warn:
            warn_jitter(name, state["jitter"], state["rel_jitter"])
        return float(state["jitter"])
    _ensure_factor_array(ks, kind)
    scale = _train_scale(ks, kind)
    if not scale > 0:
        raise GpmarginError(f"the stored {kind} training kernel has a non-positive mean diagonal ({scale:g})")
    floor = pivot_floor(n, scale)
    attempts = [(0.0, 0.0)] + list(jitter_ladder(scale, start_rel_jitter, max_rel_jitter))
    first = 0
    if state is not None:  # resume: the attempt and panel plan of the stopped run
        jitters = [j for _, j in attempts]
        first = jitters.index(state["jitter"]) if state["jitter"] in jitters else 0
    for a in range(first, len(attempts)):
        rel, jitter = attempts[a]
        resumed = state is not None and a == first and state.get("jitter") == jitter
        if resumed:
            pt = int(state["panel_tiles"])
        else:
            pt = panel_tiles(n, t, memory)
            for P in range(nb):
                ks.unmark(("factor", kind, P))
            state = {"kind": kind, "jitter": jitter, "rel_jitter": rel, "panel_tiles": pt, "scale": scale,
                     "status": "running"}
            _write_state(ks, kind, state)
        if _factor_panels(ks, kind, pt, jitter, floor, dev, progress):
            state["status"] = "done"
            _write_state(ks, kind, state)
            if jitter and warn:
                warn_jitter(name, jitter, rel)
            return float(jitter)
    raise not_positive_definite(name, n, max_rel_jitter)


def _factor_panels(ks, kind: str, pt: int, jitter: float, floor: float, dev, progress: bool) -> bool:
    """One attempt over all panels; False as soon as a diagonal block fails (caller retries with jitter)."""
    n, t = ks.n_train, ks.tile_size
    nb, _ = ks.tiles
    panels = [(j0, min(nb, j0 + pt)) for j0 in range(0, nb, pt)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        done = sum(ks.is_done(("factor", kind, P)) for P in range(len(panels)))
        bar = tqdm(total=len(panels), initial=done, desc=f"Cholesky ({kind.upper()}, out of core)", unit="panel")
    try:
        for P, (j0, j1) in enumerate(panels):
            if ks.is_done(("factor", kind, P)):
                continue
            p, q = j0 * t, min(n, j1 * t)
            w = q - p
            A = _read_panel(ks, kind, j0, j1, dev)
            if jitter:
                A[:w].diagonal().add_(jitter)
            for k in range(j0):  # left-looking update by every finished tile column
                c0, c1 = ks.bounds(k, n)
                Lk = torch.from_numpy(ks.read(kind, "factor", (slice(p, n), slice(c0, c1)))).to(dev)
                A.addmm_(Lk, Lk[:w].T, alpha=-1.0)
                del Lk
            L_pp, info = torch.linalg.cholesky_ex(A[:w])
            if not factor_ok(L_pp, info, floor):
                return False
            A[:w] = L_pp
            Ut = L_pp.T
            for r0 in range(w, n - p, t):  # rows below: A L_pp^{-T}, one tile row at a time
                r1 = min(n - p, r0 + t)
                A[r0:r1] = torch.linalg.solve_triangular(Ut, A[r0:r1], upper=True, left=False)
            _write_panel(ks, kind, A, j0, j1)
            ks.mark_done(("factor", kind, P), {"jitter": jitter})
            del A
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return True


def _write_panel(ks, kind: str, A: torch.Tensor, j0: int, j1: int) -> None:
    n, t = ks.n_train, ks.tile_size
    nb, _ = ks.tiles
    p = j0 * t
    Ac = A.cpu().numpy()
    for i in range(j0, nb):
        a, b = ks.bounds(i, n)
        for j in range(j0, min(j1, i + 1)):
            c, d = ks.bounds(j, n)
            ks.write(kind, "factor", (i, j), np.ascontiguousarray(Ac[a - p : b - p, c - p : d - p]),
                     what=f"{kind} factor tile ({i}, {j})")


def blocked_solve(store, kind: str, B: torch.Tensor) -> torch.Tensor:
    """``L^{-1} B`` by forward substitution over the tile rows of the stored factor (B: (n, r))."""
    ks = store
    n = ks.n_train
    nb, _ = ks.tiles
    Z = B.clone()
    for i in range(nb):
        a, b = ks.bounds(i, n)
        R = torch.from_numpy(ks.read(kind, "factor", (slice(a, b), slice(0, b)))).to(Z.device)
        if a:
            Z[a:b].addmm_(R[:, :a], Z[:a], alpha=-1.0)
        Z[a:b] = torch.linalg.solve_triangular(R[:, a:b], Z[a:b], upper=False)
    return Z


class StoredFactor(TrainFactor):
    """The factor of ``kind`` in ``store``: ``solve(B) = L^{-1} B`` by :func:`blocked_solve`."""

    def __init__(self, store, kind: str, jitter: float):
        self.store, self.kind, self.jitter = store, kind, float(jitter)

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        return blocked_solve(self.store, self.kind, B.contiguous())

    def solve_pair(self, Y: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Z = blocked_solve(self.store, self.kind, torch.cat([Y, B], dim=1))  # one pass over L for both
        return Z[:, :Y.shape[1]], Z[:, Y.shape[1]:]


class StoredKernel(KernelSource):
    """A kernel store as a prediction's kernel source (made by ``KernelStore.kernel_source``, which
    checks the inputs): the factor out of core in ``memory`` bytes, blocks on ``device``.

    A factor kept from an earlier run is re-read first (:func:`verify_factor`); a damaged one is
    discarded with a one-line ``RuntimeWarning`` and factorised again from the (checked) kernel tiles.
    """

    def __init__(self, store, *, memory: int | None = None, device=None):
        self.store, self.memory = store, memory or DEFAULT_MEMORY
        self.n_train, self.n_test = store.n_train, store.n_test
        self.device = torch.device(device or "cpu")
        self.timings: dict[str, float] = {}

    def factor(self, kind: str, progress: bool = False) -> StoredFactor:
        t0 = time.perf_counter()
        if (state := _read_state(self.store, kind)) and state.get("status") == "done":
            damage = verify_factor(self.store, kind)
            if damage is not None:
                warnings.warn(f"kernel store {self.store.path}: chunk {'/'.join(map(str, damage.index))} of the "
                              f"stored {kind} factor was damaged; discarded the factor and factorised again",
                              RuntimeWarning, stacklevel=3)
        jitter = blocked_cholesky(self.store, kind, memory=self.memory, progress=progress, device=self.device)
        self.timings["cholesky"] = time.perf_counter() - t0
        return StoredFactor(self.store, kind, jitter)

    def cross_rows(self, kind: str, a: int, b: int) -> torch.Tensor:
        return torch.from_numpy(self.store.cross_rows(kind, a, b)).to(self.device)

    def test_diagonal(self, kind: str) -> torch.Tensor:
        return torch.from_numpy(self.store.test_diag(kind)).to(self.device)

    def block_rows(self, kind: str) -> int:
        return self.memory // (8 * self.n_train) - 2 * self.store.tile_size - 1


def stored_posterior(store, x_train, x_test, targets, *, kind: str = "nngp", kernel=None,
                     memory: int = DEFAULT_MEMORY, progress: bool = False, device=None) -> Posterior:
    """The noise-free GP posterior (``alpha = 1``) from an open kernel store, out of core: the
    store checked against the inputs (and ``kernel``), then
    :func:`gpmargin.predict.source.conditioned` on it -- the same numbers as
    :func:`~gpmargin.predict.posterior.condition` on the in-memory matrices."""
    source = store.kernel_source(x_train, x_test, kind=kind, kernel=kernel, memory=memory, device=device)
    return conditioned(source, targets, kind, progress=progress)
