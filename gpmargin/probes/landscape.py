"""Loss landscapes around a trained network: slices, interpolation, basin radius, sharpness.

Li et al. 2018 (*Visualizing the loss landscape of neural nets*) and Huang et al. 2020
(*Understanding generalization through visualizations*).  Every function takes any
``torch.nn.Module``, a per-example loss ``loss_fn(outputs, targets) -> (n,)`` (e.g.
``torch.nn.functional.cross_entropy(..., reduction="none")``) and data ``(x, y)``, evaluates the
model in the mode it is in, and restores its parameters and buffers (BatchNorm running
statistics) before it returns.

Slices        ``L(theta + a d)`` (1-D) and ``L(theta + a d1 + b d2)`` (2-D) on a grid, with ``d``
              filter-normalised (:mod:`gpmargin.probes.directions`); train and optionally test
              loss and accuracy.
Interpolation ``L((1 - c) theta_a + c theta_b)`` for ``c`` from -0.5 to 1.5.
Basin radius  along each of many random filter-normalised directions ``d_k``, the smallest
              ``r_k > 0`` with ``L(theta + r_k d_k) >= threshold`` (grid, then bisection);
              summarised as the median radius and the log-volume of the star-shaped basin
              ``log V = log(pi^{D/2} / Gamma(D/2 + 1)) + log mean_k (r_k ||d_k||)^D``
              (the Monte Carlo volume of ``{theta + s u : s < r(u)}``, ``D`` the number of
              parameters the directions move).
Sharpness     loss increase ``L(theta + delta) - L(theta)`` over the filter-normalised ball
              ``B_rho = {delta : ||delta_i|| <= rho ||W_i|| for every row i, biases fixed}``:
              ``"average"`` over random points on its boundary, ``"worst"`` the largest found by
              projected gradient ascent started from the worst random point.

Accuracy is :func:`gpmargin.measures.accuracy` (+-1 float labels: sign of a 1-output network;
integer labels: argmax).  A non-finite loss at a point of a slice is recorded as NaN (``null``
in JSON, a gap in plots); a model whose own loss is not finite is refused.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from gpmargin.errors import GpmarginError
from gpmargin.probes.directions import (
    filter_normalize,
    get_weights,
    is_weight,
    keeps_buffers,
    norm,
    random_direction,
    row_norms,
    set_weights,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Data = tuple  # (x, y)


def _check_data(data: Any, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise GpmarginError(f"{name} must be a pair (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise GpmarginError(f"{name} must be (x, y) tensors with the same positive number of rows")
    return x, y


@keeps_buffers
def per_example_losses(model: torch.nn.Module, loss_fn: LossFn, data: Data, chunk: int = 4096) -> torch.Tensor:
    """``loss_fn(model(x), y)`` as a float64 CPU vector ``(n,)``, evaluated in chunks without gradients."""
    x, y = _check_data(data)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            li = loss_fn(model(x[i:i + chunk]), y[i:i + chunk])
            if li.dim() != 1 or li.shape[0] != min(chunk, x.shape[0] - i):
                raise GpmarginError("loss_fn must return per-example losses of shape (n,) "
                                    "(e.g. reduction='none'), got shape " + str(tuple(li.shape)))
            out.append(li.detach().double().cpu())
    return torch.cat(out)


@keeps_buffers
def evaluate(model: torch.nn.Module, loss_fn: LossFn, data: Data, chunk: int = 4096) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``data``; a non-finite loss becomes NaN."""
    from gpmargin.measures import accuracy

    x, y = _check_data(data)
    with torch.no_grad():
        outs = torch.cat([model(x[i:i + chunk]).detach() for i in range(0, x.shape[0], chunk)])
        loss = float(loss_fn(outs, y).double().mean())
    if not math.isfinite(loss):
        return {"loss": math.nan, "accuracy": math.nan}
    return {"loss": loss, "accuracy": accuracy(outs, y)}


def _evaluate_sets(model, loss_fn, train, test) -> dict[str, float]:
    r = {f"train_{k}": v for k, v in evaluate(model, loss_fn, train).items()}
    if test is not None:
        r.update({f"test_{k}": v for k, v in evaluate(model, loss_fn, test).items()})
    return r


def _check_center(model, loss_fn, train) -> float:
    base = evaluate(model, loss_fn, train)["loss"]
    if not math.isfinite(base):
        raise GpmarginError("the model's own train loss is not finite (NaN or inf): nothing to probe around; "
                            "check the model and loss_fn")
    return base


def _coefficients(c: Any, name: str) -> np.ndarray:
    a = np.asarray(c, dtype=np.float64).reshape(-1)
    if a.size < 2 or not np.all(np.isfinite(a)):
        raise GpmarginError(f"{name} must be at least 2 finite numbers, got {c!r}")
    return a


@keeps_buffers
def slice_1d(model: torch.nn.Module, loss_fn: LossFn, train: Data, direction: Sequence[torch.Tensor] | None = None,
             coefficients: Any = np.linspace(-1.0, 1.0, 21), test: Data | None = None, seed: int = 0,
             progress: bool = False) -> dict[str, Any]:
    """``L(theta + a d)`` for ``a`` in ``coefficients``; ``d`` defaults to ``random_direction(model, seed)``.

    Returns ``{"coefficients": (A,), "train_loss": (A,), "train_accuracy": (A,)[, "test_..."]}``
    (numpy arrays; NaN where the loss was not finite).
    """
    theta = get_weights(model)
    _check_center(model, loss_fn, train)
    a = _coefficients(coefficients, "coefficients")
    d = list(direction) if direction is not None else random_direction(model, seed, weights=theta)
    return {"coefficients": a, **_along_line(model, theta, d, a, loss_fn, train, test, progress, "1-D slice", theta)}


def _along_line(model, base, direction, coefficients, loss_fn, train, test, progress, desc, restore) -> dict:
    """Train (and test) loss and accuracy at ``base + c * direction`` for each ``c``; then ``restore``."""
    rows: list[dict[str, float]] = []
    try:
        for c in _maybe_tqdm(coefficients, progress, desc):
            set_weights(model, base, [direction], [c])
            rows.append(_evaluate_sets(model, loss_fn, train, test))
    finally:
        set_weights(model, restore)
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


@keeps_buffers
def slice_2d(model: torch.nn.Module, loss_fn: LossFn, train: Data,
             directions: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
             coefficients: Any = np.linspace(-1.0, 1.0, 11), test: Data | None = None, seed: int = 0,
             progress: bool = False) -> dict[str, Any]:
    """``L(theta + a d1 + b d2)`` on the grid ``coefficients x coefficients`` (arrays ``(A, A)``,
    first index ``a``); directions default to two filter-normalised draws (seeds ``seed``, ``seed + 1``)."""
    theta = get_weights(model)
    _check_center(model, loss_fn, train)
    a = _coefficients(coefficients, "coefficients")
    if directions is None:
        directions = (random_direction(model, seed, weights=theta), random_direction(model, seed + 1, weights=theta))
    d1, d2 = directions
    grid: dict[str, np.ndarray] = {}
    try:
        for i, ca in enumerate(_maybe_tqdm(a, progress, "2-D slice")):
            for j, cb in enumerate(a):
                set_weights(model, theta, [d1, d2], [ca, cb])
                for k, v in _evaluate_sets(model, loss_fn, train, test).items():
                    grid.setdefault(k, np.full((a.size, a.size), np.nan))[i, j] = v
    finally:
        set_weights(model, theta)
    return {"coefficients": a, **grid}


@keeps_buffers
def interpolate(model: torch.nn.Module, theta_a: Sequence[torch.Tensor], theta_b: Sequence[torch.Tensor],
                loss_fn: LossFn, train: Data, coefficients: Any = np.linspace(-0.5, 1.5, 21),
                test: Data | None = None, progress: bool = False) -> dict[str, Any]:
    """``L((1 - c) theta_a + c theta_b)`` for ``c`` in ``coefficients`` (default -0.5 ... 1.5),
    evaluated with ``model``'s architecture; the model's own parameters are restored afterwards."""
    own = get_weights(model)
    if len(theta_a) != len(own) or len(theta_b) != len(own) or any(
            ta.shape != p.shape or tb.shape != p.shape for ta, tb, p in zip(theta_a, theta_b, own)):
        raise GpmarginError("theta_a and theta_b must have the model's parameter shapes (use get_weights(model))")
    a = _coefficients(coefficients, "coefficients")
    diff = [tb.to(ta.dtype) - ta for ta, tb in zip(theta_a, theta_b)]
    return {"coefficients": a, **_along_line(model, theta_a, diff, a, loss_fn, train, test, progress, "interpolation",
                                            own), "distance": norm(diff)}


def _log_ball_volume(dim: int) -> float:
    return 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)


@keeps_buffers
def basin_radius(model: torch.nn.Module, loss_fn: LossFn, train: Data, threshold: float, n_directions: int = 20,
                 max_radius: float = 2.0, grid: int = 8, bisections: int = 8, seed: int = 0,
                 progress: bool = False) -> dict[str, Any]:
    """Radius of the basin of ``model`` along ``n_directions`` filter-normalised directions.

    For direction ``k`` (seed ``seed + k``) the loss is evaluated at ``grid`` evenly spaced
    radii in ``(0, max_radius]``; the first bracket where it reaches ``threshold`` is refined by
    ``bisections`` halvings.  A direction that never reaches it is censored at ``max_radius``.
    Returns ``radii`` ``(K,)`` (in units of the direction, i.e. relative to each filter's norm),
    ``censored`` ``(K,)``, ``radius`` (median), ``mean_log_radius`` and ``log_volume`` (module
    docstring; ``dimension`` is ``D``).  A NaN loss counts as above the threshold.
    """
    if not (isinstance(n_directions, int) and n_directions >= 1):
        raise GpmarginError(f"n_directions must be a positive integer, got {n_directions!r}")
    if not (max_radius > 0 and grid >= 1 and bisections >= 0):
        raise GpmarginError("need max_radius > 0, grid >= 1 and bisections >= 0")
    theta = get_weights(model)
    base = _check_center(model, loss_fn, train)
    if not (math.isfinite(threshold) and threshold > base):
        raise GpmarginError(f"threshold must exceed the model's own train loss {base:.4g}, got {threshold!r}")

    def above(d, r) -> bool:
        set_weights(model, theta, [d], [r])
        v = evaluate(model, loss_fn, train)["loss"]
        return not (v < threshold)  # NaN counts as above

    radii, censored, dnorms = [], [], []
    dim = 0
    try:
        for k in _maybe_tqdm(range(n_directions), progress, "basin radius"):
            d = random_direction(model, seed + k, weights=theta)
            dim = sum(int(t.count_nonzero()) for t in d)
            dnorms.append(norm(d))
            lo, hi = 0.0, None
            for r in np.linspace(max_radius / grid, max_radius, grid):
                if above(d, float(r)):
                    hi = float(r)
                    break
                lo = float(r)
            if hi is None:
                radii.append(max_radius)
                censored.append(True)
                continue
            for _ in range(bisections):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if above(d, mid) else (mid, hi)
            radii.append(0.5 * (lo + hi))
            censored.append(False)
    finally:
        set_weights(model, theta)
    r = np.asarray(radii)
    logs = dim * np.log(r * np.asarray(dnorms))
    log_mean = float(np.max(logs) + np.log(np.mean(np.exp(logs - np.max(logs)))))
    return {"radii": r, "censored": np.asarray(censored), "radius": float(np.median(r)),
            "mean_log_radius": float(np.mean(np.log(r))), "dimension": dim,
            "log_volume": _log_ball_volume(dim) + log_mean, "threshold": float(threshold), "base_loss": base}


def _project(delta: list[torch.Tensor], theta: list[torch.Tensor], rho: float, batch_dims: int) -> list[torch.Tensor]:
    """Project ``delta`` onto ``B_rho`` (rows clipped to ``rho ||W_i||``, biases zero)."""
    out = []
    for dl, w in zip(delta, theta):
        if not is_weight(w, batch_dims):
            out.append(torch.zeros_like(w))
            continue
        cap = rho * row_norms(w, batch_dims)
        have = row_norms(dl, batch_dims)
        s = torch.where(have > cap, cap / have.clamp_min(torch.finfo(have.dtype).tiny), torch.ones_like(have))
        out.append(dl * s.reshape(*s.shape, *([1] * (w.dim() - s.dim()))))
    return out


@keeps_buffers
def sharpness(model: torch.nn.Module, loss_fn: LossFn, train: Data, rho: float = 0.05, kind: str = "average",
              n_samples: int = 10, ascent_steps: int = 10, seed: int = 0) -> dict[str, Any]:
    """Loss increase over the filter-normalised ball ``B_rho`` (module docstring).

    ``kind="average"``: mean of ``L(theta + rho d_k) - L(theta)`` over ``n_samples``
    filter-normalised directions ``d_k`` (the ball's boundary); ``kind="worst"``: the largest
    increase found by ``ascent_steps`` steps of projected gradient ascent (step ``rho / 2``
    along the filter-normalised gradient) from the worst of those samples.
    Returns ``{"sharpness", "base_loss", "samples"}``.
    """
    if kind not in ("average", "worst"):
        raise GpmarginError(f"kind={kind!r}: use 'average' or 'worst'")
    if not (rho > 0 and math.isfinite(rho)):
        raise GpmarginError(f"rho must be a positive finite number, got {rho!r}")
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise GpmarginError(f"n_samples must be a positive integer, got {n_samples!r}")
    theta = get_weights(model)
    base = _check_center(model, loss_fn, train)
    b = getattr(model, "batch_dims", 0)
    samples, dirs = [], []
    try:
        for k in range(n_samples):
            d = random_direction(model, seed + k, weights=theta)
            set_weights(model, theta, [d], [rho])
            samples.append(evaluate(model, loss_fn, train)["loss"] - base)
            dirs.append(d)
        s = np.asarray(samples)
        if kind == "average":
            value = float(np.mean(s))
        else:
            k0 = int(np.nanargmax(np.where(np.isnan(s), -np.inf, s)))
            delta = [t * rho for t in dirs[k0]]
            best = float(s[k0])
            x, y = _check_data(train)
            params = list(model.parameters())
            for _ in range(ascent_steps):
                set_weights(model, theta, [delta], [1.0])
                model.zero_grad(set_to_none=True)
                loss_fn(model(x), y).mean().backward()
                g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                step = filter_normalize([gi.detach() for gi in g], theta, b, "zero")
                delta = _project([dl + 0.5 * rho * st for dl, st in zip(delta, step)], theta, rho, b)
                set_weights(model, theta, [delta], [1.0])
                v = evaluate(model, loss_fn, train)["loss"] - base
                if v > best:
                    best = v
            model.zero_grad(set_to_none=True)
            value = best
    finally:
        set_weights(model, theta)
    return {"sharpness": value, "kind": kind, "rho": float(rho), "base_loss": base, "samples": np.asarray(samples)}


def _maybe_tqdm(it, progress: bool, desc: str):
    if not progress:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False)
