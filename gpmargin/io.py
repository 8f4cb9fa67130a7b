"""Result files: atomic writes, append-only JSON lines, and run metadata.

Every result file is written to a temporary file in the same folder, flushed,
fsync'ed and renamed over the target, so a reader never sees half a file even if
the process is killed.  ``append_jsonl`` writes one whole line with a single
``write`` on an ``O_APPEND`` descriptor and fsyncs; ``read_jsonl`` ignores a
trailing partial line (the only damage a kill can leave).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _default(o: Any) -> Any:
    """JSON fallback for numpy / torch scalars and arrays, paths and tuples."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.detach().cpu().tolist()
        if isinstance(o, torch.device):
            return str(o)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """``json.dumps`` that understands numpy and torch values (NaN is refused)."""
    return json.dumps(obj, default=_default, indent=indent, allow_nan=False)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        from gpmargin.errors import GpmarginError

        raise GpmarginError(f"{path} is a folder; give a file path (e.g. {path}/NAME{path.suffix})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates mode 0600; give result files the usual permissions (0666 less the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, to_json(obj) + "\n")


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format taken from the suffix of ``path``)."""
    path = Path(path)
    kwargs.setdefault("dpi", 150)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON object as one line, with a single write and an fsync."""
    line = (to_json(record, indent=None) + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read complete JSON lines from ``path``; a torn last line (from a kill) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cut a torn last line (left by a kill) and drop unparseable lines, atomically.

    Run before appending to a file that a killed process may have left behind, so a torn
    line can never be glued to the next record.  Returns how many lines were dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    raw = path.read_bytes()
    if not raw:
        return 0
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a torn line
    dropped = 1 if tail else 0
    keep = []
    for line in lines:
        if not line.strip():
            continue
        try:
            json.loads(line)
            keep.append(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            dropped += 1
    if dropped:
        atomic_write_text(path, b"".join(line + b"\n" for line in keep).decode())
    return dropped


@contextlib.contextmanager
def locked_folder(out: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``out/.lock``; a second holder gets a one-line error."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            from gpmargin.errors import GpmarginError

            raise GpmarginError(f"another {what} is using {out}; wait for it or use another --out") from exc
        yield out
    finally:
        os.close(fd)


def path_argument(text: str) -> Path:
    """An argparse ``type`` for path options: ``~`` expanded once, where the argument is read (the
    shell does not expand it after ``=``, as in ``--out=~/runs``), so every later use sees one path."""
    return Path(text).expanduser()


def check_output_folder(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``out`` (with parents) and check that files can be written in it, before any work.

    A path that exists and is not a folder, a folder that cannot be created, or one that is not
    writable raises a one-line :class:`~gpmargin.errors.GpmarginError` naming ``flag`` and the path.
    """
    from gpmargin.errors import GpmarginError

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise GpmarginError(f"{flag} {out} exists and is a file, not a folder; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GpmarginError(f"{flag} {out}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        with tempfile.NamedTemporaryFile(prefix=".write-test.", dir=out):
            pass
    except OSError as exc:
        raise GpmarginError(f"{flag} {out} is not writable ({exc.strerror or exc}); give a folder you can write to") from None
    return out


STATE_FOLDER = ".state"


def state_folder(out: str | os.PathLike, what: str, name: str) -> Path:
    """Where one run of ``what`` (``figure``, ``validate``) called ``name`` keeps its resume state:
    ``out/.state/<what>-<name>/`` holding ``config.json`` and ``runs.jsonl``.

    Each figure or experiment has its own, so several share one results folder.
    """
    return Path(out) / STATE_FOLDER / f"{what}-{name}"


def prepare_results_folder(out: str | os.PathLike, config_hash: str, record: dict[str, Any],
                           what: str, device: Any = None, name: str | None = None) -> Path:
    """Create the state folder of ``what``/``name`` in ``out``, or check that it holds this config.

    Returns :func:`state_folder` ``(out, what, name)`` (``out`` itself when ``name`` is None, the
    old one-run-per-folder layout).  It holds ``config.json`` (``record``, the config described
    for humans, with ``config_hash`` and :func:`run_metadata`) and ``runs.jsonl``.  A state
    folder whose ``config.json`` or ``runs.jsonl`` carries another hash is refused with a
    one-line error naming the config fields that differ, so results of different configs of the
    same figure or experiment never mix; other figures and experiments in ``out`` are untouched.
    A folder written before per-run state folders (``out/config.json`` of this same ``name``) is
    migrated by moving its ``config.json`` and ``runs.jsonl`` into the state folder.
    """
    from gpmargin.errors import GpmarginError

    out = check_output_folder(out)
    state = out if name is None else state_folder(out, what, name)
    if name is not None:
        _migrate_legacy_state(out, state, what, name)
    state.mkdir(parents=True, exist_ok=True)
    cfg_path, runs = state / "config.json", state / "runs.jsonl"
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text())
            old_hash = old["config_hash"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise GpmarginError(f"{cfg_path} is not a gpmargin {what} config; use an empty --out folder") from exc
        if old_hash != config_hash:
            diff = config_differences(old, record)
            raise GpmarginError(f"--out {out} holds results of {_describe(old)} with a different config "
                                f"({diff}); use another --out folder (or delete {state})")
    else:
        if runs.exists() and runs.stat().st_size > 0:
            raise GpmarginError(f"{state} holds a runs.jsonl without config.json; use an empty --out folder")
        atomic_write_json(cfg_path, {**record, "config_hash": config_hash, "metadata": run_metadata(device)})
    foreign = {r.get("config_hash") for r in read_jsonl(runs)} - {config_hash}
    if foreign:
        raise GpmarginError(f"{runs} holds results of other settings (hashes {sorted(foreign)}); "
                            "use another --out folder")
    return state


def _migrate_legacy_state(out: Path, state: Path, what: str, name: str) -> None:
    """Move ``out/config.json`` + ``out/runs.jsonl`` of run ``name`` (old layout) into ``state``."""
    legacy = out / "config.json"
    if not legacy.is_file() or (state / "config.json").exists():
        return
    try:
        old = json.loads(legacy.read_text())
    except json.JSONDecodeError:
        return
    if not isinstance(old, dict) or _describe(old).split("/")[0] != name or ("figure" in old) != (what == "figure"):
        return
    state.mkdir(parents=True, exist_ok=True)
    if (out / "runs.jsonl").exists():
        os.replace(out / "runs.jsonl", state / "runs.jsonl")
    os.replace(legacy, state / "config.json")


def _describe(record: dict) -> str:
    """``name/scale`` of a saved config record (figure or experiment)."""
    cfg = record.get("config") if isinstance(record.get("config"), dict) else {}
    name = record.get("figure") or cfg.get("name")
    scale = record.get("scale") or cfg.get("scale")
    return f"{name}/{scale}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(old: dict, new: dict, limit: int = 6) -> str:
    """``field: old -> new`` for the config fields that differ between two saved records."""
    a = _flatten(json.loads(to_json({k: v for k, v in old.items() if k not in ("config_hash", "metadata", "execution")})))
    b = _flatten(json.loads(to_json({k: v for k, v in new.items() if k not in ("config_hash", "metadata", "execution")})))
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    if not keys:
        return "same fields, different code version"

    def short(v: Any) -> str:
        t = json.dumps(v) if v != "<absent>" else "absent"
        return t if len(t) <= 40 else t[:37] + "..."

    parts = [f"{k.removeprefix('config.')}: {short(a.get(k, '<absent>'))} -> {short(b.get(k, '<absent>'))}"
             for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def resolve_device(name: Any = "auto"):
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``.

    A device that is not there raises a one-line :class:`~gpmargin.errors.GpmarginError`.
    """
    import torch

    from gpmargin.errors import GpmarginError

    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise GpmarginError(f"unknown device {name!r}: use auto, cpu or cuda") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GpmarginError(f"device {name!r} requested but CUDA is not available on this machine; "
                                "use device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GpmarginError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise GpmarginError(f"unsupported device {name!r}: use auto, cpu or cuda")
    return dev


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that determine the numbers."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("gpmargin", "torch", "numpy", "scipy", "gpytorch", "matplotlib"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def device_info(device: Any = None) -> dict[str, Any]:
    """Describe the compute device: CPU model and thread count, or the CUDA GPU's name."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    info: dict[str, Any] = {"device": str(dev), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(idx)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def run_metadata(device: Any = None, **extra: Any) -> dict[str, Any]:
    """Versions, device and a UTC timestamp, to be saved next to every result."""
    meta = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "device": device_info(device),
        "argv": sys.argv,
    }
    meta.update(extra)
    return meta
