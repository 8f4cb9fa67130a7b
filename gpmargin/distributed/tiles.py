"""Kernel matrices computed tile by tile into a :class:`~gpmargin.distributed.store.KernelStore`.

Each unit of work is one chunk-sized block of a matrix the posterior needs:

* ``("train", I, J)``, ``I <= J``: ``K(X_I, X_J)`` (tile ``I`` of the training inputs against
  tile ``J``); the diagonal tiles ``K(X_I, X_I)`` are computed as symmetric matrices, the lower
  tiles never (``n_b (n_b + 1) / 2`` of the ``n_b^2`` tiles);
* ``("cross", I, J)``: ``K(X*_I, X_J)``;
* ``("diag", I)``: ``k(x*, x*)`` for the test tile ``I``.

A unit calls the ordinary kernel object on its worker's device (``cuda`` when the worker has a
GPU, else CPU), writes its chunks with their checksums, fsyncs them, and marks itself done.  With
``client=None`` the units run one after another in this process (torch spreads each over the
CPU threads); with a ``dask.distributed.Client`` they are Dask tasks, written by the workers
themselves (so the store must be on a file system every worker sees).  Finished units are
skipped on a rerun, so a killed computation resumes where it stopped.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Sequence

import numpy as np
import torch

from gpmargin.distributed.blocked import discard_factor, verify_factor
from gpmargin.distributed.store import KINDS, KernelStore, store_config
from gpmargin.errors import GpmarginError
from gpmargin.io import physical_memory
from gpmargin.linalg import mirror_upper

__all__ = ["compute_kernel_store", "DEFAULT_TILE", "check_kinds"]

#: Tile edge: 2048 x 2048 float64 = 32 MiB per chunk (a few hundred chunks at n = 60,000).
DEFAULT_TILE = 2048


def check_kinds(kinds) -> tuple[str, ...]:
    """``"nngp"``, ``"ntk"``, ``"both"`` or a sequence of them, as a tuple in canonical order."""
    if isinstance(kinds, str):
        kinds = KINDS if kinds == "both" else (kinds,)
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise GpmarginError(f"kinds must be nngp, ntk or both, got {bad[0] if bad else 'nothing'!r}")
    return tuple(k for k in KINDS if k in kinds)


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute_unit(kernel, task: tuple, xa: torch.Tensor, xb: torch.Tensor | None, kinds: Sequence[str],
                 device=None) -> dict[str, np.ndarray]:
    """The blocks of one unit for every kind, as float64 numpy arrays on the CPU."""
    dev = _resolve_device(device)
    xa = xa.to(dev)
    get = tuple(kinds) if len(kinds) > 1 else kinds[0]
    name = task[0]
    if name == "diag":
        out = kernel.diag(xa, get=get)
    elif name == "train" and task[1] == task[2]:  # a diagonal tile: exactly symmetric by construction
        out = kernel(xa, None, get=get)
        out = tuple(mirror_upper(o) for o in out) if isinstance(out, tuple) else mirror_upper(out)
    else:
        out = kernel(xa, xb.to(dev), get=get)
    out = out if isinstance(out, tuple) else (out,)
    return {k: o.detach().to("cpu", torch.float64).numpy() for k, o in zip(kinds, out)}


def run_unit(path: str, config: dict[str, Any], task: tuple, kernel, xa, xb, kinds, device=None) -> float:
    """Compute, write and mark one unit (this runs on a Dask worker or in this process)."""
    t0 = time.perf_counter()
    store = KernelStore(path, config)
    blocks = compute_unit(kernel, task, xa, xb, kinds, device)
    name, *index = task
    array = "test_diag" if name == "diag" else name
    for kind, block in blocks.items():
        if not np.isfinite(block).all():
            raise GpmarginError(f"the {kind} kernel of unit {task} is not finite; check the inputs")
        store.write(kind, array, tuple(index), block, what=f"{kind} tile {task}")
    seconds = time.perf_counter() - t0
    store.mark_done(task, {"seconds": seconds, "host": socket.gethostname(), "device": str(_resolve_device(device))})
    return seconds


def _inputs(task: tuple, train_blocks, test_blocks):
    """The input blocks of a unit (tensors, or Dask futures of them)."""
    name, *index = task
    if name == "train":
        return train_blocks[index[0]], train_blocks[index[1]]
    if name == "cross":
        return test_blocks[index[0]], train_blocks[index[1]]
    return test_blocks[index[0]], None


def _tile_edge(tile: int, n_train: int, n_test: int, kinds, store) -> int:
    """The tile edge a store uses: at most the larger input set (one tile then holds it all; an
    existing store made with a larger edge keeps it).  Refused in one line, before anything is
    written, when one unit's blocks (a tile per kind, written and copied) would not fit in half
    of this machine's memory."""
    edge = max(n_train, n_test)
    if tile >= edge:
        try:
            old = KernelStore.open(store).tile_size
        except GpmarginError:  # no store there yet
            old = 0
        tile = old if old >= edge else edge
    need = 8 * min(tile, edge) ** 2 * (2 * len(kinds) + 1)
    ram = physical_memory()
    if ram and need > ram / 2:
        raise GpmarginError(f"tile {tile} needs about {need / 2**30:.3g} GiB per unit, more than half of this machine's "
                            f"{ram / 2**30:.3g} GiB; use a smaller --tile (default {DEFAULT_TILE})")
    return tile


def compute_kernel_store(kernel, x_train, x_test, store, *, kinds=("nngp",), tile: int = DEFAULT_TILE,
                         client=None, progress: bool = True, verify: bool = True, device=None,
                         description: dict | None = None) -> KernelStore:
    """Compute ``K_XX`` (upper tiles), ``K_*X`` and ``k(x*, x*)`` of ``kernel`` into the store folder ``store``.

    Parameters
    ----------
    kernel : a gpmargin kernel object (``kernel(x1, x2, get=...)``, ``kernel.diag``), picklable for Dask.
    x_train, x_test : (n, ...) and (m, ...) inputs (converted to float64).
    store : folder path; created, or resumed when it holds a store of the same identity.
    kinds : ``("nngp",)``, ``("ntk",)``, ``("nngp", "ntk")`` or ``"both"``.
    tile : tile edge (rows and columns per unit and per Zarr chunk).
    client : ``dask.distributed.Client`` or None (units in this process, one after another).
    progress : tqdm bar over units.
    verify : on a resumed store, first re-read every finished unit's chunks (checksums) and redo
        damaged ones.
    device : where units compute: None/"auto" (a worker's GPU if it has one, else CPU), "cpu", "cuda".
    description : free-form record saved in the store (e.g. the CLI's dataset and task).

    Returns
    -------
    KernelStore
        With ``report``: ``units`` (all), ``computed`` (this run), ``skipped`` (already done),
        ``repaired`` (found damaged and redone), ``seconds``.

    Raises
    ------
    GpmarginError
        A store of another identity (one line naming what differs), a store path that is a file
        or not writable, no space left while writing a tile (the tile is left unmarked), bad kinds
        or tile size.
    """
    kinds = check_kinds(kinds)
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise GpmarginError(f"tile must be a positive integer (rows and columns per tile), got {tile!r}")
    from gpmargin.predict.inputs import as_tensor

    xtr = as_tensor(x_train, name="x_train").to("cpu")
    xte = as_tensor(x_test, name="x_test").to("cpu")
    if xtr.ndim < 2 or xte.ndim < 2 or xtr.shape[1:] != xte.shape[1:] or not len(xtr) or not len(xte):
        raise GpmarginError(f"x_train {tuple(xtr.shape)} and x_test {tuple(xte.shape)} must be non-empty, "
                            "one row per example, with the same feature shape")
    tile = _tile_edge(int(tile), len(xtr), len(xte), kinds, store)
    t0 = time.perf_counter()
    ks = KernelStore.create_or_open(store, store_config(kernel, xtr, xte, kinds, tile, description))
    units = ks.kernel_tasks()
    repaired = ks.verify(progress=progress) if verify else []
    if verify:
        for kind in ks.kinds:  # a factor of a repaired training tile, or itself damaged, is discarded
            if any(task[0] == "train" for task in repaired):
                discard_factor(ks, kind)
            elif (damage := verify_factor(ks, kind)) is not None:
                repaired.append(("factor", kind, *damage.index))
    todo = ks.missing(units)
    t = ks.tile_size
    train_blocks = [xtr[a : a + t] for a in range(0, ks.n_train, t)]
    test_blocks = [xte[a : a + t] for a in range(0, ks.n_test, t)]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"{'+'.join(k.upper() for k in kinds)} kernel tiles", unit="tile")
    try:
        if client is None:
            for task in todo:
                xa, xb = _inputs(task, train_blocks, test_blocks)
                run_unit(str(ks.path), ks.config, task, kernel, xa, xb, kinds, device)
                if bar is not None:
                    bar.update(1)
        elif todo:
            _run_on_dask(client, ks, todo, kernel, train_blocks, test_blocks, kinds, device, bar)
    finally:
        if bar is not None:
            bar.close()
    ks.report = {"units": len(units), "computed": len(todo), "skipped": len(units) - len(todo),
                 "repaired": len(repaired), "seconds": time.perf_counter() - t0}
    ks.require_complete()
    return ks


def _run_on_dask(client, ks, todo, kernel, train_blocks, test_blocks, kinds, device, bar) -> None:
    """Submit every unit; as each finishes, advance the bar; the first failure cancels the rest."""
    from distributed import as_completed

    kernel_f = client.scatter(kernel, broadcast=True)
    train_f = client.scatter(train_blocks)
    test_f = client.scatter(test_blocks)
    futures = []
    for task in todo:
        xa, xb = _inputs(task, train_f, test_f)
        futures.append(client.submit(run_unit, str(ks.path), ks.config, task, kernel_f, xa, xb, kinds, device,
                                     pure=False, key=f"gpmargin-kernel-{'-'.join(map(str, task))}-{ks.path.name}"))
    try:
        for fut in as_completed(futures, loop=client.loop):
            try:
                fut.result()
            except (ModuleNotFoundError, ImportError) as exc:
                raise GpmarginError(f"a Dask worker cannot import what a kernel tile needs ({exc}); install "
                                    "gpmargin on every worker") from None
            if bar is not None:
                bar.update(1)
    finally:
        client.cancel([f for f in futures if not f.done()])
