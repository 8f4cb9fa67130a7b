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
MarginPredictor(kernel, x_train, y_train, x_test, y_test, kind="nngp", time=None, ...)
    one posterior; .curve(margins), .accuracy(margins), .train_fit(margins)     (predictor.py)
margin_curve(kernel, x_train, y_train, x_test, y_test, margins, ensemble=(1,), kind="nngp", ...)
    -> MarginCurve (accuracy [len(ensemble), len(margins)], limit, per-example, I/O, plot)
margin_at_fraction(curve, fraction=0.5, ensemble=1)
    margin where accuracy gets ``fraction`` of the way from chance to its limit (margin_grid.py)

Building blocks
---------------
posterior                  dispatcher: every kind, kernel in memory or in a store   (posterior.py)
condition                  GP conditioning on given matrices                        (posterior.py)
conditioned, KernelSource  the one GP conditioning loop over any kernel source      (source.py)
gradient_descent_posterior gradient-descent training ("ntk"; "nngp" at finite time) (gradient.py)
Posterior                  the result: mean, std (and covariance) at alpha = 1     (result.py)
sample_posterior           joint draws of the test outputs, for checks            (result.py)
train_kernel               K_XX, exactly symmetric, and the other kernel blocks   (kernel_blocks.py)
curve_from_posterior       accuracy grid from a computed posterior                (predictor.py)
MarginCurve                the curve: files, plot                                 (curve.py)
default_margins            the automatic margin range                             (margin_grid.py)
gpmargin.predict.accuracy  binary and multi-class correctness probabilities       (accuracy.py)
"""

from gpmargin.predict.curve import MarginCurve
from gpmargin.predict.gradient import gradient_descent_posterior
from gpmargin.predict.margin_grid import default_margins, margin_at_fraction
from gpmargin.predict.posterior import condition, posterior
from gpmargin.predict.predictor import MarginPredictor, curve_from_posterior, margin_curve
from gpmargin.predict.result import Posterior, sample_posterior
from gpmargin.predict.source import KernelSource, TrainFactor, conditioned

__all__ = [
    "MarginPredictor",
    "MarginCurve",
    "margin_curve",
    "margin_at_fraction",
    "curve_from_posterior",
    "default_margins",
    "Posterior",
    "posterior",
    "condition",
    "conditioned",
    "KernelSource",
    "TrainFactor",
    "gradient_descent_posterior",
    "sample_posterior",
]
