r"""The kernel of Nero-constrained networks: every weight row zero-mean and unit-norm.

Nero (used to train the paper's networks) keeps each weight row ``w`` of every layer, the
readout included, on the set ``sum_i w_i = 0, |w| = 1``.  At initialisation a row is uniform on
the unit sphere of the ``(n - 1)``-dimensional subspace orthogonal to ``(1, ..., 1)``, so
``E[w w^T] = P / (n - 1)`` with ``P = I - 1 1^T / n`` the centring projector.  A unit with input
features ``phi`` (one example) therefore has pre-activation ``h = w . phi = w . (phi - mean(phi))``
and, for two inputs,

.. math::
    E[h h'] = \frac{1}{n-1} \sum_i (\phi_i - \bar\phi)(\phi'_i - \bar\phi')
            = \frac{n}{n-1}\Big(\frac1n \sum_i \phi_i \phi'_i - \bar\phi \bar\phi'\Big).

Rows are independent across units, and a projection of a high-dimensional uniform sphere is
Gaussian, so at infinite width the units of every layer are i.i.d. Gaussian processes, exactly
as in the unconstrained case, but each layer sees the *centred* covariance of its inputs:

* first layer (finite fan-in ``n = d``, or ``C k_h k_w`` for a convolution):
  :math:`\Sigma_1 = W_{std}^2 \frac{n}{n-1}\big(\frac1n\sum_i x_i x'_i - \bar x \bar x'\big)`;
* hidden layers and the readout (fan-in -> infinity, so ``n/(n-1) -> 1``):
  :math:`\Sigma_{l+1} = W_{std}^2\big(E[\phi(u)\phi(u')] - \mu(v)\mu(v')\big)` with
  :math:`u \sim GP(\Sigma_l)` and :math:`\mu(v) = E[\phi(u)], u \sim N(0, v)`, the mean over
  units of the activations (for ``ReLU * sqrt(2)``: :math:`\mu(v) = \sqrt{v / \pi}`).

The first layer's fan-in stays finite, so its pre-activations are projections of a uniform
unit vector of a ``k = n - 1``-dimensional subspace, not Gaussians.  Second moments are the same;
for positively homogeneous activations (the ReLU family) the mean of the activations is larger by
:math:`c_k = \sqrt{k/2}\,\Gamma(k/2)/\Gamma((k+1)/2) \approx 1 + 1/(4k)`, which ``Centred``
passes on to the next activation (``Spec.row_dof``); for other activations the Gaussian mean is
used (error ``O(1/k)``).

For a convolution the mean is over a patch (channels and filter offsets): with the filter
average :math:`\mathcal A`, :math:`\Sigma_{out} = W_{std}^2 \frac{n}{n-1}
(\mathcal A[\Sigma_{in}] - \mathcal A[\mu]\, \mathcal A[\mu'])` (the factor only for the first
layer).  ``Centred(layer)`` implements this for ``Dense`` and ``Conv2d`` layers; a constrained
network is an ordinary ``serial`` whose affine layers are wrapped in ``Centred``.

The NTK is *not* provided: Nero's updates are projected, per-row normalised steps, not gradient
flow of a fixed parameterisation, so there is no single tangent kernel of "the" constrained
network; asking for ``get="ntk"`` raises :class:`~gpmargin.errors.GpmarginError`.

See ``docs/constrained_kernel.md`` for the derivation and the Monte-Carlo check.
"""

from __future__ import annotations

import torch

from gpmargin.errors import GpmarginError
from gpmargin.kernels.base import Layer
from gpmargin.kernels.conv import Conv2d
from gpmargin.kernels.dense import Affine
from gpmargin.kernels.state import KernelState, Spec


def _tree_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over ``dim`` as a pairwise tree of elementwise additions: the same operations, in the
    same order, for every entry, whatever the shape of ``t`` (so identical rows give identical
    sums by construction)."""
    t = t.movedim(dim, 0)
    while t.shape[0] > 1:
        half = t.shape[0] // 2
        s = t[:half] + t[half : 2 * half]
        t = torch.cat([s, t[2 * half :]]) if t.shape[0] % 2 else s
    return t[0]


def centre_features(x: torch.Tensor) -> torch.Tensor:
    """``x - mean(x)`` over the features (dim 1) of each example."""
    return x - (_tree_sum(x, 1) / x.shape[1]).unsqueeze(1)


class Centred(Layer):
    """Constraint transform: ``Centred(Dense(...))`` / ``Centred(Conv2d(...))`` is the same layer
    with zero-mean, norm-``W_std`` weight rows (Nero's constraint); see the module docstring."""

    supports_ntk = False
    has_units = True
    maps_dist = True
    gaussian_out = True

    def __init__(self, layer: Affine):
        if not isinstance(layer, Affine):
            raise GpmarginError(f"Centred() wraps a Dense or Conv2d layer, got {layer!r}")
        self.layer = layer

    def __repr__(self) -> str:
        return f"Centred({self.layer!r})"

    def input_map(self):
        r"""``(fn, layer)``: for this layer fed by the network inputs, ``layer`` applied to ``fn(x)``
        has the same kernel, computed from centred values.

        ``fn`` centres the inputs of every weight row (the feature vector for ``Dense``; each
        patch, then a 1x1 convolution, for ``Conv2d``), so the covariance is
        :math:`\frac{1}{n-1}\sum_m (x_m - \bar x)(x'_m - \bar x')` instead of the difference
        :math:`\frac{n}{n-1}(\mathcal A[\Sigma] - \mathcal A[\mu]\mathcal A[\mu'])`, whose
        cancellation leaves ``~eps`` on a constant patch (the background of an image), which the
        next activation's mean :math:`\propto\sqrt{v}` would turn into ``~sqrt(eps)``."""
        inner = self.layer
        if isinstance(inner, Conv2d):
            def centred_patches(x):
                return centre_features(inner.patches(x))

            return centred_patches, Centred(Conv2d(1, 1, "valid", inner.W_std, inner.b_std))
        return centre_features, self

    def ntk_unsupported_reason(self) -> str:
        return (
            f"{self!r}: the NTK of Nero-constrained (centred, unit-norm) layers is not supported, because "
            "Nero's projected updates are not gradient flow of a fixed parameterisation; use get='nngp', "
            "or the unconstrained kernel for an NTK"
        )

    def out_spec(self, spec: Spec) -> Spec:
        out = self.layer.out_spec(spec)
        n = self.layer.fan_in(spec)
        if n is not None and n < 2:
            raise self.fail(spec, "a zero-mean unit-norm weight row needs a fan-in of at least 2")
        return out if n is None else Spec(out.kind, out.shape, row_dof=n - 1)

    def out_mean(self, mean, var, spec):
        return self.layer.out_mean(mean, var, spec)

    def module(self, in_shape, units, init):
        """The wrapped layer with zero-mean, unit-norm rows scaled to norm ``W_std`` (see
        :mod:`gpmargin.kernels.finite`); biases, if any, stay Gaussian."""
        return self.layer.module(in_shape, units, init, centred=True)

    def apply(self, st: KernelState) -> KernelState:
        if st.mean1 is None or st.mean2 is None:
            raise GpmarginError(
                f"{self!r} needs the mean over units of its input features, which is known for the network "
                "inputs and after a linear layer followed by an activation, not after an activation applied "
                "directly to the inputs"
            )
        n = self.layer.fan_in(st.spec) if st.spec is not None else None
        nngp = self.layer.average(st.nngp, st.layout)
        m1 = st.bcast1(self.layer.pool_field(st.mean1))
        m2 = st.bcast2(self.layer.pool_field(st.mean2))
        nngp.addcmul_(m1, m2, value=-1.0)
        dist = None
        if st.dist is not None:
            # E[(h - h')^2] = A[dist] - (A[mu] - A[mu'])^2: the centred rows remove the mean difference
            dist = self.layer.average_dist(st)
            gap = m1 - m2
            dist.addcmul_(gap, gap, value=-1.0).clamp_(min=0.0)
        if n is not None:
            nngp.mul_(n / (n - 1))
            if dist is not None:
                dist.mul_(n / (n - 1))
        st.ntk = None
        return self.layer.linear(st, nngp, dist)
