"""The kernel state passed from layer to layer, and the shape description used to check a network.

Three spatial layouts are used (``S`` below is the spatial part of a tensor's shape):

``"vector"``  features without positions (MLP inputs, anything after ``Flatten``): ``S = ()``.
``"diag"``    images, keeping only same-position pairs ``K[p, p]``: ``S = (H, W)``.  Enough
              whenever the network is read out through ``Flatten`` (convolutions map the
              diagonal onto itself, and activations only need same-position variances).
``"full"``    images, all pairs of positions ``K[p, p']``: ``S = (H, W, H, W)``; needed when a
              ``GlobalAvgPool`` reads out the off-diagonal pairs.

A *pair* state holds the kernel between two sets of inputs, batch shape ``(N1, N2)``; a *self*
state holds each input against itself, batch shape ``(N,)`` (used for ``diag`` and for the
per-example variances that the activations need).

Pairs of inputs whose pre-activations nearly coincide (distinct images with identical receptive
fields, duplicated examples, correlations driven towards 1 by biases or depth) are where
``cos theta = Sigma / sqrt(v1 v2)`` loses its accuracy: it rounds to ``1 - eps`` and an arc-cosine
turns ``eps`` into ``theta ~ sqrt(2 eps) ~ 1e-8``.  So besides ``Sigma`` a state carries the
*distance* ``dist = E[(u - u')^2] = v1 + v2 - 2 Sigma`` of every pair it holds, computed from the
inputs as ``|x - x'|^2 / d`` (never by that subtraction) and mapped exactly by every layer (linear
layers scale and average it; activations have their own well-conditioned formula), so that
``1 - cos theta = (dist - (sqrt v1 - sqrt v2)^2) / (2 sqrt(v1 v2))`` keeps its relative accuracy
however small it is.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch

LAYOUTS = ("vector", "diag", "full")


@dataclass(frozen=True)
class Spec:
    """Shape of a layer's input/output for one example, used to validate a composition.

    ``kind`` is ``"vector"`` or ``"image"``; ``shape`` is ``(d,)`` or ``(C, H, W)`` where an
    entry is ``None`` once it is an infinite width (hidden layers).
    """

    kind: str
    shape: tuple
    row_dof: int | None = None
    gaussian: bool = False

    # ``gaussian``: the features are zero-mean Gaussian processes over units (the output of an
    # affine layer, possibly pooled or flattened; the inputs count as Gaussian with covariance
    # x.x'/d, the convention of every activation kernel of raw inputs), like neural-tangents'
    # ``is_gaussian``; set by the engine's plan from each layer's ``gaussian_out``, required by the
    # activations and the fan-in combinators.

    # ``row_dof = k`` marks pre-activations made by zero-mean unit-norm rows of finite fan-in
    # ``k + 1`` (first layer of a constrained network): projections of a uniform unit vector
    # of a k-dimensional subspace, not Gaussians (see ``constrained``).

    def describe(self) -> str:
        dims = ", ".join("inf" if s is None else str(s) for s in self.shape)
        return f"{self.kind} ({dims})"


@dataclass
class KernelState:
    """Covariances of one layer's outputs (per unit, infinite width).

    nngp, ntk : tensors of shape ``(*batch, *S)``; ``ntk`` is ``None`` when not requested.
    var1, var2: per-example variances at each position, shape ``(N1, *Sd)`` / ``(N2, *Sd)``
                with ``Sd = ()`` or ``(H, W)`` (same-position self-covariance).
    mean1, mean2: per-example mean over units of the current features (same shape as the
                variances), or ``None`` when unknown; used by ``Centred``.
    layout    : one of ``LAYOUTS``.
    pair      : True for batch ``(N1, N2)``, False for a self state with batch ``(N,)``.
    spec      : shape of one example's features entering the current layer (set by the driver).
    aux1, aux2: per-example quantities a layer precomputed once from the statistics
                (``Layer.precompute``), restricted to the current rows / columns.
    dist      : ``E[(u - u')^2]`` of every entry (same shape as ``nngp``), or ``None`` when no
                later layer needs it (see the module docstring); never stored for a state of
                exact diagonal entries, where it is 0.  An entry may be NaN, "not carried"
                (after ``GlobalAvgPool``): ``pair_dist()`` fills it from ``v1 + v2 - 2 Sigma``.
    keep_dist : set by the driver: whether the layer being applied must map ``dist`` on (a
                later layer needs it); a layer that cannot map it sets ``dist = None``.
    points    : a list of individual pairs (batch ``(K,)``, ``var1[k]`` and ``var2[k]`` their two
                members): how the driver recomputes the few nearly coinciding pairs of a vector
                tile with their distance (see ``near``).
    near      : for a vector pair state carrying no distance, a list into which a layer that
                needs one appends the index tuples of the entries it finds nearly coinciding;
                the driver recomputes those pairs as ``points``.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    var1: torch.Tensor
    var2: torch.Tensor
    mean1: torch.Tensor | None
    mean2: torch.Tensor | None
    layout: str
    pair: bool
    spec: Spec | None = None
    dist: torch.Tensor | None = None
    keep_dist: bool = False
    points: bool = False
    near: list | None = None
    aux1: dict | None = None
    aux2: dict | None = None

    # -- broadcasting of per-example statistics onto the layout of ``nngp`` ---------------
    def bcast1(self, a: torch.Tensor) -> torch.Tensor:
        """Statistic of the first member of each pair, broadcastable to ``nngp``."""
        if self.points:
            return a
        if self.layout == "vector":
            return a[:, None] if self.pair else a
        if self.layout == "diag":
            return a[:, None] if self.pair else a
        a = a[:, :, :, None, None]
        return a[:, None] if self.pair else a

    def bcast2(self, a: torch.Tensor) -> torch.Tensor:
        """Statistic of the second member of each pair, broadcastable to ``nngp``."""
        if self.points:
            return a
        if self.layout == "vector":
            return a[None, :] if self.pair else a
        if self.layout == "diag":
            return a[None, :] if self.pair else a
        a = a[:, None, None, :, :]
        return a[None, :] if self.pair else a

    def naive_dist(self) -> torch.Tensor:
        """``v1 + v2 - 2 Sigma`` (>= 0): the fallback after a layer that cannot map ``dist``
        (accurate unless the two outputs nearly coincide)."""
        d = self.nngp.mul(-2.0).add_(self.bcast1(self.var1)).add_(self.bcast2(self.var2))
        return d.clamp_(min=0.0)

    def pair_dist(self) -> torch.Tensor:
        """The pair distance an activation works with: the carried ``dist``, its entries that
        were not carried (NaN) filled from :meth:`naive_dist`; all of it naive without one."""
        if self.dist is None:
            return self.naive_dist()
        if not math.isnan(float(self.dist.detach().sum())):  # (one reduction: dist >= 0, NaN only from a NaN entry)
            return self.dist
        self.dist = torch.where(self.dist.isnan(), self.naive_dist(), self.dist)
        return self.dist

    @property
    def is_exact_diagonal(self) -> bool:
        """True when every entry of ``nngp`` is an input paired with itself at the same position."""
        return not self.pair and not self.points and self.layout != "full"


def spatial_diagonal(nngp: torch.Tensor, layout: str) -> torch.Tensor:
    """Same-position entries of a *self* state: ``(N, *S) -> (N, *Sd)``."""
    if layout != "full":
        return nngp
    n, h, w = nngp.shape[:3]
    return nngp.reshape(n, h * w, h * w).diagonal(dim1=-2, dim2=-1).reshape(n, h, w)
