"""The Zarr kernel store (gpmargin.distributed.store / tiles): the same numbers as the in-memory
kernel, resuming after a real kill, damaged tiles detected and redone, other inputs refused,
one-line errors for a bad store folder and a full disk, and Dask workers giving the same store.

Real MNIST inputs (carved from the test split), the depth-5 paper MLP, tiles of 64 that do not
divide n = 300 (4 full tiles and one of 44 rows), so every edge case of the tiling is exercised.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpmargin.distributed import compute_kernel_store, open_store
from gpmargin.distributed.store import KernelStore
from gpmargin.errors import GpmarginError
from gpmargin.kernels import paper_mlp

REPO = Path(__file__).resolve().parents[1]
TILE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tiles: see conftest


@pytest.fixture(scope="module")
def task():
    import warnings

    from gpmargin.data import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return make_task("mnist", "parity", n_train=300, n_test=150, seed=0)
        except GpmarginError as exc:
            pytest.skip(f"MNIST not available: {exc}")


@pytest.fixture(scope="module")
def kernel():
    return paper_mlp(5)


@pytest.fixture(scope="module")
def reference(task, kernel):
    """The in-memory matrices, computed once."""
    out = {}
    for kind in ("nngp", "ntk"):
        out[kind] = (kernel(task.x_train, get=kind).numpy(), kernel(task.x_test, task.x_train, get=kind).numpy(),
                     kernel.diag(task.x_test, get=kind).numpy())
    return out


def _assert_store_matches(store, reference, kinds):
    # Tolerance: each tile is the same float64 computation as the whole matrix, only the
    # BLAS blocking of the first matrix product differs: ~1e-15 relative, checked at 1e-12.
    for kind in kinds:
        K, C, d = reference[kind]
        scale = np.abs(K).max()
        Ks = store.train(kind)
        assert np.array_equal(Ks, Ks.T)  # mirrored on read: exactly symmetric
        assert np.abs(Ks - K).max() <= 1e-12 * scale
        assert np.abs(store.cross_rows(kind, 0, store.n_test) - C).max() <= 1e-12 * scale
        assert np.abs(store.test_diag(kind) - d).max() <= 1e-12 * scale


def test_store_equals_in_memory_kernel(tmp_path, task, kernel, reference):
    store = compute_kernel_store(kernel, task.x_train, task.x_test, tmp_path / "s", kinds="both", tile=TILE,
                                 progress=False)
    nb, mb = 5, 3  # 300 = 4 * 64 + 44, 150 = 2 * 64 + 22
    assert store.report["computed"] == nb * (nb + 1) // 2 + mb * nb + mb == store.report["units"]
    _assert_store_matches(open_store(tmp_path / "s"), reference, ("nngp", "ntk"))
    # only the upper tiles of K_XX were ever written
    zarr_dir = tmp_path / "s" / "arrays.zarr" / "nngp" / "train" / "c"
    written = {(int(i.name), int(j.name)) for i in zarr_dir.iterdir() for j in i.iterdir()}
    assert written == {(i, j) for i in range(nb) for j in range(i, nb)}
    again = compute_kernel_store(kernel, task.x_train, task.x_test, tmp_path / "s", kinds="both", tile=TILE,
                                 progress=False)
    assert again.report["computed"] == 0 and again.report["skipped"] == again.report["units"]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


KERNEL_CMD = [sys.executable, "-m", "gpmargin", "kernel", "--dataset", "mnist", "--task", "parity",
              "--n-train", "300", "--n-test", "150", "--no-progress"]


def test_killed_run_resumes_recomputing_only_missing_tiles(tmp_path, task, kernel, reference):
    """SIGKILL a real `gpmargin kernel` half-way (tile 32: 110 small units), then resume."""
    out = tmp_path / "s"
    proc = subprocess.Popen(KERNEL_CMD + ["--tile", "32", "--out", str(out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / "done"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done.is_dir() and sum(not name.startswith(".") for name in os.listdir(done)) >= 20:  # not temp files
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in done.iterdir() if not p.name.startswith(".")}
    store = KernelStore.open(out)
    total = len(store.kernel_tasks())
    assert 20 <= len(finished) < total, "the run finished before it could be killed"
    with pytest.raises(GpmarginError, match="unfinished"):
        open_store(out)  # an unfinished store is never read
    # a tile written but not marked (a kill between the two): garbage in its chunk file
    task_missing = next(t for t in store.kernel_tasks() if not store.is_done(t))
    name, *index = task_missing
    chunk = store.chunk_path("nngp", "test_diag" if name == "diag" else name, *index)
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(b"\x00garbage" * 3)

    resumed = compute_kernel_store(kernel, task.x_train, task.x_test, out, tile=32, progress=False,
                                   description=store.config["description"])
    assert resumed.report["computed"] == total - len(finished)
    assert resumed.report["repaired"] == 0
    for name, mtime in finished.items():  # finished tiles were not redone
        assert (done / name).stat().st_mtime_ns == mtime
    _assert_store_matches(resumed, reference, ("nngp",))


def test_damaged_tile_is_detected_and_recomputed(tmp_path, task, kernel, reference):
    out = tmp_path / "s"
    compute_kernel_store(kernel, task.x_train, task.x_test, out, tile=TILE, progress=False)
    store = open_store(out)
    chunk = store.chunk_path("nngp", "train", 1, 3)
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])  # half of a finished tile
    with pytest.raises(GpmarginError, match="chunk 1/3 of nngp/train fails its checksum") as err:
        open_store(out).train("nngp")
    assert "\n" not in str(err.value)
    again = compute_kernel_store(kernel, task.x_train, task.x_test, out, tile=TILE, progress=False)
    assert again.report["repaired"] == 1 and again.report["computed"] == 1
    _assert_store_matches(again, reference, ("nngp",))


def test_store_refuses_other_inputs_and_settings(tmp_path, task, kernel):
    from gpmargin.data import make_task

    out = tmp_path / "s"
    compute_kernel_store(kernel, task.x_train, task.x_test, out, tile=TILE, progress=False)
    other = make_task("mnist", "parity", n_train=300, n_test=150, seed=1)
    cases = [
        (dict(x_train=other.x_train), "x_train_sha256"),
        (dict(kernel=paper_mlp(3)), "kernel"),
        (dict(tile=32), "tile 64"),
        (dict(kinds="both"), "kinds"),
    ]
    for change, named in cases:
        kw = dict(kernel=kernel, x_train=task.x_train, x_test=task.x_test, tile=TILE, kinds="nngp")
        kw.update(change)
        with pytest.raises(GpmarginError, match="other inputs or settings") as err:
            compute_kernel_store(kw.pop("kernel"), kw.pop("x_train"), kw.pop("x_test"), out, progress=False, **kw)
        assert named in str(err.value) and "\n" not in str(err.value)
    store = open_store(out)
    with pytest.raises(GpmarginError, match="other inputs"):
        store.check_inputs(other.x_train, task.x_test)
    with pytest.raises(GpmarginError, match="not ntk"):
        store.check_inputs(task.x_train, task.x_test, kind="ntk")


def _cli(args):
    return subprocess.run([sys.executable, "-m", "gpmargin", *args], env=_env(), capture_output=True, text=True,
                          timeout=120)


def test_store_folder_that_is_a_file_or_read_only(tmp_path, task, kernel):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(GpmarginError, match="is a file"):
        compute_kernel_store(kernel, task.x_train, task.x_test, f, tile=TILE, progress=False)
    proc = _cli(KERNEL_CMD[3:] + ["--out", str(f)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: kernel store") and "is a file" in proc.stderr

    with _read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(GpmarginError, match="cannot write") as err:
            compute_kernel_store(kernel, task.x_train, task.x_test, ro / "s", tile=TILE, progress=False)
        assert "\n" not in str(err.value)


@contextlib.contextmanager
def _read_only_folder(path: Path):
    """A folder nobody may write to: chmod for a normal user; root ignores permissions, so for
    root a read-only tmpfs is mounted (skipped where mounting is not allowed)."""
    path.mkdir()
    os.chmod(path, 0o555)
    probe = path / "probe"
    try:
        probe.write_text("")
    except OSError:
        yield path
        os.chmod(path, 0o755)
        return
    probe.unlink()
    os.chmod(path, 0o755)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs: no folder is read-only to root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def _limit_file_size():
    # the kernel then refuses writes past 16 KiB with EFBIG (SIGXFSZ ignored), as a full disk would
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_no_space_while_writing_a_tile(tmp_path, task, kernel, reference):
    """A write that runs out of room: one-line error, the tile stays unmarked, a rerun finishes.
    The room runs out through a real file-size limit (EFBIG) and, where mounting is allowed, a real
    256 KiB tmpfs (ENOSPC)."""
    out = tmp_path / "s"
    proc = subprocess.run(KERNEL_CMD + ["--tile", str(TILE), "--out", str(out)], env=_env(), capture_output=True,
                          text=True, timeout=120, preexec_fn=_limit_file_size)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left while writing nngp tile") and "Traceback" not in proc.stderr
    store = KernelStore.open(out)
    assert len(store.missing()) == len(store.kernel_tasks())  # no tile was marked
    resumed = compute_kernel_store(kernel, task.x_train, task.x_test, out, tile=TILE, progress=False,
                                   description=store.config["description"])
    _assert_store_matches(resumed, reference, ("nngp",))

    small = tmp_path / "tmpfs"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        return  # not allowed to mount here: the file-size limit above is the check
    try:
        with pytest.raises(GpmarginError, match="no space left while writing") as err:
            compute_kernel_store(kernel, task.x_train, task.x_test, small / "s", tile=TILE, progress=False)
        assert "No space left on device" in str(err.value)
        st = KernelStore.open(small / "s")
        for t in st.kernel_tasks():  # every marked tile reads back whole
            if st.is_done(t) and t[0] == "train":
                assert np.isfinite(st.tile("nngp", "train", t[1], t[2])).all()
        assert st.missing()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_store(tmp_path, task, kernel):
    from distributed import Client, LocalCluster

    local = compute_kernel_store(kernel, task.x_train, task.x_test, tmp_path / "local", kinds="both", tile=TILE,
                                 progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dist = compute_kernel_store(kernel, task.x_train, task.x_test, tmp_path / "dask", kinds="both", tile=TILE,
                                    client=client, progress=False)
        hosts = {w["id"] for w in client.scheduler_info()["workers"].values()}
    assert dist.report["computed"] == local.report["computed"]
    assert len(hosts) == 2
    for kind in ("nngp", "ntk"):
        scale = np.abs(local.train(kind)).max()
        # the same per-tile calls, but in other processes whose torch/BLAS thread count is Dask's
        # (OMP_NUM_THREADS=1 from the nanny by default), not fixed by the store; a different count
        # moves a length-784 reduction by a few ulps x sqrt(784) ~ 1e-14 relative: checked at 1e-13
        assert np.abs(dist.train(kind) - local.train(kind)).max() <= 1e-13 * scale
        assert np.abs(dist.cross_rows(kind, 0, 150) - local.cross_rows(kind, 0, 150)).max() <= 1e-13 * scale
        assert np.abs(dist.test_diag(kind) - local.test_diag(kind)).max() <= 1e-13 * scale
