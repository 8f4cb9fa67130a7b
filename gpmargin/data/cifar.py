"""CIFAR-10 python pickle batches and the official ``cifar-10-python.tar.gz`` archive."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from gpmargin.data.problems import FileProblem, one_line


def parse_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one pickled batch.

    Only call this on bytes whose md5 matched the official sum: unpickling runs code.
    """
    try:
        obj = pickle.loads(raw, encoding="bytes")
        data = np.asarray(obj[b"data"], dtype=np.uint8)
        labels = np.asarray(obj[b"labels"], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - any failure means the batch is unusable
        raise FileProblem(f"not a CIFAR-10 batch ({one_line(exc)})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise FileProblem(f"unexpected batch layout (data {data.shape}, labels {labels.shape})")
    return data.reshape(-1, 3, 32, 32), labels


def extract_archive(archive: Path, dest: Path, folder: str) -> Path:
    """Extract ``folder/`` from a verified tarball into ``dest``; return ``dest/folder``.

    Extraction goes to a temporary folder beside the target that is renamed at the end,
    so an interrupted extraction leaves nothing behind.
    """
    target = dest / folder
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=dest))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if not member.isfile() or not parts or parts[0] != folder or ".." in parts:
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                out = tmp.joinpath(*parts[1:])
                out.parent.mkdir(parents=True, exist_ok=True)
                with src, open(out, "wb") as fh:
                    shutil.copyfileobj(src, fh)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FileProblem(f"cannot extract ({one_line(exc)})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
