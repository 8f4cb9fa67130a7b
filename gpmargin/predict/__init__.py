"""Margin-conditioned GP posteriors, gradient-descent predictions and predicted test-accuracy curves.

The model (Farhang et al., ICML 2022): a network trained to normalized margin
``alpha`` is a draw from the NNGP posterior conditioned, without noise, on
``f(X_train) = alpha * Y`` (``kind="nngp"``).  For networks trained by gradient descent
on the squared error to ``alpha * Y``, ``kind="ntk"`` gives the distribution of their outputs
(Lee et al. 2019), to convergence or after a finite ``time``; ``kind="ntkgp"`` conditions a GP
with the NTK as covariance.  In every kind the expected test accuracy follows in closed
form from the mean ``alpha * mu_i`` and standard deviation ``s_i`` of each test point.

Main entry points
-----------------
margin_curve(kernel, x_train, y_train, x_test, y_test, margins, ensemble=(1,), kind="nngp",
             time=None, learning_rate=1.0)
    -> MarginCurve (accuracy [len(ensemble), len(margins)], limit, per-example, I/O, plot)
margin_at_fraction(curve, fraction=0.5, ensemble=1)
    margin where accuracy gets ``fraction`` of the way from chance to its limit

Building blocks
---------------
posterior                  dispatcher: mu, s (and the joint covariance) for each kind (posterior.py)
condition / gp_posterior   GP conditioning ("nngp", "ntkgp")                      (posterior.py)
gradient_descent_posterior gradient-descent training ("ntk"; "nngp" at finite time) (gradient.py)
Posterior                  the result: mean, std (and covariance) at alpha = 1     (result.py)
sample_posterior           joint draws of the test outputs, for checks            (result.py)
train_kernel               K_XX, exactly symmetric, and the other kernel blocks   (kernel_blocks.py)
curve_from_posterior       accuracy grid from a computed posterior                (curve.py)
gpmargin.predict.accuracy  binary and multi-class correctness probabilities       (accuracy.py)
"""

from gpmargin.predict.curve import (
    MarginCurve,
    curve_from_posterior,
    default_margins,
    margin_at_fraction,
    margin_curve,
)
from gpmargin.predict.gradient import gradient_descent_posterior
from gpmargin.predict.posterior import condition, gp_posterior, posterior
from gpmargin.predict.result import Posterior, sample_posterior

__all__ = [
    "MarginCurve",
    "margin_curve",
    "margin_at_fraction",
    "curve_from_posterior",
    "default_margins",
    "Posterior",
    "posterior",
    "gp_posterior",
    "gradient_descent_posterior",
    "condition",
    "sample_posterior",
]
