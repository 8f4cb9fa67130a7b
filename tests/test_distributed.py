"""Sweeps on Dask (2 local worker processes, real MNIST): the distributed sweep equals the
in-process one bit for bit; a worker SIGKILLed mid-unit loses nothing; a killed client resumes;
a figure runs through Dask; bad schedulers and workers without the package give one-line errors.

One local cluster (:func:`gpmargin.distributed.cluster.local_cluster`, exactly what ``--workers 2``
starts) is shared by the module and reached through its scheduler address, as ``--scheduler`` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from gpmargin.distributed import Execution, UnitRunner
from gpmargin.distributed.cluster import connect, execution_from_args, local_cluster, open_client, worker_options
from gpmargin.errors import GpmarginError
from gpmargin.io import read_jsonl
from validation.registry import get_experiment
from validation.harness.folders import runs_path
from validation.harness.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
#: record fields that say where/when a unit ran; everything else must be identical
WHERE = ("device", "device_info", "versions", "execution", "wall_s")


@pytest.fixture(scope="module")
def config():
    # 4 units of about 1-2 s each on one core: long enough to kill a worker in the middle of one
    return get_experiment("fig6", "smoke").with_overrides(["width=32", "steps=200", "margins=0.03,0.3,3,30"])


@pytest.fixture(scope="module")
def reference(config, mnist_test, tmp_path_factory):
    """The in-process sweep (``--workers 0``): folder and records."""
    out = tmp_path_factory.mktemp("inproc") / "s"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recs = run_sweep(config, out, "cpu", progress=False, execution=Execution(workers=0))
    return out, recs


@pytest.fixture(scope="module")
def cluster():
    c = local_cluster(2, gpus=0)
    yield c
    c.close()


def _runner(cluster) -> UnitRunner:
    return UnitRunner(Execution(scheduler=cluster.scheduler_address), "cpu")


def _what(rec: dict) -> dict:
    """A record without where/when it ran (device, host, versions, timings)."""
    out = {k: v for k, v in rec.items() if k not in WHERE}
    out["training"] = {k: v for k, v in rec["training"].items() if k != "train_wall_s"}
    return out


def _by_unit(recs: list[dict]) -> dict:
    return {(r["margin"], r["seed"]): _what(r) for r in recs}


@pytest.mark.slow
def test_distributed_sweep_equals_in_process(config, reference, cluster, tmp_path):
    ref_out, ref = reference
    with _runner(cluster) as runner:
        recs = run_sweep(config, tmp_path / "s", "cpu", progress=False, runner=runner)
    assert len(recs) == len(ref) == len(config.units())
    # bit-identical: float fields compared with ==, as JSON text
    assert _by_unit(recs) == _by_unit(ref)
    assert {r["execution"]["mode"] for r in recs} == {"dask"}
    assert {r["execution"]["mode"] for r in ref} == {"in-process"}
    assert all(r["device_info"]["torch_threads"] == 1 for r in recs + ref)
    assert len({r["execution"]["worker"] for r in recs}) == 2, "both workers ran units"
    # the execution is saved in config.json but not hashed: an in-process folder resumes on the cluster
    saved = json.loads((tmp_path / "s" / ".state" / "validate-fig6" / "config.json").read_text())
    assert saved["execution"]["mode"] == "dask"
    assert saved["config_hash"] == json.loads((ref_out / ".state" / "validate-fig6" / "config.json").read_text())["config_hash"]
    part = tmp_path / "part"
    shutil.copytree(ref_out, part)
    part_runs = runs_path(config, part)
    lines = part_runs.read_bytes().splitlines(keepends=True)
    part_runs.write_bytes(b"".join(lines[:-1]))
    with _runner(cluster) as runner:
        resumed = run_sweep(config, part, "cpu", progress=False, runner=runner)
    assert part_runs.read_bytes().startswith(b"".join(lines[:-1]))
    assert _by_unit(resumed) == _by_unit(ref)


@pytest.mark.slow
def test_worker_sigkilled_mid_unit_loses_nothing(config, reference, cluster, tmp_path):
    out = tmp_path / "s"
    runs = runs_path(config, out)
    killed: dict = {}
    with _runner(cluster) as runner:
        client = runner.client(0)
        pids = client.run(os.getpid)

        def kill_a_busy_worker():
            deadline = time.time() + 120
            while time.time() < deadline and not killed:
                busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
                if busy and runs.exists():  # after the first unit landed, mid-unit on a busy worker
                    killed.update(pid=pids[busy[0]], keys=client.processing()[busy[0]])
                    os.kill(pids[busy[0]], signal.SIGKILL)
                time.sleep(0.05)

        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        recs = run_sweep(config, out, "cpu", progress=False, runner=runner)
        killer.join(timeout=5)
    assert killed and killed["keys"], "no worker was killed while running a unit"
    lines = runs.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is a complete record
    keys = [(r["margin"], r["seed"]) for r in parsed]
    assert len(keys) == len(set(keys)) == len(config.units()), "complete, no duplicate unit"
    assert _by_unit(recs) == _by_unit(reference[1]), "the rescheduled unit gives the same numbers"


def test_figure_through_dask_equals_in_process(cluster, mnist_test, tmp_path):
    from paper_figures.runner import run_figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = run_figure("fig1", "smoke", tmp_path / "a", device="cpu", execution=Execution(workers=0))
        there = run_figure("fig1", "smoke", tmp_path / "b", device="cpu",
                           execution=Execution(scheduler=cluster.scheduler_address))
    assert there["results"] == here["results"] and there["claims"] == here["claims"]
    assert sorted(there["units"]["run"]) == ["random", "true"]
    assert there["metadata"]["execution"]["mode"] == "dask"
    assert (tmp_path / "b" / "fig1.png").stat().st_size > 10_000
    recs = read_jsonl(tmp_path / "b" / ".state" / "figure-fig1" / "runs.jsonl")
    assert {r["key"] for r in recs} == {"true", "random"} and all(r["execution"]["mode"] == "dask" for r in recs)


def _cli(*args, env=None, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "-m", "gpmargin", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240, **kw)


@pytest.mark.slow
def test_client_killed_then_rerun_resumes(mnist_test, tmp_path):
    import psutil

    out = tmp_path / "run"
    runs = out / ".state" / "validate-fig6" / "runs.jsonl"
    args = ["validate", "fig6", "--scale", "smoke", "--out", str(out), "--device", "cpu", "--no-compare",
            "--no-progress", "--set", "width=32", "--set", "margins=0.01,0.1,1,10"]
    proc = subprocess.Popen([sys.executable, "-m", "gpmargin", *args, "--workers", "2"], cwd=REPO,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if runs.exists() and runs.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2, "the local cluster's worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"worker processes outlived their client: {alive}"
    before = runs.read_bytes()
    n_before = before.count(b"\n")
    assert 1 <= n_before < 4
    r = _cli(*args, "--workers", "0")  # the rerun may run elsewhere (here: in-process)
    assert r.returncode == 0, r.stderr
    raw = runs.read_bytes()
    assert raw.startswith(before), "finished units were kept, not redone"
    recs = [json.loads(line) for line in raw.decode().splitlines()]
    keys = [(x["margin"], x["seed"]) for x in recs]
    assert len(keys) == len(set(keys)) == 4
    assert f"sweep: 4 unit(s)" in r.stdout


@pytest.mark.slow
def test_bad_scheduler_and_execution_options(tmp_path, mnist_test):  # the CLI loads MNIST first
    t0 = time.perf_counter()
    with pytest.raises(GpmarginError, match=r"no Dask scheduler answered at --scheduler tcp://127.0.0.1:9 within 1 s"):
        connect("tcp://127.0.0.1:9", timeout=1)
    assert time.perf_counter() - t0 < 10
    t0 = time.perf_counter()
    r = _cli("validate", "fig6", "--scale", "smoke", "--out", str(tmp_path / "x"), "--scheduler", "tcp://127.0.0.1:9",
             env={"GPMARGIN_SCHEDULER_TIMEOUT": "2"})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: no Dask scheduler answered at --scheduler tcp://127.0.0.1:9 within 2 s")
    assert time.perf_counter() - t0 < 60  # python + torch start-up, then the 2 s timeout
    assert not (tmp_path / "x").exists(), "nothing is written before the scheduler answers"
    ns = lambda **kw: type("Args", (), {"workers": None, "scheduler": None, "threads": 1, **kw})  # noqa: E731
    for kw, msg in (({"workers": "-1"}, "--workers must be auto or a non-negative integer"),
                    ({"workers": "two"}, "got 'two'"),
                    ({"workers": "2", "scheduler": "tcp://h:1"}, "exclude each other"),
                    ({"workers": "0", "scheduler": "tcp://h:1"}, "exclude each other"),
                    ({"scheduler": " "}, "--scheduler must be an address"),
                    ({"threads": 0}, "--threads \\(per unit\\) must be a positive integer")):
        with pytest.raises(GpmarginError, match=msg):
            execution_from_args(ns(**kw))
    assert execution_from_args(ns(workers="auto")).resolved_workers() >= 1
    assert execution_from_args(ns(workers="0")).in_process
    with pytest.raises(GpmarginError, match="not a Dask scheduler address"):
        connect("no-such-protocol://x:1", timeout=1)


def test_gpu_workers_are_pinned_to_their_own_device():
    # the option each local worker's nanny starts its process with (a CPU machine cannot show more)
    opts = worker_options(4, gpus=2)
    assert [o["env"]["CUDA_VISIBLE_DEVICES"] for o in opts] == ["0", "1", "0", "1"]
    assert all(o["nthreads"] == 1 for o in opts)
    assert all("env" not in o for o in worker_options(2, gpus=0))


def test_slurm_recipe_builds_a_job_script():
    pytest.importorskip("dask_jobqueue", reason="the 'cluster' extra (dask-jobqueue) is not installed")
    from gpmargin.distributed import slurm_cluster

    cluster = slurm_cluster(0, cores=1, memory="8GB", gpus=1, queue="gpu", walltime="02:00:00",
                            job_script_prologue=["source ~/gpmargin/.venv/bin/activate"],
                            scheduler_options={"dashboard_address": None})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script and "#SBATCH -t 02:00:00" in script
    assert "source ~/gpmargin/.venv/bin/activate" in script
    assert "distributed.cli.dask_worker" in script and "--nthreads 1" in script and "--nanny" in script


def test_worker_without_the_package_is_refused(cluster, tmp_path):
    """A ``dask worker`` whose Python cannot import gpmargin joins the cluster: a one-line error."""
    block = tmp_path / "no_gpmargin.py"
    block.write_text("import sys\nfor name in ('gpmargin', 'validation', 'paper_figures'):\n"
                     "    sys.modules[name] = None  # 'import gpmargin' now fails as if not installed\n")
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                             "--no-nanny", "--nthreads", "1", "--preload", str(block), "--no-dashboard"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import gc

        from distributed import Client

        # a Client left unreferenced by an earlier test is finalised here, not inside the new
        # Client's loop start (distributed's LoopRunner holds a lock there that Client.__del__ needs)
        gc.collect()
        with Client(cluster.scheduler_address, set_as_default=False) as client:
            client.wait_for_workers(3, timeout=60)
        with pytest.raises(GpmarginError, match=r"^worker tcp://\S+ \(host .*\) cannot import gpmargin "
                                                r"\((ModuleNotFoundError|ImportError): .*\); install gpmargin"):
            with open_client(Execution(scheduler=cluster.scheduler_address)):
                pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)


KERNEL_CLI = ["kernel", "--dataset", "mnist", "--task", "parity", "--n-train", "200", "--n-test", "80", "--tile", "64",
              "--threads", "1", "--no-progress"]


@pytest.mark.slow
def test_kernel_cli_on_dask_workers_and_a_scheduler(cluster, mnist_test, tmp_path):
    """`gpmargin kernel --workers 1` (its own local cluster) and `--scheduler ADDRESS` (the
    module's live cluster) give the store of the in-process run."""
    from gpmargin.cli import main
    from gpmargin.distributed import open_store

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*KERNEL_CLI, "--out", str(tmp_path / "here")]) == 0
        assert main([*KERNEL_CLI, "--workers", "1", "--out", str(tmp_path / "workers")]) == 0
        assert main([*KERNEL_CLI, "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "sched")]) == 0
    here = open_store(tmp_path / "here")
    for name in ("workers", "sched"):
        other = open_store(tmp_path / name)
        assert len(list((tmp_path / name / "done").iterdir())) == len(here.kernel_tasks())
        # the same per-tile calls with one torch thread, in other processes: ~1e-15 relative, checked at 1e-13
        scale = np.abs(here.train("nngp")).max()
        assert np.abs(other.train("nngp") - here.train("nngp")).max() <= 1e-13 * scale
        assert np.abs(other.cross_rows("nngp", 0, 80) - here.cross_rows("nngp", 0, 80)).max() <= 1e-13 * scale
        assert np.abs(other.test_diag("nngp") - here.test_diag("nngp")).max() <= 1e-13 * scale
