"""Where units of work run: in this process, on a local cluster of worker processes, or on an
existing Dask cluster.

:class:`Execution` says which (``workers`` / ``scheduler``); :func:`open_client` turns it into a
``dask.distributed.Client`` (or ``None`` for ``workers=0``, today's in-process loop):

* ``workers=N`` (N >= 1): a local cluster of N worker processes, one thread each (torch threads
  are set per unit, see :mod:`gpmargin.distributed.units`).  With CUDA, worker ``i`` sees only
  GPU ``i`` (``CUDA_VISIBLE_DEVICES=i`` in its environment), so ``cuda`` on a worker is its own GPU.
* ``workers=None``: :func:`default_workers` — one per GPU when CUDA is present, else one per
  usable core, at most one per 2 GiB of RAM.
* ``scheduler=ADDRESS``: connect to a running scheduler (``dask scheduler`` + ``dask worker ADDRESS``,
  or a ``dask-jobqueue`` cluster, see :func:`slurm_cluster`).  An address nobody answers at gives a
  one-line :class:`~gpmargin.errors.GpmarginError` after ``connect_timeout`` seconds.

Every worker is checked to import ``gpmargin``, ``validation`` and ``paper_figures`` before any unit
is sent (a worker without the package gives a one-line error naming the worker).  Dask's own logging
is cut to errors; a worker that dies is simply replaced and its unit re-run (``allowed-failures``).
This module is the only place, with :mod:`gpmargin.distributed.units`, that imports dask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Any, Iterator

from gpmargin.errors import GpmarginError

#: Dask loggers turned down to ERROR while a gpmargin client is open (worker restarts, connection
#: retries and shutdown chatter are not something a user can act on; errors still show).
DASK_LOGGERS = ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker",
                "distributed.core", "distributed.client", "distributed.comm", "distributed.deploy",
                "distributed.utils_perf", "distributed.worker_memory", "distributed.shuffle")
#: How many workers may die while running one unit before the unit is declared bad (Dask's
#: ``distributed.scheduler.allowed-failures``, default 3), set on local clusters.
ALLOWED_FAILURES = 10
#: Packages a worker must import to run gpmargin's units.
PACKAGES = ("gpmargin", "validation", "paper_figures")
#: Seconds to wait for a scheduler at ``--scheduler ADDRESS`` and for its first worker
#: (``GPMARGIN_SCHEDULER_TIMEOUT`` overrides).
CONNECT_TIMEOUT = 10.0
MIN_WORKER_MEMORY = 2 * 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Execution:
    """How to run a sweep's units: ``workers`` local processes (0: in this process; None: the
    default for this machine) or the cluster at ``scheduler``; ``threads`` torch threads per unit."""

    workers: int | None = 0
    scheduler: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise GpmarginError(f"--workers must be a non-negative integer (0: in this process), got {self.workers!r}")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise GpmarginError("--scheduler must be an address such as tcp://HOST:8786, got an empty string")
        if self.scheduler is not None and self.workers not in (None, 0):
            raise GpmarginError(f"--workers {self.workers} and --scheduler {self.scheduler} exclude each other: "
                                "the cluster at --scheduler has its own workers")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise GpmarginError(f"--threads (per unit) must be a positive integer, got {self.threads!r}")

    @property
    def in_process(self) -> bool:
        return self.scheduler is None and self.workers == 0

    def resolved_workers(self) -> int:
        """The number of local worker processes this execution starts (0 for in-process or a scheduler)."""
        if self.scheduler is not None:
            return 0
        return default_workers(self.threads) if self.workers is None else self.workers

    def describe(self) -> dict[str, Any]:
        """What goes into run metadata (never into a config hash: a run may resume elsewhere)."""
        if self.scheduler is not None:
            return {"mode": "dask", "scheduler": self.scheduler, "threads_per_unit": self.threads}
        n = self.resolved_workers()
        if n == 0:
            return {"mode": "in-process", "workers": 0, "threads_per_unit": self.threads}
        return {"mode": "dask-local", "workers": n, "threads_per_unit": self.threads}


def cuda_count() -> int:
    """GPUs visible to this process (0 without CUDA or without torch's CUDA build)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - a broken CUDA install counts as none
        return 0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers(threads: int = 1) -> int:
    """One worker per GPU when CUDA is present; else one per ``threads`` usable cores, capped at one
    per 2 GiB of RAM.

    A unit is one training run (one batched ensemble) and runs single-threaded on a CPU worker, so
    one worker per core keeps every core busy without oversubscribing (two torch threads per unit
    on top of N processes would only fight for the same cores).  The cap keeps paper-scale units
    (a width-2048 ensemble holds about 1-2 GiB) from exhausting memory on many-core, small-RAM
    hosts.  On GPUs the unit is device-bound: more workers than GPUs would share a device.
    """
    gpus = cuda_count()
    if gpus:
        return gpus
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        mem = None
    cap = max(1, mem // MIN_WORKER_MEMORY) if mem else usable_cores()
    return max(1, min(usable_cores() // max(1, threads), cap))


def connect_timeout() -> float:
    value = os.environ.get("GPMARGIN_SCHEDULER_TIMEOUT")
    if value is None:
        return CONNECT_TIMEOUT
    try:
        t = float(value)
        if t > 0:
            return t
    except ValueError:
        pass
    raise GpmarginError(f"GPMARGIN_SCHEDULER_TIMEOUT must be a positive number of seconds, got {value!r}")


@contextlib.contextmanager
def quiet_dask(level: int = logging.ERROR) -> Iterator[None]:
    """Turn Dask's loggers down to ``level`` for the duration (restored afterwards)."""
    loggers = [logging.getLogger(name) for name in DASK_LOGGERS]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)


def worker_options(workers: int, gpus: int) -> list[dict[str, Any]]:
    """Options of each local worker's nanny: one thread, this host only, no dashboard, an equal
    share of RAM, and with ``gpus`` > 0 ``CUDA_VISIBLE_DEVICES=i mod gpus`` for worker ``i``."""
    from gpmargin.io import physical_memory

    memory = (physical_memory() or 0) // workers  # 0: no limit
    out = []
    for i in range(workers):
        # a failed unit reaches the client, which reports it in one line: the worker's own
        # "Compute Failed" log with its traceback would only repeat it
        opts: dict[str, Any] = {"nthreads": 1, "host": "127.0.0.1", "silence_logs": logging.CRITICAL,
                                "dashboard": False, "memory_limit": memory}
        if gpus:
            opts["env"] = {"CUDA_VISIBLE_DEVICES": str(i % gpus)}
        out.append(opts)
    return out


def local_cluster(workers: int, gpus: int | None = None):
    """A ``SpecCluster`` of ``workers`` local worker processes, each under a nanny that restarts it
    when it dies (options from :func:`worker_options`; GPUs detected when ``gpus`` is None)."""
    from distributed import Nanny, Scheduler, SpecCluster

    gpus = cuda_count() if gpus is None else gpus
    specs = {i: {"cls": Nanny, "options": o} for i, o in enumerate(worker_options(workers, gpus))}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False,
                                               "dashboard_address": None}}
    try:
        with dask_allowed_failures():
            return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.ERROR, name="gpmargin")
    except RuntimeError as exc:  # workers are spawned: a script without a __main__ guard re-runs itself
        raise GpmarginError(f"could not start {workers} local Dask worker process(es) ({exc}); in a script, put "
                            "the code that runs sweeps under if __name__ == '__main__':") from exc


def _probe_worker() -> dict[str, Any]:
    """Runs on a worker: which of :data:`PACKAGES` import, and from where.

    Sent by value (:func:`_by_value`), so it runs even on a worker that cannot import gpmargin;
    it must not reference module globals.
    """
    import importlib
    import os as _os
    import socket

    out: dict[str, Any] = {"host": socket.gethostname(), "pid": _os.getpid(), "missing": {}, "version": None}
    for name in ("gpmargin", "validation", "paper_figures"):
        try:
            mod = importlib.import_module(name)
            if name == "gpmargin":
                out["version"] = getattr(mod, "__version__", None)
                out["path"] = _os.path.dirname(getattr(mod, "__file__", "") or "")
        except Exception as exc:  # ImportError, or any error raised while importing
            out["missing"][name] = f"{type(exc).__name__}: {exc}"
    return out


def _by_value(fn):
    """A copy of ``fn`` that cloudpickle sends by value (its module need not exist on the worker)."""
    import types

    return types.FunctionType(fn.__code__, {"__builtins__": __builtins__}, fn.__name__)


def check_workers(client) -> dict[str, dict[str, Any]]:
    """Check that every worker of ``client`` imports gpmargin; returns the probe per worker address.

    Raises a one-line :class:`GpmarginError` naming the first worker that cannot, and what failed.
    """
    import gpmargin

    probes = client.run(_by_value(_probe_worker))
    for addr, p in sorted(probes.items()):
        if p["missing"]:
            name, err = next(iter(p["missing"].items()))
            raise GpmarginError(f"worker {addr} (host {p['host']}) cannot import {name} ({err}); install gpmargin "
                                "in the workers' Python environment (pip install gpmargin, or the same checkout)")
        if p["version"] != gpmargin.__version__:
            raise GpmarginError(f"worker {addr} (host {p['host']}) runs gpmargin {p['version']}, this client "
                                f"{gpmargin.__version__}; install the same version on every worker")
    return probes


def check_address(address: str) -> None:
    """Refuse, in one line, a ``--scheduler`` that is not a Dask address (``tcp://HOST:PORT``)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(str(address))
        if scheme != "inproc":
            parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise GpmarginError(f"--scheduler {address!r} is not a Dask scheduler address (e.g. tcp://HOST:8786): "
                            f"{exc}") from None


def connect(address: str, timeout: float | None = None):
    """A client of the running scheduler at ``address`` with at least one worker, or a one-line error."""
    from distributed import Client

    timeout = connect_timeout() if timeout is None else float(timeout)
    check_address(address)
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise GpmarginError(f"no Dask scheduler answered at --scheduler {address} within {timeout:g} s; start one "
                            "with 'dask scheduler' (workers with 'dask worker ADDRESS') or fix the address") from exc
    except (ValueError, TypeError) as exc:
        raise GpmarginError(f"--scheduler {address!r} is not a Dask scheduler address (e.g. tcp://HOST:8786): "
                            f"{exc}") from exc
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        client.close()
        raise GpmarginError(f"the Dask scheduler at --scheduler {address} has no workers after {timeout:g} s; "
                            f"start some with 'dask worker {address}' (or set GPMARGIN_SCHEDULER_TIMEOUT to wait "
                            "longer for queued batch jobs)") from exc
    return client


@contextlib.contextmanager
def open_client(execution: Execution, cluster=None) -> Iterator[Any]:
    """Yield a ``dask.distributed.Client`` for ``execution`` (``None`` when it is in-process).

    ``cluster``: an already created Dask cluster object (e.g. from :func:`slurm_cluster`) to use
    instead.  A local cluster is closed on exit; a remote scheduler is only disconnected from.
    Every worker is checked with :func:`check_workers` first.
    """
    if cluster is None and execution.in_process:
        yield None
        return
    from distributed import Client

    with quiet_dask():
        if cluster is not None:
            client = Client(cluster, set_as_default=False)
            owned = None
        elif execution.scheduler is not None:
            client = connect(execution.scheduler)
            owned = None
        else:
            owned = local_cluster(execution.resolved_workers())
            client = Client(owned, set_as_default=False)
        try:
            if cluster is not None:  # a batch-queue cluster: its first job may wait in the queue a while
                print(f"waiting for the first worker of {type(cluster).__name__} at {cluster.scheduler_address}",
                      file=sys.stderr, flush=True)
                client.wait_for_workers(1)
            check_workers(client)
            yield client
        finally:
            client.close()
            if owned is not None:
                owned.close()


def slurm_cluster(jobs: int, cores: int = 1, memory: str = "8GB", gpus: int = 0, walltime: str = "04:00:00",
                  **kwargs: Any):
    """A ``dask_jobqueue.SLURMCluster`` of ``jobs`` SLURM jobs (0: none submitted yet; call
    ``cluster.scale(jobs=N)`` or ``cluster.adapt(...)`` later), each one worker process with ``cores``
    cores (one torch thread per unit, so ``cores=1`` on CPU), ``memory``, and ``gpus`` GPUs
    (``--gres=gpu:N``; one worker per job, so each worker owns its GPUs).

    ``kwargs`` go to ``SLURMCluster`` (``queue=``, ``account=``, ``job_extra_directives=``,
    ``job_script_prologue=["source ~/venv/bin/activate"]`` so workers import gpmargin, ...).
    Use it as ``open_client(Execution(), cluster=slurm_cluster(8))`` or pass
    ``cluster.scheduler_address`` to ``gpmargin validate --scheduler``.  Needs the ``cluster``
    extra (``pip install 'gpmargin[cluster]'``).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise GpmarginError("slurm_cluster needs dask-jobqueue: pip install 'gpmargin[cluster]'") from exc
    if not isinstance(jobs, int) or jobs < 0:
        raise GpmarginError(f"jobs must be a non-negative integer (0: submit none yet), got {jobs!r}")
    extra = list(kwargs.pop("job_extra_directives", []))
    if gpus:
        extra.append(f"--gres=gpu:{int(gpus)}")
    with dask_allowed_failures():
        cluster = SLURMCluster(cores=cores, processes=1, memory=memory, walltime=walltime,
                               job_extra_directives=extra, **kwargs)
    if jobs:
        cluster.scale(jobs=jobs)
    return cluster


@contextlib.contextmanager
def dask_allowed_failures(n: int = ALLOWED_FAILURES) -> Iterator[None]:
    """Dask config with ``allowed-failures = n`` for a scheduler created inside the block."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": n}):
        yield


# ----------------------------------------------------------------------------- command line
def parse_workers(value: Any) -> int | None:
    """``--workers``: ``auto`` (or None) for :func:`default_workers`, or N >= 0 (0: in this process)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        n = -1
    if n < 0:
        raise GpmarginError(f"--workers must be auto or a non-negative integer (0: run in this process), got {value!r}")
    return n


def add_execution_arguments(parser) -> None:
    """``--workers N``, ``--scheduler ADDRESS`` and ``--threads T`` (shared by ``gpmargin validate`` and
    ``gpmargin figure``)."""
    g = parser.add_argument_group("where the units of work run (Dask)")
    g.add_argument("--workers", default=None, metavar="N",
                   help="local worker processes, one unit each at a time (default auto: one per GPU, else one "
                        "per core); 0 runs every unit in this process")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on the existing Dask cluster at ADDRESS (e.g. tcp://HOST:8786, workers started with "
                        "'dask worker ADDRESS'); excludes --workers")
    g.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch/BLAS threads per unit (default 1); records are bit-identical across runs with the "
                        "same T, whatever the number of workers")


def execution_from_args(args) -> Execution:
    """The :class:`Execution` named by ``--workers`` / ``--scheduler``."""
    workers = parse_workers(args.workers)
    if args.scheduler is not None and workers == 0:
        raise GpmarginError("--workers 0 (in this process) and --scheduler exclude each other; use one")
    return Execution(workers=workers, scheduler=args.scheduler, threads=getattr(args, "threads", 1))
