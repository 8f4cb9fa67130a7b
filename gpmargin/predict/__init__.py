"""Margin-conditioned GP posteriors and predicted test-accuracy curves.

The model (Farhang et al., ICML 2022): a network trained to normalized margin
``alpha`` is a draw from the GP (NNGP, or NTK-GP) posterior conditioned, without
noise, on ``f(X_train) = alpha * Y``.  Its expected test accuracy follows in closed
form from the posterior mean ``alpha * mu_i`` and standard deviation ``s_i`` of each
test point.

Main entry points
-----------------
margin_curve(kernel, x_train, y_train, x_test, y_test, margins, ensemble=(1,), kind="nngp")
    -> MarginCurve (accuracy [len(ensemble), len(margins)], limit, per-example, I/O, plot)
margin_at_fraction(curve, fraction=0.5, ensemble=1)
    margin where accuracy gets ``fraction`` of the way from chance to its limit

Building blocks
---------------
posterior / condition      mu, s (and the joint covariance) at the test points   (posterior.py)
sample_posterior           joint draws of the test outputs, for checks            (posterior.py)
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
from gpmargin.predict.posterior import Posterior, condition, posterior, sample_posterior

__all__ = [
    "MarginCurve",
    "margin_curve",
    "margin_at_fraction",
    "curve_from_posterior",
    "default_margins",
    "Posterior",
    "posterior",
    "condition",
    "sample_posterior",
]
