r"""An extended-precision oracle of gpmargin's NNGP and NTK recursions (numpy ``longdouble`` only).

``oracle_kernels(layers, x)`` recomputes, independently of gpmargin's torch code, the Gram
matrices ``(nngp, ntk)`` of one input set ``x`` for a network given as a list of gpmargin layer
objects (or a ``gpmargin.kernels.serial``).  Only the layers' public attributes are read
(``W_std``, ``b_std``, ``kernel_size``, ``stride``, ``padding``, ``a``, ``b``, ``c``, ``scale``,
``slope``, ``layer``, ``window_shape``, ``strides``, ``axis``, ``eps``, ``rate``, ``mode``, ``gamma``, ``coef``,
``degree``, ``num``, ``branches``); every number is computed here in ``numpy.longdouble`` (the x87 80-bit
format on x86-64: 64-bit significand, eps = 2**-63 ~ 1.1e-19, unit roundoff ~ 5.4e-20).

Conventions (neural-tangents' NTK parameterisation, as documented in gpmargin.kernels)
-------------------------------------------------------------------------------------
Input kernel: :math:`\Sigma = x\cdot x'/d` for vectors ``(N, d)``; for images ``(N, C, H, W)``
the full position-position covariance :math:`\Sigma_{p,p'} = \frac1C\sum_c x_{c,p}x'_{c,p'}`
(array ``(N, N, H, W, H, W)``).  The NTK starts at 0.  Per-example variances are the
same-position self entries ``v_i[p] = Sigma[i, i, p, p]``.

* ``Dense(W_std, b_std)``: :math:`\Sigma \leftarrow W^2\Sigma + b^2`,
  :math:`\Theta \leftarrow W^2\Theta + \Sigma_{out}` (``b_std=None``: no bias).
* ``Conv2d(kernel_size, stride, padding, W_std, b_std)``: the same after the filter average
  :math:`\mathcal A[K]_{p,p'} = \frac{1}{k_hk_w}\sum_a K_{sp+a,\,sp'+a}`, zero padding for
  ``"same"`` (total ``max((out-1)s + k - in, 0)``, the smaller half first, XLA's split).
* ``ABRelu(a, b)`` (``Relu(scale) = ABRelu(0, scale)``, ``LeakyRelu(slope) = ABRelu(slope, 1)``):
  with :math:`s = \sqrt{v_1 v_2}` (one square root of the product), :math:`\cos\theta = \Sigma/s`
  clipped into ``[-1, 1]`` (0 where ``s = 0``), :math:`f = (a-b)^2/2\pi`, :math:`g = (a^2+b^2)/2`:
  :math:`\Sigma \leftarrow s[f\sin\theta + (g - f\theta)\cos\theta]`,
  :math:`\Theta \leftarrow (g - f\theta)\Theta`, with :math:`\sin\theta = \sqrt{(1-\cos)(1+\cos)}`.
* ``Erf(a, b, c)``: :math:`q_i = 1 + 2b^2v_i`, :math:`u = 2b^2\Sigma/\sqrt{q_1q_2}` (clipped),
  :math:`\Sigma \leftarrow a^2\frac2\pi\arcsin u + c^2`,
  :math:`\Theta \leftarrow \Theta\, a^2b^2\frac4\pi[1 + 2b^2(v_1+v_2) + 4b^4\max(v_1v_2-\Sigma^2, 0)]^{-1/2}`.
* ``Identity``: nothing.  (The activations read the variances clipped at 0: a centred variance
  can round to ``-eps``.)
* ``Flatten``: images to vectors, :math:`\Sigma \leftarrow \frac1{HW}\sum_p\Sigma_{p,p}`
  (identity on vectors); ``GlobalAvgPool``: :math:`\frac1{(HW)^2}\sum_{p,p'}\Sigma_{p,p'}`.
* ``padding="circular"`` (``Conv2d``/``Conv1d``/pools): the "same" sizes and split, the padded
  entries taken periodically (``numpy.pad(mode="wrap")`` on every spatial axis, both positions).
* ``Conv1d(kernel_size, stride, ...)``: ``Conv2d`` with window ``(1, k)``, strides ``(1, s)`` on
  sequences ``(N, C, L)`` taken as ``(N, C, 1, L)``.
* ``AvgPool(window_shape, strides, padding)`` (full layout only): the window sum over each of the
  four spatial axes of the padded kernel, divided by ``(k_h k_w)^2``; ``SumPool`` undivided.
  Means: the window average (sum) of the mean field.  ``GlobalSumPool``:
  :math:`\sum_{p,p'}\Sigma_{p,p'}`, means summed over positions.
* ``LayerNorm(axis, eps)``: with the group averages :math:`\langle\cdot\rangle` over the
  spatial axes in ``axis``, :math:`M = \langle\mu\rangle`, :math:`V = \langle v\rangle - M^2`:
  :math:`\Sigma \leftarrow (\Sigma - M_1\mu_2 - \mu_1 M_2 + M_1 M_2)/\sqrt{(V_1 + eps)(V_2 + eps)}`
  (the products and ``V`` without ``M`` when every mean is 0), :math:`\Theta \leftarrow
  \Theta/\sqrt{\cdot}`; means become 0.
* ``Dropout(rate, mode)``: in ``"train"`` mode the entries of an input with itself at the same
  position are multiplied by ``1/rate``; ``"test"``: nothing.
* ``Centred(Dense | Conv2d)`` (NNGP only, the NTK becomes ``None``): with the per-example mean
  over units :math:`\mu` of the layer's input (same filter average :math:`\mathcal A[\mu]` for a
  convolution), :math:`\Sigma \leftarrow W^2\,\kappa\,(\mathcal A[\Sigma] - \mathcal A[\mu]
  \mathcal A[\mu'])+ b^2`, :math:`\kappa = n/(n-1)` when the fan-in ``n`` is finite (a layer fed
  by the inputs, or by ``Flatten``/``GlobalAvgPool`` of the inputs), else 1.  A layer fed by
  the inputs is evaluated in the equivalent form
  :math:`\frac1{n-1}\sum_m (x_m - \bar x)(x'_m - \bar x')` over the ``n`` inputs of a weight row
  (patch entries, padding zeros included), so that a constant patch has variance exactly 0.
  Means: the inputs'
  mean over features (vectors) or channels (per position, images); 0 after an affine layer;
  after an activation fed by zero-mean pre-activations :math:`E\phi(u), u\sim N(0, v)`:
  ``ABRelu`` :math:`(b-a)\sqrt{v/2\pi}`, ``Erf`` ``c``, ``Identity`` the input's mean; otherwise
  unknown (a following ``Centred`` raises).  After the *first* centred layer of finite fan-in
  ``n`` the pre-activations are projections of a uniform vector of a ``k = n - 1``-dimensional
  sphere, and the ReLU-family mean is multiplied by
  :math:`c_k = \sqrt{k/2}\,\Gamma(k/2)/\Gamma((k+1)/2)`, computed here by the exact recurrence
  :math:`\Gamma(k/2+1)/\Gamma((k+1)/2+1) = \frac{k}{k+1}\,\Gamma(k/2)/\Gamma((k+1)/2)` from
  :math:`\Gamma(1/2)/\Gamma(1) = \sqrt\pi`, :math:`\Gamma(1)/\Gamma(3/2) = 2/\sqrt\pi`.
  Readouts average the means over positions.
* Smooth activations (``E[phi(u) phi(u')]`` and the NTK factor ``E[phi'(u) phi'(u')]`` for
  ``(u, u')`` Gaussian with variances ``v1, v2``, covariance ``Sigma``; derived here):
  ``Gelu`` (``x Phi(x)``, by Gaussian integration by parts, see :meth:`_Oracle.gelu`),
  ``Sin(a, b, c)`` / ``Cos`` (``a^2/2 [e^{-b^2 E(u-u')^2/2} -+ cos(2c) e^{-b^2 E(u+u')^2/2}]``),
  ``Rbf(gamma)`` (``exp(-gamma E(u - u')^2)``), ``Exp(a, b)``, ``Gaussian(a, b)``
  (``a^2 det(I - 2bC)^{-1/2}``), ``Sign`` (``1 - 2 theta/pi``, NTK 0; 0 where a variance is 0),
  ``Polynomial(coef)`` / ``Monomial(degree)`` (Isserlis' theorem on every pair of monomials,
  :meth:`_Oracle._wick`), ``RectifiedMonomial(degree)`` (arc-cosine kernels by the recurrence
  ``J_n = (2n-1) cos J_{n-1} + (n-1)^2 sin^2 J_{n-2}``); ``Abs`` is ``ABRelu(-1, 1)``.  Their
  means after zero-mean Gaussian pre-activations are ``E phi(u)``; after the first centred layer
  (``row_dof``) they are left unknown.  ``Sign`` and ``RectifiedMonomial`` report their
  ``1 - |cos|`` to ``min_gap`` like the ReLU family.
* Branches (neural-tangents' semantics): ``FanOut(num)`` copies the state; ``parallel`` (a
  ``Parallel`` with ``branches``, each a layer or a ``serial``) runs branch ``j`` on state
  ``j`` (recursively); ``FanInSum``: sums of the NNGPs, NTKs and means; ``FanInProd``:
  :math:`\prod_j\Sigma_j`, :math:`\sum_j\Theta_j\prod_{i\ne j}\Sigma_i`, products of the means;
  ``FanInConcat(axis)`` (gpmargin's axes: 1 / -1 for vectors, 1 / -3 channels, 2 / -2 rows,
  3 / -1 columns of images): along channels the average weighted by the channel counts (equal
  weights when every branch is of infinite width, i.e. went through an affine layer); along
  rows or columns the block matrix of the branches' kernels, zero between positions of
  different branches (concatenated on the same-position layout in ``"diag"`` mode).

Bitwise-consistent evaluation
-----------------------------
The self entries ``(i, i)`` and the pair entries ``(i, j)`` are computed by the same vectorised
elementwise operations on one array (products and sums in a fixed order, reductions as an
elementwise pairwise tree, never BLAS or a library reduction whose order could depend on the
entry), and the variances are read off that array.  So two examples (or two positions) whose
receptive fields are bitwise identical get bitwise identical ``Sigma``, ``v1``, ``v2``; then
``sqrt(v1 * v2) == v1`` exactly (a correctly rounded square root of a correctly rounded square)
and ``cos(theta) == 1`` exactly: ``theta = 0`` as in exact arithmetic.

Precision one can expect
------------------------
Every elementary operation has relative error <= 5.4e-20 (``sqrt`` and the arithmetic correctly
rounded, glibc's ``acosl``/``asinl`` within a few ulp), so a network of depth ``L`` with
reductions over ``n`` terms is exact to roughly ``(L + log2 n) * 1e-19`` relative -- about
1e-17 relative to the largest entry in the tested networks, far below the 1e-12 tested against
gpmargin's float64 -- *except* where the problem itself is ill-conditioned: the ReLU-family NTK
factor ``g - f * arccos(cos)`` has derivative ``f / sin(theta)`` in ``cos``, so for pairs whose
receptive fields are *parallel but not identical* (exact ``theta = 0``, e.g. two patches holding
a single non-zero pixel of different values in a bias-free network) the computed ``cos`` is
1 - O(eps) and the NTK factor is off by ``f * sqrt(2 eps) ~ 5e-11`` here (``~ 2e-9`` in float64).
Inputs that should be checked to 1e-12 must avoid parallel, non-identical receptive fields of a
ReLU-family layer (the tests add a constant channel to the images).  The NNGP is well
conditioned everywhere (``f sin(theta) + (g - f theta) cos(theta)`` is smooth in ``cos``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import comb

import numpy as np

LD = np.longdouble
PI = LD("3.141592653589793238462643383279502884197")
EPS = float(np.finfo(LD).eps)


# -- helpers ---------------------------------------------------------------------------------
def _tree_sum(a: np.ndarray, axis: int) -> np.ndarray:
    """Sum over ``axis`` as an elementwise pairwise tree: the same operations for every entry."""
    a = np.moveaxis(a, axis, 0)
    while a.shape[0] > 1:
        n = a.shape[0]
        h = n // 2
        s = a[:h] + a[h : 2 * h]
        a = np.concatenate([s, a[2 * h :]]) if n % 2 else s
    return a[0]


def _chain_sum(ts: list) -> np.ndarray:
    """``ts[0] + ts[1] + ...`` in order (elementwise: the same operations for every entry)."""
    out = ts[0]
    for t in ts[1:]:
        out = out + t
    return out


def _ld(v) -> LD:
    return LD(float(v))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    assert len(v) == 2
    return v


def _pad_mode(layer) -> str:
    return "wrap" if layer.padding == "circular" else "constant"


def _window_sum(a: np.ndarray, axis: int, k: int, s: int, o: int) -> np.ndarray:
    """Sums of ``k`` consecutive entries along ``axis`` at the ``o`` window starts ``0, s, 2s...``
    (offsets added in a fixed order: the same operations for every entry)."""
    out = None
    for j in range(k):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(j, j + s * (o - 1) + 1, s)
        term = a[tuple(idx)]
        out = term.copy() if out is None else out + term
    return out


def _sphere_ratio(k: int) -> LD:
    """c_k = sqrt(k/2) Gamma(k/2) / Gamma((k+1)/2), by the exact two-step recurrence."""
    assert k >= 1
    r = np.sqrt(PI) if k % 2 == 1 else LD(2) / np.sqrt(PI)
    for j in range(1 if k % 2 == 1 else 2, k, 2):
        r = r * LD(j) / LD(j + 1)
    return np.sqrt(LD(k) / LD(2)) * r


def _names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _flatten_layers(layers) -> list:
    if hasattr(layers, "layers") and not isinstance(layers, (list, tuple)):
        layers = layers.layers
    out = []
    for layer in layers:
        if "Serial" in _names(layer):
            out.extend(_flatten_layers(layer.layers))
        else:
            out.append(layer)
    return out


@dataclass
class _State:
    nngp: np.ndarray  # (N, N) vectors; (N, N, H, W, H, W) "full"; (N, N, H, W) "diag"
    ntk: np.ndarray | None
    mean: np.ndarray | None  # (N,) or (N, H, W)
    image: bool
    fan_in: int | None  # number of features (vectors) / channels (images) entering the next layer
    row_dof: int | None = None
    features: np.ndarray | None = None  # the network inputs, while only Flatten/GAP/Identity acted on them

    @property
    def hw(self) -> tuple[int, int]:
        return self.nngp.shape[2:4]


class _Oracle:
    def __init__(self, spatial: str):
        assert spatial in ("full", "diag")
        self.spatial = spatial
        self.min_gap = float("inf")  # smallest 1 - |cos theta| < 1 met by a ReLU-family layer

    # -- variances and broadcasting ------------------------------------------------------
    def var(self, st: _State) -> np.ndarray:
        k = st.nngp
        n = k.shape[0]
        idx = np.arange(n)
        d = k[idx, idx]  # (N, ...) self entries, read off the same array
        if st.image and self.spatial == "full":
            h, w = st.hw
            d = np.diagonal(d.reshape(n, h * w, h * w), axis1=1, axis2=2).reshape(n, h, w)
        return d

    def b1(self, st: _State, a: np.ndarray) -> np.ndarray:
        if st.image and self.spatial == "full":
            return a[:, None, :, :, None, None]
        return a[:, None]

    def b2(self, st: _State, a: np.ndarray) -> np.ndarray:
        if st.image and self.spatial == "full":
            return a[None, :, None, None, :, :]
        return a[None, :]

    # -- input ----------------------------------------------------------------------------
    def input(self, x: np.ndarray, want_ntk: bool) -> _State:
        if x.ndim == 2:
            n, d = x.shape
            k = _tree_sum(x[:, None, :] * x[None, :, :], axis=2) / LD(d)
            mean = _tree_sum(x, axis=1) / LD(d)
            st = _State(k, None, mean, image=False, fan_in=d, features=x)
        else:
            n, c, h, w = x.shape
            k = None
            for ch in range(c):  # channels in a fixed order: identical for every entry
                xc = x[:, ch]
                if self.spatial == "full":
                    term = xc[:, None, :, :, None, None] * xc[None, :, None, None, :, :]
                else:
                    term = xc[:, None, :, :] * xc[None, :, :, :]
                k = term if k is None else k + term
            k = k / LD(c)
            mean = _tree_sum(x, axis=1) / LD(c)
            st = _State(k, None, mean, image=True, fan_in=c, features=x)
        if want_ntk:
            st.ntk = np.zeros_like(st.nngp)
        return st

    # -- affine layers ----------------------------------------------------------------------
    def conv_geometry(self, layer, h, w):
        names = _names(layer)
        if "Conv1d" in names:
            ks, ss = (1, int(layer.kernel_size)), (1, int(layer.stride))
        elif "AvgPool" in names:  # SumPool too
            ks, ss = tuple(layer.window_shape), tuple(layer.strides)
            if len(ks) == 1:
                ks, ss = (1, ks[0]), (1, ss[0])
        else:
            ks, ss = _pair(layer.kernel_size), _pair(layer.stride)
        out, pads = [], []
        for size, k, s in zip((h, w), ks, ss):
            if layer.padding == "valid":
                o = (size - k) // s + 1
                pads.append((0, 0))
            elif layer.padding in ("same", "circular"):
                o = -(-size // s)
                total = max((o - 1) * s + k - size, 0)
                pads.append((total // 2, total - total // 2))
            else:
                raise ValueError(f"padding {layer.padding!r}")
            assert o >= 1, "filter does not fit"
            out.append(o)
        return ks, ss, tuple(out), pads

    def conv_average(self, layer, k: np.ndarray, kind: str) -> np.ndarray:
        """Filter average of ``k``: kind "full" (N, N, H, W, H, W), "diag" (N, N, H, W) or "field" (N, H, W)."""
        h, w = (k.shape[2:4] if kind != "field" else k.shape[1:3])
        (kh, kw), (sh, sw), (oh, ow), (ph, pw) = self.conv_geometry(layer, h, w)
        mode = _pad_mode(layer)
        if kind == "full":
            k = np.pad(k, [(0, 0), (0, 0), ph, pw, ph, pw], mode=mode)
        elif kind == "diag":
            k = np.pad(k, [(0, 0), (0, 0), ph, pw], mode=mode)
        else:
            k = np.pad(k, [(0, 0), ph, pw], mode=mode)
        out = None
        for a in range(kh):
            rows = slice(a, a + sh * (oh - 1) + 1, sh)
            for b in range(kw):
                cols = slice(b, b + sw * (ow - 1) + 1, sw)
                if kind == "full":
                    term = k[:, :, rows, cols, rows, cols]
                elif kind == "diag":
                    term = k[:, :, rows, cols]
                else:
                    term = k[:, rows, cols]
                out = term.copy() if out is None else out + term
        return out / LD(kh * kw)

    def average(self, layer, st: _State, k: np.ndarray) -> np.ndarray:
        if "Conv2d" in _names(layer):
            assert st.image, "Conv2d needs images"
            return self.conv_average(layer, k, self.spatial)
        assert not st.image, "Dense needs vectors"
        return k

    def pool_field(self, layer, st: _State, m: np.ndarray) -> np.ndarray:
        if "Conv2d" in _names(layer):
            return self.conv_average(layer, m, "field")
        return m

    def layer_fan_in(self, layer, st: _State) -> int | None:
        if st.fan_in is None:
            return None
        if "Conv2d" in _names(layer):
            h, w = st.hw
            (kh, kw), _, _, _ = self.conv_geometry(layer, h, w)
            return st.fan_in * kh * kw
        return st.fan_in

    def centred_from_features(self, layer, st: _State) -> np.ndarray:
        """First centred layer, fed by the inputs: ``sum_m (x_m - xbar)(x'_m - xbar') / (n - 1)``
        over the ``n`` inputs of a weight row, from the centred inputs themselves.  The same as
        ``n/(n-1) (A[Sigma] - A[mu] A[mu'])``, but a constant patch centres to exactly 0 (its mean
        is exact in longdouble), so its variance is exactly 0 instead of +-eps, whose square root
        would otherwise enter the next ReLU-family layer at ~sqrt(eps)."""
        x = st.features
        if not st.image:
            xc = x - (_tree_sum(x, axis=1) / LD(x.shape[1]))[:, None]
            return _tree_sum(xc[:, None, :] * xc[None, :, :], axis=2) / LD(x.shape[1] - 1)
        n_ex, c, h, w = x.shape
        (kh, kw), (sh, sw), (oh, ow), (ph, pw) = self.conv_geometry(layer, h, w)
        x = np.pad(x, [(0, 0), (0, 0), ph, pw], mode=_pad_mode(layer))
        rows = [slice(a, a + sh * (oh - 1) + 1, sh) for a in range(kh)]
        cols = [slice(b, b + sw * (ow - 1) + 1, sw) for b in range(kw)]
        patches = np.stack([x[:, ch, r, q] for ch in range(c) for r in rows for q in cols], axis=-1)  # (N, oh, ow, n)
        n = patches.shape[-1]
        pc = patches - (_tree_sum(patches, axis=3) / LD(n))[..., None]
        k = None
        for m in range(n):  # the same products and sums, in the same order, for every entry
            u = pc[..., m]
            term = u[:, None, :, :, None, None] * u[None, :, None, None, :, :] if self.spatial == "full" else u[:, None] * u[None, :]
            k = term if k is None else k + term
        return k / LD(n - 1)

    def affine(self, layer, st: _State, centred: bool) -> _State:
        w2 = _ld(layer.W_std) ** 2
        n = self.layer_fan_in(layer, st)
        if centred and st.features is not None:
            k = self.centred_from_features(layer, st)
        elif centred:
            k = self.average(layer, st, st.nngp)
            if st.mean is None:
                raise ValueError("Centred needs the mean over units of its input")
            m = self.pool_field(layer, st, st.mean)
            k = k - self.b1(st, m) * self.b2(st, m)
            if n is not None:
                k = k * (LD(n) / LD(n - 1))
        else:
            k = self.average(layer, st, st.nngp)
        k = w2 * k
        if layer.b_std is not None:
            k = k + _ld(layer.b_std) ** 2
        if st.ntk is not None and not centred:
            st.ntk = w2 * self.average(layer, st, st.ntk) + k
        else:
            st.ntk = None
        st.nngp = k
        st.mean = np.zeros((k.shape[0], *(k.shape[2:4] if st.image else ())), dtype=LD)
        st.fan_in = None
        st.row_dof = (n - 1) if (centred and n is not None) else None
        st.features = None
        return st

    # -- activations -----------------------------------------------------------------------
    def abrelu(self, a: LD, b: LD, st: _State) -> _State:
        v = np.maximum(self.var(st), LD(0))  # a centred variance can round to -eps
        f = (a - b) ** 2 / (2 * PI)
        g = (a * a + b * b) / 2
        k = st.nngp
        s = np.sqrt(self.b1(st, v) * self.b2(st, v))  # one square root of the product
        pos = s > 0
        cos = np.clip(np.where(pos, k / np.where(pos, s, LD(1)), LD(0)), LD(-1), LD(1))
        gap = 1 - np.abs(cos)
        ill = pos & (gap > 0)
        if np.any(ill):
            self.min_gap = min(self.min_gap, float(np.min(gap[ill])))
        theta = np.arccos(cos)
        sin = np.sqrt(np.maximum((1 - cos) * (1 + cos), LD(0)))
        dot = g - f * theta
        st.nngp = s * (f * sin + dot * cos)
        if st.ntk is not None:
            st.ntk = st.ntk * dot
        mean = None
        if st.mean is not None and not np.any(st.mean != 0):
            mean = (b - a) * np.sqrt(v / (2 * PI))
            if st.row_dof is not None:
                mean = mean * _sphere_ratio(st.row_dof)
        st.mean = mean
        return st

    def erf(self, layer, st: _State) -> _State:
        a, b, c = _ld(layer.a), _ld(layer.b), _ld(layer.c)
        b2 = b * b
        v = np.maximum(self.var(st), LD(0))
        v1, v2 = self.b1(st, v), self.b2(st, v)
        k = st.nngp
        if st.ntk is not None:
            det = np.maximum(v1 * v2 - k * k, LD(0))
            den = 1 + 2 * b2 * (v1 + v2) + 4 * b2 * b2 * det
            st.ntk = st.ntk * (a * a * b2 * 4 / PI) / np.sqrt(den)
        u = np.clip(2 * b2 * k / np.sqrt((1 + 2 * b2 * v1) * (1 + 2 * b2 * v2)), LD(-1), LD(1))
        st.nngp = a * a * (2 / PI) * np.arcsin(u) + c * c
        if st.mean is not None and not np.any(st.mean != 0):
            st.mean = np.full(v.shape, c, dtype=LD)
        else:
            st.mean = None
        return st

    # -- activations given by two Gaussian expectations ----------------------------------------
    def _operands(self, st: _State):
        v = np.maximum(self.var(st), LD(0))
        return v, st.nngp, self.b1(st, v), self.b2(st, v)

    def _track_gap(self, cos: np.ndarray, pos: np.ndarray) -> None:
        gap = 1 - np.abs(cos)
        ill = pos & (gap > 0)
        if np.any(ill):
            self.min_gap = min(self.min_gap, float(np.min(gap[ill])))

    def _angle(self, k, v1, v2):
        """``s = sqrt(v1 v2)``, clipped ``cos theta`` (0 where ``s = 0``), ``theta``, ``sin theta``."""
        s = np.sqrt(v1 * v2)
        pos = s > 0
        cos = np.clip(np.where(pos, k / np.where(pos, s, LD(1)), LD(0)), LD(-1), LD(1))
        self._track_gap(cos, pos)
        theta = np.arccos(cos)
        sin = np.sqrt(np.maximum((1 - cos) * (1 + cos), LD(0)))
        return s, pos, cos, theta, sin

    def expectation(self, st: _State, nngp_fn, ntk_fn, mean_fn) -> _State:
        """``Sigma <- nngp_fn(k, v1, v2)``, ``Theta <- Theta * ntk_fn(k, v1, v2)``, the mean
        ``mean_fn(v)`` after zero-mean Gaussian pre-activations (unknown otherwise)."""
        v, k, v1, v2 = self._operands(st)
        if st.ntk is not None:
            st.ntk = st.ntk * ntk_fn(k, v1, v2)
        st.nngp = nngp_fn(k, v1, v2)
        zero_mean = st.mean is not None and not np.any(st.mean != 0)
        st.mean = mean_fn(v) if zero_mean and st.row_dof is None else None
        return st

    def gelu(self, st: _State) -> _State:
        r"""``phi(x) = x Phi(x)``, derived by Gaussian integration by parts: with ``z, z'`` standard
        normal and independent of ``(u, u')``, ``phi(u) phi(u') = E_z[u u' 1(A > 0) 1(B > 0)]`` for
        ``A = u - z``, ``B = u' - z'``, and ``E[X Y g] = C_XY E[g] + sum_ij C_Xi C_Yj E[d_i d_j g]``:
        ``Sigma/4 + Sigma alpha / 2pi + [v1 v2 + Sigma^2 (1 - v1 v2)/q] / (2 pi delta)`` with
        ``q = (1 + v1)(1 + v2)``, ``delta^2 = q - Sigma^2``, ``alpha = arcsin(Sigma / sqrt q)``; the
        NTK factor is its derivative in ``Sigma`` (Price's theorem)."""

        def parts(k, v1, v2):
            d2 = 1 + v1 + v2 + np.maximum(v1 * v2 - k * k, LD(0))
            d = np.sqrt(d2)
            return d2, d, (1 + v1) * (1 + v2), np.arctan2(k, d)

        def nngp(k, v1, v2):
            d2, d, q, alpha = parts(k, v1, v2)
            return k / 4 + k * alpha / (2 * PI) + (v1 * v2 + k * k * (1 - v1 * v2) / q) / (2 * PI * d)

        def ntk(k, v1, v2):
            d2, d, q, alpha = parts(k, v1, v2)
            return LD(1) / 4 + alpha / (2 * PI) + k / (2 * PI * d) * (1 + (1 - v1 * v2) / q + 1 / d2)

        return self.expectation(st, nngp, ntk, lambda v: v / np.sqrt(2 * PI * (1 + v)))

    def sin(self, layer, st: _State, cosine: bool) -> _State:
        """``a sin(b x + c)`` (``cosine``: ``a cos(b x + c)``, the phase ``c + pi/2``):
        ``a^2/2 [E cos b(u - u') -+ cos 2c E cos b(u + u')]``, ``E cos(b w) = exp(-b^2 Var w / 2)``."""
        a, b, c = _ld(layer.a), _ld(layer.b), _ld(layer.c)
        c2 = -np.cos(2 * c) if cosine else np.cos(2 * c)
        mean_c = np.cos(c) if cosine else np.sin(c)

        def terms(k, v1, v2):
            return np.exp(-b * b * (v1 + v2 - 2 * k) / 2), c2 * np.exp(-b * b * (v1 + v2 + 2 * k) / 2)

        def nngp(k, v1, v2):
            e, f = terms(k, v1, v2)
            return a * a / 2 * (e - f)

        def ntk(k, v1, v2):
            e, f = terms(k, v1, v2)
            return a * a * b * b / 2 * (e + f)

        return self.expectation(st, nngp, ntk, lambda v: a * mean_c * np.exp(-b * b * v / 2))

    def rbf(self, layer, st: _State) -> _State:
        """``sqrt 2 sin(sqrt(2 gamma) x + pi/4)``: ``exp(-gamma E(u - u')^2)``, NTK factor ``2 gamma`` times it."""
        g = _ld(layer.gamma)

        def nngp(k, v1, v2):
            return np.exp(-g * np.maximum(v1 + v2 - 2 * k, LD(0)))

        return self.expectation(st, nngp, lambda k, v1, v2: 2 * g * nngp(k, v1, v2), lambda v: np.exp(-g * v))

    def exp(self, layer, st: _State) -> _State:
        """``a exp(b x)``: ``a^2 E exp(b (u + u')) = a^2 exp(b^2 (v1 + v2 + 2 Sigma) / 2)``."""
        a, b = _ld(layer.a), _ld(layer.b)

        def nngp(k, v1, v2):
            return a * a * np.exp(b * b * (v1 + v2 + 2 * k) / 2)

        return self.expectation(st, nngp, lambda k, v1, v2: b * b * nngp(k, v1, v2),
                                lambda v: a * np.exp(b * b * v / 2))

    def gaussian(self, layer, st: _State) -> _State:
        """``a exp(b x^2)``: ``a^2 / sqrt(det(I - 2 b C))``, the NTK factor its ``Sigma``-derivative."""
        a, b = _ld(layer.a), _ld(layer.b)

        def det(k, v1, v2):
            return (1 - 2 * b * v1) * (1 - 2 * b * v2) - 4 * b * b * k * k

        def nngp(k, v1, v2):
            return a * a / np.sqrt(det(k, v1, v2))

        def ntk(k, v1, v2):
            d = det(k, v1, v2)
            return 4 * a * a * b * b * k / (d * np.sqrt(d))

        return self.expectation(st, nngp, ntk, lambda v: a / np.sqrt(1 - 2 * b * v))

    def sign(self, st: _State) -> _State:
        """``sign(x)``: ``1 - 2 theta / pi`` (0 where a variance is 0), NTK factor 0."""

        def nngp(k, v1, v2):
            s, pos, cos, theta, sin = self._angle(k, v1, v2)
            return np.where(pos, 1 - 2 * theta / PI, LD(0))

        return self.expectation(st, nngp, lambda k, v1, v2: LD(0), lambda v: np.zeros_like(v))

    @staticmethod
    def _wick(c1, c2, k, v1, v2):
        """``E[p(u) q(u')]`` for polynomials with coefficients ``c1``, ``c2`` (Isserlis' theorem):
        ``E[u^m u'^n] = sum_j C(m, j) C(n, j) j! (m-j-1)!! (n-j-1)!! Sigma^j v1^((m-j)/2) v2^((n-j)/2)``."""

        def dfact(n):  # (n - 1)!! for even n >= 0: the number of pairings of n items
            return 1 if n <= 0 else int(np.prod(np.arange(n - 1, 0, -2, dtype=object)))

        pw = {}

        def power(name, base, e):
            if (name, e) not in pw:
                pw[(name, e)] = np.ones_like(base) if e == 0 else power(name, base, e - 1) * base
            return pw[(name, e)]

        out = np.zeros(np.broadcast(k, v1, v2).shape, dtype=LD)
        for m, cm in enumerate(c1):
            for n, cn in enumerate(c2):
                if cm == 0 or cn == 0:
                    continue
                for j in range(m % 2, min(m, n) + 1, 2):
                    if (n - j) % 2:
                        continue
                    coef = comb(m, j) * comb(n, j) * int(np.prod(np.arange(1, j + 1, dtype=object))) * dfact(m - j) * dfact(n - j)
                    out = out + (cm * cn * LD(coef)) * (power("k", k, j) * power("a", v1, (m - j) // 2)
                                                         * power("b", v2, (n - j) // 2))
        return out

    def polynomial(self, layer, st: _State) -> _State:
        coef = [_ld(c) for c in layer.coef]
        deriv = [LD(m) * c for m, c in enumerate(coef)][1:] or [LD(0)]

        def mean(v):
            return self._wick(coef, [LD(1)], np.zeros_like(v), v, np.ones_like(v))

        return self.expectation(st, lambda k, v1, v2: self._wick(coef, coef, k, v1, v2),
                                lambda k, v1, v2: self._wick(deriv, deriv, k, v1, v2), mean)

    def rectified_monomial(self, layer, st: _State) -> _State:
        r"""``x_+^n``: ``E[u_+^n u'^n_+] = s^n J_n(theta) / 2 pi`` (Cho & Saul's arc-cosine kernels),
        ``J_0 = pi - theta``, ``J_1 = sin + (pi - theta) cos``, ``J_n = (2n - 1) cos J_{n-1} + (n - 1)^2
        sin^2 J_{n-2}``; NTK factor ``n^2 s^{n-1} J_{n-1} / 2 pi``; mean ``v^{n/2} E|z|^n / 2``."""
        n = int(layer.degree)

        def kernel(deg, k, v1, v2):
            s, pos, cos, theta, sin = self._angle(k, v1, v2)
            js = [PI - theta, sin + (PI - theta) * cos]
            for m in range(2, deg + 1):
                js.append((2 * m - 1) * cos * js[m - 1] + LD((m - 1) ** 2) * sin * sin * js[m - 2])
            out = js[deg] / (2 * PI)
            for _ in range(deg):
                out = out * s
            return out

        def mean(v):
            if n % 2 == 0:  # E|z|^n = (n - 1)!!
                abs_moment = LD(int(np.prod(np.arange(n - 1, 0, -2, dtype=object)))) if n else LD(1)
            else:  # E|z|^n = sqrt(2/pi) 2^{(n-1)/2} ((n-1)/2)!
                abs_moment = np.sqrt(2 / PI) * LD(2 ** ((n - 1) // 2)) * LD(int(np.prod(np.arange(1, (n - 1) // 2 + 1, dtype=object))))
            root = np.sqrt(v)
            out = np.full(v.shape, abs_moment / 2, dtype=LD)
            for _ in range(n):
                out = out * root
            return out

        ntk = (lambda k, v1, v2: LD(0)) if n == 0 else (lambda k, v1, v2: LD(n * n) * kernel(n - 1, k, v1, v2))
        return self.expectation(st, lambda k, v1, v2: kernel(n, k, v1, v2), ntk, mean)

    # -- branches ---------------------------------------------------------------------------------
    def fan_in(self, layer, sts, kind: str) -> _State:
        assert isinstance(sts, list) and sts, f"{kind} joins the branches of a FanOut"
        for s in sts:
            assert isinstance(s, _State), "a branch is still split"
        first = sts[0]
        means = None if any(s.mean is None for s in sts) else [s.mean for s in sts]
        ntks = None if any(s.ntk is None for s in sts) else [s.ntk for s in sts]
        fan_ins = [s.fan_in for s in sts]
        out = replace(first, row_dof=None, features=None)
        if kind == "sum":
            out.nngp = _chain_sum([s.nngp for s in sts])
            out.ntk = None if ntks is None else _chain_sum(ntks)
            out.mean = None if means is None else _chain_sum(means)
            out.fan_in = fan_ins[0] if len(set(fan_ins)) == 1 else None
        elif kind == "prod":
            nngps = [s.nngp for s in sts]
            prod = nngps[0]
            for t in nngps[1:]:
                prod = prod * t
            out.nngp = prod
            if ntks is not None:  # sum_j Theta_j prod_{i != j} Sigma_i
                terms = []
                for j in range(len(sts)):
                    t = ntks[j]
                    for i in range(len(sts)):
                        if i != j:
                            t = t * nngps[i]
                    terms.append(t)
                out.ntk = _chain_sum(terms)
            if means is not None:
                m = means[0]
                for t in means[1:]:
                    m = m * t
                out.mean = m
            out.fan_in = fan_ins[0] if len(set(fan_ins)) == 1 else None
        else:
            ndim = 3 if first.image else 1
            a = layer.axis + 1 + ndim if layer.axis < 0 else layer.axis
            assert 1 <= a <= ndim, f"FanInConcat axis {layer.axis}"
            if a == 1:  # channels / features: weighted by the channel counts
                if all(f is None for f in fan_ins):
                    w = [LD(1) / LD(len(sts))] * len(sts)
                    out.fan_in = None
                else:
                    assert all(f is not None for f in fan_ins), "finite and infinite widths mixed"
                    w = [LD(f) / LD(sum(fan_ins)) for f in fan_ins]
                    out.fan_in = sum(fan_ins)

                def avg(ts):
                    return _chain_sum([t * wj for t, wj in zip(ts, w)])

                out.nngp = avg([s.nngp for s in sts])
                out.ntk = None if ntks is None else avg(ntks)
                out.mean = None if means is None else avg(means)
            else:  # rows (a = 2) or columns (a = 3) of images: cross-branch positions uncorrelated
                assert first.image
                axis = a - 1  # 1 rows, 2 columns of (H, W)

                def join(ts):
                    if self.spatial == "diag":
                        return np.concatenate(ts, axis=1 + axis)
                    n1, n2, h, w = ts[0].shape[:4]
                    sizes = [t.shape[1 + axis] for t in ts]
                    tot = sum(sizes)
                    shape = (n1, n2, tot, w, tot, w) if axis == 1 else (n1, n2, h, tot, h, tot)
                    res = np.zeros(shape, dtype=LD)
                    start = 0
                    for t, size in zip(ts, sizes):
                        sl = slice(start, start + size)
                        if axis == 1:
                            res[:, :, sl, :, sl, :] = t
                        else:
                            res[:, :, :, sl, :, sl] = t
                        start += size
                    return res

                out.nngp = join([s.nngp for s in sts])
                out.ntk = None if ntks is None else join(ntks)
                out.mean = None if means is None else np.concatenate(means, axis=axis)
                out.fan_in = fan_ins[0] if len(set(fan_ins)) == 1 else None
        return out

    def run(self, layers, st):
        for layer in layers:
            st = self.layer(layer, st)
        return st

    # -- readouts -----------------------------------------------------------------------------
    def flatten(self, st: _State) -> _State:
        if not st.image:
            return st  # identity on vectors (fan-in and row_dof pass through)
        n = st.nngp.shape[0]
        h, w = st.hw
        p = h * w

        def reduce(t):
            if self.spatial == "full":
                t = np.diagonal(t.reshape(n, n, p, p), axis1=2, axis2=3)
            else:
                t = t.reshape(n, n, p)
            return _tree_sum(t, axis=2) / LD(p)

        st.nngp = reduce(st.nngp)
        if st.ntk is not None:
            st.ntk = reduce(st.ntk)
        if st.mean is not None:
            st.mean = _tree_sum(st.mean.reshape(n, p), axis=1) / LD(p)
        st.fan_in = None if st.fan_in is None else st.fan_in * p
        st.image, st.row_dof = False, None
        if st.features is not None:
            st.features = st.features.reshape(n, -1)
        return st

    def global_avg_pool(self, st: _State) -> _State:
        assert st.image, "GlobalAvgPool needs images"
        if self.spatial != "full":
            raise ValueError("GlobalAvgPool needs spatial='full'")
        n = st.nngp.shape[0]
        h, w = st.hw
        p = h * w

        def reduce(t):
            return _tree_sum(t.reshape(n, n, p * p), axis=2) / LD(p * p)

        st.nngp = reduce(st.nngp)
        if st.ntk is not None:
            st.ntk = reduce(st.ntk)
        if st.mean is not None:
            st.mean = _tree_sum(st.mean.reshape(n, p), axis=1) / LD(p)
        st.image, st.row_dof = False, None
        if st.features is not None:
            st.features = _tree_sum(st.features.reshape(n, st.features.shape[1], p), axis=2) / LD(p)
        return st

    # -- pools, normalisation, dropout -----------------------------------------------------------
    def pool(self, layer, st: _State, total: bool) -> _State:
        """``AvgPool`` (``total=False``) / ``SumPool`` (``total=True``) on the full layout."""
        assert st.image, "pooling needs images"
        if self.spatial != "full":
            raise ValueError("AvgPool/SumPool need spatial='full'")
        h, w = st.hw
        (kh, kw), (sh, sw), (oh, ow), (ph, pw) = self.conv_geometry(layer, h, w)
        mode = _pad_mode(layer)
        size = LD(kh * kw)

        def reduce(t):
            t = np.pad(t, [(0, 0), (0, 0), ph, pw, ph, pw], mode=mode)
            for axis, (k, s, o) in zip((2, 3, 4, 5), ((kh, sh, oh), (kw, sw, ow)) * 2):
                t = _window_sum(t, axis, k, s, o)
            return t if total else t / (size * size)

        st.nngp = reduce(st.nngp)
        if st.ntk is not None:
            st.ntk = reduce(st.ntk)
        if st.mean is not None:
            m = np.pad(st.mean, [(0, 0), ph, pw], mode=mode)
            m = _window_sum(_window_sum(m, 1, kh, sh, oh), 2, kw, sw, ow)
            st.mean = m if total else m / size
        st.row_dof, st.features = None, None
        return st

    def global_sum_pool(self, st: _State) -> _State:
        assert st.image, "GlobalSumPool needs images"
        if self.spatial != "full":
            raise ValueError("GlobalSumPool needs spatial='full'")
        n = st.nngp.shape[0]
        h, w = st.hw
        p = h * w
        st.nngp = _tree_sum(st.nngp.reshape(n, n, p * p), axis=2)
        if st.ntk is not None:
            st.ntk = _tree_sum(st.ntk.reshape(n, n, p * p), axis=2)
        if st.mean is not None:
            st.mean = _tree_sum(st.mean.reshape(n, p), axis=1)
        st.image, st.row_dof, st.features = False, None, None
        return st

    def layer_norm(self, layer, st: _State) -> _State:
        ndim = 4 if st.image else 2
        axes = sorted({int(a) % ndim for a in ((layer.axis,) if np.isscalar(layer.axis) else layer.axis)})
        assert 1 in axes and 0 not in axes
        if st.mean is None:
            raise ValueError("LayerNorm needs the mean over units of its input")
        eps = _ld(layer.eps)
        v = np.maximum(self.var(st), LD(0))
        mu = st.mean
        red = tuple(a - 1 for a in axes if a >= 2)  # axes of the (N, H, W) statistics

        def group(a):
            if not red:
                return a
            g = a
            for ax in red:  # a fixed order of pairwise sums, for every entry
                g = np.expand_dims(_tree_sum(g, axis=ax), ax)
            size = LD(int(np.prod([a.shape[ax] for ax in red])))
            return np.broadcast_to(g / size, a.shape)

        zero = not np.any(mu != 0)
        if zero:
            big_v = group(v)
        else:
            big_m = group(mu)
            big_v = np.maximum(group(v) - big_m * big_m, LD(0))
        s = np.sqrt(self.b1(st, big_v + eps) * self.b2(st, big_v + eps))
        k = st.nngp
        if not zero:
            m1, m2 = self.b1(st, mu), self.b2(st, mu)
            bm1, bm2 = self.b1(st, big_m), self.b2(st, big_m)
            k = k - bm1 * m2 - m1 * bm2 + bm1 * bm2
        st.nngp = k / s
        if st.ntk is not None:
            st.ntk = st.ntk / s
        st.mean = np.zeros_like(v)
        st.features = None
        return st

    def dropout(self, layer, st: _State) -> _State:
        if layer.mode != "train":
            return st
        f = LD(1) / _ld(layer.rate)
        n = st.nngp.shape[0]

        def scale(t):
            t = t.copy()
            idx = np.arange(n)
            if st.image and self.spatial == "full":
                h, w = st.hw
                t = t.reshape(n, n, h * w, h * w)
                q = np.arange(h * w)
                t[idx[:, None], idx[:, None], q[None, :], q[None, :]] *= f
                return t.reshape(n, n, h, w, h, w)
            t[idx, idx] *= f
            return t

        st.nngp = scale(st.nngp)
        if st.ntk is not None:
            st.ntk = scale(st.ntk)
        st.features, st.row_dof = None, None
        return st

    # -- driver ---------------------------------------------------------------------------------
    def layer(self, layer, st):
        names = _names(layer)
        if "FanOut" in names:
            assert isinstance(st, _State), "FanOut of branches"
            return [replace(st) for _ in range(int(layer.num))]
        if "Parallel" in names:
            assert isinstance(st, list) and len(st) == len(layer.branches), "parallel() needs one input per branch"
            return [self.run(_flatten_layers([b]), s) for b, s in zip(layer.branches, st)]
        if "FanInSum" in names:
            return self.fan_in(layer, st, "sum")
        if "FanInProd" in names:
            return self.fan_in(layer, st, "prod")
        if "FanInConcat" in names:
            return self.fan_in(layer, st, "concat")
        assert isinstance(st, _State), f"{layer!r} gets {len(st)} branches"
        if "Centred" in names:
            return self.affine(layer.layer, st, centred=True)
        if "Dense" in names or "Conv2d" in names:
            return self.affine(layer, st, centred=False)
        if "Relu" in names:
            out = self.abrelu(LD(0), _ld(layer.scale), st)
        elif "LeakyRelu" in names:
            out = self.abrelu(_ld(layer.slope), LD(1), st)
        elif "ABRelu" in names:
            out = self.abrelu(_ld(layer.a), _ld(layer.b), st)
        elif "Erf" in names:
            out = self.erf(layer, st)
        elif "Identity" in names:
            out = st
        elif "Gelu" in names:
            out = self.gelu(st)
        elif "Cos" in names:
            out = self.sin(layer, st, cosine=True)
        elif "Sin" in names:
            out = self.sin(layer, st, cosine=False)
        elif "Rbf" in names:
            out = self.rbf(layer, st)
        elif "Exp" in names:
            out = self.exp(layer, st)
        elif "Gaussian" in names:
            out = self.gaussian(layer, st)
        elif "Sign" in names:
            out = self.sign(st)
        elif "Polynomial" in names:  # Monomial too
            out = self.polynomial(layer, st)
        elif "RectifiedMonomial" in names:
            out = self.rectified_monomial(layer, st)
        elif "Flatten" in names:
            return self.flatten(st)
        elif "GlobalAvgPool" in names:
            return self.global_avg_pool(st)
        elif "GlobalSumPool" in names:
            return self.global_sum_pool(st)
        elif "SumPool" in names:
            return self.pool(layer, st, total=True)
        elif "AvgPool" in names:
            return self.pool(layer, st, total=False)
        elif "LayerNorm" in names:
            return self.layer_norm(layer, st)
        elif "Dropout" in names:
            return self.dropout(layer, st)
        else:
            raise TypeError(f"no oracle for layer {layer!r}")
        out.row_dof = None  # an activation's output is not the first centred layer's
        if "Identity" not in names:
            out.features = None
        return out


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    assert x.ndim in (2, 3, 4), "inputs are (N, d), (N, C, L) or (N, C, H, W)"
    if x.ndim == 3:  # a sequence is an image of height 1
        x = x[:, :, None, :]
    return x.astype(LD)


def oracle_kernels(layers, x, *, ntk: bool = True, spatial: str = "full", info: dict | None = None):
    """NNGP and NTK Gram matrices ``(N, N)`` of ``x`` through ``layers``, in ``numpy.longdouble``.

    layers : list of gpmargin layer objects, or a ``serial(...)``.
    x : ``(N, d)`` vectors or ``(N, C, H, W)`` images (numpy array or torch tensor; its values,
        e.g. float64, are converted exactly to longdouble).
    ntk : also compute the NTK; it is ``None`` when a ``Centred`` layer is present.
    spatial : ``"full"`` keeps the whole position-position covariance ``(N, N, H, W, H, W)``
        (small images only); ``"diag"`` keeps same-position entries ``(N, N, H, W)`` (enough when
        no ``GlobalAvgPool`` is present; for larger images).
    info : a dict to receive ``info["min_gap"]``, the smallest non-zero ``1 - |cos theta|`` that
        a ReLU-family layer met (``inf`` if none).  Where it is ``gamma``, the computed angle is
        off by about ``1e-19 / sqrt(2 gamma)`` (and a float64 implementation's by
        ``1e-16 / sqrt(2 gamma)``), so ``gamma`` of a few eps means parallel, non-identical
        receptive fields whose exact angle is 0 or pi (see the module docstring).

    Returns ``(nngp, ntk)`` as longdouble numpy arrays (``ntk`` may be ``None``).
    """
    layers = _flatten_layers(layers)
    if any("Centred" in _names(layer) for layer in layers):
        ntk = False
    orc = _Oracle(spatial)
    st = orc.input(_as_array(x), ntk)
    st = orc.run(layers, st)
    if not isinstance(st, _State):
        raise ValueError(f"the network ends with {len(st)} branches; join them with a fan-in")
    if info is not None:
        info["min_gap"] = orc.min_gap
    if st.image:
        raise ValueError("the network must end with vectors (Flatten/GlobalAvgPool)")
    return st.nngp, st.ntk
