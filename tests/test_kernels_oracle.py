"""gpmargin's kernels against an independent extended-precision oracle, on real MNIST.

The oracle (``tests/oracles/extended.py``) recomputes the NNGP/NTK recursions in numpy
``longdouble`` (eps ~ 1.1e-19), evaluating self and pair entries by the same operations so that
identical receptive fields give ``cos theta == 1`` exactly.  Here:

* hypothesis draws random MLPs and CNNs from every layer gpmargin has (Dense, Conv2d with
  kernel 1-3, stride 1-2, 'valid'/'same'/'circular', Flatten, GlobalAvgPool, GlobalSumPool,
  AvgPool, SumPool, LayerNorm, Dropout, Relu, LeakyRelu, ABRelu, Erf, Identity, Gelu, Sin, Cos,
  Rbf, Exp, Gaussian, Sign, Abs, Monomial, RectifiedMonomial, Polynomial; ``Centred`` variants
  for the NNGP), and branched MLPs and CNNs (residual blocks, FanInProd, FanInConcat along
  features, channels, rows and columns, nested blocks), and checks ``k(x)``, ``k(x1, x2)`` and
  ``k.diag(x)`` against the oracle to ``RTOL = 1e-12`` relative to the largest oracle entry

* the presets wide_resnet(10) and myrtle(5) on small real crops;
* the paper's networks on real 28x28 digits against the oracle and against neural-tangents;
* the oracle itself against neural-tangents and against closed forms.

Inputs contain distinct images with bitwise identical receptive fields (background crops of
different digits, two crops of one digit offset by a pixel, crops sharing their blank top rows,
an exact duplicate), where ``cos theta`` must be exactly 1.  They avoid *parallel but
non-identical* receptive fields of a ReLU-family layer (exact angle 0 or pi, where the NTK is
ill-conditioned to ``sqrt(eps)`` in any finite precision): the crops carry a second, constant
channel, and 28x28 digits with a constant non-background 5x5 window are left out (against the
constant background such a window is exactly anti-parallel).  Each oracle call reports the
smallest non-zero ``1 - |cos theta|`` it met, and the tests check it stays far from eps.

The hypothesis tests are derandomized (same examples on every run) and skip shrinking, so a
failure costs no more time than a pass; the failing architecture and errors are in the report.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, assume, given, note, settings, strategies as st
from hypothesis.errors import InvalidArgument

from gpmargin import kernels as gk
from gpmargin.kernels import FanInConcat, FanInProd, FanInSum, FanOut, parallel
from gpmargin.kernels.dropout import Dropout
from gpmargin.kernels.monomials import Abs, Monomial, Polynomial, RectifiedMonomial, Sign
from gpmargin.kernels.normalization import LayerNorm
from gpmargin.kernels.pooling import AvgPool, GlobalSumPool, SumPool
from gpmargin.kernels.smooth import Cos, Exp, Gaussian, Gelu, Rbf, Sin
from oracles.extended import LD, _sphere_ratio, oracle_kernels

RTOL = 1e-12
# non-zero 1 - |cos theta| below this would make the exact NTK ill-conditioned at the 1e-12
# level for float64 code (angle error ~ 1.1e-16 / sqrt(2 gap)); the test inputs stay above it
MIN_GAP = 1e-9
# neural-tangents evaluates the angle of a vector input with itself from x . x computed twice in
# different orders, so its ReLU-NTK diagonal on MLPs is off by ~sqrt(eps) (measured up to 1.2e-7)
NT_MLP_DIAG_TOL = 1e-6
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.reuse, Phase.generate))


def rel_err(ours, oracle) -> float:
    """max |ours - oracle| / max |oracle|, evaluated in longdouble."""
    a = np.asarray(ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else ours, dtype=LD)
    assert a.shape == oracle.shape
    return float(np.max(np.abs(a - oracle)) / np.max(np.abs(oracle)))


# -- data -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vectors(mnist_test):
    """23 MNIST digits as raw [0, 1] pixel rows, and a duplicate of the first: (24, 784)."""
    x, _ = mnist_test
    v = x[:23].double().reshape(23, -1)
    return torch.cat([v, v[:1]])


def _optional(request, fixture):
    """A dataset fixture's value, or None where it is not installed (its draws are then skipped)."""
    try:
        return request.getfixturevalue(fixture)
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="module")
def vector_sets(request, vectors):
    """Real inputs for the MLPs, each with a duplicated row: MNIST (784 pixels), Fashion-MNIST
    (784) and scikit-learn's 8x8 digits (64)."""
    sets = {"mnist": vectors}
    for name, fixture in (("fashion", "fashion_test"), ("digits", "digits_train")):
        if (loaded := _optional(request, fixture)) is None:
            continue
        v = loaded[0][:23].double().reshape(23, -1)
        sets[name] = torch.cat([v, v[:1]])
    return sets


def paper_rows(v: torch.Tensor) -> torch.Tensor:
    """The paper's preprocessing: standardise with MNIST's mean/std, rows rescaled to norm sqrt(d)."""
    z = (v - 0.1307) / 0.3081
    return z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def crops(mnist_test):
    """Ten 8x8 crops of real digits, a constant second channel 0.5: (10, 2, 8, 8).

    0, 1: one digit, offset by one pixel (shared patches at shifted positions); 2, 8: an exact
    duplicate; 4, 5: blank corners of two different digits (identical examples); 6, 7: the top
    rows of two digits (blank rows 0-3 at the same positions as 4, 5); 3, 9: other digits.
    """
    x, _ = mnist_test
    x = x.double()
    c = torch.stack([x[0, 0, 10:18, 10:18], x[0, 0, 10:18, 11:19], x[1, 0, 6:14, 8:16], x[2, 0, 12:20, 9:17],
                     x[3, 0, 0:8, 0:8], x[4, 0, 0:8, 0:8], x[5, 0, 0:8, 10:18], x[6, 0, 0:8, 10:18],
                     x[1, 0, 6:14, 8:16], x[7, 0, 20:28, 4:12]])[:, None]
    assert torch.equal(c[4], c[5]) and not torch.equal(c[6], c[7]) and torch.equal(c[6, :, :4], c[4, :, :4])
    return torch.cat([c, torch.full_like(c, 0.5)], dim=1)


@pytest.fixture(scope="module")
def crop_sets(request, crops):
    """Real images for the CNNs, each with a constant second channel 0.5 (see ``crops``):
    the MNIST crops; ten 8x8 crops of Fashion-MNIST items (two overlapping crops of one item,
    blank corners of two items, an exact duplicate); ten 8x8 scikit-learn digits (with an
    exact duplicate; their blank borders give identical receptive fields across digits)."""
    out = {"mnist": crops}
    if (fashion := _optional(request, "fashion_test")) is not None:
        f = fashion[0].double()
        c = torch.stack([f[0, 0, 10:18, 10:18], f[0, 0, 11:19, 10:18], f[1, 0, 0:8, 0:8], f[2, 0, 0:8, 0:8],
                         f[3, 0, 4:12, 12:20], f[4, 0, 14:22, 6:14], f[5, 0, 20:28, 20:28], f[6, 0, 8:16, 8:16],
                         f[3, 0, 4:12, 12:20], f[7, 0, 2:10, 16:24]])[:, None]
        out["fashion"] = torch.cat([c, torch.full_like(c, 0.5)], dim=1)
    if (digits := _optional(request, "digits_train")) is not None:
        d = digits[0][:10].double()
        d = torch.cat([d[:9], d[2:3]])
        out["digits"] = torch.cat([d, torch.full_like(d, 0.5)], dim=1)
    return out


def _constant_window_free(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Mask of the images with no constant non-background k x k window."""
    hi = F.max_pool2d(x, k, 1)
    lo = -F.max_pool2d(-x, k, 1)
    return ~((hi == lo) & (hi > 0)).flatten(1).any(1)


@pytest.fixture(scope="module")
def digits(mnist_test):
    """100 standardised 28x28 MNIST digits (from index 300) without constant non-background 5x5
    windows (digit 353 has one); the constant background gives many identical receptive fields."""
    x, _ = mnist_test
    x = x[300:410].double()
    x = x[_constant_window_free(x)][:100]
    assert x.shape[0] == 100
    return (x - 0.1307) / 0.3081


# -- architectures ------------------------------------------------------------------------------
def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


w_stds = floats(0.5, 2.0)
b_stds = st.one_of(st.none(), floats(0.0, 1.0))


OLD_ACTIVATIONS = ["relu", "leaky", "abrelu", "erf", "identity"]
NEW_ACTIVATIONS = ["gelu", "sin", "cos", "rbf", "exp", "gaussian", "sign", "abs", "monomial", "rectified", "polynomial"]
# activations whose output variance grows like a power (or an exponential) of the input's: at
# most one per network, so that the kernels stay far from overflow
GROWING = ("exp", "monomial", "rectified", "polynomial")


@st.composite
def activations(draw, extended: bool = False, budget: dict | None = None):
    """An activation: the ReLU family, Erf, Identity; with ``extended`` also the smooth closed
    forms (Gelu, Sin, Cos, Rbf, Exp, Gaussian with b < 0), Sign, Abs and the (rectified)
    monomials and polynomials (at most one power-growing activation per ``budget``)."""
    kinds = OLD_ACTIVATIONS + (NEW_ACTIVATIONS if extended else [])
    kind = draw(st.sampled_from(kinds))
    if kind in GROWING:
        if budget is None or budget.get("growing", 0) >= 1:
            kind = "relu"
        else:
            budget["growing"] = 1
    if kind == "relu":
        return gk.Relu(draw(floats(0.5, 2.0)))
    if kind == "leaky":
        return gk.LeakyRelu(draw(floats(-0.5, 0.5)))
    if kind == "abrelu":
        return gk.ABRelu(draw(floats(-1.5, 1.5)), draw(floats(0.25, 1.5)))
    if kind == "erf":
        return gk.Erf(draw(floats(0.5, 2.0)), draw(floats(0.2, 2.0)), draw(floats(-0.5, 0.5)))
    if kind == "gelu":
        return Gelu()
    if kind in ("sin", "cos"):
        return (Sin if kind == "sin" else Cos)(draw(floats(0.5, 1.5)), draw(floats(0.3, 1.5)), draw(floats(-1.0, 1.0)))
    if kind == "rbf":
        return Rbf(draw(floats(0.1, 1.5)))
    if kind == "exp":
        return Exp(draw(floats(0.5, 1.5)), draw(floats(0.2, 0.7)))
    if kind == "gaussian":
        return Gaussian(draw(floats(0.5, 1.5)), draw(floats(-1.0, -0.1)))
    if kind == "sign":
        return Sign()
    if kind == "abs":
        return Abs()
    if kind == "monomial":
        return Monomial(draw(st.integers(0, 3)))
    if kind == "rectified":
        return RectifiedMonomial(draw(st.integers(0, 3)))
    if kind == "polynomial":
        return Polynomial(draw(st.lists(floats(-1.0, 1.0), min_size=1, max_size=4).filter(
            lambda c: max(abs(v) for v in c) > 0.1)))  # not (nearly) the zero function
    return gk.Identity()


def _affine(layer, centred):
    return gk.Centred(layer) if centred else layer


@st.composite
def mlps(draw):
    """(layers, centred): 1-4 Dense layers with random activations between them; without
    ``Centred``, also the new activations, ``LayerNorm`` after a Dense layer and ``Dropout``
    (train or test mode) after an activation."""
    centred = draw(st.sampled_from([False, False, True]))
    depth = draw(st.integers(1, 4))
    budget: dict = {}
    layers = [gk.Flatten()] if draw(st.booleans()) else []  # Flatten is the identity on vectors
    for i in range(depth):
        layers.append(_affine(gk.Dense(draw(w_stds), draw(b_stds)), centred))
        if i < depth - 1:
            if not centred and draw(st.integers(0, 4)) == 0:
                layers.append(LayerNorm(draw(st.sampled_from([1, -1]))))
            layers.append(draw(activations(extended=not centred, budget=budget)))
            if not centred and draw(st.integers(0, 4)) == 0:
                layers.append(Dropout(draw(floats(0.3, 1.0)), draw(st.sampled_from(["train", "test"]))))
    return layers, centred


def _out_size(size, k, stride, padding):
    return (size - k) // stride + 1 if padding == "valid" else -(-size // stride)


@st.composite
def windows(draw, h, w, circular=True):
    """(kernel size, stride, padding, (out h, out w)) of a window fitting an ``h x w`` image."""
    kh = draw(st.integers(1, 3))
    kw = kh if draw(st.booleans()) else draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["valid", "same", "circular"] if circular else ["valid", "same"]))
    if padding != "same" and (kh > h or kw > w):
        padding = "same"
    ks = kh if kh == kw else (kh, kw)
    return ks, stride, padding, (_out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding))


@st.composite
def cnns(draw, size=8):
    """(layers, centred): 1-3 convolutions (kernel 1-3, stride 1-2, 'valid'/'same'/'circular') with
    activations, Flatten or GlobalAvgPool, 0-2 hidden dense layers with activations and a dense
    readout; without ``Centred`` also the new activations, AvgPool/SumPool after a convolution,
    LayerNorm (channels, or channels and positions), Dropout and a GlobalSumPool readout."""
    centred = draw(st.sampled_from([False, False, True]))
    h = w = size
    budget: dict = {}
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        ks, stride, padding, (h, w) = draw(windows(h, w))
        layers.append(_affine(gk.Conv2d(ks, stride, padding, draw(w_stds), draw(b_stds)), centred))
        if not centred and draw(st.integers(0, 4)) == 0:
            pks, pstride, ppad, (h, w) = draw(windows(h, w))
            layers.append(draw(st.sampled_from([AvgPool, SumPool]))(pks, pstride, ppad))
        act = draw(activations(extended=not centred, budget=budget))
        if not centred and draw(st.integers(0, 4)) == 0:
            axis = draw(st.sampled_from([1, (1, 2, 3), (1, 3)]))
            layers.append(LayerNorm(axis))
            if axis != 1 and {"ABRelu", "Sign", "RectifiedMonomial"} & _class_names(act):
                # normalising over positions scales identical patches of two images differently:
                # parallel, non-identical receptive fields (exact angle 0) for an angle-based layer
                act = gk.Erf(draw(floats(0.5, 2.0)), draw(floats(0.2, 2.0)), draw(floats(-0.5, 0.5)))
        layers.append(act)
        if not centred and draw(st.integers(0, 5)) == 0:
            layers.append(Dropout(draw(floats(0.3, 1.0)), draw(st.sampled_from(["train", "test"]))))
    readouts = [gk.Flatten(), gk.GlobalAvgPool()] + ([] if centred else [GlobalSumPool()])
    layers.append(draw(st.sampled_from(readouts)))
    for _ in range(draw(st.integers(0, 2))):
        layers += [_affine(gk.Dense(draw(w_stds), draw(b_stds)), centred),
                   draw(activations(extended=not centred, budget=budget))]
    layers.append(_affine(gk.Dense(draw(w_stds), draw(b_stds)), centred))
    return layers, centred


# -- branched architectures -------------------------------------------------------------------
@st.composite
def branched_mlps(draw):
    """Layers of an MLP with 1-3 branched blocks: residual (``FanOut(2)``, a main branch of 1-2
    activation-Dense pairs, possibly holding a nested residual block, against ``Identity`` or a
    Dense shortcut, ``FanInSum``), products of 2-3 branches (``FanInProd``, then a Dense layer:
    a product is not Gaussian) and concatenations (``FanInConcat(1)`` / ``(-1)``); optionally the
    inputs concatenated with themselves first (finite widths: weighted by the feature counts)."""
    budget: dict = {}
    layers = []
    if draw(st.integers(0, 3)) == 0:
        layers += [FanOut(2), parallel(gk.Identity(), gk.Flatten()), FanInConcat(draw(st.sampled_from([1, -1])))]
    layers.append(gk.Dense(draw(w_stds), draw(b_stds)))

    def dense():
        return gk.Dense(draw(w_stds), draw(b_stds))

    def chain(pairs):
        out = []
        for _ in range(pairs):
            out += [draw(activations(extended=True, budget=budget)), dense()]
        return out

    def residual(nested_ok):
        main = chain(draw(st.integers(1, 2)))
        if nested_ok and draw(st.integers(0, 3)) == 0:
            main += residual(False)
        shortcut = gk.Identity() if draw(st.booleans()) else dense()
        return [FanOut(2), parallel(gk.serial(*main), shortcut), FanInSum()]

    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["residual", "residual", "prod", "concat"]))
        if kind == "residual":
            layers += residual(True)
        elif kind == "prod":
            n = draw(st.integers(2, 3))
            branches = [dense() if draw(st.booleans()) else gk.serial(dense(), *chain(1)) for _ in range(n)]
            layers += [FanOut(n), parallel(*branches), FanInProd(), dense()]
        else:
            n = draw(st.integers(2, 3))
            branches = [dense() if draw(st.booleans()) else gk.serial(*chain(draw(st.integers(1, 2)))) for _ in range(n)]
            layers += [FanOut(n), parallel(*branches), FanInConcat(draw(st.sampled_from([1, -1])))]
        if draw(st.integers(0, 4)) == 0:
            layers.append(LayerNorm())
    layers += [draw(activations(extended=True, budget=budget)), dense()]
    return layers


@st.composite
def branched_cnns(draw, size=8):
    """Layers of a CNN with 1-2 branched blocks: residual blocks (3x3 'same' or 'circular'
    convolutions, Identity or 1x1 shortcut, or a strided block with a strided 1x1 projection),
    products (``FanInProd``, then a convolution) and concatenations along channels, rows or
    columns (``FanInConcat(1 | -3 | 2 | -2 | 3 | -1)``; rows/columns at most once, one branch may pool
    or lose rows/columns to a 'valid' convolution), then an activation, a readout (Flatten,
    GlobalAvgPool, GlobalSumPool) and a dense layer; optionally the inputs concatenated with
    their own average pool along channels (finite channel counts: weighted by them)."""
    budget: dict = {}
    h = w = size
    layers = []
    if draw(st.integers(0, 3)) == 0:
        layers += [FanOut(2), parallel(gk.Identity(), AvgPool(draw(st.integers(1, 3)), 1, draw(st.sampled_from(["same", "circular"])))),
                   FanInConcat(draw(st.sampled_from([1, -3])))]

    def conv(k, stride=1, padding=None):
        padding = padding or draw(st.sampled_from(["same", "circular"]))
        return gk.Conv2d(k, stride, padding, draw(w_stds), draw(b_stds))

    def act():
        return draw(activations(extended=True, budget=budget))

    layers.append(conv(draw(st.integers(1, 3))))
    spatial_done = False
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["residual", "residual", "prod", "concat", "concat"]))
        if kind == "residual":
            if h >= 4 and draw(st.integers(0, 2)) == 0:  # strided block, projection shortcut
                main = [act(), conv(3, 2, "same"), act(), conv(3)]
                shortcut = conv(1, 2, "same")
                h, w = -(-h // 2), -(-w // 2)
            else:
                main = [act(), conv(3)] + ([act(), conv(3)] if draw(st.booleans()) else [])
                shortcut = gk.Identity() if draw(st.booleans()) else conv(1)
            layers += [FanOut(2), parallel(gk.serial(*main), shortcut), FanInSum()]
        elif kind == "prod":
            layers += [FanOut(2), parallel(conv(draw(st.integers(1, 3))), gk.serial(conv(3), act(), conv(1))), FanInProd(),
                       conv(draw(st.integers(1, 3)))]
        else:  # axis 1 / -3: channels; 2 / -2: rows; 3 / -1: columns
            axis = draw(st.sampled_from([1, -3, 2, -2, 3, -1] if not spatial_done else [1, -3]))
            other = [act(), conv(3)]
            if axis in (1, -3) or draw(st.booleans()):
                if draw(st.booleans()):
                    other.append(AvgPool(draw(st.integers(1, 3)), 1, draw(st.sampled_from(["same", "circular"]))))
                lost = 0
            else:  # the second branch loses rows (axis 2) or columns (axis 3) to a 'valid' window
                size_along = h if axis in (2, -2) else w
                lost = 2 if size_along >= 3 else 0
                k = (lost + 1, 1) if axis in (2, -2) else (1, lost + 1)
                other.append(gk.Conv2d(k, 1, "valid", draw(w_stds), draw(b_stds)))
            layers += [FanOut(2), parallel(conv(3), gk.serial(*other)), FanInConcat(axis)]
            if axis in (2, -2):
                h = 2 * h - lost
            elif axis in (3, -1):
                w = 2 * w - lost
            if axis not in (1, -3):
                spatial_done = True
                if draw(st.booleans()):  # shrink the joined image again
                    layers.append(AvgPool(2, 2, "same"))
                    h, w = -(-h // 2), -(-w // 2)
    layers.append(act())
    layers.append(draw(st.sampled_from([gk.Flatten(), gk.GlobalAvgPool(), GlobalSumPool()])))
    layers.append(gk.Dense(draw(w_stds), draw(b_stds)))
    return layers


# -- the comparison -----------------------------------------------------------------------------
def _note(msg: str) -> None:
    """hypothesis' note (printed with a failing example); nothing outside a hypothesis test."""
    try:
        note(msg)
    except InvalidArgument:
        pass


def compare_with_oracle(layers, x, centred: bool, split: int, spatial: str = "full") -> dict:
    """Errors of ``k(x)``, ``k(x[:split], x[split:])`` and ``k.diag(x)`` against the oracle."""
    k = gk.serial(*layers)
    _note(repr(k))
    info = {}
    o_nngp, o_ntk = oracle_kernels(layers, x, info=info, spatial=spatial)
    _note(f"oracle min 1 - |cos| = {info['min_gap']:.3g}")
    if not centred:  # the NNGP is well conditioned even at exactly parallel receptive fields
        assert info["min_gap"] > MIN_GAP, f"{k!r}: test inputs with (nearly) parallel receptive fields"
    names, refs = (("nngp",), (o_nngp,)) if centred else (("nngp", "ntk"), (o_nngp, o_ntk))
    get = "nngp" if centred else ("nngp", "ntk")

    def listed(out):
        return [out] if centred else list(out)

    errs = {}
    for name, ours, ref in zip(names, listed(k(x, get=get)), refs):
        errs[name] = rel_err(ours, ref)
    for name, ours, ref in zip(names, listed(k(x[:split], x[split:], get=get)), refs):
        errs[name + " x1,x2"] = rel_err(ours, ref[:split, split:])
    for name, ours, ref in zip(names, listed(k.diag(x, get=get)), refs):
        errs[name + " diag"] = rel_err(ours, np.diagonal(ref).copy())
    _note("relative errors: " + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()))
    return errs


def _class_names(layer) -> set:
    return {c.__name__ for c in type(layer).__mro__}


def assert_close(errs: dict, tol: float = RTOL):
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, f"relative errors above {tol:g}: " + ", ".join(f"{n} {e:.3e}" for n, e in bad.items())


@settings(max_examples=30, **SETTINGS)
@given(arch=mlps(), data=st.sampled_from(["mnist", "fashion", "digits"]), paper=st.booleans())
def test_random_mlps_match_oracle(vector_sets, arch, data, paper):
    layers, centred = arch
    assume(data in vector_sets)  # a dataset that is not installed
    x = paper_rows(vector_sets[data]) if paper else vector_sets[data]
    assert_close(compare_with_oracle(layers, x, centred, split=12))  # the duplicate pair is split


@settings(max_examples=30, **SETTINGS)
@given(arch=cnns(), data=st.sampled_from(["mnist", "fashion", "digits"]))
def test_random_cnns_match_oracle(crop_sets, arch, data):
    layers, centred = arch
    assume(data in crop_sets)  # a dataset that is not installed
    assert_close(compare_with_oracle(layers, crop_sets[data], centred, split=5))  # duplicates split


@settings(max_examples=25, **SETTINGS)
@given(layers=branched_mlps(), data=st.sampled_from(["mnist", "fashion", "digits"]), paper=st.booleans())
def test_random_branched_mlps_match_oracle(vector_sets, layers, data, paper):
    assume(data in vector_sets)  # a dataset that is not installed
    x = paper_rows(vector_sets[data]) if paper else vector_sets[data]
    assert_close(compare_with_oracle(layers, x, False, split=12))


@settings(max_examples=8, **SETTINGS)
@given(layers=branched_cnns(), data=st.sampled_from(["mnist", "fashion", "digits"]))
def test_random_branched_cnns_match_oracle(crop_sets, layers, data):
    assume(data in crop_sets)  # a dataset that is not installed
    assert_close(compare_with_oracle(layers, crop_sets[data][:6], False, split=3))


def test_relu_after_smooth_activation_at_duplicates(crop_sets):
    """Conv - Relu - Conv(1) - Gelu - Conv(3, same) - Relu - Flatten - Dense on the scikit-learn
    8x8 digits with an exact duplicate (examples 2 and 9): to RTOL.  (A smooth activation that
    dropped the pair distance left the later ReLU an angle ~sqrt(eps) at the duplicate: NTK off by
    1.2e-10; now identical pre-activations keep distance 0 through every elementwise map.)"""
    if "digits" not in crop_sets:
        pytest.skip("scikit-learn digits not installed")
    layers = [gk.Conv2d(2, 1, "same", 1.2, 0.1), gk.Relu(), gk.Conv2d(1, 1, "valid", 1.6), Gelu(),
              gk.Conv2d(3, 1, "same", 1.3, 0.7), gk.Relu(), gk.Flatten(), gk.Dense()]
    assert_close(compare_with_oracle(layers, crop_sets["digits"], False, split=5))


@pytest.mark.parametrize("degree", [0, 1])
def test_rectified_monomial_at_duplicates(crop_sets, degree):
    """Conv - Relu - Conv(1) - RectifiedMonomial(degree) - Flatten - Dense on the scikit-learn
    digits with an exact duplicate, to RTOL (its angle from atan2 alone was ~sqrt(eps) there:
    NNGP off by 4.2e-10 for degree 0, NTK 2.6e-10 for 1; now exactly 0 at distance 0)."""
    if "digits" not in crop_sets:
        pytest.skip("scikit-learn digits not installed")
    layers = [gk.Conv2d(2, 1, "same", 1.2, 0.1), gk.Relu(), gk.Conv2d(1, 1, "valid", 1.6), RectifiedMonomial(degree),
              gk.Flatten(), gk.Dense()]
    assert_close(compare_with_oracle(layers, crop_sets["digits"], False, split=5))


def test_presets_match_oracle(crops):
    """wide_resnet(10) (stem, three residual groups with projections, strides 1, 2, 2) and
    myrtle(5) (AvgPool stages) on six real 8x8 crops (the duplicate 4, 5 split across x1, x2),
    full position-position oracle."""
    x = crops[[0, 1, 2, 4, 5, 6]]
    errs = {}
    for name, k in (("wide_resnet(10)", gk.wide_resnet(10)), ("myrtle(5)", gk.myrtle(5))):
        e = compare_with_oracle(list(k.layers), x, False, split=4)
        errs.update({f"{name} {n}": v for n, v in e.items()})
    assert_close(errs)


def test_paper_networks_match_oracle(vectors, digits):
    """The presets: paper_mlp(3) (plain and constrained) and paper_cnn() (plain and
    constrained) on 24 real 28x28 digits (same-position oracle)."""
    errs = {}
    for name, k, x, centred in [
        ("paper_mlp(3)", gk.paper_mlp(3), paper_rows(vectors), False),
        ("paper_mlp(3, constrained)", gk.paper_mlp(3, constrained=True), paper_rows(vectors), True),
        ("paper_cnn()", gk.paper_cnn(), digits[:24], False),
        ("paper_cnn(constrained)", gk.paper_cnn(constrained=True), digits[:24], True),
    ]:
        e = compare_with_oracle(list(k.layers), x, centred, split=12, spatial="diag")
        errs.update({f"{name} {n}": v for n, v in e.items()})
    assert_close(errs)


def test_constrained_small_cnn_matches_oracle(crops):
    layers = [gk.Centred(gk.Conv2d(3, 1, "same", W_std=1.2)), gk.Relu(math.sqrt(2.0)),
              gk.Centred(gk.Conv2d(2, 2, "valid", 1.0, 0.1)), gk.LeakyRelu(0.2), gk.GlobalAvgPool(),
              gk.Centred(gk.Dense(1.3)), gk.Relu(), gk.Centred(gk.Dense())]
    flat = [gk.Centred(gk.Conv2d(1, W_std=1.1)), gk.Erf(1.0, 1.2, 0.3), gk.Centred(gk.Conv2d(3)), gk.Relu(),
            gk.Flatten(), gk.Centred(gk.Dense())]
    errs = {}
    for name, arch in (("gap", layers), ("flatten", flat)):
        errs.update({f"{name} {n}": e for n, e in compare_with_oracle(arch, crops, centred=True, split=5).items()})
    assert_close(errs)


# -- the oracle on its own ---------------------------------------------------------------------
def test_oracle_closed_forms(vectors):
    """ReLU*sqrt(2) preserves the variance: the paper MLP's NNGP diagonal is the input's
    ``x . x / d`` and its NTK diagonal the depth times that, to longdouble rounding; identical
    examples give bitwise identical rows; the sphere-mean ratio matches its Gamma-function form."""
    x = paper_rows(vectors)
    nngp, ntk = oracle_kernels(gk.paper_mlp(4), x)
    xl = x.numpy().astype(LD)
    q = np.sum(xl * xl, axis=1) / LD(x.shape[1])
    g3 = (LD(math.sqrt(2.0)) ** 2 / 2) ** 3  # the float64 sqrt(2) squared is 2 + 2.7e-16
    assert np.max(np.abs(np.diagonal(nngp) / (g3 * q) - 1)) < 1e-17
    assert np.max(np.abs(np.diagonal(ntk) / (4 * g3 * q) - 1)) < 1e-17
    assert np.array_equal(nngp[0], nngp[-1]) and np.array_equal(ntk[0], ntk[-1])
    for k in (1, 2, 3, 8, 75, 783):
        exact = math.sqrt(k / 2) * math.exp(math.lgamma(k / 2) - math.lgamma((k + 1) / 2))
        assert abs(float(_sphere_ratio(k)) / exact - 1) < 1e-13


def _gauss_hermite_2d(phi, v1, v2, k, n=120):
    """``E[phi(u) phi(u')]`` for ``(u, u')`` Gaussian with variances ``v1, v2``, covariance ``k``
    (float64 Gauss-Hermite quadrature on the Cholesky factor)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    l11, l21 = math.sqrt(v1), k / math.sqrt(v1)
    l22 = math.sqrt(max(v2 - l21 * l21, 0.0))
    za, zb = np.meshgrid(z, z, indexing="ij")
    u, up = l11 * za, l21 * za + l22 * zb
    return float(np.sum(np.outer(w, w) * phi(u) * phi(up)))


def test_oracle_smooth_closed_forms_by_quadrature():
    """The oracle's closed forms of the smooth activations and polynomials (NNGP and NTK factor)
    against 2-D Gauss-Hermite quadrature of their definitions, at a few covariances (1e-9: the
    quadrature is float64 and Gelu's x Phi(x) is not a polynomial)."""
    from scipy.special import erf

    cases = [
        (Gelu(), lambda x: x * (1 + erf(x / math.sqrt(2))) / 2,
         lambda x: (1 + erf(x / math.sqrt(2))) / 2 + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
        (Sin(1.3, 0.7, 0.4), lambda x: 1.3 * np.sin(0.7 * x + 0.4), lambda x: 1.3 * 0.7 * np.cos(0.7 * x + 0.4)),
        (Cos(0.8, 1.1, -0.3), lambda x: 0.8 * np.cos(1.1 * x - 0.3), lambda x: -0.8 * 1.1 * np.sin(1.1 * x - 0.3)),
        (Rbf(0.6), lambda x: math.sqrt(2) * np.sin(math.sqrt(1.2) * x + math.pi / 4),
         lambda x: math.sqrt(2) * math.sqrt(1.2) * np.cos(math.sqrt(1.2) * x + math.pi / 4)),
        (Exp(0.9, 0.4), lambda x: 0.9 * np.exp(0.4 * x), lambda x: 0.36 * np.exp(0.4 * x)),
        (Gaussian(1.2, -0.5), lambda x: 1.2 * np.exp(-0.5 * x * x), lambda x: -1.2 * x * np.exp(-0.5 * x * x)),
        (Polynomial([0.3, -0.5, 0.7, 0.2]), lambda x: 0.3 - 0.5 * x + 0.7 * x**2 + 0.2 * x**3,
         lambda x: -0.5 + 1.4 * x + 0.6 * x**2),
        (Monomial(3), lambda x: x**3, lambda x: 3 * x**2),
    ]
    x = np.array([[1.0, 0.2, -0.4], [0.3, 0.9, 0.5], [-0.6, 0.1, 1.4]])  # input kernel x x' / 3
    for layer, phi, dphi in cases:
        nngp, ntk = oracle_kernels([gk.Dense(1.1), layer, gk.Dense()], x)
        k0 = (x @ x.T) / 3 * 1.21
        for i in range(3):
            for j in range(3):
                e = _gauss_hermite_2d(phi, k0[i, i], k0[j, j], k0[i, j])
                d = _gauss_hermite_2d(dphi, k0[i, i], k0[j, j], k0[i, j])
                assert abs(float(nngp[i, j]) - e) <= 1e-9 * max(1.0, abs(e)), (layer, i, j, float(nngp[i, j]), e)
                assert abs(float(ntk[i, j]) - (d * k0[i, j] + e)) <= 1e-9 * max(1.0, abs(e)), (layer, i, j)


def test_oracle_identical_receptive_fields_are_exact(crops):
    """Duplicated examples get bitwise equal kernel rows, also through GlobalAvgPool."""
    layers = [gk.Conv2d(3, 1, "same", 1.3, 0.2), gk.Relu(), gk.Conv2d(2, 2, "valid"), gk.ABRelu(-0.4, 1.1),
              gk.GlobalAvgPool(), gk.Dense(1.0, 0.3), gk.LeakyRelu(0.1), gk.Dense()]
    for out in oracle_kernels(layers, crops):
        assert np.array_equal(out[2], out[8]) and np.array_equal(out[4], out[5])
        assert np.array_equal(np.diagonal(out)[[2, 4]], out[[8, 5], [2, 4]])


# -- neural-tangents --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nt_stax():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pytest.importorskip("neural_tangents", reason="neural-tangents not installed (extra 'nt'); skipping the NT comparisons")
    from gpmargin.kernels import nt as _bridge  # noqa: F401  (quiet import, x64)
    from neural_tangents import stax

    return stax


def _nt(kernel_fn):
    """Not jitted: op by op, neural-tangents evaluates the self and the pair entries with the same
    rounding, so identical receptive fields give an angle of exactly 0.  Under ``jax.jit`` XLA
    fuses them differently and its ReLU NTK is off by up to ~5e-9 relative on the diagonal, on
    duplicates and on distinct digits sharing background patches (measured on these inputs)."""
    from gpmargin.kernels.nt import from_neural_tangents

    return from_neural_tangents(kernel_fn, jit=False)


def test_paper_cnn_matches_nt(nt_stax, digits):
    stax = nt_stax
    _, _, kfn = stax.serial(
        stax.Conv(1, (5, 5), padding="VALID"), stax.Relu(),
        stax.Conv(1, (5, 5), padding="VALID"), stax.Relu(),
        stax.Flatten(), stax.Dense(1), stax.Relu(), stax.Dense(1),
    )
    ours = gk.paper_cnn()(digits, get=("nngp", "ntk"))
    theirs = _nt(kfn)(digits, get=("nngp", "ntk"))
    errs = {name: rel_err(a, np.asarray(b.numpy(), dtype=LD)) for name, a, b in zip(("nngp", "ntk"), ours, theirs)}
    assert_close(errs)


def _nt_cnns(stax):
    return {
        "conv3-relu-conv2s2same-erf-gap": (
            [gk.Conv2d(3, 1, "same", 1.4, 0.3), gk.Relu(), gk.Conv2d(2, 2, "same", 1.1, 0.1), gk.Erf(), gk.GlobalAvgPool(),
             gk.Dense(1.0, 0.1)],
            stax.serial(stax.Conv(1, (3, 3), padding="SAME", W_std=1.4, b_std=0.3), stax.Relu(),
                        stax.Conv(1, (2, 2), (2, 2), "SAME", 1.1, 0.1), stax.Erf(), stax.GlobalAvgPool(),
                        stax.Dense(1, 1.0, 0.1))),
        "conv(3,2)-leaky-conv3s2-abrelu-flatten-dense-relu": (
            [gk.Conv2d((3, 2), 1, "valid", 1.0, 0.2), gk.LeakyRelu(0.1), gk.Conv2d(3, 2, "valid", 1.2), gk.ABRelu(-0.3, 1.2),
             gk.Flatten(), gk.Dense(1.0), gk.Relu(), gk.Dense()],
            stax.serial(stax.Conv(1, (3, 2), padding="VALID", W_std=1.0, b_std=0.2), stax.LeakyRelu(0.1),
                        stax.Conv(1, (3, 3), (2, 2), "VALID", 1.2), stax.ABRelu(-0.3, 1.2), stax.Flatten(),
                        stax.Dense(1, 1.0), stax.Relu(), stax.Dense(1))),
    }


def test_oracle_matches_nt_on_cnns(nt_stax, crops):
    errs = {}
    for name, (layers, (_, _, kfn)) in _nt_cnns(nt_stax).items():
        refs = oracle_kernels(layers, crops)
        theirs = _nt(kfn)(crops, get=("nngp", "ntk"))
        errs.update({f"{name} {n}": rel_err(b, r) for n, b, r in zip(("nngp", "ntk"), theirs, refs)})
    assert_close(errs)


def test_oracle_matches_nt_on_mlps(nt_stax, vectors):
    """Off the diagonal neural-tangents agrees with the oracle to rounding; on the diagonal its
    ReLU NTK carries a sqrt(eps) angle (see NT_MLP_DIAG_TOL), which the oracle does not."""
    stax = nt_stax
    x = paper_rows(vectors)
    cases = {
        "paper_mlp(5)": (list(gk.paper_mlp(5).layers),
                         stax.serial(*[stax.Dense(1), stax.ABRelu(0, math.sqrt(2.0))] * 4, stax.Dense(1))),
        "erf-abrelu": ([gk.Dense(1.5, 0.3), gk.Erf(0.7, 1.8, 0.2), gk.Dense(1.1), gk.ABRelu(-0.5, 1.5), gk.Dense(0.8, 0.5)],
                       stax.serial(stax.Dense(1, 1.5, 0.3), stax.Erf(0.7, 1.8, 0.2), stax.Dense(1, 1.1),
                                   stax.ABRelu(-0.5, 1.5), stax.Dense(1, 0.8, 0.5))),
    }
    off = ~np.eye(x.shape[0], dtype=bool)
    for name, (layers, (_, _, kfn)) in cases.items():
        refs = oracle_kernels(layers, x)
        theirs = _nt(kfn)(x, get=("nngp", "ntk"))
        for n, b, r in zip(("nngp", "ntk"), theirs, refs):
            d = np.abs(np.asarray(b.numpy(), dtype=LD) - r) / np.max(np.abs(r))
            assert float(np.max(d[off])) <= RTOL, (name, n, float(np.max(d[off])))
            assert float(np.max(d[~off])) <= NT_MLP_DIAG_TOL, (name, n, float(np.max(d[~off])))
