"""Beyond one process: gpmargin's work on Dask.

``cluster``  where units run: :class:`Execution` (``workers`` / ``scheduler``), :func:`open_client`
             (local cluster of worker processes, GPU pinning, worker checks, quiet logging),
             :func:`slurm_cluster` (dask-jobqueue recipe)
``units``    the one loop that runs a batch of units in-process or on a client and hands each
             result back as it finishes (:class:`UnitRunner`, :func:`execute_unit`)

Nothing outside this package imports dask; importing it does not import dask either (only opening
a client does).
"""

from gpmargin.distributed.cluster import Execution, default_workers, open_client, slurm_cluster
from gpmargin.distributed.units import UnitRunner, execute_unit

__all__ = ["Execution", "UnitRunner", "default_workers", "execute_unit", "open_client", "slurm_cluster"]
