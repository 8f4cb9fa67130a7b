"""Predictions across margins: :class:`MarginPredictor` (one posterior, any margins) and :func:`margin_curve`.

The GP model of Farhang et al. (ICML 2022): a network trained to fit its training set with
normalized margin ``alpha`` behaves like a draw from the GP posterior conditioned on
``f(X_train) = alpha * Y``.  The posterior is computed once (mean ``alpha * mu``, standard
deviation ``s``, :func:`gpmargin.predict.posterior.posterior`) and the exact expected test
accuracy (:mod:`gpmargin.predict.accuracy`) follows on any grid of margins and ensemble sizes
(:func:`curve_from_posterior`).
"""

from __future__ import annotations

import math
import time as _time
from typing import Sequence

import numpy as np
import torch

from gpmargin.errors import GpmarginError
from gpmargin.predict import accuracy as acc
from gpmargin.predict.curve import MarginCurve
from gpmargin.predict.inputs import (
    as_tensor,
    check_conflicting_duplicates,
    check_ensemble,
    check_features,
    check_labels,
    check_margins,
)
from gpmargin.predict.margin_grid import default_margins
from gpmargin.predict.posterior import check_kernel_store, check_prediction, posterior
from gpmargin.predict.result import Posterior

__all__ = ["MarginPredictor", "margin_curve", "curve_from_posterior"]


def curve_from_posterior(
    post: Posterior,
    y_test,
    margins=None,
    ensemble: Sequence[int] = (1,),
    *,
    num_classes: int | None = None,
    y_train=None,
) -> MarginCurve:
    """Accuracy grid from an already computed posterior (``alpha = 1`` mean and std).

    ``y_test``: +-1 labels when ``post.mean`` is 1-D, class indices when it is (m, C).
    With ``y_train`` and a posterior that carries training outputs (``post.train``, the
    gradient-descent kinds), ``train_accuracy`` is filled in on the same grid.
    """
    t0 = _time.perf_counter()
    ensemble = check_ensemble(ensemble)
    binary = post.mean.ndim == 1
    dev = post.mean.device
    if binary:
        y = as_tensor(y_test, device=dev, name="y_test")
        C = 2
    else:
        y = as_tensor(y_test, device=dev, dtype=torch.int64, name="y_test")
        C = post.mean.shape[1] if num_classes is None else int(num_classes)
    if y.shape != (post.mean.shape[0],):
        raise GpmarginError(f"y_test has shape {tuple(y.shape)} but the posterior has {post.mean.shape[0]} test points")
    if margins is None:
        margins, rule = default_margins(post, y, binary, max(ensemble))
    else:
        margins, rule = check_margins(margins), "given"

    # alpha and k enter only through tau = alpha * sqrt(k): evaluate each distinct tau once
    tau = np.sqrt(np.asarray(ensemble, dtype=np.float64))[:, None] * margins[None, :]
    uniq, inverse = np.unique(tau.ravel(), return_inverse=True)
    scales = torch.as_tensor(uniq, dtype=torch.float64, device=dev)
    if binary:
        ratio = acc.binary_ratio(post.mean, post.std, y)
        probs = acc.binary_correct_prob(ratio, scales)
        limit = acc.binary_limit(post.mean, y)
    else:
        gaps = acc.multiclass_gaps(post.mean, post.std, y)
        probs = acc.multiclass_correct_prob(gaps, scales)
        limit = acc.multiclass_limit(post.mean, y)
    probs = probs.cpu().numpy()
    per_example = probs[inverse].reshape(len(ensemble), len(margins), -1)
    limit = limit.cpu().numpy()
    train_accuracy = None
    if post.train is not None and y_train is not None:
        train_accuracy = curve_from_posterior(post.train, y_train, margins, ensemble, num_classes=num_classes).accuracy
    timings = dict(post.timings)
    timings["accuracy"] = _time.perf_counter() - t0
    return MarginCurve(
        margins=np.asarray(margins, dtype=np.float64),
        ensemble=ensemble,
        accuracy=per_example.mean(-1),
        limit_accuracy=float(limit.mean()),
        per_example=per_example,
        limit_per_example=limit,
        jitter=float(post.jitter),
        num_classes=C,
        kind=post.kind,
        time=post.time,
        learning_rate=float(post.learning_rate),
        train_accuracy=train_accuracy,
        mean=post.mean.detach().cpu().numpy(),
        std=post.std.detach().cpu().numpy(),
        margins_rule=rule,
        timings=timings,
    )


class MarginPredictor:
    """The predicted test accuracy of networks trained to any margin, from one posterior.

    ``MarginPredictor(kernel, x_train, y_train, x_test, y_test, kind=..., ...)`` validates the
    inputs and computes the posterior of ``kind`` once (arguments as :func:`margin_curve`); then

    * ``curve(margins=None)``: the :class:`~gpmargin.predict.curve.MarginCurve` (margins sorted;
      None: the automatic range);
    * ``accuracy(margins)``: predicted accuracy ``(len(ensemble), len(margins))`` in the caller's
      margin order;
    * ``train_fit(margins)``: the predicted training accuracy and relative training error.

    Attributes: ``posterior`` (:class:`~gpmargin.predict.result.Posterior`), ``labels``,
    ``ensemble``, ``info`` (sizes, duplicated training inputs).
    """

    def __init__(self, kernel, x_train, y_train, x_test, y_test, *, kind: str = "nngp", time: float | None = None,
                 learning_rate: float = 1.0, ensemble: Sequence[int] = (1,), num_classes: int | None = None,
                 device=None, progress: bool = False, kernel_store=None, memory: int | None = None):
        kind, time, learning_rate = check_prediction(kernel, kind, time, learning_rate,
                                                     kernel_optional=kernel_store is not None)
        if kernel_store is not None:
            check_kernel_store(kernel_store, kind, time)
        self.ensemble = check_ensemble(ensemble)
        if device is None:
            device = x_train.device if isinstance(x_train, torch.Tensor) else "cpu"
        else:
            from gpmargin.io import resolve_device

            device = resolve_device(device)
        xtr = as_tensor(x_train, device=device, name="x_train")
        xte = as_tensor(x_test, device=device, name="x_test")
        self.labels = check_labels(y_train, y_test, num_classes=num_classes, device=device)
        check_features(xtr, xte, self.labels.y_train.shape[0], self.labels.y_test.shape[0])
        t0 = _time.perf_counter()
        duplicates = check_conflicting_duplicates(xtr, self.labels)
        t_check = _time.perf_counter() - t0
        self.posterior = posterior(kernel, xtr, self.labels.targets(), xte, kind=kind, time=time,
                                   learning_rate=learning_rate, progress=progress, kernel_store=kernel_store,
                                   memory=memory)
        self.posterior.timings["checks"] = t_check
        self.info = {"n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0]), "duplicated_train_inputs": duplicates}

    def curve(self, margins=None, ensemble: Sequence[int] | None = None) -> MarginCurve:
        """The accuracy grid at ``margins`` (sorted; None: :func:`default_margins`) and ``ensemble``
        sizes (default: the predictor's)."""
        lab = self.labels
        curve = curve_from_posterior(self.posterior, lab.y_test, None if margins is None else check_margins(margins),
                                     self.ensemble if ensemble is None else ensemble, num_classes=lab.num_classes,
                                     y_train=lab.y_train)
        curve.info.update(self.info)
        return curve

    def accuracy(self, margins) -> np.ndarray:
        """Predicted test accuracy ``(len(ensemble), len(margins))``, columns in the order of ``margins``."""
        curve = self.curve(margins)
        return _in_order(curve.margins, curve.accuracy, margins)

    def train_fit(self, margins) -> dict[str, list[float]]:
        """Per margin: the predicted training accuracy of one network and its relative error
        ``sqrt(E||f(X) - aY||^2) / ||aY||`` (0 and 1.0 for GP conditioning, which fits exactly)."""
        post = self.posterior.train
        if post is None:  # GP conditioning: the training outputs are alpha * Y exactly
            return {"train_accuracy": [1.0] * len(margins), "relative_error": [0.0] * len(margins)}
        Y = self.labels.targets()
        Y = Y.reshape(Y.shape[0], -1).to(post.mean.device)
        mean = post.mean.reshape(Y.shape[0], -1)
        bias2, noise = float((mean - Y).square().sum()), float(post.std.square().sum()) * Y.shape[1]
        ynorm2 = float(Y.square().sum())
        rel = [math.sqrt(bias2 + noise / (a * a)) / math.sqrt(ynorm2) for a in margins]
        curve = self.curve(margins)
        train = _in_order(curve.margins, curve.train_accuracy, margins)
        return {"train_accuracy": [float(v) for v in train[0]], "relative_error": rel}


def _in_order(sorted_margins, values, margins) -> np.ndarray:
    """``values[:, j]`` given at ascending ``sorted_margins`` (a curve's), in the order of ``margins``."""
    v = np.asarray(values, dtype=np.float64)
    cols = np.searchsorted(np.asarray(sorted_margins, dtype=np.float64), np.asarray(margins, dtype=np.float64))
    return v.reshape(v.shape[0], -1)[:, cols]


def margin_curve(
    kernel,
    x_train,
    y_train,
    x_test,
    y_test,
    margins=None,
    ensemble: Sequence[int] = (1,),
    kind: str = "nngp",
    *,
    time: float | None = None,
    learning_rate: float = 1.0,
    num_classes: int | None = None,
    device=None,
    progress: bool = False,
    kernel_store=None,
    memory: int | None = None,
) -> MarginCurve:
    """Predicted test accuracy of networks trained to each margin.

    ``kind="nngp"`` (the paper's model) conditions the NNGP on ``f(x_train) = alpha * Y``
    without noise; ``kind="ntk"`` is the infinite ensemble of networks trained by gradient
    descent on the squared error to ``alpha * Y`` (for ``time``, default to convergence,
    with step ``learning_rate``; see :mod:`gpmargin.predict.gradient`); ``kind="ntkgp"``
    conditions a GP with the NTK as covariance.  Returns the exact expected test accuracy
    of one network (``k = 1``) and of the sign / argmax of a ``k``-network average, for
    every margin and ensemble size.

    Parameters
    ----------
    kernel : callable ``kernel(x1, x2=None, get=kind)`` with ``kernel.diag(x, get=kind)``
        E.g. :func:`gpmargin.kernels.paper_mlp`.
    x_train, x_test : (n, ...) and (m, ...) arrays or tensors with the same feature shape.
    y_train, y_test : labels.  +-1 floats: binary, targets ``alpha * y``.  Integer class
        indices ``0..C-1``: one output per class, targets ``alpha * one_hot(y)``.
    margins : 1-D sequence of ``alpha > 0``, or None for the automatic range of
        :func:`default_margins` (41 log-spaced margins from about chance to about the limit).
    ensemble : ensemble sizes ``k`` (positive integers).
    kind : ``"nngp"``, ``"ntk"`` or ``"ntkgp"``.
    time : None (trained to convergence) or a training time > 0 for ``"ntk"`` and ``"nngp"``
        (the readout-only gradient flow), scaled as neural-tangents'
        ``gradient_descent_mse_ensemble``: ``exp(-learning_rate * time * Theta / N)``, ``N``
        the number of target entries.  The training-set accuracy at that time is in
        ``curve.train_accuracy``.
    learning_rate : gradient-descent step size (> 0).
    num_classes : multi-class only, defaults to ``1 + max(label)``.
    device : torch device for the computation (default: that of ``x_train`` if a tensor, else CPU).
    progress : show a tqdm bar while the test kernel is computed.
    kernel_store : an open store (:func:`gpmargin.distributed.open_store`, or what
        :func:`gpmargin.distributed.compute_kernel_store` returns) made by ``gpmargin kernel`` for
        exactly these inputs (and ``kernel``, which may then be None): its matrices are used
        instead of calling the kernel, and the posterior is solved out of core in ``memory`` bytes
        of working memory (default 8 GiB), the factor kept in the store.

    Returns
    -------
    MarginCurve
        ``accuracy`` is ``[len(ensemble), len(margins)]``; the posterior is computed once
        and all margins and ensemble sizes are evaluated from its mean and std.

    Raises
    ------
    GpmarginError
        Bad margins or ensemble sizes, labels that are neither +-1 nor class indices,
        mismatched or empty inputs, duplicated training inputs with conflicting labels,
        unknown ``kind``, ``time`` or ``learning_rate`` not > 0, ``"ntk"``/``"ntkgp"`` with a
        kernel without an NTK, or a kernel matrix that stays indefinite even with jitter.  Exactly duplicated
        training inputs with equal labels are fine: jitter is added, reported in
        ``curve.jitter`` and announced by a ``JitterWarning``.
    """
    margins = None if margins is None else check_margins(margins)
    predictor = MarginPredictor(kernel, x_train, y_train, x_test, y_test, kind=kind, time=time,
                                learning_rate=learning_rate, ensemble=ensemble, num_classes=num_classes, device=device,
                                progress=progress, kernel_store=kernel_store, memory=memory)
    return predictor.curve(margins)
