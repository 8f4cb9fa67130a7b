"""Helpers shared by the figure modules: data, batched training, measurements, GP curves, plots.

Training, Nero, the networks, the measures and the GP predictions all come from the project
(``validation``, ``gpmargin.measures``, ``gpmargin.kernels``, ``gpmargin.predict``); this module
only wires them together the way the figures need.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from gpmargin import measures as M
from gpmargin.errors import GpmarginError

#: PyTorch's default ``nn.Linear`` init is uniform(+-1/sqrt(fan_in)), i.e. std 1/sqrt(3 fan_in);
#: the SGD figures use Gaussian weights with that std (``init_gain`` = 1/sqrt(3) on N(0, 1/fan_in)).
TORCH_DEFAULT_GAIN = 1.0 / math.sqrt(3.0)


def logspace(lo: float, hi: float, n: int) -> list[float]:
    return [float(v) for v in np.logspace(lo, hi, n)]


def task(dataset: str, task_name: str, n_train: int, n_test: int | None, seed: int, **kw):
    """``gpmargin.data.make_task`` (flattened unless ``flatten=False``)."""
    from gpmargin.data import make_task

    return make_task(dataset, task_name, n_train=n_train, n_test=n_test, seed=seed, **kw)


def data_info(t) -> dict[str, Any]:
    """The parts of ``TaskData.info`` worth keeping in a figure's JSON (sizes, source, substitution)."""
    keep = ("dataset", "task", "n_train", "n_test", "attack", "attack_labels", "random_labels", "seed", "num_classes", "labels",
            "preprocessing", "carved_from", "substitution", "files")
    return {k: t.info.get(k) for k in keep}


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def mlp_weights(k: int, in_dim: int, depth: int, width: int, outputs: int, seed: int, *, init: str = "gaussian",
                sigmas: Sequence[float] | None = None, gain: float = 1.0,
                dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Stacked initial weights ``(k, out, in)`` per layer of ``k`` paper MLPs, member ``j`` seeded
    ``member_seed(seed, j)``: the finite networks of their kernel (:class:`~validation.training.models.EnsembleMLP`).

    ``init="scale"`` with ``sigmas[j]``: member ``j``'s first layer is N(0, sigmas[j]^2) (Fig 5a);
    members with different ``sigmas`` are networks of different kernels, so each is built alone
    (the same weights as member ``j`` of an ensemble with that sigma).
    ``gain`` multiplies every weight (``TORCH_DEFAULT_GAIN`` for the SGD figures).
    """
    from validation.training.models import MLP, EnsembleMLP, member_seed

    if sigmas is None:
        ws = [w.detach() for w in EnsembleMLP(k, in_dim, depth, width, outputs, seed=seed, init=init,
                                              dtype=dtype).weights]
    else:
        nets = [MLP(in_dim, depth, width, outputs, seed=member_seed(seed, j), init=init, sigma=float(sigmas[j]),
                    dtype=dtype) for j in range(k)]
        ws = [torch.stack([net.weights[i].detach() for net in nets]) for i in range(depth)]
    return [w * gain for w in ws] if gain != 1.0 else ws


def per_member_targets(y: torch.Tensor, alphas: Sequence[float], num_classes: int | None) -> torch.Tensor:
    """``(k, n, c)`` targets ``alphas[j] * Y`` (one-hot or +-1)."""
    from validation.training.losses import margin_targets

    return torch.stack([margin_targets(y, float(a), num_classes) for a in alphas])


def forward(model, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``model(x)`` in chunks of examples, without gradients: ``(k, n, c)`` in float64 on the CPU."""
    with torch.no_grad():
        outs = [model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
    return torch.cat(outs, dim=1).double().cpu()


def train_mlp_group(x_train: torch.Tensor, targets: torch.Tensor, *, depth: int, width: int, outputs: int, seed: int,
                    optimizer: str, lr: float, decay: float, steps: int, device, dtype: str = "float32",
                    init: str = "gaussian", sigmas: Sequence[float] | None = None, gain: float = 1.0,
                    loss: str = "norm", tol: float | None = None):
    """Train ``k = targets.shape[0]`` paper MLPs together (one batched ensemble, full batch).

    Returns ``(model, init_weights, train_result)``; ``init_weights`` are the weights after the
    optimiser was built (Nero with constraints projects them), i.e. where training started.
    """
    from validation.training.models import EnsembleMLP
    from validation.training.fullbatch import make_optimizer, train

    dt = dtype_of(dtype)
    k = targets.shape[0]
    ws = mlp_weights(k, x_train.shape[1], depth, width, outputs, seed, init=init, sigmas=sigmas, gain=gain, dtype=dt)
    model = EnsembleMLP(k, x_train.shape[1], depth, width, outputs, weights=ws, dtype=dt).to(device)
    opt = make_optimizer(model, optimizer, lr)
    init_w = [w.detach().clone() for w in model.weights]
    x = x_train.to(device=device, dtype=dt)
    res = train(model, x, targets.to(device=device, dtype=dt), steps=steps, lr=lr, decay=decay, optimizer=opt,
                loss=loss, tol=tol)
    return model, init_w, res


def member_measures(model, init_w, j: int, f_tr: torch.Tensor, y_tr, x_tr, f_te: torch.Tensor, y_te, depth: int,
                    clean: torch.Tensor | None = None, keep_margins: bool = False) -> dict[str, Any]:
    """``gpmargin.measures.network_measures`` of member ``j`` plus a few figure-specific numbers.

    ``clean``: boolean mask of training rows with true labels (accuracy and margins on them).
    ``keep_margins``: also return every training margin (for histograms).
    """
    ws = [w.detach()[j].double().cpu() for w in model.weights]
    w0 = [w[j].double().cpu() for w in init_w]
    x64 = x_tr.double().cpu()
    m = M.network_measures(ws, f_tr[j], y_tr, x64, f_te[j], y_te, init_weights=w0, lipschitz=M.mlp_lipschitz(depth))
    margins = M.margins(f_tr[j], y_tr)
    m["train_margin_median"] = float(np.median(margins))
    m["x_fro_over_n"] = float(x64.reshape(len(x64), -1).norm() / len(x64))
    m["frobenius_product"] = float(math.prod(m["frobenius_norms"]))
    if clean is not None:
        cm = margins[clean.cpu().numpy().astype(bool)]
        m["clean_train_accuracy"] = float(np.mean(cm > 0))
        m["clean_margin_median"] = float(np.median(cm))
        if keep_margins:
            m["clean_margins"] = cm.tolist()
    if keep_margins:
        m["train_margins"] = margins.tolist()
    return m


def relative_errors(f_tr: torch.Tensor, targets: torch.Tensor) -> list[float]:
    t = targets.double().cpu()
    if t.dim() == 2:
        t = t.expand(f_tr.shape[0], *t.shape)
    return ((f_tr - t).norm(dim=(1, 2)) / t.norm(dim=(1, 2)).clamp_min(1e-30)).tolist()


def gp_predictor(depth: int, t, *, constrained: bool = False, kind: str = "nngp", y_train=None, device=None):
    """The :class:`gpmargin.predict.MarginPredictor` of one network of the depth-``depth`` paper MLP
    on task ``t`` (``kind``: ``"nngp"`` posterior or ``"ntk"`` gradient descent to convergence):
    ``.curve(margins)``, ``.accuracy(margins)`` from one posterior.  ``y_train`` overrides the
    task's training labels."""
    from gpmargin.kernels import paper_mlp
    from gpmargin.predict import MarginPredictor

    y_tr = t.y_train if y_train is None else y_train
    nc = None if y_tr.is_floating_point() else int(t.num_classes)
    return MarginPredictor(paper_mlp(depth, constrained=constrained), t.x_train, y_tr, t.x_test, t.y_test, kind=kind,
                           num_classes=nc, device=device)


def gp_curve(depth: int, t, margins: Sequence[float], *, constrained: bool, kind: str = "nngp", y_train=None,
             device=None) -> dict:
    """Predicted test accuracy of the depth-``depth`` paper MLP at ``margins`` (one network):
    NNGP posterior (``kind="nngp"``) or gradient descent to convergence (``kind="ntk"``).

    ``y_train`` overrides the task's training labels (e.g. random labels, or clean rows only).
    """
    curve = gp_predictor(depth, t, constrained=constrained, kind=kind, y_train=y_train, device=device).curve(margins)
    return {"margins": curve.margins.tolist(), "accuracy": [float(v) for v in curve.accuracy[0]],  # sorted
            "limit_accuracy": float(curve.limit_accuracy), "chance": float(curve.chance),
            "kernel": f"paper_mlp(depth={depth}, constrained={constrained})", "kind": kind,
            "jitter": float(curve.jitter)}


def overlay_gaps(nets: Sequence[dict], depth: int, t, predictions: dict[str, dict], device=None) -> dict:
    """Gap statistics (``validation.theory.gaps.gap_statistics``) of single networks ``nets`` (their
    ``value`` is the target margin) against each prediction ``{name: gp_predictor kwargs}``."""
    from validation.theory.gaps import gap_statistics

    if not nets:
        return {name: None for name in predictions}
    margins = np.array([n["value"] for n in nets], dtype=np.float64)
    measured = np.array([[n["test_accuracy"] for n in nets]], dtype=np.float64)
    out = {}
    for name, kw in predictions.items():
        predict = gp_predictor(depth, t, device=device, **kw)
        out[name] = gap_statistics(margins, (1,), measured, predict.accuracy)
    return out


def histogram(values: Sequence[float], bins: np.ndarray) -> list[int]:
    return np.histogram(np.asarray(values, dtype=np.float64), bins=bins)[0].tolist()


def claim(holds: bool, detail: str) -> dict[str, Any]:
    return {"holds": bool(holds), "detail": detail}


def check_scale(scales: dict, scale: str, name: str) -> dict:
    if scale not in scales:
        raise GpmarginError(f"{name}: unknown scale {scale!r}: use one of {', '.join(scales)}")
    return dict(scales[scale])


def no_dataset_option(name: str, dataset: str | None, default: str) -> str:
    """Figures drawn on one fixed dataset accept ``--dataset`` only when it names that dataset."""
    if dataset is not None and dataset.strip().lower().replace("-", "_") != default:
        raise GpmarginError(f"{name} is defined on {default}; --dataset {dataset} is not supported for it")
    return default


def fixed_dataset_config(scales: dict, name: str, dataset: str = "mnist"):
    """``config(scale, dataset=None)`` of a figure drawn on one fixed dataset: the scale's
    settings plus ``scale``; ``--dataset`` is accepted only when it names that dataset."""

    def config(scale: str, dataset_option: str | None = None) -> dict:
        cfg = check_scale(scales, scale, name)
        no_dataset_option(name, dataset_option, dataset)
        return dict(cfg, scale=scale)

    return config


def mean_sem(v: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    sem = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else 0.0
    return float(a.mean()), sem


def style(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None, legend: bool = True,
          fontsize: str = "small") -> None:
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=fontsize)


def scale_note(cfg: dict) -> str:
    """Suffix for figure titles: scale and the data substitution, never silent."""
    note = f"[{cfg['scale']} scale]"
    if cfg.get("substitution"):
        note += f" — {cfg['substitution']}"
    return note
