"""Beyond one process and beyond RAM: gpmargin's work on Dask and Zarr (the only package that imports them).

``cluster``  where units run: :class:`Execution` (``workers`` / ``scheduler``), :func:`open_client`
             (local cluster of worker processes, GPU pinning, worker checks, quiet logging),
             :func:`slurm_cluster` (dask-jobqueue recipe)
``units``    the one loop that runs a batch of units in-process or on a client and hands each
             result back as it finishes (:class:`UnitRunner`, :func:`execute_unit`)
``store``, ``tiles``
             kernel matrices computed tile by tile (as Dask tasks, or in this process) into a
             Zarr folder, resumable, checksummed, refusing other inputs
``blocked``  out-of-core blocked Cholesky and triangular solves over the stored tiles, giving the
             same GP posterior as :func:`gpmargin.predict.posterior.condition`

    compute_kernel_store(kernel, x_train, x_test, "STORE", kinds=("nngp",), tile=2048, client=None)
    stored_posterior("STORE", x_train, x_test, targets, kind="nngp")  -> Posterior

Importing this package imports neither dask nor zarr (only opening a client or a store does).
"""

from gpmargin.distributed.cluster import Execution, default_workers, open_client, slurm_cluster
from gpmargin.distributed.units import Budget, UnitRunner, execute_unit

__all__ = ["Budget", "Execution", "UnitRunner", "default_workers", "execute_unit", "open_client", "slurm_cluster",
           "compute_kernel_store", "open_store", "KernelStore", "stored_posterior", "blocked_cholesky"]


def __getattr__(name):  # lazy: the store modules import zarr
    if name == "compute_kernel_store":
        from gpmargin.distributed.tiles import compute_kernel_store

        return compute_kernel_store
    if name in ("open_store", "KernelStore"):
        from gpmargin.distributed import store

        return getattr(store, name)
    if name in ("stored_posterior", "blocked_cholesky"):
        from gpmargin.distributed import blocked

        return getattr(blocked, name)
    raise AttributeError(name)
