"""IDX files (MNIST, Fashion-MNIST): gzip decompression and header parsing.

An IDX file starts with a 4-byte magic number ``0x00 0x00 <type> <ndim>`` (type 0x08 is
unsigned byte), then ``ndim`` big-endian uint32 dimensions, then the data in C order.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np

from gpmargin.data.problems import FileProblem

UBYTE = 0x08


def expected_magic(ndim: int) -> int:
    """Magic number of an unsigned-byte IDX file with ``ndim`` dimensions."""
    return (UBYTE << 8) | ndim


def gunzip(data: bytes) -> bytes:
    """Decompress gzip bytes, turning every failure into a :class:`FileProblem`."""
    if data[:2] != b"\x1f\x8b":
        raise FileProblem("not a gzip file (bad gzip header)")
    try:
        return gzip.decompress(data)
    except EOFError:
        raise FileProblem(f"truncated (gzip stream ends early after {len(data)} bytes)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise FileProblem(f"corrupt gzip data ({' '.join(str(exc).split())})") from None


def parse_idx(raw: bytes, ndim: int) -> np.ndarray:
    """Parse uncompressed IDX bytes holding an unsigned-byte array with ``ndim`` dimensions."""
    if len(raw) < 4:
        raise FileProblem(f"truncated ({len(raw)} bytes, no IDX header)")
    magic = int.from_bytes(raw[:4], "big")
    want = expected_magic(ndim)
    if magic != want:
        raise FileProblem(f"wrong magic number 0x{magic:08x} (expected 0x{want:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FileProblem(f"truncated ({len(raw)} bytes, IDX header needs {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header
    if have < size:
        raise FileProblem(f"truncated ({have} data bytes, header {dims} needs {size})")
    if have > size:
        raise FileProblem(f"wrong size ({have} data bytes, header {dims} needs {size})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
