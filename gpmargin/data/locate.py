"""Finding, verifying and downloading dataset files.

Folders are searched in this order, and the first one holding every file of the
requested split, all verified, is used:

1. ``root`` (passed to :func:`find`): the folder itself, then ``root/<name>/``;
2. ``$GPMARGIN_DATA/<name>/``;
3. folders filled by OS packages (``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST);
4. the user cache, ``$GPMARGIN_CACHE`` or ``$XDG_CACHE_HOME/gpmargin/<name>`` or
   ``~/.cache/gpmargin/<name>``.

When none is good and downloads are on (``GPMARGIN_OFFLINE`` unset), the files are
downloaded from the official mirrors into the cache: each goes to a temporary file that is
renamed only once its md5 matches.  The connection waits at most
``$GPMARGIN_DOWNLOAD_TIMEOUT`` seconds (default 10).  Otherwise a one-line
:class:`~gpmargin.errors.DataError` lists every path tried and what was wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpmargin.data import cifar, idx
from gpmargin.data.problems import FileProblem, one_line
from gpmargin.data.sources import DatasetSpec, FileSpec, check_split, spec as get_spec
from gpmargin.errors import DataError

ENV_DATA = "GPMARGIN_DATA"
ENV_CACHE = "GPMARGIN_CACHE"
ENV_OFFLINE = "GPMARGIN_OFFLINE"
ENV_TIMEOUT = "GPMARGIN_DOWNLOAD_TIMEOUT"


def cache_dir() -> Path:
    """The download cache: ``$GPMARGIN_CACHE``, else ``$XDG_CACHE_HOME/gpmargin``, else ``~/.cache/gpmargin``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gpmargin"


def downloads_enabled() -> bool:
    """False when ``GPMARGIN_OFFLINE`` is set to anything but ``0``/``false``/``no``/empty."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("", "0", "false", "no")


def download_timeout() -> float:
    """Seconds to wait for a connection (``$GPMARGIN_DOWNLOAD_TIMEOUT``, default 10)."""
    try:
        return max(0.1, float(os.environ.get(ENV_TIMEOUT, "10")))
    except ValueError:
        return 10.0


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - checksum, not security


@dataclass
class Found:
    """A verified split: uint8 images (N, C, H, W), int64 labels, and where they came from."""

    dataset: str
    split: str
    folder: str
    origin: str
    files: list[str]
    images: np.ndarray
    labels: np.ndarray

    def source(self) -> dict:
        """JSON-able description of where the split came from."""
        return {"dataset": self.dataset, "split": self.split, "folder": self.folder,
                "origin": self.origin, "files": list(self.files)}


@dataclass
class Search:
    """Outcome of a search: the split if found, and every (path, problem) met on the way."""

    dataset: str
    split: str
    found: Found | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)

    def tried(self) -> str:
        return "; ".join(f"{p}: {why}" for p, why in self.attempts)


@dataclass(frozen=True)
class Candidate:
    folder: Path
    origin: str
    report_absent: bool = True  # list "no such folder" in the error when absent
    quiet_if_empty: bool = False  # skip silently when it holds none of the dataset's files


def candidates(spec: DatasetSpec, root: str | os.PathLike | None = None) -> list[Candidate]:
    """Folders to search for ``spec``'s files, in order, without duplicates."""
    out: list[Candidate] = []
    subs = spec.subfolders or (spec.name,)
    if root is not None:
        r = Path(root).expanduser()
        has_sub = any((r / s).is_dir() for s in subs)
        out.append(Candidate(r, "root", quiet_if_empty=has_sub))
        out += [Candidate(r / s, "root", i == 0) for i, s in enumerate(subs)]
    env = os.environ.get(ENV_DATA)
    if env:
        e = Path(env).expanduser()
        out += [Candidate(e / s, ENV_DATA, i == 0) for i, s in enumerate(subs)]
    out += [Candidate(Path(d), "system package", False) for d in spec.system_dirs]
    out.append(Candidate(cache_dir() / spec.name, "cache"))
    seen, unique = set(), []
    for c in out:
        key = os.path.abspath(c.folder)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _read_nonempty(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileProblem(f"unreadable ({one_line(exc.strerror or exc)})") from None
    if not data:
        raise FileProblem("empty file (0 bytes)")
    return data


def read_idx_file(path: Path, fs: FileSpec) -> np.ndarray:
    """Read, structurally check and md5-verify one IDX file (``.gz`` or uncompressed)."""
    data = _read_nonempty(path)
    gz = path.name.endswith(".gz")
    gz_ok = gz and md5_hex(data) == fs.md5_gz
    raw = idx.gunzip(data) if gz else data
    arr = idx.parse_idx(raw, 3 if "idx3" in fs.base else 1)
    if not gz_ok and md5_hex(raw) != fs.md5_raw:
        got = md5_hex(data)
        want = f"{fs.md5_gz} for the .gz file or {fs.md5_raw} uncompressed" if gz else fs.md5_raw
        raise FileProblem(f"wrong checksum (md5 {got}, expected {want})")
    return arr


def read_cifar_batch(path: Path, fs: FileSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch after checking its md5 (never unpickles unverified bytes)."""
    data = _read_nonempty(path)
    got = md5_hex(data)
    if got != fs.md5_raw:
        raise FileProblem(f"wrong checksum (md5 {got} for {len(data)} bytes, expected {fs.md5_raw}; truncated or corrupt)")
    return cifar.parse_batch(data)


def _try_idx(spec: DatasetSpec, split: str, folder: Path, origin: str, s: Search) -> Found | None:
    arrays, used = [], []
    for fs in spec.files[split]:
        got = None
        paths = [folder / (fs.base + ".gz"), folder / fs.base]
        existing = [p for p in paths if p.is_file()]
        if not existing:
            s.attempts.append((f"{folder / fs.base}[.gz]", "missing"))
        for p in existing:
            try:
                got = read_idx_file(p, fs)
                used.append(str(p))
                break
            except FileProblem as exc:
                s.attempts.append((str(p), str(exc)))
        arrays.append(got)
    if any(a is None for a in arrays):
        return None
    images, labels = arrays
    if len(images) != len(labels):
        s.attempts.append((str(folder), f"{len(images)} images but {len(labels)} labels"))
        return None
    return Found(spec.name, split, str(folder), origin, used,
                 np.array(images[:, None]), labels.astype(np.int64))


def _try_cifar_batches(spec: DatasetSpec, split: str, folder: Path, origin: str, s: Search) -> Found | None:
    xs, ys, used = [], [], []
    for fs in spec.files[split]:
        p = folder / fs.base
        if not p.is_file():
            s.attempts.append((str(p), "missing"))
            return None
        try:
            x, y = read_cifar_batch(p, fs)
        except FileProblem as exc:
            s.attempts.append((str(p), str(exc)))
            return None
        xs.append(x)
        ys.append(y)
        used.append(str(p))
    return Found(spec.name, split, str(folder), origin, used, np.concatenate(xs), np.concatenate(ys))


def _extract_verified_archive(spec: DatasetSpec, archive: Path, s: Search) -> Path | None:
    """Check the archive's md5 and extract it into the cache; None (and a note) on failure."""
    try:
        with open(archive, "rb") as fh:
            h = hashlib.md5()  # noqa: S324
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    except OSError as exc:
        s.attempts.append((str(archive), f"unreadable ({one_line(exc.strerror or exc)})"))
        return None
    if h.hexdigest() != spec.archive.md5_raw:
        s.attempts.append((str(archive), f"wrong checksum (md5 {h.hexdigest()}, expected {spec.archive.md5_raw})"))
        return None
    try:
        return cifar.extract_archive(archive, cache_dir() / spec.name, spec.archive_folder)
    except FileProblem as exc:
        s.attempts.append((str(archive), str(exc)))
        return None


def _try_cifar(spec: DatasetSpec, split: str, folder: Path, origin: str, s: Search) -> Found | None:
    batch_dirs = [folder / spec.archive_folder]
    if any((folder / fs.base).is_file() for files in spec.files.values() for fs in files):
        batch_dirs.insert(0, folder)
    for d in batch_dirs:
        if d.is_dir():
            found = _try_cifar_batches(spec, split, d, origin, s)
            if found:
                return found
    archive = folder / spec.archive.base
    if not archive.is_file():
        s.attempts.append((str(archive), f"missing (and no {spec.archive_folder}/ folder)"))
        return None
    done = cache_dir() / spec.name / spec.archive_folder
    if done.is_dir():  # extracted before: reuse it if it verifies
        found = _try_cifar_batches(spec, split, done, f"{origin} (extracted {archive.name})", Search(spec.name, split))
        if found:
            return found
    extracted = _extract_verified_archive(spec, archive, s)
    if extracted is None:
        return None
    return _try_cifar_batches(spec, split, extracted, f"{origin} (extracted {archive.name})", s)


def _try_folder(spec: DatasetSpec, split: str, folder: Path, origin: str, s: Search) -> Found | None:
    if spec.archive is not None:
        return _try_cifar(spec, split, folder, origin, s)
    return _try_idx(spec, split, folder, origin, s)


def _open_url(url: str, timeout: float):
    """``urlopen`` with a hard deadline on connecting, name resolution included."""
    box: dict = {}

    def target() -> None:
        try:
            box["resp"] = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https/http URLs
        except BaseException as exc:  # noqa: BLE001 - reported to the user
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise FileProblem(f"download failed (no connection within {timeout:g} s)")
    if "exc" in box:
        exc = box["exc"]
        reason = getattr(exc, "reason", None) or exc
        raise FileProblem(f"download failed ({one_line(reason)})")
    return box["resp"]


def fetch(url: str, dest: Path, md5: str, timeout: float | None = None) -> Path:
    """Download ``url`` to ``dest`` through a temporary file renamed only after the md5 matches."""
    from tqdm.auto import tqdm

    timeout = download_timeout() if timeout is None else timeout
    resp = _open_url(url, timeout)  # connect first: nothing is created when offline
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        resp.close()
        raise FileProblem(f"cannot write to the cache folder {dest.parent} ({one_line(exc.strerror or exc)})") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                h = hashlib.md5()  # noqa: S324
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None, leave=False) as bar:
                    while True:
                        try:
                            block = resp.read(1 << 20)
                        except OSError as exc:
                            raise FileProblem(f"download interrupted ({one_line(exc)})") from None
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != md5:
            raise FileProblem(f"downloaded file has wrong checksum (md5 {h.hexdigest()}, expected {md5})")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _download(spec: DatasetSpec, split: str, s: Search) -> Found | None:
    folder = cache_dir() / spec.name
    if spec.archive is not None:
        wanted = [(spec.archive, spec.archive.base, spec.archive.md5_raw)]
    else:
        wanted = [(fs, fs.base + ".gz", fs.md5_gz) for fs in spec.files[split]]
    for fs, fname, md5 in wanted:
        dest = folder / fname
        if fs.kind == "idx" and dest.is_file():
            try:
                read_idx_file(dest, fs)
                continue  # already in the cache and good
            except FileProblem:
                pass  # corrupt (reported by the cache search): download again over it
        for mirror in spec.mirrors:
            try:
                fetch(mirror + fname, dest, md5)
                break
            except FileProblem as exc:
                s.attempts.append((mirror + fname, str(exc)))
        else:
            return None
    return _try_folder(spec, split, folder, "download", s)


def _holds_any(spec: DatasetSpec, folder: Path) -> bool:
    """Whether ``folder`` holds any file (or archive) of ``spec``, compressed or not."""
    names = [fs.base for files in spec.files.values() for fs in files]
    if spec.archive is not None:
        names += [spec.archive.base, spec.archive_folder]
    return any((folder / n).exists() or (folder / (n + ".gz")).exists() for n in names)


def search(name: str, split: str, root: str | os.PathLike | None = None, download: bool | None = None) -> Search:
    """Look for a verified split of ``name`` (downloading if allowed); never raises for missing files."""
    spec = get_spec(name)
    check_split(split)
    s = Search(spec.name, split)
    for c in candidates(spec, root):
        if not c.folder.is_dir():
            if c.report_absent:
                s.attempts.append((str(c.folder), "no such folder"))
            continue
        if c.quiet_if_empty and not _holds_any(spec, c.folder):
            continue
        s.found = _try_folder(spec, split, c.folder, c.origin, s)
        if s.found:
            return s
    if download is None:
        download = downloads_enabled()
    if download and spec.mirrors:
        s.found = _download(spec, split, s)
    return s


def check_root(root: str | os.PathLike, name: str = "root") -> Path:
    """``root`` (an extra data folder) must exist: a one-line :class:`DataError` naming ``name`` otherwise."""
    r = Path(root).expanduser()
    if not r.exists():
        raise DataError(f"{name} {root}: no such folder; give an existing folder holding the dataset files "
                        f"(or leave it out to search ${ENV_DATA}, system packages and the cache)")
    if not r.is_dir():
        raise DataError(f"{name} {root} is a file, not a folder; give the folder holding the dataset files")
    return r


def how_to_fix(spec: DatasetSpec, split: str | tuple[str, ...], download: bool) -> str:
    """One sentence saying how to provide the files of a split (or of any of several splits)."""
    splits = (split,) if isinstance(split, str) else tuple(split)
    if spec.archive is not None:
        files = f"{spec.name}/{spec.archive.base} or {spec.name}/{spec.archive_folder}/" + ",".join(
            fs.base for sp in splits for fs in spec.files[sp])
    else:
        files = f"{spec.name}/" + ", ".join(f"{fs.base}.gz" for sp in splits for fs in spec.files[sp])
    either = " (one split is enough: tasks carve train and test out of it)" if len(splits) > 1 else ""
    msg = f"to fix: set {ENV_DATA} to a folder holding {files}{either}, or pass --data-root DIR (root=DIR in Python)"
    if spec.install_hint:
        msg += f", {spec.install_hint}"
    if spec.mirrors:
        if not downloads_enabled():
            msg += f"; downloads are off ({ENV_OFFLINE} is set), unset it to download from {spec.mirrors[0]}"
        elif not download:
            msg += f", or load it once online to download it from {spec.mirrors[0]}"
        else:
            msg += f", or connect to the internet to download from {spec.mirrors[0]}"
    return msg


def _benign(why: str) -> bool:
    return why == "no such folder" or why.startswith("missing") or why.startswith("download failed")


def cause(attempts: list[tuple[str, str]]) -> str:
    """The most telling reason a search failed, for the head of the error message.

    A file that exists but is broken beats everything; then a failed download; then "nothing found".
    """
    for path, why in attempts:
        if not _benign(why):
            return f"{path}: {why}"
    env = "" if os.environ.get(ENV_DATA) else f"{ENV_DATA} is not set and "
    failed = [why for _, why in attempts if why.startswith("download failed")]
    if failed:
        return f"{env}no searched folder holds the files, and the {failed[0]}"
    return f"{env}no searched folder holds the files"


def not_found_message(spec: DatasetSpec, splits: tuple[str, ...], attempts: list[tuple[str, str]],
                      download: bool) -> str:
    """One line: what is missing, its cause first, then what was searched and how to fix it."""
    what = f"{splits[0]} split" if len(splits) == 1 else " and ".join(splits) + " splits"
    tried = "; ".join(dict.fromkeys(f"{p}: {why}" for p, why in attempts))
    return one_line(f"{spec.title} ({spec.name}) {what} not available: {cause(attempts)}. "
                    f"{how_to_fix(spec, splits, download)}. Tried: {tried}")


def find(name: str, split: str, root: str | os.PathLike | None = None, download: bool | None = None) -> Found:
    """The verified split of ``name``, or a one-line :class:`DataError` leading with the cause,
    then how to fix it, then every path tried."""
    s = search(name, split, root, download)
    if s.found is not None:
        return s.found
    spec = get_spec(name)
    dl = downloads_enabled() if download is None else download
    err = DataError(not_found_message(spec, (split,), s.attempts, dl))
    err.attempts = s.attempts
    raise err
