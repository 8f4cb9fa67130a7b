"""scikit-learn's bundled 8x8 handwritten digits with a fixed, stratified train/test split.

The 1,797 images have no official split.  Ours: for each class in turn, in class order,
``numpy.random.default_rng(0).permutation`` of that class's indices; the first ``t_c`` go
to the test split, the rest to train, where ``t_c`` is the class's share of 797 test
images (floor of ``n_c * 797 / 1797``, the remainder handed to the largest fractional
parts).  Result: **1,000 train and 797 test images**, class proportions kept to within one
image, indices in their original order.  Pixels (0..16) are divided by 16.
"""

from __future__ import annotations

import functools

import numpy as np

DIGITS_SEED = 0
N_TRAIN = 1000
N_TEST = 797


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """The fixed train/test indices into ``sklearn.datasets.load_digits()``."""
    _, y = _raw()
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * N_TEST / len(y)
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: N_TEST - take.sum()]] += 1
    rng = np.random.default_rng(DIGITS_SEED)
    train, test = [], []
    for c, t in zip(classes, take):
        perm = rng.permutation(np.flatnonzero(y == c))
        test.append(perm[:t])
        train.append(perm[t:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 8, 8) float32 in [0, 1] and int64 labels of one split."""
    images, y = _raw()
    idx = split_indices()[split]
    return (images[idx] / 16.0).astype(np.float32)[:, None], y[idx].copy()
