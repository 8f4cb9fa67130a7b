"""gpmargin.probes: filter-normalised directions, landscape slices, the SGD walk, PH dimension.

Exact properties are checked to float64 round-off (1e-10); the PH-dimension tolerances are the
issue's (a cube of dimension d sampled with 200..1000 points: the MST boundary effect biases the
estimate low by about 0.05 at d = 2 and 0.1-0.2 at d = 3, hence 0.1 / 0.1 / 0.3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gpmargin.errors import GpmarginError
from gpmargin.probes import (
    TrajectoryRecorder,
    WalkRecorder,
    basin_radius,
    evaluate,
    get_weights,
    interpolate,
    ph_dimension,
    random_direction,
    sgd_walk,
    sharpness,
    slice_1d,
    slice_2d,
)
from gpmargin.probes.directions import row_norms


def _ce(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


@pytest.fixture(scope="module")
def digits():
    from gpmargin.data import load

    x, y = load("digits", "train")
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(len(y), -1)[:400]
    return x / x.norm(dim=1, keepdim=True), torch.as_tensor(np.asarray(y), dtype=torch.int64)[:400]


# ------------------------------------------------------------------ directions
def test_filter_normalised_rows_and_zero_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 7), nn.ReLU(), nn.Linear(7, 10)).double()
    d = random_direction(model, seed=3)
    for p, dp in zip(model.parameters(), d):
        assert dp.shape == p.shape
        if p.dim() == 1:  # biases and batch-norm parameters
            assert torch.count_nonzero(dp) == 0
        else:  # every output row / filter has exactly the weight row's norm
            torch.testing.assert_close(row_norms(dp), row_norms(p.detach()), rtol=1e-12, atol=0)
    copied = random_direction(model, seed=3, bias="copy")
    for p, dp in zip(model.parameters(), copied):
        if p.dim() == 1:
            assert torch.equal(dp, p.detach())
    # same seed, same direction; another seed, another one
    assert all(torch.equal(a, b) for a, b in zip(d, random_direction(model, seed=3)))
    assert not torch.equal(d[0], random_direction(model, seed=4)[0])


def test_model_without_parameters_is_refused():
    with pytest.raises(GpmarginError, match="no parameters"):
        random_direction(nn.ReLU())


def test_batchnorm_rescale_leaves_1d_curve_unchanged(digits):
    x, y = digits

    # eps ~ 0 so that batch norm is exactly scale invariant (eps = 1e-5 breaks it at 1e-4)
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32, eps=1e-12), nn.ReLU(),
                      nn.Linear(32, 32, bias=False), nn.BatchNorm1d(32, eps=1e-12), nn.ReLU(),
                      nn.Linear(32, 10, bias=False), nn.BatchNorm1d(10, eps=1e-12)).double()
    opt = torch.optim.Adam(a.parameters(), lr=0.01)
    for _ in range(30):  # a few steps, so the slice passes near a minimum
        opt.zero_grad()
        _ce(a(x), y).mean().backward()
        opt.step()
    import copy

    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight.mul_(7.0)  # batch norm undoes this; filter normalisation scales d with it
        b[3].weight.mul_(0.2)
    coeffs = np.linspace(-1, 1, 9)
    ca = slice_1d(a, _ce, (x, y), coefficients=coeffs, seed=5)
    cb = slice_1d(b, _ce, (x, y), coefficients=coeffs, seed=5)
    np.testing.assert_allclose(cb["train_loss"], ca["train_loss"], rtol=1e-9)
    assert np.ptp(ca["train_loss"]) > 0.1  # the curve is not flat: the test can fail


# ------------------------------------------------------------------ quadratic landscapes
class Quadratic(nn.Module):
    """Outputs its parameter matrix for every input; with ``quadratic_loss`` the mean loss is
    ``L(W) = 1/2 sum_ij h_ij (W_ij - C_ij)^2``."""

    def __init__(self, w, c, h):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("c", c)
        self.register_buffer("h", h)

    def forward(self, x):
        return (self.w - self.c).reshape(1, -1).expand(x.shape[0], -1)

    def loss(self, out, y):
        return 0.5 * (self.h.reshape(1, -1) * out.square()).sum(1)


def _quadratic(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    c = w + 0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    h = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.5
    m = Quadratic(w, c, h)
    data = (torch.zeros(5, 1, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    return m, data


def test_1d_and_2d_slices_of_a_quadratic_match_closed_form():
    m, data = _quadratic()
    d1, d2 = random_direction(m, seed=0), random_direction(m, seed=1)
    r0 = (m.w - m.c).detach()
    coeffs = np.linspace(-1, 1, 11)
    s1 = slice_1d(m, m.loss, data, d1, coeffs)
    exact = [float(0.5 * (m.h * (r0 + a * d1[0]).square()).sum()) for a in coeffs]
    np.testing.assert_allclose(s1["train_loss"], exact, rtol=1e-12)
    s2 = slice_2d(m, m.loss, data, (d1, d2), coeffs[::2])
    i, j = 4, 1
    a, b = coeffs[::2][i], coeffs[::2][j]
    assert s2["train_loss"].shape == (6, 6)
    assert s2["train_loss"][i, j] == pytest.approx(float(0.5 * (m.h * (r0 + a * d1[0] + b * d2[0]).square()).sum()),
                                                   rel=1e-12)
    assert torch.equal(m.w.detach(), get_weights(m)[0])  # parameters restored


def test_interpolation_endpoints_and_nan_recorded():
    m, data = _quadratic()
    ta = get_weights(m)
    tb = [ta[0] + 1.0]
    r = interpolate(m, ta, tb, m.loss, data)
    c = r["coefficients"]
    assert c[0] == -0.5 and c[-1] == 1.5 and r["distance"] == pytest.approx(math.sqrt(12))
    exact = [float(0.5 * (m.h * (m.w.detach() - m.c + t).square()).sum()) for t in c]
    np.testing.assert_allclose(r["train_loss"], exact, rtol=1e-12)

    def capped(out, y):  # not finite once any entry exceeds 1: NaN is recorded, not a number
        v = m.loss(out, y)
        return torch.where(out.abs().max(1).values > 1.0, torch.full_like(v, float("nan")), v)

    s = slice_1d(m, capped, data, random_direction(m, 0), np.linspace(-3, 3, 13))
    assert np.isnan(s["train_loss"]).any() and np.isfinite(s["train_loss"][6])
    assert np.isnan(s["train_accuracy"][np.isnan(s["train_loss"])]).all()
    with pytest.raises(GpmarginError, match="own train loss is not finite"):
        slice_1d(m, lambda o, y: m.loss(o, y) * float("nan"), data)


def test_basin_radius_and_sharpness_of_a_quadratic_bowl():
    m, data = _quadratic()
    with torch.no_grad():
        m.c.copy_(m.w)  # theta at the minimum: L(theta + r d) = r^2/2 sum h d^2
    thr = 0.3
    res = basin_radius(m, m.loss, data, threshold=thr, n_directions=5, max_radius=4.0, grid=8, bisections=20)
    for k in range(5):
        d = random_direction(m, seed=k)[0]
        q = float((m.h * d.square()).sum())
        expect = min(math.sqrt(2 * thr / q), 4.0)
        assert res["radii"][k] == pytest.approx(expect, abs=4.0 / 8 / 2**20)
    assert res["radius"] == pytest.approx(float(np.median(res["radii"])))
    rho = 0.1
    av = sharpness(m, m.loss, data, rho=rho, kind="average", n_samples=4)
    q = [float((m.h * random_direction(m, seed=k)[0].square()).sum()) for k in range(4)]
    assert av["sharpness"] == pytest.approx(0.5 * rho**2 * np.mean(q), rel=1e-12)
    worst = sharpness(m, m.loss, data, rho=rho, kind="worst", n_samples=4, ascent_steps=5)
    # worst case over the ball: every row at rho ||W_i|| along the row's top curvature
    bound = 0.5 * rho**2 * float((m.h.max(1).values * row_norms(m.w.detach()).square()).sum())
    assert max(av["samples"]) <= worst["sharpness"] <= bound * (1 + 1e-12)
    with pytest.raises(GpmarginError, match="threshold must exceed"):
        basin_radius(m, m.loss, data, threshold=-1.0)


def test_slices_on_a_trained_network_change_with_distance(digits):
    x, y = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(40):
        opt.zero_grad()
        _ce(net(x), y).mean().backward()
        opt.step()
    s = slice_1d(net, _ce, (x[:300], y[:300]), coefficients=np.linspace(-1, 1, 5), test=(x[300:], y[300:]))
    assert s["train_loss"][2] == pytest.approx(evaluate(net, _ce, (x[:300], y[:300]))["loss"])
    assert s["train_loss"][2] < min(s["train_loss"][0], s["train_loss"][4])  # a minimum along d
    assert s["train_accuracy"][2] > 0.9 and "test_accuracy" in s


# ------------------------------------------------------------------ the walk of SGD
class Bowl(nn.Module):
    """``L = 1/2 (a x^2 + b y^2)`` through a per-example loss (every example the same)."""

    def __init__(self, x0, y0):
        super().__init__()
        self.p = nn.Parameter(torch.tensor([[x0, y0]], dtype=torch.float64))

    def forward(self, inputs):
        return self.p.expand(inputs.shape[0], 2)


@pytest.mark.parametrize("y0", [0.0, 0.3])
def test_walk_on_analytic_quadratic(y0):
    a, b, eta = 10.0, 1.0, 0.15  # eta * a = 1.5 in (1, 2): x oscillates, y decays
    model = Bowl(1.0, y0)

    def loss(out, _):
        return 0.5 * (a * out[:, 0] ** 2 + b * out[:, 1] ** 2)

    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    steps = 3
    res = sgd_walk(model, loss, data, lr=eta, batch_size=4, steps=steps, points=41)
    xs, ys = [1.0], [y0]
    for _ in range(steps):
        xs.append(xs[-1] * (1 - eta * a))
        ys.append(ys[-1] * (1 - eta * b))
    s = res["a"]
    for t in range(steps):
        seg = 0.5 * (a * (xs[t] * (1 - s * eta * a)) ** 2 + b * (ys[t] * (1 - s * eta * b)) ** 2)
        np.testing.assert_allclose(res["segment_loss"][t], seg, rtol=1e-12, atol=1e-15)
        # a parabola in s: its vertex (closed form; 1/(eta a) when y = 0) lies in (0.5, 1)
        c2, c1, _ = np.polyfit(s, res["segment_loss"][t], 2)
        vertex = -c1 / (2 * c2)
        expect = (a**2 * xs[t] ** 2 + b**2 * ys[t] ** 2) / (eta * (a**3 * xs[t] ** 2 + b**3 * ys[t] ** 2))
        assert vertex == pytest.approx(expect, rel=1e-9) and 0.5 < vertex < 1
        if y0 == 0:
            assert vertex == pytest.approx(1 / (eta * a), rel=1e-9)
        assert res["valley_floor"][t] == pytest.approx(seg[0] - seg.min(), rel=1e-12)
        assert res["distance"][t] == pytest.approx(math.hypot(xs[t] - 1, ys[t] - y0), abs=1e-14)
    assert math.isnan(res["grad_cosine"][0]) and np.all(res["grad_cosine"][1:] < 0)
    # with the fine grid the recorded height approaches the continuous closed form L_t - L(a*)
    l0 = 0.5 * (a * xs[0] ** 2 + b * ys[0] ** 2)
    e = 1 / (eta * a) if y0 == 0 else None
    if e is not None:
        assert res["valley_floor"][0] == pytest.approx(l0, rel=1e-3)


def test_recorders_refuse_bad_input(digits):
    net = nn.Linear(64, 10).double()
    with pytest.raises(GpmarginError, match="points must be an integer >= 10"):
        WalkRecorder(net, _ce, digits, points=5)
    with pytest.raises(GpmarginError, match="need loss_fn"):
        TrajectoryRecorder(net, data=digits)
    rec = TrajectoryRecorder(net, keep=3, loss_fn=_ce, data=(digits[0][:20], digits[1][:20]))
    for _ in range(5):
        with torch.no_grad():
            net.bias.add_(0.1)
        rec.record()
    assert rec.points().shape == (3, 64 * 10 + 10) and rec.losses().shape == (3, 20)


# ------------------------------------------------------------------ PH dimension
@pytest.mark.parametrize("dim,tol", [(1, 0.1), (2, 0.1), (3, 0.3)])
def test_ph_dimension_of_cubes(dim, tol):
    pts = np.random.default_rng(dim).random((1000, dim))
    assert ph_dimension(pts, seed=0)["dimension"] == pytest.approx(dim, abs=tol)


def test_ph_dimension_of_embedded_square_and_segment():
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((50, 2)))  # orthonormal embedding R^2 -> R^50
    square = rng.random((1000, 2)) @ q.T + rng.standard_normal(50)
    assert ph_dimension(square)["dimension"] == pytest.approx(2.0, abs=0.1)
    segment = rng.random((1000, 1)) * rng.standard_normal((1, 50))
    assert ph_dimension(segment)["dimension"] == pytest.approx(1.0, abs=0.1)
    # loss pseudometric: per-example losses linear in one parameter make a segment too
    t = rng.random((1000, 1))
    assert ph_dimension(losses=t * rng.random((1, 30)))["dimension"] == pytest.approx(1.0, abs=0.1)


def test_ph_dimension_bad_input():
    with pytest.raises(GpmarginError, match="needs at least 1000 points .* got 300"):
        ph_dimension(np.random.default_rng(0).random((300, 2)))
    with pytest.raises(GpmarginError, match="needs per-example losses"):
        ph_dimension(losses=np.ones(1000))
    with pytest.raises(GpmarginError, match="exactly one"):
        ph_dimension()
