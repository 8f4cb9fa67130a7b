"""Datasets and the paper's tasks.

- :func:`load` ``(name, split, root=None) -> (x, y)``: mnist, fashion_mnist, cifar10, digits,
  as float32 (N, C, H, W) pixels in [0, 1] and int64 labels; files are searched, verified
  (official md5 sums) and, when online, downloaded (see :mod:`gpmargin.data.locate`).
- :func:`make_task` -> :class:`TaskData`: the paper's preprocessing and binary / 10-class tasks.
"""

from gpmargin.data.digits import N_TEST as DIGITS_N_TEST, N_TRAIN as DIGITS_N_TRAIN
from gpmargin.data.loading import clear_cache, load, load_with_source
from gpmargin.data.locate import Found, cache_dir, candidates, downloads_enabled, find, search
from gpmargin.data.sources import DATASETS, SPECS, SPLITS, STATS
from gpmargin.data.tasks import (
    DataSubstitutionWarning,
    TaskData,
    attack_set,
    flatten,
    make_task,
    normalize,
    pair_task,
    parity_labels,
    parse_task,
    preprocess,
    random_labels,
    rescale_to_sqrt_d,
    split,
    subset,
    subset_indices,
)

__all__ = [
    "DATASETS", "SPECS", "SPLITS", "STATS", "DIGITS_N_TRAIN", "DIGITS_N_TEST",
    "load", "load_with_source", "clear_cache", "find", "search", "candidates", "cache_dir",
    "downloads_enabled", "Found",
    "normalize", "flatten", "rescale_to_sqrt_d", "preprocess", "parity_labels", "pair_task",
    "random_labels", "attack_set", "subset", "subset_indices", "split", "parse_task",
    "make_task", "TaskData", "DataSubstitutionWarning",
]
