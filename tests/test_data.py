"""gpmargin.data: loading, verification, preprocessing and tasks, on real data."""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import gpmargin.data as gd
from gpmargin.cli import main
from gpmargin.data import cifar, locate
from gpmargin.data.digits import split_indices
from gpmargin.data.problems import FileProblem
from gpmargin.errors import DataError, GpmarginError

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
T10K_IMAGES = "t10k-images-idx3-ubyte.gz"
T10K_LABELS = "t10k-labels-idx1-ubyte.gz"


_DATA_ENV = os.environ.get("GPMARGIN_DATA")  # read before fixtures repoint it (conftest sets it)


def _shared_mnist() -> Path:
    env = _DATA_ENV
    folder = Path(env) / "mnist" if env else None
    if folder is None or not (folder / T10K_IMAGES).is_file():
        pytest.skip("dataset 'mnist' (test split) not available: set GPMARGIN_DATA to ../shared/data")
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No GPMARGIN_DATA, downloads off, and an empty cache inside tmp_path."""
    empty = tmp_path / "empty_data"
    empty.mkdir()
    monkeypatch.setenv("GPMARGIN_DATA", str(empty))
    monkeypatch.setenv("GPMARGIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPMARGIN_OFFLINE", "1")
    return tmp_path


def _mnist_copy(dest: Path, src: Path) -> Path:
    """A copy of the MNIST test files in ``dest/mnist``."""
    folder = dest / "mnist"
    folder.mkdir(parents=True)
    for name in (T10K_IMAGES, T10K_LABELS):
        shutil.copyfile(src / name, folder / name)
    return folder


def _load_error(root) -> str:
    with pytest.raises(DataError) as info:
        gd.load("mnist", "test", root=root)
    msg = str(info.value)
    assert "\n" not in msg and "mnist" in msg.lower()
    return msg


# ---------------------------------------------------------------- loading real data


def test_mnist_test_split(mnist_test):
    x, y = mnist_test
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == MNIST_TEST_COUNTS


def test_load_is_cached_and_returns_copies(mnist_test):
    x1, _ = gd.load("mnist", "test")
    hits = gd.loading._cached.cache_info().hits
    x1.zero_()
    x2, _ = gd.load("mnist", "test")
    assert gd.loading._cached.cache_info().hits == hits + 1
    assert torch.equal(x2, mnist_test[0])


def test_fashion_mnist_sizes(fashion_train, fashion_test):
    (xtr, ytr), (xte, yte) = fashion_train, fashion_test
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert torch.bincount(ytr).tolist() == [6000] * 10
    assert torch.bincount(yte).tolist() == [1000] * 10
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    # the published mean / std hold on the training split
    assert abs(float(xtr.mean()) - 0.2860) < 1e-3 and abs(float(xtr.std()) - 0.3530) < 1e-3


def test_digits_split(digits_train):
    x, y = digits_train
    xt, yt = gd.load("digits", "test")
    assert x.shape == (gd.DIGITS_N_TRAIN, 1, 8, 8) == (1000, 1, 8, 8)
    assert xt.shape == (gd.DIGITS_N_TEST, 1, 8, 8) == (797, 1, 8, 8)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    idx = split_indices()
    assert not set(idx["train"].tolist()) & set(idx["test"].tolist())
    assert len(idx["train"]) + len(idx["test"]) == 1797
    # deterministic: recomputing gives the same split
    split_indices.cache_clear()
    again = split_indices()
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    # stratified: each class's test share is within one image of proportional
    total = np.bincount(np.concatenate([y.numpy(), yt.numpy()]))
    expected = total * 797 / 1797
    assert np.all(np.abs(np.bincount(yt.numpy(), minlength=10) - expected) < 1.0)
    # the hard-coded normalisation constants are those of this train split
    (mean,), (std,) = gd.STATS["digits"]
    x64 = x.double()
    assert math.isclose(float(x64.mean()), mean, rel_tol=1e-9)
    assert math.isclose(float(x64.std(unbiased=False)), std, rel_tol=1e-9)


def test_recompressed_copy_is_verified_by_payload(isolated):
    """A re-gzipped copy (as Debian ships Fashion-MNIST) passes via the uncompressed md5."""
    src = _shared_mnist()
    folder = _mnist_copy(isolated / "root", src)
    raw = gzip.decompress((src / T10K_LABELS).read_bytes())
    (folder / T10K_LABELS).write_bytes(gzip.compress(raw, compresslevel=1, mtime=1))
    assert (folder / T10K_LABELS).read_bytes() != (src / T10K_LABELS).read_bytes()
    x, y, source = gd.load_with_source("mnist", "test", root=isolated / "root")
    assert source["folder"] == str(folder) and source["origin"] == "root"
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS


# ---------------------------------------------------------------- corrupt and missing files


def test_checksum_mismatch(isolated):
    src = _shared_mnist()
    folder = _mnist_copy(isolated / "root", src)
    raw = bytearray(gzip.decompress((src / T10K_LABELS).read_bytes()))
    raw[8] = (raw[8] + 1) % 10  # one wrong label, structure intact
    (folder / T10K_LABELS).write_bytes(gzip.compress(bytes(raw)))
    msg = _load_error(isolated / "root")
    assert f"{folder / T10K_LABELS}: wrong checksum" in msg
    assert "ec29112dd5afa0611ce80d1b7f02629c" in msg


def test_truncated_gzip(isolated):
    src = _shared_mnist()
    folder = _mnist_copy(isolated / "root", src)
    data = (src / T10K_IMAGES).read_bytes()
    (folder / T10K_IMAGES).write_bytes(data[: len(data) // 2])
    msg = _load_error(isolated / "root")
    assert f"{folder / T10K_IMAGES}: truncated" in msg


def test_wrong_magic_number(isolated):
    src = _shared_mnist()
    folder = _mnist_copy(isolated / "root", src)
    raw = bytearray(gzip.decompress((src / T10K_LABELS).read_bytes()))
    raw[3] = 0x03  # idx1 (0x00000801) -> 0x00000803
    (folder / T10K_LABELS).write_bytes(gzip.compress(bytes(raw)))
    msg = _load_error(isolated / "root")
    assert f"{folder / T10K_LABELS}: wrong magic number 0x00000803 (expected 0x00000801)" in msg


def test_missing_dataset_lists_every_path(isolated):
    root = isolated / "nowhere"
    with pytest.raises(DataError, match="no such folder") as info:  # a missing root is named, not skipped
        gd.load("mnist", "test", root=root)
    assert str(info.value).startswith(f"root {root}: no such folder")
    # an existing but empty root: each file is reported missing, every other folder tried is listed
    root.mkdir()
    msg = _load_error(root)
    for path in (root / "mnist", isolated / "empty_data" / "mnist", isolated / "cache" / "mnist"):
        assert f"{path}: no such folder" in msg
    assert "GPMARGIN_DATA" in msg and "GPMARGIN_OFFLINE" in msg and T10K_IMAGES in msg
    assert "--data-root DIR" in msg and "--root" not in msg
    assert f"{root / 't10k-images-idx3-ubyte'}[.gz]: missing" in msg
    assert f"{root / 't10k-labels-idx1-ubyte'}[.gz]: missing" in msg


def test_fallback_from_corrupt_root_to_good_data(isolated, monkeypatch):
    src = _shared_mnist()
    folder = _mnist_copy(isolated / "root", src)
    data = (src / T10K_LABELS).read_bytes()
    (folder / T10K_LABELS).write_bytes(data[:100])
    monkeypatch.setenv("GPMARGIN_DATA", str(src.parent))
    s = gd.search("mnist", "test", root=isolated / "root")
    assert s.found is not None and s.found.folder == str(src) and s.found.origin == "GPMARGIN_DATA"
    assert any(p == str(folder / T10K_LABELS) and "truncated" in why for p, why in s.attempts)
    x, y = gd.load("mnist", "test", root=isolated / "root")
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS


def test_fallback_within_folder_to_uncompressed_copy(isolated):
    src = _shared_mnist()
    folder = _mnist_copy(isolated / "root", src)
    raw = gzip.decompress((src / T10K_LABELS).read_bytes())
    (folder / T10K_LABELS).write_bytes(b"not gzip at all")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(raw)
    _, y, source = gd.load_with_source("mnist", "test", root=isolated / "root")
    assert str(folder / "t10k-labels-idx1-ubyte") in source["files"]
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS


def test_cifar_unverified_batch_is_rejected_not_unpickled(isolated):
    batches = isolated / "root" / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    marker = isolated / "unpickled"
    # a pickle that would create a file if it were ever loaded
    evil = pickle.dumps(type("E", (), {"__reduce__": lambda self: (Path.touch, (marker,))})())
    (batches / "test_batch").write_bytes(evil)
    with pytest.raises(DataError) as info:
        gd.load("cifar10", "test", root=isolated / "root")
    msg = str(info.value)
    assert f"{batches / 'test_batch'}: wrong checksum" in msg and "CIFAR-10" in msg and "\n" not in msg
    assert not marker.exists()


def test_cifar_batch_and_archive_formats(tmp_path):
    """The pickle-batch parser and the safe tarball extraction (synthetic files, real formats)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(7, 3072), dtype=np.uint8)
    batch = pickle.dumps({b"data": data, b"labels": [1, 2, 3, 4, 5, 6, 7]})
    x, y = cifar.parse_batch(batch)
    assert x.shape == (7, 3, 32, 32) and np.array_equal(x[2, 1].ravel(), data[2, 1024:2048])
    assert y.dtype == np.int64
    tar_path = tmp_path / "c.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, payload in (("cifar-10-batches-py/test_batch", batch), ("../escape", b"x")):
            ti = tarfile.TarInfo(name)
            ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload))
    out = cifar.extract_archive(tar_path, tmp_path / "out", "cifar-10-batches-py")
    assert (out / "test_batch").read_bytes() == batch
    assert not (tmp_path / "escape").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cifar-10-batches-py"]
    with pytest.raises(FileProblem, match="not a CIFAR-10 batch"):
        cifar.parse_batch(pickle.dumps({b"labels": [1]}))


def test_fetch_verifies_and_leaves_no_partial_file(tmp_path):
    src = _shared_mnist() / T10K_LABELS
    cache = tmp_path / "cache"
    with pytest.raises(FileProblem, match="wrong checksum"):
        locate.fetch(src.as_uri(), cache / "x.gz", "0" * 32, timeout=2)
    with pytest.raises(FileProblem, match="download failed"):
        locate.fetch((tmp_path / "absent.gz").as_uri(), cache / "y.gz", "0" * 32, timeout=2)
    assert list(cache.iterdir()) == []
    dest = locate.fetch(src.as_uri(), cache / T10K_LABELS, "ec29112dd5afa0611ce80d1b7f02629c", timeout=2)
    assert dest.read_bytes() == src.read_bytes() and list(cache.iterdir()) == [dest]


def test_download_attempt_fails_fast_or_succeeds_cleanly(isolated, monkeypatch):
    """With downloads on: offline, a quick one-line error; online, a verified file. Never a partial file."""
    monkeypatch.delenv("GPMARGIN_OFFLINE")
    monkeypatch.setenv("GPMARGIN_DOWNLOAD_TIMEOUT", "3")
    t0 = time.monotonic()
    try:
        (isolated / "nowhere").mkdir()
        _, y = gd.load("mnist", "test", root=isolated / "nowhere")
        assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    except DataError as exc:
        assert time.monotonic() - t0 < 15
        assert "\n" not in str(exc) and "download failed" in str(exc)
        assert not (isolated / "cache").exists()  # a failed connection creates nothing
    cache = isolated / "cache"
    leftovers = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".gz")] if cache.exists() else []
    assert leftovers == []


# ---------------------------------------------------------------- preprocessing


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), n=st.integers(1, 6),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31 - 1))
def test_rescale_to_sqrt_d_invariant(shape, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64) * scale + 0.5
    z = gd.rescale_to_sqrt_d(x)
    assert z.shape == x.shape and z.dtype == torch.float64
    d = math.prod(shape)
    assert torch.allclose(z.reshape(n, -1).norm(dim=1), torch.full((n,), math.sqrt(d), dtype=torch.float64),
                          rtol=0, atol=1e-12)
    # direction is kept
    cos = (z.reshape(n, -1) * x.reshape(n, -1)).sum(1) / (z.reshape(n, -1).norm(dim=1) * x.reshape(n, -1).norm(dim=1))
    assert torch.allclose(cos, torch.ones(n, dtype=torch.float64))


def test_rescale_zero_example_raises():
    x = torch.ones(4, 3)
    x[2] = 0
    with pytest.raises(GpmarginError, match="rows 2"):
        gd.rescale_to_sqrt_d(x)


def test_preprocess_mnist(mnist_test):
    x, _ = mnist_test
    z = gd.preprocess(x[:2000], "mnist")
    assert z.shape == (2000, 784) and z.dtype == torch.float64
    assert torch.allclose(z.norm(dim=1), torch.full((2000,), 28.0, dtype=torch.float64), rtol=0, atol=1e-12)
    n = gd.normalize(x, "mnist")
    assert abs(float(n.mean())) < 0.02 and abs(float(n.std()) - 1) < 0.02
    zi = gd.preprocess(x[:10], "mnist", flatten=False)
    assert zi.shape == (10, 1, 28, 28) and torch.allclose(zi.reshape(10, -1), z[:10])


def test_normalize_cifar_per_channel():
    mean, std = gd.STATS["cifar10"]
    x = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 4, 4).clone()
    x[:, 1] += std[1]
    z = gd.normalize(x, "cifar10")
    assert torch.allclose(z[:, 0], torch.zeros(2, 4, 4, dtype=torch.float64))
    assert torch.allclose(z[:, 1], torch.ones(2, 4, 4, dtype=torch.float64))
    assert torch.allclose(gd.normalize(gd.flatten(x), "cifar10"), gd.flatten(z))
    with pytest.raises(GpmarginError, match="3 channels"):
        gd.normalize(torch.zeros(2, 1, 4, 4), "cifar10")


def test_parity_and_pair_labels(mnist_test):
    _, y = mnist_test
    p = gd.parity_labels(y)
    assert p.dtype == torch.float64 and set(p.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(p == 1, y % 2 == 1)
    x = torch.arange(len(y))
    xs, ys = gd.pair_task(x, y, 3, 8)
    assert len(xs) == 1010 + 974 and ys.dtype == torch.float64
    assert torch.equal(ys == 1, y[xs] == 3) and torch.equal(ys == -1, y[xs] == 8)


def test_subsets_by_seed():
    x, y = torch.arange(500), torch.arange(500) % 10
    a, ya = gd.subset(x, y, 50, seed=1)
    b, _ = gd.subset(x, y, 50, seed=1)
    c, _ = gd.subset(x, y, 50, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(ya, a % 10)
    assert len(set(a.tolist())) == 50
    xtr, ytr, xte, yte = gd.split(x, y, 100, 300, seed=3)
    assert len(xtr) == 100 and len(xte) == 300 and not set(xtr.tolist()) & set(xte.tolist())
    assert torch.equal(ytr, xtr % 10) and torch.equal(yte, xte % 10)
    assert len(gd.split(x, y, 100, None, seed=3)[2]) == 400
    with pytest.raises(GpmarginError, match="only 500 available"):
        gd.subset(x, y, 501, seed=0)
    with pytest.raises(GpmarginError, match="only 500 available"):
        gd.split(x, y, 400, 101, seed=0)


def test_random_labels_and_attack_set():
    r = gd.random_labels(10000, 10, seed=0)
    assert r.dtype == torch.int64 and torch.equal(r, gd.random_labels(10000, 10, seed=0))
    counts = torch.bincount(r, minlength=10)
    assert counts.min() > 850 and counts.max() < 1150
    x, y = torch.arange(1000), torch.arange(1000) % 10
    xs, ys, clean = gd.attack_set(x, y, 300, 200, seed=5, num_classes=10)
    assert len(xs) == 500 and len(set(xs.tolist())) == 500
    assert clean.tolist() == [True] * 300 + [False] * 200
    assert torch.equal(ys[:300], xs[:300] % 10)
    assert ys[300:].min() >= 0 and ys[300:].max() <= 9
    assert (ys[300:] != xs[300:] % 10).float().mean() > 0.7  # random labels are mostly wrong
    yb = torch.where(y % 2 == 1, 1.0, -1.0).double()
    _, ybs, _ = gd.attack_set(x, yb, 10, 90, seed=1, num_classes=2)
    assert set(ybs.unique().tolist()) == {-1.0, 1.0} and ybs.dtype == torch.float64


# ---------------------------------------------------------------- tasks


def test_make_task_mnist_parity_carved(mnist_test, monkeypatch):
    monkeypatch.setenv("GPMARGIN_OFFLINE", "1")
    with pytest.warns(gd.DataSubstitutionWarning, match="carved"):
        td = gd.make_task("mnist", "parity", n_train=1000, n_test=9000, seed=0)
    assert td.x_train.shape == (1000, 784) and td.x_test.shape == (9000, 784)
    assert td.x_train.dtype == td.y_train.dtype == torch.float64 and td.num_classes == 2
    assert set(td.y_train.unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(td.x_test.norm(dim=1), torch.full((9000,), 28.0, dtype=torch.float64), atol=1e-12)
    info = td.info
    assert info["carved_from"] == "test" and "carved" in info["substitution"]
    assert info["train_source"]["folder"].endswith("mnist") and info["n_test"] == 9000
    import json

    json.dumps(info)
    # the carve reproduces split() on the raw test split, and is seed dependent
    x, y = mnist_test
    ref_tr, ref_ytr, ref_te, _ = gd.split(x, gd.parity_labels(y), 1000, 9000, seed=0)
    # exact: make_task runs the same split and the same preprocess call on the same rows
    assert torch.equal(td.y_train, ref_ytr) and torch.equal(td.x_train, gd.preprocess(ref_tr, "mnist"))
    assert torch.equal(td.x_test, gd.preprocess(ref_te, "mnist"))
    with pytest.warns(gd.DataSubstitutionWarning):
        other = gd.make_task("mnist", "parity", n_train=1000, n_test=9000, seed=1)
    assert not torch.equal(other.x_train, td.x_train)
    with pytest.raises(DataError, match="train split not available"):
        gd.make_task("mnist", "parity", carve_from=None)


def test_make_task_mnist_pair_and_multiclass(mnist_test):
    td = gd.make_task("mnist", "pair:3,8", n_train=500, n_test=None, seed=0, carve_from="test")
    assert td.x_train.shape == (500, 784) and len(td.x_test) == 1010 + 974 - 500
    assert td.info["n_test"] == 1484 and "class 3 -> +1" in td.info["labels"]
    n_plus = int((td.y_train == 1).sum() + (td.y_test == 1).sum())
    assert n_plus == 1010 and td.y_test.dtype == torch.float64
    with pytest.raises(GpmarginError, match="1984 usable"):
        gd.make_task("mnist", "pair:3,8", n_train=1500, n_test=1000, carve_from="test")
    mc = gd.make_task("mnist", "multiclass", n_train=200, n_test=300, seed=4, carve_from="test", flatten=False)
    assert mc.num_classes == 10 and mc.y_train.dtype == torch.int64 and mc.x_train.shape == (200, 1, 28, 28)
    assert mc.y_train.min() >= 0 and mc.y_train.max() <= 9
    with pytest.raises(GpmarginError, match="pair:A,B"):
        gd.make_task("mnist", "pair:3", carve_from="test")


def test_make_task_digits_official_random_labels_and_attack(digits_train):
    base = gd.make_task("digits", "parity", n_train=600, seed=0)
    assert base.info["carved_from"] is None and base.info["substitution"] is None
    assert base.x_test.shape == (797, 64) and base.train_clean.all()
    rnd = gd.make_task("digits", "parity", n_train=600, seed=0, random_labels=True)
    assert torch.equal(rnd.x_train, base.x_train) and torch.equal(rnd.x_test, base.x_test)
    assert torch.equal(rnd.y_test, base.y_test)
    assert set(rnd.y_train.unique().tolist()) == {-1.0, 1.0}
    assert 0.3 < float((rnd.y_train != base.y_train).double().mean()) < 0.7
    att = gd.make_task("digits", "multiclass", n_train=300, seed=2, attack=200)
    clean = gd.make_task("digits", "multiclass", n_train=500, seed=2)
    assert att.x_train.shape == (500, 64) and int(att.train_clean.sum()) == 300
    assert torch.equal(att.x_train, clean.x_train) and torch.equal(att.y_train[:300], clean.y_train[:300])
    assert (att.y_train[300:] != clean.y_train[300:]).double().mean() > 0.7
    assert torch.equal(att.y_test, clean.y_test)
    # Huang et al.'s poison: the same images, every attack label wrong, uniform over the other classes
    wrong = gd.make_task("digits", "multiclass", n_train=300, seed=2, attack=200, attack_labels="wrong")
    assert torch.equal(wrong.x_train, clean.x_train) and torch.equal(wrong.y_train[:300], clean.y_train[:300])
    assert bool((wrong.y_train[300:] != clean.y_train[300:]).all()) and wrong.info["attack_labels"] == "wrong"
    assert set(((wrong.y_train[300:] - clean.y_train[300:]) % 10).tolist()) == set(range(1, 10))
    binary = gd.make_task("digits", "parity", n_train=300, seed=2, attack=200, attack_labels="wrong")
    truth = gd.make_task("digits", "parity", n_train=500, seed=2)
    assert torch.equal(binary.y_train[300:], -truth.y_train[300:])
    with pytest.raises(GpmarginError, match="attack_labels='noisy'"):
        gd.make_task("digits", "multiclass", n_train=300, attack=200, attack_labels="noisy")
    with pytest.raises(GpmarginError, match="1000 usable"):
        gd.make_task("digits", "parity", n_train=900, attack=200)


def test_make_task_fashion_official(fashion_train, fashion_test):
    td = gd.make_task("fashion_mnist", "pair:0,6", n_train=100, n_test=100, seed=0)
    assert td.info["carved_from"] is None and td.info["train_source"]["split"] == "train"
    assert td.x_train.shape == (100, 784) and td.x_test.shape == (100, 784)


# ---------------------------------------------------------------- CLI


def test_cli_data_info(mnist_test, capsys):
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    mnist_dir = str(Path(os.environ["GPMARGIN_DATA"]) / "mnist")
    assert f"test: {mnist_dir}" in out and "10000 examples, shape (1, 28, 28)" in out
    assert "digits" in out and "797 examples" in out


def test_cli_data_info_missing(isolated, capsys):
    empty = isolated / "empty_data"
    assert main(["data", "info", "--root", str(empty)]) == 0
    out = capsys.readouterr().out
    assert out.count("not found") >= 4  # mnist, cifar10 x train/test
    assert f"{empty / 'mnist'}: no such folder" in out and f"{isolated / 'cache' / 'cifar10'}: no such folder" in out
    assert not (isolated / "cache").exists()  # nothing downloaded or created


def test_preprocessing_leaves_the_callers_arrays_alone(mnist_test):
    """normalize and rescale_to_sqrt_d work in place on their own copy only."""
    from gpmargin.data.tasks import normalize, rescale_to_sqrt_d

    x = mnist_test[0][:50].double()
    before = x.clone()
    z = normalize(x, "mnist")
    assert torch.equal(x, before) and torch.equal(z, (before - 0.1307) / 0.3081)
    flat = z.reshape(len(z), -1)
    kept = flat.clone()
    r = rescale_to_sqrt_d(flat)
    assert torch.equal(flat, kept)
    assert torch.allclose(r.norm(dim=1), torch.full((50,), 28.0, dtype=torch.float64), rtol=1e-14, atol=0)
