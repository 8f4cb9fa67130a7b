"""Run a batch of independent units of work, in this process or on Dask, and hand each result back
to the caller as it finishes — the one loop behind ``gpmargin validate`` and ``gpmargin figure``.

A unit is a callable ``fn(device) -> result`` (picklable: a module-level function or a
``functools.partial`` of one).  :func:`execute_unit` runs it wherever it lands: it resolves the
device spec *there* (a GPU worker sees only its own GPU), fixes torch's thread count to
``Execution.threads`` for the unit, and the BLAS/OpenMP pools numpy uses to the same number
(``threadpoolctl``), so results do not depend on the number of workers: torch's CPU reductions,
MKL's GEMM and OpenBLAS's ``ddot`` (``np.linalg.norm``) split their work by thread count, and 1
thread vs 2 threads, or ``OMP_NUM_THREADS=1`` (which Dask sets in its workers) vs unset, give
different last bits), and returns ``(result, meta)`` with the wall time, device, versions and host.

:class:`UnitRunner` submits every unit of a batch to the client, takes them ``as_completed`` and
calls ``on_result(key, result, meta)`` in the client process for each one (the caller appends it to
``runs.jsonl``), so a killed client loses at most the units still running.  A worker killed
mid-unit is replaced by its nanny and the scheduler re-runs the unit elsewhere (up to
``ALLOWED_FAILURES`` deaths per unit); an exception inside a unit is not retried (units are
deterministic: it would fail again) and cancels the rest of the batch.

With a :class:`Budget` (``--budget SECONDS``) a unit is started only when, by the median wall
time of the units finished so far (this run's and earlier runs' of the same config), it would end
before the deadline; on Dask at most one unit per worker thread is in flight, so the budget
decides each start.  Finished units are kept; the rest are left for the next run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import time
import uuid
import warnings
from typing import Any, Callable, Mapping

from gpmargin.distributed.cluster import Execution, open_client, quiet_dask
from gpmargin.errors import GpmarginError

Unit = Callable[[Any], Any]
OnResult = Callable[[str, Any, dict], None]


class Budget:
    """A wall-clock budget of ``seconds`` from now for starting units.

    ``history``: wall times (s) of units of the same work finished before (e.g. ``wall_s`` of the
    records already in ``runs.jsonl``); each finished unit adds its own (:meth:`record`)."""

    def __init__(self, seconds: float, history=()):
        self.deadline = time.monotonic() + float(seconds)
        self.walls = [float(w) for w in history if w is not None and w > 0]

    def estimate(self) -> float | None:
        """Median wall time of one unit, or None before any unit has finished."""
        return statistics.median(self.walls) if self.walls else None

    def allows(self) -> bool:
        """Whether a unit started now would finish in time (always, without an estimate yet)."""
        est = self.estimate()
        return est is None or time.monotonic() + est <= self.deadline

    def record(self, wall: float) -> None:
        self.walls.append(float(wall))


def execute_unit(fn: Unit, device: str = "auto", threads: int = 1) -> tuple[Any, dict[str, Any]]:
    """Run ``fn(device)`` with ``threads`` torch threads; returns ``(result, meta)``.

    ``meta``: ``wall_s``, ``device``, ``device_info`` (with the unit's torch thread count),
    ``versions``, ``host`` and ``pid`` of the process that ran it.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from gpmargin.data import DataSubstitutionWarning
    from gpmargin.io import device_info, resolve_device, versions

    dev = resolve_device(device)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings(), threadpool_limits(limits=threads):
            # a carved split is recorded in the result's data info; not repeated per unit on stderr
            warnings.simplefilter("ignore", DataSubstitutionWarning)
            result = fn(dev)
        wall = time.perf_counter() - t0
        info = device_info(dev)
    finally:
        torch.set_num_threads(old)
    return result, {"wall_s": wall, "device": str(dev), "device_info": info, "versions": versions(),
                    "host": socket.gethostname(), "pid": os.getpid()}


def device_spec(device: Any) -> str:
    """``device`` as the string a worker resolves on its side (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    return "auto" if device is None else str(device)


class UnitRunner:
    """Runs batches of units under one :class:`Execution`; a Dask client is opened on the first
    batch that has work and kept until the runner is closed (use it as a context manager).

    ``cluster``: an existing Dask cluster object to run on instead (see
    :func:`gpmargin.distributed.cluster.open_client`).
    """

    def __init__(self, execution: Execution | None = None, device: Any = "auto", cluster=None):
        self.execution = execution or Execution()
        self.device = device_spec(device)
        self.cluster = cluster
        self._stack = contextlib.ExitStack()
        self._client = None
        self._opened = False

    def __enter__(self) -> "UnitRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._client, self._opened = None, False

    def describe(self) -> dict[str, Any]:
        """The execution for run metadata (mode, workers or scheduler, threads per unit)."""
        d = self.execution.describe()
        if self.cluster is not None:
            d = {"mode": "dask", "cluster": type(self.cluster).__name__, "threads_per_unit": self.execution.threads}
        return d

    def client(self, n_units: int):
        """The client (opened now if needed; a local cluster gets at most ``n_units`` workers)."""
        if not self._opened:
            ex = self.execution
            if self.cluster is None and not ex.in_process and ex.scheduler is None:
                ex = Execution(workers=min(ex.resolved_workers(), max(1, n_units)), threads=ex.threads)
            self._client = self._stack.enter_context(open_client(ex, cluster=self.cluster))
            self._opened = True
        return self._client

    def run(self, units: Mapping[str, Unit], on_result: OnResult, label: str = "unit",
            budget: Budget | None = None) -> int:
        """Run the units of ``units`` (key -> ``fn(device)``); ``on_result(key, result, meta)`` is
        called in this process as each finishes (in completion order on a cluster, in order here).
        Returns how many units were not started because ``budget`` ran out (0 without one)."""
        if not units:
            return 0
        client = self.client(len(units))
        threads = self.execution.threads
        queue = list(units.items())
        if client is None:
            for i, (key, fn) in enumerate(queue):
                if budget is not None and not budget.allows():
                    return len(queue) - i
                result, meta = execute_unit(fn, self.device, threads)
                if budget is not None:
                    budget.record(meta["wall_s"])
                on_result(key, result, {**meta, "execution": self.describe()})
            return 0
        from distributed import as_completed

        tag = uuid.uuid4().hex[:8]
        futures: dict = {}
        slots = len(queue) if budget is None else max(1, sum(client.nthreads().values()))
        done = as_completed([], loop=client.loop)

        def submit_more() -> None:
            while queue and len(futures) < slots and (budget is None or budget.allows()):
                key, fn = queue.pop(0)
                fut = client.submit(execute_unit, fn, self.device, threads,
                                    key=f"gpmargin-{label}-{tag}-{len(units) - len(queue) - 1}", pure=False, retries=0)
                futures[fut] = key
                done.add(fut)

        try:
            with quiet_dask():
                submit_more()
                for fut in done:
                    key = futures.pop(fut)
                    if fut.status == "error":
                        raise _unit_error(label, key, fut)
                    result, meta = fut.result()
                    fut.release()
                    if budget is not None:
                        budget.record(meta["wall_s"])
                    on_result(key, result, {**meta, "execution": {**self.describe(), "worker": _worker_of(meta)}})
                    submit_more()
        finally:
            if futures:
                client.cancel(list(futures))
        return len(queue)


def _worker_of(meta: dict) -> str:
    return f"{meta['host']}:{meta['pid']}"


def _unit_error(label: str, key: str, fut) -> BaseException:
    """The exception of a failed future: the unit's own, or a one-line error when workers kept dying."""
    exc = fut.exception()
    if type(exc).__name__ == "KilledWorker":
        return GpmarginError(f"{label} {key}: every worker that ran it died (out of memory? killed by the batch "
                             f"system?): {exc}; finished units are saved, rerun to resume")
    return exc

