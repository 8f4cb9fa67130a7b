"""The paper's preprocessing and tasks (Farhang et al., ICML 2022).

Preprocessing, as in the paper: standardise pixels with the dataset's mean/std
(:func:`normalize`), optionally :func:`flatten`, then rescale every example to Euclidean
norm ``sqrt(d)`` (:func:`rescale_to_sqrt_d`); :func:`preprocess` chains the three.

Tasks: binary parity (odd digit +1, even -1), a binary pair of classes (``"pair:A,B"``: +1
for class A, -1 for class B), or 10-class classification with int64 class indices.
Subsets are drawn with ``numpy.random.default_rng(seed)``: the same seed gives the same
subset, a different seed a different one.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import torch

from gpmargin.data.loading import load_with_source
from gpmargin.data.sources import STATS, spec as get_spec
from gpmargin.errors import DataError, GpmarginError

Seed = Union[int, Sequence[int]]


class DataSubstitutionWarning(UserWarning):
    """A task used something other than the official split it asked for (e.g. carved train)."""


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def normalize(x, dataset: str) -> torch.Tensor:
    """``(x - mean) / std`` with the dataset's per-channel training statistics, as float64.

    ``x`` holds pixels in [0, 1], shaped (N, C, H, W) or flattened (N, C*H*W).
    """
    mean, std = STATS[get_spec(dataset).name]
    x = _tensor(x).to(torch.float64, copy=True)  # (one new array, then in place: the caller's x is kept)
    c = len(mean)
    m = torch.tensor(mean, dtype=torch.float64, device=x.device)
    s = torch.tensor(std, dtype=torch.float64, device=x.device)
    if c == 1:
        return x.sub_(m).div_(s)
    if x.ndim == 4 and x.shape[1] == c:
        return x.sub_(m.view(1, c, 1, 1)).div_(s.view(1, c, 1, 1))
    if x.ndim == 2 and x.shape[1] % c == 0:
        v = x.reshape(len(x), c, -1)
        return v.sub_(m.view(1, c, 1)).div_(s.view(1, c, 1)).reshape(x.shape)
    raise GpmarginError(f"normalize: {dataset} has {c} channels but x has shape {tuple(x.shape)}; "
                        f"pass (N, {c}, H, W) or (N, {c}*H*W)")


def flatten(x) -> torch.Tensor:
    """(N, ...) -> (N, d)."""
    x = _tensor(x)
    return x.reshape(len(x), -1)


def rescale_to_sqrt_d(x, *, _in_place: bool = False) -> torch.Tensor:
    """Rescale every example (row) to Euclidean norm ``sqrt(d)``, d = features per example; float64.

    An all-zero (or non-finite) example cannot be rescaled and raises :class:`GpmarginError`.
    """
    x = _tensor(x).to(torch.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise GpmarginError(f"rescale_to_sqrt_d needs a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    flat = x.reshape(len(x), -1)
    d = flat.shape[1]
    norms = flat.norm(dim=1)
    bad = torch.nonzero(~torch.isfinite(norms) | (norms == 0)).flatten()
    if len(bad):
        rows = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise GpmarginError(f"cannot rescale to norm sqrt(d): {len(bad)} example(s) are all zero or "
                            f"non-finite (rows {rows}); remove them first")
    scale = (math.sqrt(d) / norms).view(-1, *([1] * (x.ndim - 1)))
    return x.mul_(scale) if _in_place else x * scale


def preprocess(x, dataset: str, flatten: bool = True) -> torch.Tensor:
    """normalize -> (flatten) -> rescale to norm sqrt(d); returns float64."""
    z = normalize(x, dataset)
    if flatten:
        z = z.reshape(len(z), -1)
    return rescale_to_sqrt_d(z, _in_place=True)  # z is normalize's own new array


def parity_labels(y) -> torch.Tensor:
    """Odd digit -> +1.0, even -> -1.0 (float64)."""
    y = _tensor(y)
    return torch.where(y % 2 == 1, 1.0, -1.0).to(torch.float64)


def pair_task(x, y, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only classes ``a`` and ``b``; label ``a`` as +1.0 and ``b`` as -1.0 (float64)."""
    if a == b:
        raise GpmarginError(f"pair task needs two different classes, got {a} and {b}")
    x, y = _tensor(x), _tensor(y)
    keep = (y == a) | (y == b)
    if not bool((y == a).any()) or not bool((y == b).any()):
        raise GpmarginError(f"pair task {a},{b}: class {a if not bool((y == a).any()) else b} has no examples")
    return x[keep], torch.where(y[keep] == a, 1.0, -1.0).to(torch.float64)


def random_labels(n: int, num_classes: int, seed: Seed) -> torch.Tensor:
    """``n`` labels drawn uniformly from ``0 .. num_classes - 1`` (int64)."""
    if num_classes < 2:
        raise GpmarginError(f"random labels need num_classes >= 2, got {num_classes}")
    return torch.from_numpy(np.random.default_rng(seed).integers(0, num_classes, size=n).astype(np.int64))


def _random_like(y: torch.Tensor, n: int, num_classes: int, seed: Seed) -> torch.Tensor:
    """Random labels in ``y``'s convention: +-1.0 for float binary labels, else class indices."""
    r = random_labels(n, num_classes, seed)
    if y.is_floating_point():
        if num_classes != 2:
            raise GpmarginError("float labels are binary +-1; use num_classes=2")
        return (2.0 * r - 1.0).to(y.dtype)
    return r.to(y.dtype)


def _wrong_like(y: torch.Tensor, num_classes: int, seed: Seed) -> torch.Tensor:
    """A wrong label for every entry of ``y``: ``-y`` for float binary labels, else uniform over
    the other classes, ``(y + s) mod C`` with ``s`` uniform in ``1..C-1`` (Huang et al.'s poison)."""
    if y.is_floating_point():
        return -y
    shift = torch.from_numpy(np.random.default_rng(seed).integers(1, num_classes, size=len(y)))
    return (y + shift.to(y.dtype)) % num_classes


ATTACK_LABELS = ("random", "wrong")


def subset_indices(n_total: int, n: int, seed: Seed) -> np.ndarray:
    """``n`` distinct indices out of ``n_total``, in a seeded random order."""
    if n < 0 or n > n_total:
        raise GpmarginError(f"cannot draw {n} examples: only {n_total} available")
    return np.random.default_rng(seed).permutation(n_total)[:n]


def subset(x, y, n: int, seed: Seed) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``n`` examples."""
    x, y = _tensor(x), _tensor(y)
    idx = torch.from_numpy(subset_indices(len(x), n, seed))
    return x[idx], y[idx]


def split(x, y, n_train: int, n_test: int | None, seed: Seed):
    """Disjoint seeded train and test subsets of one split: ``(x_tr, y_tr, x_te, y_te)``.

    ``n_test=None`` takes every example not used for training.
    """
    x, y = _tensor(x), _tensor(y)
    n = len(x)
    if n_test is None:
        n_test = n - n_train
    if n_train < 0 or n_test < 0 or n_train + n_test > n:
        raise GpmarginError(f"cannot carve {n_train} train + {n_test} test examples: only {n} available")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    return x[tr], y[tr], x[te], y[te]


def attack_set(x, y, n_clean: int, n_attack: int, seed: Seed, num_classes: int):
    """``n_clean`` examples with true labels plus ``n_attack`` other examples with random labels.

    The paper's extreme-memorisation setting.  Returns ``(x, y, clean)`` where the first
    ``n_clean`` rows are clean and ``clean`` is the boolean mask of clean rows.  Random
    labels are uniform over the classes (+-1 when ``y`` holds float binary labels), so an
    attack label may coincide with the true one.
    """
    x, y = _tensor(x), _tensor(y)
    if n_clean < 0 or n_attack < 0:
        raise GpmarginError("attack_set: n_clean and n_attack must be >= 0")
    idx = torch.from_numpy(subset_indices(len(x), n_clean + n_attack, seed))
    xs, ys = x[idx], y[idx].clone()
    ys[n_clean:] = _random_like(ys, n_attack, num_classes, (*np.atleast_1d(seed).tolist(), 2))
    clean = torch.zeros(n_clean + n_attack, dtype=torch.bool)
    clean[:n_clean] = True
    return xs, ys, clean


@dataclass
class TaskData:
    """A ready-to-use task: preprocessed float64 inputs, labels, and where everything came from.

    Binary labels are float64 +-1; multi-class labels int64 class indices.  ``train_clean``
    marks training rows that carry their true label (all True unless random/attack labels).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    info: dict = field(default_factory=dict)
    train_clean: torch.Tensor | None = None


def parse_task(task: str, num_classes: int = 10) -> tuple[str, int | None, int | None]:
    """``"parity"`` / ``"multiclass"`` / ``"pair:A,B"`` -> (kind, a, b)."""
    t = task.strip().lower()
    if t in ("parity", "multiclass"):
        return t, None, None
    if t.startswith("pair:"):
        try:
            a, b = (int(v) for v in t[5:].split(","))
        except ValueError:
            raise GpmarginError(f"bad task {task!r}: write pair:A,B with two class indices, e.g. pair:3,8") from None
        if a == b or not (0 <= a < num_classes and 0 <= b < num_classes):
            raise GpmarginError(f"bad task {task!r}: need two different classes in 0..{num_classes - 1}")
        return "pair", a, b
    raise GpmarginError(f"unknown task {task!r}: use 'parity', 'pair:A,B' (e.g. 'pair:3,8') or 'multiclass'")


def _label(kind: str, a, b, x, y):
    if kind == "parity":
        return x, parity_labels(y)
    if kind == "pair":
        return pair_task(x, y, a, b)
    return x, y


def _load_split(dataset, split, root):
    try:
        return load_with_source(dataset, split, root), None
    except DataError as exc:
        return None, exc


def make_task(dataset: str = "digits", task: str = "parity", n_train: int = 1000, n_test: int | None = None,
              seed: int = 0, *, flatten: bool = True, root: str | os.PathLike | None = None,
              carve_from: str | None = "auto", random_labels: bool = False, attack: int = 0,
              attack_labels: str = "random") -> TaskData:
    """Build a task of the paper from a dataset, preprocessed and subsetted by ``seed``.

    ``carve_from``: ``"auto"`` uses the official train and test splits when both exist and
    otherwise carves disjoint train and test subsets out of whichever split exists (with a
    :class:`DataSubstitutionWarning`, recorded in ``info``); ``"train"``/``"test"`` force
    carving from that split; ``None`` requires the official splits.  Binary tasks filter
    classes before subsetting.  ``n_test=None`` takes every remaining/available test example.
    ``random_labels=True`` replaces the training labels (only) with uniform random ones;
    ``attack=m`` adds ``m`` further training examples with random labels: ``attack_labels="random"``
    uniform over the classes (may be the true one; the paper's Fig 3), ``"wrong"`` uniform over
    the other classes (never the true one; Huang et al.'s poisoned set).
    """
    if attack_labels not in ATTACK_LABELS:
        raise GpmarginError(f"attack_labels={attack_labels!r}: use 'random' or 'wrong'")
    sp = get_spec(dataset)
    kind, a, b = parse_task(task, sp.num_classes)
    for nm, v in (("n_train", n_train), ("attack", attack), ("seed", seed)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise GpmarginError(f"{nm} must be a non-negative integer, got {v!r}")
    if n_train < 1:
        raise GpmarginError("n_train must be at least 1")
    if n_test is not None and (not isinstance(n_test, (int, np.integer)) or n_test < 1):
        raise GpmarginError(f"n_test must be a positive integer or None, got {n_test!r}")
    if carve_from not in ("auto", "train", "test", None):
        raise GpmarginError(f"carve_from must be 'auto', 'train', 'test' or None, got {carve_from!r}")

    substitution = None
    if carve_from in ("train", "test"):
        pool, err = _load_split(sp.name, carve_from, root)
        if err:
            raise err
        carved = carve_from
    else:
        tr, tr_err = _load_split(sp.name, "train", root)
        te, te_err = _load_split(sp.name, "test", root)
        if tr and te:
            carved = None
        elif carve_from is None or (tr is None and te is None):
            errs = [e for e in (tr_err, te_err) if e]
            if len(errs) == 2:
                from gpmargin.data.locate import downloads_enabled, not_found_message

                attempts = [a for e in errs for a in getattr(e, "attempts", [(sp.name, str(e))])]
                raise DataError(not_found_message(sp, ("train", "test"), attempts, downloads_enabled()))
            raise errs[0]
        else:
            carved = "test" if te else "train"
            pool = te or tr
            missing = "train" if te else "test"
            substitution = (f"{sp.title} {missing} split not available; train and test were carved "
                            f"disjointly from the official {carved} split ({len(pool[0])} examples) with seed {seed}")
            warnings.warn(substitution, DataSubstitutionWarning, stacklevel=2)

    n_fit = n_train + attack
    if carved is not None:
        x, y = _label(kind, a, b, pool[0], pool[1])
        avail = len(x)
        nt = avail - n_fit if n_test is None else n_test
        if nt < 1 or n_fit + nt > avail:
            want = f"{n_fit} train + " + (f"{n_test} test" if n_test is not None else "at least 1 test")
            parts = f"n_train={n_train}" + (f" + attack={attack}" if attack else "")
            raise GpmarginError(f"{sp.name} {task}: the {carved} split has only {avail} usable examples, too few "
                                f"for {want} ({parts}); lower n_train or n_test")
        x_tr, y_tr, x_te, y_te = split(x, y, n_fit, nt, seed)
        sources = {"train": pool[2], "test": pool[2]}
    else:
        x_all, y_all = _label(kind, a, b, tr[0], tr[1])
        x_te_all, y_te_all = _label(kind, a, b, te[0], te[1])
        if n_fit > len(x_all):
            want = f"n_train + attack = {n_train} + {attack}" if attack else f"n_train = {n_train}"
            raise GpmarginError(f"{sp.name} {task}: the train split has {len(x_all)} usable examples, fewer than "
                                f"{want}; lower n_train")
        if n_test is not None and n_test > len(x_te_all):
            raise GpmarginError(f"{sp.name} {task}: the test split has {len(x_te_all)} usable examples, fewer than "
                                f"n_test = {n_test}")
        x_tr, y_tr = subset(x_all, y_all, n_fit, seed)
        x_te, y_te = (x_te_all, y_te_all) if n_test is None else subset(x_te_all, y_te_all, n_test, seed)
        sources = {"train": tr[2], "test": te[2]}

    num_classes = 2 if kind in ("parity", "pair") else sp.num_classes
    clean = torch.ones(n_fit, dtype=torch.bool)
    if attack:
        y_tr = y_tr.clone()
        if attack_labels == "wrong":
            y_tr[n_train:] = _wrong_like(y_tr[n_train:], num_classes, (seed, 2))
        else:
            y_tr[n_train:] = _random_like(y_tr, attack, num_classes, (seed, 2))
        clean[n_train:] = False
    if random_labels:
        y_tr = _random_like(y_tr, n_fit, num_classes, (seed, 1))
        clean[:] = False

    x_train = preprocess(x_tr, sp.name, flatten=flatten)
    x_test = preprocess(x_te, sp.name, flatten=flatten)
    files = sorted(set(sources["train"]["files"]) | set(sources["test"]["files"]))
    info = {
        "dataset": sp.name, "task": task, "n_train": int(n_train), "n_test": int(len(x_test)),
        "attack": int(attack), **({"attack_labels": attack_labels} if attack else {}),
        "random_labels": bool(random_labels), "seed": int(seed),
        "num_classes": num_classes, "flatten": bool(flatten), "input_shape": list(x_train.shape[1:]),
        "labels": {"parity": "odd digit +1, even -1", "pair": f"class {a} -> +1, class {b} -> -1",
                   "multiclass": "int64 class index"}[kind],
        "preprocessing": f"normalize(mean={list(STATS[sp.name][0])}, std={list(STATS[sp.name][1])})"
                         f"{' -> flatten' if flatten else ''} -> rescale each example to norm sqrt(d)",
        "carved_from": carved,
        "train_source": sources["train"], "test_source": sources["test"], "files": files,
        "substitution": substitution,
    }
    return TaskData(x_train, y_tr, x_test, y_te, num_classes, info, clean)
