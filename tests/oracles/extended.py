r"""An extended-precision oracle of gpmargin's NNGP and NTK recursions (numpy ``longdouble`` only).

``oracle_kernels(layers, x)`` recomputes, independently of gpmargin's torch code, the Gram
matrices ``(nngp, ntk)`` of one input set ``x`` for a network given as a list of gpmargin layer
objects (or a ``gpmargin.kernels.serial``).  Only the layers' public attributes are read
(``W_std``, ``b_std``, ``kernel_size``, ``stride``, ``padding``, ``a``, ``b``, ``c``, ``scale``,
``slope``, ``layer``); every number is computed here in ``numpy.longdouble`` (the x87 80-bit
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

from dataclasses import dataclass

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


def _ld(v) -> LD:
    return LD(float(v))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    assert len(v) == 2
    return v


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
        ks, ss = _pair(layer.kernel_size), _pair(layer.stride)
        out, pads = [], []
        for size, k, s in zip((h, w), ks, ss):
            if layer.padding == "valid":
                o = (size - k) // s + 1
                pads.append((0, 0))
            elif layer.padding == "same":
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
        if kind == "full":
            k = np.pad(k, [(0, 0), (0, 0), ph, pw, ph, pw])
        elif kind == "diag":
            k = np.pad(k, [(0, 0), (0, 0), ph, pw])
        else:
            k = np.pad(k, [(0, 0), ph, pw])
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
            kh, kw = _pair(layer.kernel_size)
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
        x = np.pad(x, [(0, 0), (0, 0), ph, pw])
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

    # -- driver ---------------------------------------------------------------------------------
    def layer(self, layer, st: _State) -> _State:
        names = _names(layer)
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
        elif "Flatten" in names:
            return self.flatten(st)
        elif "GlobalAvgPool" in names:
            return self.global_avg_pool(st)
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
    assert x.ndim in (2, 4), "inputs are (N, d) or (N, C, H, W)"
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
    for layer in layers:
        st = orc.layer(layer, st)
    if info is not None:
        info["min_gap"] = orc.min_gap
    if st.image:
        raise ValueError("the network must end with vectors (Flatten/GlobalAvgPool)")
    return st.nngp, st.ntk
