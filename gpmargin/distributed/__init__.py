"""Work beyond one process and beyond RAM, on Dask and Zarr (the only package that imports them).

Kernel store: kernel matrices computed tile by tile (as Dask tasks, or in this process) into a
Zarr folder, resumable, checksummed, refusing other inputs (:mod:`.store`, :mod:`.tiles`);
out-of-core blocked Cholesky and triangular solves over its tiles, giving the same GP posterior
as :func:`gpmargin.predict.posterior.condition` (:mod:`.blocked`).

    compute_kernel_store(kernel, x_train, x_test, "STORE", kinds=("nngp",), tile=2048, client=None)
    stored_posterior("STORE", x_train, x_test, targets, kind="nngp")  -> Posterior
"""

__all__ = ["compute_kernel_store", "open_store", "KernelStore", "stored_posterior", "blocked_cholesky"]


def __getattr__(name):  # lazy: importing gpmargin.distributed does not import dask or zarr
    if name in ("compute_kernel_store",):
        from gpmargin.distributed.tiles import compute_kernel_store

        return compute_kernel_store
    if name in ("open_store", "KernelStore"):
        from gpmargin.distributed import store

        return getattr(store, name)
    if name in ("stored_posterior", "blocked_cholesky"):
        from gpmargin.distributed import blocked

        return getattr(blocked, name)
    raise AttributeError(name)
