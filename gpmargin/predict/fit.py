r"""Fit a network kernel's weight and bias variances by the marginal likelihood of the training labels.

The labels ``y`` (``(n,)`` of +-1, or ``(n, C)`` one-hot scores, one independent GP per column)
are modelled as :math:`y \sim \mathcal N(0, K_\theta + \sigma^2 I)` with :math:`K_\theta` the
NNGP (or NTK) of the description with weight variances :math:`W_{std}^2` and bias variances
:math:`b_{std}^2` (:mod:`gpmargin.kernels.hyperparameters`); the log marginal likelihood per
label,

.. math::
    \mathcal L(\theta, \sigma^2) = -\frac{1}{nC}\sum_c \Big[\tfrac12 y_c^\top (K_\theta + \sigma^2 I)^{-1} y_c
        + \tfrac12 \log\det(K_\theta + \sigma^2 I)\Big] - \tfrac12 \log 2\pi,

is maximised over the logarithms of the variances and of :math:`\sigma^2` by L-BFGS, with exact
gradients by autograd through the kernel (:math:`\sigma^2` is kept above ``NOISE_FLOOR`` times the
mean of :math:`K_\theta`'s diagonal: labels that the kernel interpolates drive it to 0).  The margin-conditioned prediction then uses
:math:`K_\theta` (the noise only shapes the fit: the margin posterior conditions exactly).

For a bias-free network of positively homogeneous activations (``paper_mlp``) the weight
variances only rescale the kernel, and the margin curve does not depend on the kernel's scale,
so :func:`fit_variances` gives such a network biases (``add_biases``, initial variance
``bias_var``): their ratio to the weights is what changes the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.hyperparameters import SHARING, affine_layers, variances, with_biases, with_variances


@dataclass
class VarianceFit:
    """The result of :func:`fit_variances`: the fitted description and what was fitted."""

    kernel: object
    weight_var: list
    bias_var: list
    noise: float
    log_marginal_likelihood: float  # per label, at the fitted values
    initial_log_marginal_likelihood: float  # per label, at the starting values
    evaluations: int
    sharing: str
    history: list = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready values (written to ``curve.json`` by ``gpmargin predict --fit-hyperparameters``)."""
        return {
            "sharing": self.sharing,
            "weight_var": self.weight_var,
            "bias_var": self.bias_var,
            "noise": self.noise,
            "log_marginal_likelihood": self.log_marginal_likelihood,
            "initial_log_marginal_likelihood": self.initial_log_marginal_likelihood,
            "evaluations": self.evaluations,
            "kernel": repr(self.kernel),
        }


def log_marginal_likelihood(K: torch.Tensor, y: torch.Tensor, noise) -> torch.Tensor:
    """The log marginal likelihood per label of the module docstring (differentiable)."""
    n = K.shape[0]
    Y = y.reshape(n, -1).to(K.dtype)
    A = K + noise * torch.eye(n, dtype=K.dtype, device=K.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        return torch.tensor(-math.inf, dtype=K.dtype, device=K.device)
    alpha = torch.cholesky_solve(Y, L)
    cols = Y.shape[1]
    fit = 0.5 * (Y * alpha).sum() + cols * torch.log(torch.diagonal(L)).sum()
    return -fit / (n * cols) - 0.5 * math.log(2 * math.pi)


NOISE_FLOOR = 1e-6  # relative to the mean of K's diagonal: keeps the Cholesky well defined


def _noise(log_noise: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """``sigma^2 = exp(s) + NOISE_FLOOR * mean(diag K)``."""
    return log_noise.exp()[0] + NOISE_FLOOR * diagonal.mean()


def fit_variances(kernel, x: torch.Tensor, y: torch.Tensor, *, sharing: str = "shared", get: str = "nngp",
                  add_biases: bool = True, bias_var: float = 0.1, noise: float = 1e-2, max_iter: int = 40,
                  progress: bool = False) -> VarianceFit:
    """Maximise the marginal likelihood of ``y`` over the variances of ``kernel`` (module docstring).

    Parameters
    ----------
    kernel : a gpmargin description with affine layers (``Dense``, ``Conv2d``, ...).
    x, y : training inputs and labels (``(n,)`` +-1 or ``(n, C)``).
    sharing : "shared" (one weight and one bias variance) or "per_layer".
    get : "nngp" or "ntk": the kernel whose likelihood is maximised.
    add_biases, bias_var : give bias-free affine layers a bias of variance ``bias_var`` first.
    noise : starting label-noise variance :math:`\\sigma^2` (fitted too).
    max_iter : L-BFGS iterations.

    Returns a :class:`VarianceFit`; raises :class:`GpmarginError` on bad arguments.
    """
    if sharing not in SHARING:
        raise GpmarginError(f"sharing={sharing!r} must be 'shared' or 'per_layer'")
    if get not in ("nngp", "ntk"):
        raise GpmarginError(f"get={get!r} must be 'nngp' or 'ntk'")
    if not affine_layers(kernel):
        raise GpmarginError("fit_variances: the kernel has no Dense/Conv layers whose variances could be fitted")
    if not (bias_var > 0 and noise > 0):
        raise GpmarginError(f"bias_var={bias_var!r} and noise={noise!r} must be positive")
    if add_biases:
        kernel = with_biases(kernel, bias_var)
    weight, bias = variances(kernel)
    if sharing == "shared":
        weight, bias = weight[:1], bias[:1]
    dtype = torch.float64
    device = x.device if isinstance(x, torch.Tensor) else "cpu"
    logs = [torch.tensor([math.log(float(v)) for v in values], dtype=dtype, device=device, requires_grad=True)
            for values in (weight, bias, [noise])]
    logs = [t for t in logs if t.numel()]
    has_bias = bool(bias)
    y = torch.as_tensor(y, dtype=dtype, device=device)

    def build(params):
        w = params[0].exp()
        b = params[1].exp() if has_bias else None
        one = (lambda t: t[0]) if sharing == "shared" else (lambda t: t)
        return with_variances(kernel, one(w), None if b is None else one(b))

    def objective() -> torch.Tensor:
        K = build(logs)(x, get=get)
        return log_marginal_likelihood(K, y, _noise(logs[-1], torch.diagonal(K)))

    history = []
    with torch.no_grad():
        start = float(objective())
    optimiser = torch.optim.LBFGS(logs, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = objective()
        loss = -value if torch.isfinite(value) else torch.tensor(1e30, dtype=dtype, requires_grad=True)
        loss.backward()
        history.append(float(value.detach()))
        if progress:
            print(f"  fit {len(history)}: log marginal likelihood per label {float(value):.6f}")
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        final = float(objective())
        fitted = build([t.detach() for t in logs]).with_floats()
        w = [float(v) for v in logs[0].exp()]
        b = [float(v) for v in logs[1].exp()] if has_bias else []
        sigma2 = float(_noise(logs[-1], fitted.diag(x, get=get)))
    if not math.isfinite(final):
        raise GpmarginError("fit_variances: the kernel plus noise lost positive definiteness during the fit; "
                            "start from a larger noise")
    return VarianceFit(fitted, w, b, sigma2, final, start, len(history), sharing, history)
