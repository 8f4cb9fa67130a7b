"""The kernel store: the kernel matrices of one kernel on one pair of input sets, on disk, in tiles.

Layout of a store folder ``STORE`` (Zarr v3, float64, chunk = tile, every chunk carries a
crc32c checksum that Zarr verifies on each read)::

    STORE/gpmargin-store.json      what the store holds (see :func:`store_config`), written once, atomically
    STORE/arrays.zarr/<kind>/train      (n, n)  K_XX: only the tiles (I, J) with I <= J are written;
                                                a lower tile is read as the transpose of its mirror
    STORE/arrays.zarr/<kind>/cross      (m, n)  K_*X (test rows, training columns)
    STORE/arrays.zarr/<kind>/test_diag  (m,)    k(x*, x*)
    STORE/arrays.zarr/<kind>/factor     (n, n)  lower Cholesky factor of K_XX + jitter I (tiles I >= J),
                                                see :mod:`gpmargin.distributed.blocked`
    STORE/done/<task>              completion markers

A unit of work (a *task*: one training tile, one cross tile, one block of the test diagonal,
one panel of the factor) writes its chunks, fsyncs them, and only then writes its marker
atomically (temporary file + rename).  A killed run therefore leaves, at worst, chunks without
a marker, which the next run recomputes; a chunk is never read without its marker.  Every read
checks that the chunk files it spans exist (Zarr would read a deleted one as its NaN fill value)
and Zarr checks their checksums: a chunk deleted or damaged after it was marked raises
:class:`DamagedStore`, naming the array and the chunk.  Rerunning
:func:`~gpmargin.distributed.tiles.compute_kernel_store` (``gpmargin kernel``) re-reads every
marked tile (:meth:`KernelStore.verify`), recomputes the damaged ones and discards a damaged (or
outdated) factor; a prediction from the store (:meth:`KernelStore.kernel_source`) re-reads a factor it reuses and,
when it is damaged, discards it and factorises again.

``<kind>`` is ``nngp`` or ``ntk``.  The store is identified by the sha256 of the float64 bytes
of both input sets, the kernel's ``repr`` (its whole architecture), the kinds and the tile
edge; opening it for anything else is refused with one line naming what differs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from gpmargin.distributed.blocked import StoredKernel
from gpmargin.distributed.faults import NO_SPACE, DamagedStore, no_space_error
from gpmargin.errors import GpmarginError
from gpmargin.kernels.inputs import refuse_gradients

__all__ = ["KernelStore", "DamagedStore", "KINDS", "inputs_sha256", "store_config", "open_store", "FORMAT"]

FORMAT = 1
KINDS = ("nngp", "ntk")
CONFIG_NAME = "gpmargin-store.json"
#: Fields that identify a store; any difference refuses the store.
IDENTITY = ("format", "kernel", "kinds", "tile", "n_train", "n_test", "feature_shape",
            "x_train_sha256", "x_test_sha256")


def inputs_sha256(x) -> str:
    """sha256 of the inputs as C-ordered float64 bytes, prefixed by their shape."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    a = np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())
    h = hashlib.sha256(repr(tuple(a.shape)).encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def store_config(kernel, x_train, x_test, kinds: Iterable[str], tile: int,
                 description: dict | None = None) -> dict[str, Any]:
    """The record a store is created with: its identity (:data:`IDENTITY`) plus a description."""
    refuse_gradients("a kernel store", "it holds computed numbers", x_train, x_test, kernel=kernel)
    return {
        "format": FORMAT,
        "kernel": repr(kernel),
        "kinds": list(kinds),
        "tile": int(tile),
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
        "feature_shape": list(x_train.shape[1:]),
        "x_train_sha256": inputs_sha256(x_train),
        "x_test_sha256": inputs_sha256(x_test),
        "description": dict(description or {}),
    }


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for key in IDENTITY:
        if old.get(key) != new.get(key):
            a, b = old.get(key), new.get(key)
            if key.endswith("sha256"):
                a, b = str(a)[:12], str(b)[:12]
            out.append(f"{key} {a!r} (this run: {b!r})")
    return out


def _check_folder(path: Path, *, create: bool) -> None:
    """One-line errors for a store path that is a file, missing, or not writable."""
    if path.exists() and not path.is_dir():
        raise GpmarginError(f"kernel store {path} is a file, not a folder; give a folder path (new or a store)")
    if not create:
        if not (path / CONFIG_NAME).exists():
            raise GpmarginError(f"{path} is not a kernel store (no {CONFIG_NAME}); create it with `gpmargin kernel --out {path}`")
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GpmarginError(f"cannot write to kernel store folder {path}: {exc.strerror or exc}; "
                            "give a writable folder") from None


class KernelStore:
    """An opened kernel store.  Read with :meth:`tile`, :meth:`train_rows`, :meth:`cross_rows`,
    :meth:`test_diag`; :meth:`check_inputs` refuses other inputs."""

    def __init__(self, path, config: dict[str, Any]):
        self.path = Path(path)
        self.config = config
        self.tile_size = int(config["tile"])
        self.n_train = int(config["n_train"])
        self.n_test = int(config["n_test"])
        self.kinds = tuple(config["kinds"])
        self._arrays: dict[str, Any] = {}
        self.report: dict[str, Any] = {}  # set by compute_kernel_store

    # -- creation / opening ----------------------------------------------------------------
    @classmethod
    def create_or_open(cls, path, config: dict[str, Any]) -> "KernelStore":
        """Create the store for ``config``, or open an existing one with the same identity."""
        path = Path(path)
        _check_folder(path, create=True)
        cfg_path = path / CONFIG_NAME
        if cfg_path.exists():
            store = cls.open(path)
            diff = _differences(store.config, config)
            if diff:
                raise GpmarginError(f"kernel store {path} was made for other inputs or settings: "
                                    + "; ".join(diff) + "; use another --out folder")
            return store
        if any(p.name not in ("arrays.zarr", "done") for p in path.iterdir()):  # ours: a run killed at creation
            raise GpmarginError(f"{path} is not empty and holds no kernel store; give an empty or new folder")
        import zarr
        from zarr.codecs import Crc32cCodec

        from gpmargin.io import atomic_write_json, run_metadata

        t = int(config["tile"])
        n, m = int(config["n_train"]), int(config["n_test"])
        try:
            group = zarr.open_group(path / "arrays.zarr", mode="w")
            for kind in config["kinds"]:
                for name, shape in (("train", (n, n)), ("cross", (m, n)), ("test_diag", (m,))):
                    group.create_array(f"{kind}/{name}", shape=shape, chunks=(t,) * len(shape), dtype="float64",
                                       fill_value=np.nan, compressors=[Crc32cCodec()],
                                       chunk_key_encoding={"name": "default", "separator": "/"})
            (path / "done").mkdir(exist_ok=True)
            record = dict(config)
            record["metadata"] = run_metadata(None, packages=_package_versions())
            atomic_write_json(cfg_path, record)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise no_space_error(exc, "the store's metadata", path) from None
            raise
        return cls(path, record)

    @classmethod
    def open(cls, path) -> "KernelStore":
        """Open an existing store (its config is read; nothing is checked against inputs yet)."""
        path = Path(path)
        _check_folder(path, create=False)
        try:
            config = json.loads((path / CONFIG_NAME).read_text())
            missing = [k for k in IDENTITY if k not in config]
        except (OSError, json.JSONDecodeError) as exc:
            raise GpmarginError(f"cannot read {path / CONFIG_NAME}: {exc}") from None
        if missing or config.get("format") != FORMAT:
            raise GpmarginError(f"{path / CONFIG_NAME} is not a gpmargin kernel store of format {FORMAT}")
        return cls(path, config)

    # -- identity checks -------------------------------------------------------------------
    def check_inputs(self, x_train, x_test, kernel=None, kind: str | None = None) -> None:
        """Refuse inputs (or a kernel, or a kind) other than those the store was computed for, and
        inputs or hyperparameters that ask for gradients (a store holds numbers)."""
        refuse_gradients(f"the kernel store {self.path}", "it holds computed numbers", x_train, x_test, kernel=kernel)
        bad = []
        for name, x in (("x_train", x_train), ("x_test", x_test)):
            h = inputs_sha256(x)
            if h != self.config[f"{name}_sha256"]:
                bad.append(f"{name} (shape {tuple(x.shape)}, sha256 {h[:12]}; store: "
                           f"{self.config['n_' + name[2:]]} rows, sha256 {self.config[name + '_sha256'][:12]})")
        if kernel is not None and repr(kernel) != self.config["kernel"]:
            bad.append(f"kernel {kernel!r} (store: {self.config['kernel']})")
        if bad:
            raise GpmarginError(f"kernel store {self.path} holds kernels of other inputs: " + "; ".join(bad)
                                + "; use the same data, task, sizes, seed and architecture as `gpmargin kernel`")
        if kind is not None and kind not in self.kinds:
            raise GpmarginError(f"kernel store {self.path} holds {', '.join(self.kinds)} matrices, not {kind}; "
                                f"compute it with `gpmargin kernel --kind {kind}` (or both)")

    def kernel_source(self, x_train, x_test, *, kind: str = "nngp", kernel=None, memory: int | None = None,
                      device=None) -> StoredKernel:
        """This store as the kernel of a prediction (:class:`gpmargin.predict.source.KernelSource`):
        checked against ``x_train``, ``x_test`` (and ``kernel``), factorised and solved out of core
        in ``memory`` bytes (:mod:`gpmargin.distributed.blocked`)."""
        self.check_inputs(x_train, x_test, kernel=kernel, kind=kind)
        return StoredKernel(self, memory=memory, device=device)

    # -- tasks and markers -----------------------------------------------------------------
    @property
    def tiles(self) -> tuple[int, int]:
        """Tiles along the training and the test dimension."""
        t = self.tile_size
        return -(-self.n_train // t), -(-self.n_test // t)

    def kernel_tasks(self) -> list[tuple]:
        """Every unit of kernel work: ("train", I, J) for I <= J, ("cross", I, J), ("diag", I)."""
        nb, mb = self.tiles
        tasks: list[tuple] = [("train", i, j) for i in range(nb) for j in range(i, nb)]
        tasks += [("cross", i, j) for i in range(mb) for j in range(nb)]
        tasks += [("diag", i) for i in range(mb)]
        return tasks

    def marker(self, task: tuple) -> Path:
        return self.path / "done" / "-".join(str(p) for p in task)

    def is_done(self, task: tuple) -> bool:
        return self.marker(task).exists()

    def mark_done(self, task: tuple, info: dict | None = None) -> None:
        """Record ``task`` finished (after its chunks are written and synced)."""
        from gpmargin.io import atomic_write_json

        try:
            atomic_write_json(self.marker(task), info or {})
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise no_space_error(exc, f"the marker of {task}", self.path) from None
            raise

    def unmark(self, task: tuple) -> None:
        self.marker(task).unlink(missing_ok=True)

    def missing(self, tasks: Iterable[tuple] | None = None) -> list[tuple]:
        tasks = self.kernel_tasks() if tasks is None else tasks
        return [t for t in tasks if not self.is_done(t)]

    def require_complete(self) -> None:
        """Refuse to read an unfinished store (a chunk without its marker is never data)."""
        miss = self.missing()
        if miss:
            raise GpmarginError(f"kernel store {self.path} is unfinished: {len(miss)} of {len(self.kernel_tasks())} "
                                "tiles missing; rerun the same `gpmargin kernel` command to finish it")

    # -- reading and writing chunks ----------------------------------------------------------
    def array(self, kind: str, name: str, *, write: bool = False):
        key = f"{kind}/{name}"
        if key not in self._arrays or write:
            import zarr

            arr = zarr.open_array(self.path / "arrays.zarr", path=key, mode="r+" if write else "r")
            if write:
                return arr
            self._arrays[key] = arr
        return self._arrays[key]

    def bounds(self, i: int, n: int) -> tuple[int, int]:
        t = self.tile_size
        return i * t, min(n, (i + 1) * t)

    def chunk_path(self, kind: str, name: str, *index: int) -> Path:
        return self.path / "arrays.zarr" / kind / name / "c" / Path(*[str(i) for i in index])

    def write(self, kind: str, name: str, index: tuple[int, ...], block: np.ndarray, what: str) -> None:
        """Write one chunk-aligned block and fsync its chunk file."""
        arr = self.array(kind, name, write=True)
        sel = tuple(slice(*self.bounds(i, s)) for i, s in zip(index, arr.shape))
        try:
            arr[sel] = block
            fd = os.open(self.chunk_path(kind, name, *index), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise no_space_error(exc, what, self.path) from None
            raise

    def read(self, kind: str, name: str, sel: tuple[slice, ...]) -> np.ndarray:
        """Read a block of marked chunks.  A chunk file that is missing (Zarr would read it as
        its NaN fill value) or fails its checksum raises :class:`DamagedStore` naming it."""
        arr = self.array(kind, name)
        spans = [range(s.start // c, -(-s.stop // c)) for s, c in zip(sel, arr.chunks)]
        # the chunks it spans that are ever written (not the other triangle of a symmetric kernel or a factor)
        chunks = [index for index in itertools.product(*spans) if self._stored(name, index)]
        for index in chunks:
            if not self.chunk_path(kind, name, *index).is_file():
                raise DamagedStore(self, kind, name, index, "is missing")
        try:
            return arr[sel]
        except ValueError as exc:
            if "checksum" not in str(exc):
                raise
        for index in chunks:  # name the damaged chunk
            try:
                arr[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, arr.chunks))]
            except ValueError:
                raise DamagedStore(self, kind, name, index, "fails its checksum") from None
        raise DamagedStore(self, kind, name, chunks[0], "fails its checksum")

    @staticmethod
    def _stored(name: str, index: tuple) -> bool:
        """Whether the chunk ``index`` of array ``name`` is ever written: the upper tiles of the
        training kernel, the lower ones of its factor, every chunk of the other arrays."""
        if name == "train":
            return index[0] <= index[1]
        if name == "factor":
            return index[0] >= index[1]
        return True

    def tile(self, kind: str, name: str, i: int, j: int | None = None) -> np.ndarray:
        """One stored chunk: train (I, J) with I <= J, cross (I, J), test_diag (I)."""
        n_rows = self.n_train if name in ("train", "factor") else self.n_test
        rows = slice(*self.bounds(i, n_rows))
        if j is None:
            return self.read(kind, name, (rows,))
        return self.read(kind, name, (rows, slice(*self.bounds(j, self.n_train))))

    def train_rows(self, kind: str, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        """Training-kernel tiles rows ``i0:i1``, columns ``j0:j1`` (tile indices), symmetric
        tiles below the diagonal read as transposes of the stored upper ones."""
        t, n = self.tile_size, self.n_train
        r0, r1 = i0 * t, min(n, i1 * t)
        c0, c1 = j0 * t, min(n, j1 * t)
        out = np.empty((r1 - r0, c1 - c0))
        for i in range(i0, i1):
            a, b = self.bounds(i, n)
            up = max(i, j0)  # tiles (i, j >= i) are stored: read them as one row strip
            if up < j1:
                c, _ = self.bounds(up, n)
                out[a - r0 : b - r0, c - c0 :] = self.read(kind, "train", (slice(a, b), slice(c, c1)))
            for j in range(j0, min(i, j1)):
                c, d = self.bounds(j, n)
                out[a - r0 : b - r0, c - c0 : d - c0] = self.read(kind, "train", (slice(c, d), slice(a, b))).T
        return out

    def train(self, kind: str) -> np.ndarray:
        """The whole (n, n) training kernel in memory (small stores only)."""
        nb, _ = self.tiles
        return self.train_rows(kind, 0, nb, 0, nb)

    def cross_rows(self, kind: str, a: int, b: int) -> np.ndarray:
        """Test rows ``a:b`` of ``K_*X`` (any row range)."""
        return self.read(kind, "cross", (slice(a, b), slice(0, self.n_train)))

    def test_diag(self, kind: str) -> np.ndarray:
        return self.read(kind, "test_diag", (slice(0, self.n_test),))

    def verify(self, tasks: Iterable[tuple] | None = None, progress: bool = False) -> list[tuple]:
        """Read every marked chunk of ``tasks`` (checksums and completeness); unmark and return
        the damaged ones, so that the next computation redoes them."""
        tasks = [t for t in (self.kernel_tasks() if tasks is None else tasks) if self.is_done(t)]
        bad = []
        it = tasks
        if progress and tasks:
            from tqdm.auto import tqdm

            it = tqdm(tasks, desc="verify stored tiles", unit="tile", leave=False)
        for task in it:
            name, *index = task
            name = "test_diag" if name == "diag" else name
            try:
                ok = all(np.isfinite(self.tile(kind, name, *index)).all() for kind in self.kinds)
            except DamagedStore:
                ok = False
            if not ok:
                self.unmark(task)
                bad.append(task)
        return bad


def _package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("zarr", "dask", "distributed"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def open_store(path) -> KernelStore:
    """Open a finished kernel store for reading (an unfinished one is refused)."""
    store = KernelStore.open(path)
    store.require_complete()
    return store
