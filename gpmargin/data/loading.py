"""``load(name, split)``: a dataset split as float32 pixels in [0, 1] and int64 labels."""

from __future__ import annotations

import functools
import os

import torch

from gpmargin.data import locate
from gpmargin.data.digits import load_digits_split
from gpmargin.data.sources import check_split, spec as get_spec


def load(name: str, split: str = "train", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``split`` of dataset ``name`` (mnist, fashion_mnist, cifar10, digits).

    Returns ``x`` float32 (N, C, H, W) with pixels in [0, 1] and ``y`` int64 class indices.
    Files are searched and verified as described in :mod:`gpmargin.data.locate`; a missing
    or corrupt dataset raises a one-line :class:`~gpmargin.errors.DataError`.
    Results are cached in memory; each call returns fresh copies.
    """
    x, y, _ = load_with_source(name, split, root)
    return x, y


def load_with_source(name: str, split: str = "train", root: str | os.PathLike | None = None,
                     download: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Like :func:`load`, plus a JSON-able dict saying which folder and files were used."""
    name = get_spec(name).name
    check_split(split)
    if root is not None:
        locate.check_root(root, "root")
    key_root = None if root is None else os.path.abspath(os.path.expanduser(str(root)))
    dl = locate.downloads_enabled() if download is None else bool(download)
    x, y, source = _cached(name, split, key_root, os.environ.get(locate.ENV_DATA),
                           str(locate.cache_dir()), dl)
    return x.clone(), y.clone(), dict(source)


@functools.lru_cache(maxsize=8)
def _cached(name: str, split: str, root: str | None, _env: str | None, _cache: str, download: bool):
    if name == "digits":
        images, labels = load_digits_split(split)
        source = {"dataset": name, "split": split, "folder": None, "origin": "sklearn.datasets.load_digits",
                  "files": [], "note": "fixed stratified split, see gpmargin.data.digits"}
        return torch.from_numpy(images), torch.from_numpy(labels), source
    found = locate.find(name, split, root, download=download)
    x = torch.from_numpy(found.images).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(found.labels), found.source()


def clear_cache() -> None:
    """Forget every split loaded so far (e.g. after replacing files on disk)."""
    _cached.cache_clear()
