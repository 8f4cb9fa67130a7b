"""``gpmargin validate fig6``: Fig 6 of the paper, networks trained at controlled margins vs the NNGP.

MNIST parity, the depth-5 paper MLP trained with constrained Nero on ``||f(X) - alpha Y||`` at
20 margins; measured test accuracy of single networks and ensembles against the NNGP posterior
with the paper's kernel and with the exact kernel of Nero-constrained networks
(:class:`~validation.harness.margin_sweep.MarginSweep` does the rest).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from validation.harness.experiment import logspace
from validation.harness.margin_sweep import MarginSweep


@dataclasses.dataclass(frozen=True)
class Fig6(MarginSweep):
    name: ClassVar[str] = "fig6"
    summary: ClassVar[str] = "Nero at controlled margins vs the NNGP (the paper's Fig 6)"

    @classmethod
    def settings(cls, scale: str) -> dict[str, Any]:
        """Paper: 1000 train / 9000 test images (carved from MNIST's test split when the training
        split is absent), width 2048, lr 0.01 decayed by 0.99 per step, 500 steps, margins
        ``logspace(-3, 1, 20)``, ensembles of 1, 2, 4, 8, 16 networks, 3 seeds of 16.
        ``quick``: the same data, depth and lr schedule; width 256, 9 margins (every third of a
        decade from 4.6e-3 to 2.2, four of them in the transition, where the predicted accuracy is
        10-90 % of the way from chance to its limit), 3 seeds (independent networks and data
        splits) of 2 members: about 11 minutes on 2 cores.  ``smoke``: depth 3, 150 steps, 200 /
        1000 images, width 64, 3 margins."""
        common = dict(dataset="mnist", task="parity", depth=5, optimizer="nero", loss="norm", lr=0.01, decay=0.99,
                      steps=500)
        if scale == "paper":
            return dict(n_train=1000, n_test=9000, width=2048, margins=logspace(-3, 1, 20), seeds=(0, 1, 2),
                        members=16, ensembles=(1, 2, 4, 8, 16), **common)
        if scale == "quick":
            return dict(n_train=1000, n_test=9000, width=256, margins=logspace(-3, 1, 13)[2:11], seeds=(0, 1, 2),
                        members=2, ensembles=(1, 2), **common)
        common.update(depth=3, steps=150)
        return dict(n_train=200, n_test=1000, width=64, margins=(0.01, 0.3, 3.0), seeds=(0,), members=4,
                    ensembles=(1, 2, 4), **common)


EXPERIMENT = Fig6
