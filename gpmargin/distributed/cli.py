"""``gpmargin kernel``: the kernel matrices of a dataset, task and architecture, into a kernel store.

    gpmargin kernel --dataset fashion_mnist --task multiclass --n-train 60000 --n-test 2000 \\
        --arch paper-mlp --depth 5 [--kind nngp|ntk|both] [--tile 2048] [--workers N | --scheduler ADDR] \\
        --out STORE

takes the same data and architecture options as ``gpmargin predict`` (shared parsers in
:mod:`gpmargin.predict.cli`), computes ``K_XX`` (upper tiles), ``K_*X`` and ``k(x*, x*)`` into
the Zarr store ``STORE`` (:func:`~gpmargin.distributed.tiles.compute_kernel_store`), and is
resumed by running it again.  ``gpmargin predict ... --kernel-store STORE`` then reuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

from gpmargin.io import path_argument


def register(subparsers) -> None:
    """Add the ``kernel`` subcommand."""
    from gpmargin.predict.cli import add_arch_arguments, add_task_arguments

    p = subparsers.add_parser(
        "kernel",
        help="compute kernel matrices tile by tile into an on-disk store (Dask, resumable)",
        description=(
            "Compute the NNGP and/or NTK matrices a prediction needs (train x train, test x train, test "
            "diagonal) tile by tile into a Zarr store, in this process or on a Dask cluster; rerun to resume. "
            "Then: gpmargin predict ... --kernel-store STORE."
        ),
    )
    add_task_arguments(p)
    add_arch_arguments(p)
    p.add_argument("--kind", default="nngp", choices=("nngp", "ntk", "both"),
                   help="matrices to compute: nngp (default), ntk or both")
    p.add_argument("--tile", type=int, default=None, help="tile edge, rows and columns per task and chunk (default 2048)")
    p.add_argument("--workers", type=int, default=0,
                   help="local Dask worker processes (default 0: tiles in this process, torch using the CPU threads)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run tiles on the Dask cluster at ADDRESS (tcp://HOST:8786); STORE must be on a file "
                        "system every worker sees")
    p.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"),
                   help="where tiles compute (default auto: each worker's GPU if it has one)")
    p.add_argument("--threads", default="auto", help="CPU threads for torch in this process: a number or auto")
    p.add_argument("--no-verify", action="store_true",
                   help="on a resumed store, trust finished tiles without re-reading their checksums")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, metavar="STORE", type=path_argument, help="store folder (created, or resumed)")
    p.set_defaults(func=run)


@contextlib.contextmanager
def _client(workers: int, scheduler: str | None):
    """A Dask client for ``--workers``/``--scheduler`` (None: in this process)."""
    from gpmargin.errors import GpmarginError

    if workers < 0:
        raise GpmarginError(f"--workers must be >= 0 (0: in this process), got {workers}")
    if scheduler and workers:
        raise GpmarginError(f"--workers {workers} and --scheduler {scheduler} exclude each other")
    from gpmargin.distributed.cluster import Execution, open_client  # the one place for cluster set-up

    with open_client(Execution(workers=workers, scheduler=scheduler)) as client:
        yield client


def _run(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from gpmargin.distributed.tiles import DEFAULT_TILE, compute_kernel_store
    from gpmargin.errors import GpmarginError
    from gpmargin.io import resolve_device
    from gpmargin.predict.cli import _threads, kernel_from_args, load_task

    t_start = time.perf_counter()
    torch.set_num_threads(_threads(args.threads))
    tile = DEFAULT_TILE if args.tile is None else args.tile
    if tile < 1:
        raise GpmarginError(f"--tile must be a positive integer, got {tile}")
    if args.device != "auto" and not args.workers and not args.scheduler:  # tiles run here: the device must be here
        resolve_device(args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = load_task(args)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    kernel = kernel_from_args(args)
    device = None if args.device == "auto" else args.device
    description = {"dataset": (args.dataset or "digits").lower(), "task": args.task, "seed": args.seed,
                   "arch": args.arch, "depth": args.depth, "constrained": bool(args.constrained),
                   "data": task.info}
    with _client(args.workers, args.scheduler) as client:
        store = compute_kernel_store(kernel, task.x_train, task.x_test, args.out, kinds=args.kind, tile=tile,
                                     client=client, progress=not args.no_progress, verify=not args.no_verify,
                                     device=device, description=description)
    r = store.report
    size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    print(f"kernel store {store.path}: {', '.join(store.kinds)} of {store.n_train} training x {store.n_test} test "
          f"inputs, tile {store.tile_size}")
    print(f"  {r['units']} tiles: {r['computed']} computed now, {r['skipped']} already done"
          + (f" ({r['repaired']} damaged ones redone)" if r["repaired"] else "")
          + f"; {size / 1e9:.3g} GB on disk; {time.perf_counter() - t_start:.1f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``gpmargin kernel`` (torch's thread count is restored afterwards)."""
    from gpmargin.predict.cli import keeping_torch_threads

    return keeping_torch_threads(_run)(args)
