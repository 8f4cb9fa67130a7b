"""``gpmargin validate gd``: gradient descent against its infinite-width theory (Lee et al. 2019).

MNIST parity (1000 train / 9000 test, as fig6), the depth-3 paper MLP (no biases, sqrt(2) ReLU)
in the NTK parameterisation (``paper_mlp(3).network(width, parameterization="ntk")``), full-batch
gradient descent with a constant learning rate on ``(1/2) mean((f(X) - alpha y)^2)`` --
neural-tangents' loss, so ``steps`` steps of size ``lr`` are its time ``t = steps`` with learning
rate ``lr`` (:meth:`~validation.harness.margin_sweep.MarginSweep.trained_time`).  Predictions:
NNGP posterior, gradient descent at t = inf and at t = steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from validation.harness.experiment import logspace
from validation.harness.margin_sweep import MarginSweep


@dataclasses.dataclass(frozen=True)
class GradientDescent(MarginSweep):
    name: ClassVar[str] = "gd"
    summary: ClassVar[str] = "gradient descent vs its NTK theory (NNGP, t = inf, t = trained)"

    @classmethod
    def settings(cls, scale: str) -> dict[str, Any]:
        """``lr = 1`` is stable: the largest NTK eigenvalue on this split is 1067 = 1.07 N, below
        2 N.  Margins from chance (0.01) to the limit (6.3, where the predicted accuracy is within
        0.1 point of its alpha -> inf value) every 0.7 decade; the next one, 31.6, diverges with
        lr 1 at widths 128 and 512 (docs/gd_gap.md).  ``quick``: width 256, 300 steps, 9 margins
        from 0.01 to 3.2 (four in the transition), 3 seeds (independent networks and data splits) of
        4 members, ensembles 1-4: about 7 minutes on 2 cores; ``paper``: width 4096, 9 margins,
        2 seeds; ``smoke``: tests."""
        common = dict(dataset="mnist", task="parity", depth=3, model="ntk-mlp", optimizer="sgd", loss="half_mse",
                      lr=1.0, decay=1.0, gp_kind="ntk")
        if scale == "paper":
            return dict(n_train=1000, n_test=9000, width=4096, steps=300, margins=logspace(-2, 0.8, 9), seeds=(0, 1),
                        members=8, ensembles=(1, 2, 4, 8), **common)
        if scale == "quick":
            return dict(n_train=1000, n_test=9000, width=256, steps=300, margins=logspace(-2, 0.5, 9),
                        seeds=(0, 1, 2), members=4, ensembles=(1, 2, 4), **common)
        return dict(n_train=200, n_test=1000, width=128, steps=60, margins=(0.03, 0.3, 3.0), seeds=(0,), members=4,
                    ensembles=(1, 2, 4), **common)


EXPERIMENT = GradientDescent
