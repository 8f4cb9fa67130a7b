"""Validation of user inputs to the predictions: features, labels, margins, ensembles.

Every check raises :class:`~gpmargin.errors.GpmarginError` with a one-line message
that says what is wrong and how to fix it.

Label convention
----------------
* **Binary**: labels are +-1 (float, or integer -1/+1).  The GP is conditioned on
  ``f(X_train) = alpha * y``.
* **Multi-class**: labels are integer class indices ``0..C-1``.  One GP output per
  class (shared covariance) is conditioned on ``alpha * one_hot(y)``.

Anything else (floats other than +-1, negative integers other than the binary -1,
NaNs, ...) is refused.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from gpmargin.errors import GpmarginError

__all__ = [
    "Labels",
    "as_tensor",
    "check_labels",
    "check_features",
    "check_margins",
    "check_ensemble",
    "check_kernel",
    "check_conflicting_duplicates",
    "check_kind",
    "check_time",
    "check_learning_rate",
    "parse_margins",
    "parse_ensemble",
    "MAX_MARGINS",
    "UnseenClassWarning",
]

MAX_MARGINS = 2000
"""Most margins one curve may have: the accuracy grid stores ``ensembles x margins x test points``
float64 numbers (2000 x 5 x 9000 is 720 MB), and 41 already draw a smooth curve."""


class UnseenClassWarning(UserWarning):
    """Test labels include classes that never occur among the training labels."""


@dataclass(frozen=True)
class Labels:
    """Validated labels: ``binary`` (+-1) or ``num_classes`` class indices."""

    y_train: torch.Tensor  # float64 +-1 (binary) or int64 indices
    y_test: torch.Tensor
    binary: bool
    num_classes: int

    def targets(self) -> torch.Tensor:
        """Regression targets for ``alpha = 1``: ``y`` (n,) if binary, else one-hot (n, C)."""
        if self.binary:
            return self.y_train.to(torch.float64)
        return torch.nn.functional.one_hot(self.y_train, self.num_classes).to(torch.float64)


def as_tensor(x, *, device=None, dtype=torch.float64, name: str = "array") -> torch.Tensor:
    """Convert numpy arrays / sequences / tensors to a torch tensor of ``dtype``."""
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise GpmarginError(f"{name} could not be converted to an array: {exc}") from None
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    return t


def _label_array(y, name: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise GpmarginError(f"{name} must be a 1-D array of labels, got shape {y.shape}")
    if y.size == 0:
        raise GpmarginError(f"{name} is empty")
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise GpmarginError(f"{name} has dtype {y.dtype}; use +-1 floats (binary) or integer class indices")
    return y


def check_labels(y_train, y_test, num_classes: int | None = None, device=None) -> Labels:
    """Decide binary vs multi-class and validate both label arrays.

    ``num_classes`` (multi-class only) defaults to ``1 + max(label)`` over both arrays.
    """
    a = _label_array(y_train, "y_train")
    b = _label_array(y_test, "y_test")
    both = np.concatenate([a.astype(np.float64), b.astype(np.float64)])
    if not np.all(np.isfinite(both)):
        raise GpmarginError("labels contain NaN or infinite values")
    unseen = sorted(set(np.unique(b).tolist()) - set(np.unique(a).tolist()))
    if unseen:
        names = ", ".join(f"{v:g}" for v in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        n_pts = int(np.isin(b, unseen).sum())
        warnings.warn(f"y_test holds class(es) {names} ({n_pts} of {b.size} test points) that never occur in "
                      f"y_train (classes {', '.join(f'{v:g}' for v in np.unique(a)[:10])}): the GP has never "
                      "seen them, so those points are almost never predicted right", UnseenClassWarning, stacklevel=3)
    is_pm1 = np.all(np.abs(both) == 1.0)
    ints = np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)
    if is_pm1 and (np.any(both < 0) or not ints):
        # +-1 labels (floats, or integers containing -1): binary task
        if num_classes not in (None, 2):
            raise GpmarginError(f"labels are +-1 (binary) but num_classes={num_classes} was given")
        return Labels(
            as_tensor(a, device=device, name="y_train"),
            as_tensor(b, device=device, name="y_test"),
            True,
            2,
        )
    if not ints:
        bad = both[np.abs(both) != 1.0][:3]
        raise GpmarginError(
            f"float labels must be +-1 for a binary task (found {', '.join(f'{v:g}' for v in bad)}); "
            "give multi-class labels as integer class indices 0..C-1"
        )
    if both.min() < 0:
        raise GpmarginError(
            f"integer labels must be class indices >= 0 (or +-1 for a binary task); found {int(both.min())}"
        )
    top = int(both.max()) + 1
    C = top if num_classes is None else int(num_classes)
    if C < top:
        raise GpmarginError(f"num_classes={C} but labels go up to {top - 1}")
    if C < 2:
        raise GpmarginError(
            "all labels are class 0: a multi-class task needs at least 2 classes "
            "(binary labels must be +-1)"
        )
    return Labels(
        as_tensor(a, device=device, dtype=torch.int64, name="y_train"),
        as_tensor(b, device=device, dtype=torch.int64, name="y_test"),
        False,
        C,
    )


def check_features(x_train: torch.Tensor, x_test: torch.Tensor, n_train_labels: int, n_test_labels: int) -> None:
    """Non-empty, finite, matching feature shapes, one label per row."""
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x.ndim < 2:
            raise GpmarginError(f"{name} must have one row per example (shape (N, d) or (N, C, H, W)), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise GpmarginError(f"{name} is empty (no examples)")
        if math.prod(x.shape[1:]) == 0:
            raise GpmarginError(f"{name} has no features (shape {tuple(x.shape)})")
    if tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        raise GpmarginError(
            f"train and test features do not match: x_train rows have shape {tuple(x_train.shape[1:])}, "
            f"x_test rows {tuple(x_test.shape[1:])}"
        )
    if x_train.shape[0] != n_train_labels:
        raise GpmarginError(f"x_train has {x_train.shape[0]} rows but y_train has {n_train_labels} labels")
    if x_test.shape[0] != n_test_labels:
        raise GpmarginError(f"x_test has {x_test.shape[0]} rows but y_test has {n_test_labels} labels")
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if not bool(torch.isfinite(x).all()):
            raise GpmarginError(f"{name} contains NaN or infinite values")


def check_margins(margins) -> np.ndarray:
    """Margins as a sorted (ascending) 1-D float64 array of at most :data:`MAX_MARGINS` finite values > 0.

    Sorting here, at the input, keeps every curve's margin axis increasing (so the largest margin is
    the last one and :func:`~gpmargin.predict.margin_at_fraction` reads it left to right).
    """
    try:
        m = np.atleast_1d(np.asarray(margins, dtype=np.float64))
    except (TypeError, ValueError):
        raise GpmarginError(f"margins must be numbers, got {margins!r}") from None
    if m.ndim != 1:
        raise GpmarginError(f"margins must be a 1-D list of numbers, got shape {m.shape}")
    if m.size == 0:
        raise GpmarginError("margins is empty; give at least one margin alpha > 0 (or None for automatic)")
    if m.size > MAX_MARGINS:
        raise GpmarginError(f"margins has {m.size} values; at most {MAX_MARGINS} are allowed (41 draw a smooth curve)")
    bad = m[~(np.isfinite(m) & (m > 0))]
    if bad.size:
        raise GpmarginError(f"margins must be finite and > 0, got {bad[0]:g}")
    return np.sort(m)


def check_kernel(kernel, name: str = "kernel") -> None:
    """A kernel object callable as ``kernel(x1, x2, get=...)`` (e.g. :func:`gpmargin.kernels.paper_mlp`)."""
    if not callable(kernel):
        raise GpmarginError(f"{name} must be a kernel object callable as {name}(x1, x2, get='nngp'), e.g. "
                            f"gpmargin.kernels.paper_mlp(5); got {type(kernel).__name__} {kernel!r:.60}")


KINDS = ("nngp", "ntk", "ntkgp")


def check_kind(kind) -> str:
    """The prediction: ``"nngp"`` (the paper's NNGP posterior), ``"ntk"`` (infinite ensemble of
    networks trained by gradient descent) or ``"ntkgp"`` (a GP with the NTK as prior covariance)."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise GpmarginError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _positive(value, name: str, meaning: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GpmarginError(f"{name} must be a number > 0 ({meaning}), got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise GpmarginError(f"{name} must be finite and > 0 ({meaning}), got {value!r}")
    return v


def check_time(time) -> float | None:
    """Training time: None (trained to convergence, ``t = inf``) or a finite number > 0."""
    if time is None:
        return None
    return _positive(time, "time", "or None for infinite training time")


def check_learning_rate(learning_rate) -> float:
    """Gradient-descent learning rate: a finite number > 0."""
    return _positive(learning_rate, "learning_rate", "the gradient-descent step size")


def check_ensemble(ensemble) -> tuple[int, ...]:
    """Ensemble sizes as a tuple of positive ints."""
    if isinstance(ensemble, (int, np.integer)):
        ensemble = (ensemble,)
    try:
        vals = list(ensemble)
    except TypeError:
        raise GpmarginError(f"ensemble must be a list of positive integers, got {ensemble!r}") from None
    if not vals:
        raise GpmarginError("ensemble is empty; give at least one ensemble size (e.g. 1)")
    out = []
    for v in vals:
        fv = float(v)
        if not (math.isfinite(fv) and fv >= 1 and fv == int(fv)):
            raise GpmarginError(f"ensemble sizes must be positive integers, got {v!r}")
        out.append(int(fv))
    return tuple(out)


def check_conflicting_duplicates(x_train: torch.Tensor, labels: Labels, max_named: int = 5) -> int:
    """Refuse exactly duplicated training inputs that carry different labels.

    A noise-free GP cannot interpolate two different targets at the same input.
    Returns the number of duplicated rows (with consistent labels), which make the
    kernel matrix singular and are handled by jitter.
    """
    x = x_train.detach().reshape(x_train.shape[0], -1).to("cpu", torch.float64).numpy()
    x = np.ascontiguousarray(x + 0.0)  # +0.0 maps -0.0 to 0.0 so equal values have equal bytes
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1])))[:, 0]
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    if counts.max(initial=1) <= 1:
        return 0
    y = labels.y_train.detach().cpu().numpy()
    conflicts = []
    for g in np.nonzero(counts > 1)[0]:
        idx = np.nonzero(inverse == g)[0]
        if np.unique(y[idx]).size > 1:
            conflicts.append(idx)
    if conflicts:
        named = "; ".join(
            "rows " + ", ".join(f"{i} (label {y[i]:g})" for i in idx[:4]) + (" ..." if idx.size > 4 else "")
            for idx in conflicts[:max_named]
        )
        more = f" and {len(conflicts) - max_named} more groups" if len(conflicts) > max_named else ""
        raise GpmarginError(
            f"training inputs are duplicated with conflicting labels, which a noise-free GP cannot "
            f"interpolate: {named}{more}; remove or relabel them"
        )
    return int((counts[counts > 1] - 1).sum())


def parse_margins(spec: str):
    """``"LO:HI:N"`` -> N log-spaced margins; ``"a,b,c"`` -> list; ``"auto"`` -> None.

    The margins come back sorted ascending (``1e1:1e-3:5`` is the same grid as ``1e-3:1e1:5``) and
    checked by :func:`check_margins`; ``N`` above :data:`MAX_MARGINS` is refused before anything is made.
    """
    s = spec.strip().lower()
    if s in ("", "auto"):
        return None
    bad = GpmarginError(
        f"--margins {spec!r}: write LO:HI:N (e.g. 1e-3:1e1:41), a comma list (e.g. 0.1,1,10) or auto"
    )
    if ":" not in s:
        try:
            vals = [float(v) for v in s.split(",") if v.strip()]
        except ValueError:
            raise bad from None
        try:
            return check_margins(vals).tolist()
        except GpmarginError as exc:
            raise GpmarginError(f"--margins {spec!r}: {exc}") from None
    try:
        lo, hi, n = s.split(":")
        lo, hi, n = float(lo), float(hi), int(n)
    except ValueError:
        raise bad from None
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        raise GpmarginError(f"--margins {spec}: LO and HI must be finite and > 0")
    if n < 1:
        raise GpmarginError(f"--margins {spec}: N must be at least 1")
    if n > MAX_MARGINS:
        raise GpmarginError(f"--margins {spec}: N = {n} margins is too many; at most {MAX_MARGINS} "
                            "(41 draw a smooth curve)")
    if n == 1:
        return [lo]
    lo, hi = min(lo, hi), max(lo, hi)
    step = (math.log10(hi) - math.log10(lo)) / (n - 1)
    return [10 ** (math.log10(lo) + i * step) for i in range(n)]


def parse_ensemble(spec: str) -> tuple[int, ...]:
    try:
        vals = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise GpmarginError(f"--ensemble {spec!r}: write positive integers separated by commas, e.g. 1,2,4,8,16") from None
    if not vals or min(vals) < 1:
        raise GpmarginError(f"--ensemble {spec!r}: ensemble sizes must be positive integers")
    return tuple(vals)
