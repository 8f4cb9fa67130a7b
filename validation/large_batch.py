"""``gpmargin validate large_batch``: the large-batch generalization gap and its remedies.

Hoffer, Hubara & Soudry (2017), *Train longer, generalize better*: Fashion-MNIST with the
paper's F1 network (an MLP of five 512-unit layers, each ``Linear -> BatchNorm -> ReLU``, then
a linear layer to the 10 classes), trained by SGD with momentum on the cross-entropy.  One
unit per (arm, seed), one network each:

``small``     batch ``B`` (``batch_size``), learning rate ``lr``, ``epochs`` epochs;
``large``     batch ``B_L = large_batch_size`` (>= 16 B), everything else as ``small``;
``+sqrt``     ... with ``lr * sqrt(B_L / B)`` (:func:`validation.schedules.sqrt_lr`);
``+ghost``    ... and ghost batch norm over chunks of ``ghost_batch_size`` (:mod:`validation.ghost_bn`);
``+regime``   ... and ``B_L / B`` times the epochs and lr milestones (:func:`validation.schedules.regime_adaptation`).

Each network records fig6's measures (:func:`gpmargin.measures.network_measures` on its
linear layers' weights; batch norm is not part of the norm products) and its distance from
initialisation ``||w_t - w_0||`` at log-spaced iterations, fitted by a log and a power law
(:func:`validation.distance.fit_distance`).  Optional gradient-norm clipping (``clip``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from gpmargin.errors import GpmarginError
from validation.distance import distance, fit_distance
from validation.experiments import POSITIVE, SCALES, ExperimentConfig
from validation.fields import choice, integer, listed, number, optional
from validation.ghost_bn import GhostBatchNorm1d, check_ghost_batch
from validation.schedules import regime_adaptation, sqrt_lr, step_lr

ARMS = ("small", "large", "large+sqrt", "large+sqrt+ghost", "large+sqrt+ghost+regime")


# ----------------------------------------------------------------------------- the network
def f1_network(in_dim: int, classes: int, width: int = 512, hidden: int = 5, ghost_batch_size: int | None = None,
               seed: int = 0) -> nn.Sequential:
    """F1: ``hidden`` blocks ``Linear(no bias) -> BatchNorm1d (ghost if ghost_batch_size) -> ReLU``,
    then ``Linear`` to ``classes``; torch's default init drawn under ``torch.manual_seed(seed)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(hidden):
            bn = nn.BatchNorm1d(width) if ghost_batch_size is None else GhostBatchNorm1d(width, ghost_batch_size)
            layers += [nn.Linear(d, width, bias=False), bn, nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, classes))
        return nn.Sequential(*layers)


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]


# ----------------------------------------------------------------------------- training
def log_checkpoints(total: int, per_decade: int = 16) -> list[int]:
    """Iterations ``1 .. total`` at about ``per_decade`` log-spaced points per decade."""
    pts = np.unique(np.round(np.logspace(0, np.log10(max(total, 1)), int(per_decade * np.log10(max(total, 10))) + 1)))
    return [int(p) for p in pts if 1 <= p <= total]


def train_minibatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, epochs: float,
                    lr: float, milestones=(), lr_decay: float = 0.1, momentum: float = 0.9,
                    weight_decay: float = 0.0, clip: float | None = None, seed: int = 0) -> dict[str, Any]:
    """SGD with momentum on the cross-entropy, shuffled batches (the last incomplete one dropped),
    learning rate ``step_lr(lr, epoch, milestones, lr_decay)``; gradient norm clipped to ``clip``.

    Returns ``iterations``, ``distance`` (``||w_t - w_0||`` at :func:`log_checkpoints`), ``final_loss``.
    """
    n = x.shape[0]
    if not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise GpmarginError(f"batch_size={batch_size!r} must be a positive integer at most the training set ({n})")
    if clip is not None and not clip > 0:
        raise GpmarginError(f"clip must be positive (a gradient-norm bound) or None, got {clip!r}")
    per_epoch = n // batch_size
    total = int(round(epochs * per_epoch))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    params = [p for p in model.parameters()]
    init = [p.detach().clone() for p in params]
    marks = set(log_checkpoints(total))
    its, dist = [], []
    gen = torch.Generator().manual_seed(int(seed))
    model.train()
    t, loss = 0, torch.tensor(float("nan"))
    while t < total:
        perm = torch.randperm(n, generator=gen).to(x.device)
        for b in range(per_epoch):
            if t >= total:
                break
            for g in opt.param_groups:
                g["lr"] = step_lr(lr, t / per_epoch, milestones, lr_decay)
            idx = perm[b * batch_size:(b + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            t += 1
            if t in marks:
                its.append(t)
                dist.append(distance(params, init))
    return {"iterations": its, "distance": dist, "final_loss": float(loss.detach()), "updates": total}


# ----------------------------------------------------------------------------- the experiment
@dataclasses.dataclass(frozen=True)
class LargeBatchConfig(ExperimentConfig):
    """Data and network as the base config (``width`` = 512-unit layers, ``depth`` = hidden layers + 1),
    ``lr`` the small batch's learning rate, plus the batch settings."""

    needs_margins: ClassVar[bool] = False
    arms: tuple[str, ...] = ARMS
    batch_size: int = 128
    large_batch_size: int = 2048
    ghost_batch_size: int | None = None  # default: batch_size
    epochs: float = 2.0
    milestones: tuple[float, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float | None = None

    # fig6's margins, members, ensembles, steps, decay, tol, loss and GP settings do not apply (placeholders)
    FIELDS: ClassVar[dict] = {
        **{k: f for k, f in ExperimentConfig.FIELDS.items()
           if k not in ("margins", "members", "ensembles", "steps", "decay", "tol", "loss", "gp_kind", "model")},
        "arms": listed(choice(*ARMS), distinct=True), "batch_size": integer(1),
        "large_batch_size": integer(1), "ghost_batch_size": optional(integer(1)), "epochs": POSITIVE,
        "milestones": listed(POSITIVE, empty=True), "momentum": number(0, 1, below=True), "weight_decay": number(0),
        "clip": optional(POSITIVE)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_train < self.large_batch_size:
            raise GpmarginError(f"large_batch_size={self.large_batch_size} is larger than the training set "
                                f"(n_train={self.n_train})")
        if self.large_batch_size < self.batch_size or self.large_batch_size % self.batch_size:
            raise GpmarginError(f"large_batch_size={self.large_batch_size} must be a multiple of "
                                f"batch_size={self.batch_size}")
        check_ghost_batch(self.ghost, self.large_batch_size)

    @property
    def ghost(self) -> int:
        return self.batch_size if self.ghost_batch_size is None else self.ghost_batch_size

    def units(self) -> list[dict[str, Any]]:
        return [{"arm": a, "seed": int(s)} for s in self.seeds for a in self.arms]

    def unit_key(self, unit: dict[str, Any]) -> tuple:
        return (unit["arm"], int(unit["seed"]))

    def unit_function(self) -> Callable:
        return large_batch_unit

    def compare(self, out, records, task=None, device=None, verbose: bool = True) -> dict[str, Any]:
        from validation.large_batch_report import compare_large_batch

        return compare_large_batch(self, out, records, task=task, device=device, verbose=verbose)

    def arm_settings(self, arm: str) -> dict[str, Any]:
        """Batch, ghost batch, learning rate, epochs and milestones of ``arm``."""
        if arm not in ARMS:
            raise GpmarginError(f"unknown arm {arm!r}: use one of {', '.join(ARMS)}")
        if arm == "small":
            return dict(batch_size=self.batch_size, ghost_batch_size=None, lr=self.lr, epochs=self.epochs,
                        milestones=tuple(self.milestones))
        s = dict(batch_size=self.large_batch_size, ghost_batch_size=None, lr=self.lr, epochs=self.epochs,
                 milestones=tuple(self.milestones))
        if "sqrt" in arm:
            s["lr"] = sqrt_lr(self.lr, self.large_batch_size, self.batch_size)
        if "ghost" in arm:
            s["ghost_batch_size"] = self.ghost
        if "regime" in arm:
            s["epochs"], s["milestones"] = regime_adaptation(self.epochs, self.milestones, self.large_batch_size,
                                                             self.batch_size)
        return s


def large_batch_unit(config: LargeBatchConfig, task, unit: dict[str, Any], device) -> dict[str, Any]:
    """Train and measure one F1 network of ``unit["arm"]`` with seed ``unit["seed"]``."""
    from gpmargin import measures as M

    s = config.arm_settings(unit["arm"])
    dtype = getattr(torch, config.dtype)
    x_tr = torch.as_tensor(np.asarray(task.x_train)).to(device=device, dtype=dtype)
    x_te = torch.as_tensor(np.asarray(task.x_test)).to(device=device, dtype=dtype)
    y_tr = torch.as_tensor(np.asarray(task.y_train)).long().to(device)
    y_te = torch.as_tensor(np.asarray(task.y_test)).long().to(device)
    model = f1_network(x_tr.shape[1], int(task.num_classes), config.width, config.depth - 1, s["ghost_batch_size"],
                       seed=unit["seed"]).to(device=device, dtype=dtype)
    w0 = [w.clone() for w in linear_weights(model)]
    t0 = time.perf_counter()
    tr = train_minibatch(model, x_tr, y_tr, batch_size=s["batch_size"], epochs=s["epochs"], lr=s["lr"],
                         milestones=s["milestones"], momentum=config.momentum, weight_decay=config.weight_decay,
                         clip=config.clip, seed=unit["seed"])
    train_s = time.perf_counter() - t0
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
    model.eval()
    with torch.no_grad():
        f_tr = torch.cat([model(x_tr[i:i + 4096]) for i in range(0, len(x_tr), 4096)]).double().cpu()
        f_te = torch.cat([model(x_te[i:i + 4096]) for i in range(0, len(x_te), 4096)]).double().cpu()
    finite = math.isfinite(tr["final_loss"]) and bool(torch.isfinite(f_tr).all() and torch.isfinite(f_te).all())
    if not finite or not all(bool(torch.isfinite(w).all()) for w in linear_weights(model)):
        # diverged (e.g. too large a learning rate): recorded as such, with no measures
        return {"settings": settings, "updates": tr["updates"], "final_train_loss": None, "diverged": True,
                "gibbs_test_accuracy": None, "members": [],
                "distance": {"iterations": [], "distance": [], "fit": None}, "training": {"train_wall_s": train_s}}
    meas = M.network_measures([w.double() for w in linear_weights(model)], f_tr, y_tr.cpu(), x_tr.double().cpu(),
                              f_te, y_te.cpu(), init_weights=[w.double() for w in w0], lipschitz=1.0)
    fit = fit_distance(tr["iterations"], tr["distance"]) if len(tr["iterations"]) >= 3 else None
    return {"settings": settings, "updates": tr["updates"], "final_train_loss": tr["final_loss"], "diverged": False,
            "gibbs_test_accuracy": meas["test_accuracy"], "members": [meas],
            "distance": {"iterations": tr["iterations"], "distance": tr["distance"], "fit": fit},
            "training": {"train_wall_s": train_s}}


def large_batch(scale: str) -> LargeBatchConfig:
    """The ``large_batch`` experiment at ``scale``.

    ``paper``: all 60,000 training images, batch 128 vs 2048 (16x), lr 0.1, 10 epochs with
    milestones at 5 and 8 (regime: x16), 3 seeds.  ``quick``: 4096 training images (a
    subset), batch 32 vs 512 (16x), lr 0.01, 2 epochs, one seed (the regime arm trains 32 epochs).  ``smoke``: tests.
    """
    common = dict(name="large_batch", dataset="fashion_mnist", task="multiclass", depth=6, width=512,
                  optimizer="sgd", loss="mse", decay=1.0, steps=0, margins=(), ensembles=(1,), members=1,
                  carve_from=None)
    if scale == "paper":
        return LargeBatchConfig(scale="paper", n_train=60000, n_test=10000, lr=0.1, batch_size=128,
                                large_batch_size=2048, epochs=10, milestones=(5.0, 8.0), seeds=(0, 1, 2), **common)
    if scale == "quick":
        return LargeBatchConfig(scale="quick", n_train=4096, n_test=10000, lr=0.01, batch_size=32,
                                large_batch_size=512, epochs=2, seeds=(0,), **common)
    if scale == "smoke":
        common.update(width=32, depth=3)
        return LargeBatchConfig(scale="smoke", n_train=256, n_test=500, lr=0.05, batch_size=8, large_batch_size=128,
                                epochs=1, seeds=(0,), **common)
    raise GpmarginError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
