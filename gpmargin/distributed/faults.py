"""The faults of a kernel store that get their own one-line errors: a damaged chunk, a full disk."""

from __future__ import annotations

import errno

from gpmargin.errors import GpmarginError

__all__ = ["DamagedStore", "NO_SPACE", "no_space_error"]

#: errno values meaning "no room to write" (disk full, quota, file-size limit).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DamagedStore(GpmarginError):
    """A chunk of a kernel store that is marked done is missing or fails its checksum.

    ``kind``, ``name`` (``train``, ``cross``, ``test_diag``, ``factor``) and ``index`` (the chunk's
    tile indices) say which; the message names the remedy that repairs it."""

    def __init__(self, store, kind: str, name: str, index: tuple, what: str):
        self.kind, self.name, self.index = kind, name, tuple(index)
        chunk = "/".join(str(i) for i in self.index)
        if name == "factor":
            remedy = ("rerun `gpmargin predict` (it discards a damaged factor and factorises again), or call "
                      "gpmargin.distributed.blocked.discard_factor on the store")
        else:
            remedy = ("rerun the `gpmargin kernel` command that made the store: it re-reads every tile and "
                      "recomputes the damaged ones")
        super().__init__(f"kernel store {store.path} is damaged: chunk {chunk} of {kind}/{name} {what}; {remedy}")


def no_space_error(exc: OSError, what: str, path) -> GpmarginError:
    """The one-line error for a write that ran out of room."""
    return GpmarginError(f"no space left while writing {what} of {path} ({exc.strerror or exc}); "
                         "free disk space and rerun the same command: finished tiles are kept")
