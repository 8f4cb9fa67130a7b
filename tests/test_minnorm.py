"""Minnorm training against its known solutions: the hard-margin SVM and the minimum-norm
end-to-end map of a deep linear network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpmargin.errors import GpmarginError
from validation.training.minnorm import Minnorm


def _separable_mixture(d: int = 10, n: int = 60, seed: int = 0):
    """Two unit-variance Gaussians at ``+-u + 0.5`` in ``d`` dimensions, keeping only points at
    distance > 0.5 from the hyperplane ``u.(x - 0.5) = 0``: linearly separable with a gap."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    y = np.where(rng.random(4 * n) < 0.5, 1.0, -1.0)
    x = rng.normal(size=(4 * n, d)) + y[:, None] * u + 0.5
    keep = ((x - 0.5) @ u) * y > 0.5
    return x[keep][:n], y[keep][:n]


def _one_minus_cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minnorm_linear_reaches_hard_margin_svm():
    """A linear model with an unpenalised bias, squared norm and classification constraints
    ``y (w.x + b) >= 1`` is the hard-margin SVM; the Arrow-Hurwicz iteration converges linearly
    to it (here 1 - cos ~1e-9 after 3000 steps), so 1e-6 leaves a wide margin of safety.
    Logistic-loss gradient descent converges to the same direction only like 1 / log t
    (Soudry et al. 2018) and stays orders of magnitude farther with the same budget."""
    from sklearn.svm import SVC

    x, y = _separable_mixture()
    svc = SVC(kernel="linear", C=1e8, tol=1e-12).fit(x, y)
    w_svm = svc.coef_[0]
    X = torch.tensor(x)
    Y = torch.tensor(y).reshape(-1, 1)
    steps = 3000
    # multiplier step 2 / sigma_max(X)^2: the dual ascent with the weights at their exact minimiser
    # (lr 0.5 on ||w||^2) is stable below 4 / sigma_max^2
    mlr = 2.0 / np.linalg.norm(x, 2) ** 2
    w = torch.zeros(x.shape[1], 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = Minnorm([{"params": [w]}, {"params": [b], "penalize": False}], n_constraints=len(y), lr=0.5,
                  multiplier_lr=mlr, norm="squared")
    for _ in range(steps):
        opt.zero_grad()
        opt.lagrangian(X @ w + b, Y).backward()
        opt.step()
    gap_minnorm = _one_minus_cos(w.detach().numpy()[:, 0], w_svm)
    assert gap_minnorm <= 1e-6, gap_minnorm
    # the KKT conditions of the SVM hold: feasible, complementary, stationary.  The direction
    # converges faster than the scale (measured: primal 5.9e-5, complementary 1.5e-5, stationarity
    # 1e-7 after 3000 steps); 1e-3 is well below an unconverged net's residuals (> 0.5, below)
    kkt = opt.kkt_residuals(X @ w + b, Y)
    assert max(float(v) for v in kkt.values()) < 1e-3, kkt
    assert opt.support()[0] == sorted(int(i) for i in svc.support_)
    assert b.item() == pytest.approx(float(svc.intercept_[0]), abs=1e-4)

    wl = torch.zeros(x.shape[1], 1, dtype=torch.float64, requires_grad=True)
    bl = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    gd = torch.optim.SGD([wl, bl], lr=1.0)
    for _ in range(steps):
        gd.zero_grad()
        torch.nn.functional.softplus(-(X @ wl + bl) * Y).mean().backward()
        gd.step()
    gap_logistic = _one_minus_cos(wl.detach().numpy()[:, 0], w_svm)
    print(f"1 - cos to the SVM after {steps} steps: minnorm {gap_minnorm:.2e}, logistic GD {gap_logistic:.2e}")
    assert gap_logistic > 1e-4 and gap_logistic > 100 * gap_minnorm


def _deep_linear(seed: int, dims, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(dims[i + 1], dims[i], generator=g, dtype=torch.float64) * scale / dims[i] ** 0.5)
            .requires_grad_() for i in range(len(dims) - 1)]


def _end_to_end(ws) -> torch.Tensor:
    p = ws[0].detach()
    for w in ws[1:]:
        p = w.detach() @ p
    return p.reshape(-1)


def test_minnorm_deep_linear_map_is_independent_of_init():
    """Depth-3 linear net, 8 equations in 20 unknowns.  With squared norms and one output,
    ``sum_l ||W_l||^2 >= L ||beta||^(2/L)`` for the end-to-end map ``beta``, so Minnorm's solution
    is the minimum-norm interpolant ``pinv(X) y`` whatever the init (reached to ~1e-15 here; the
    tolerance 1e-8 allows for slower float paths).  Gradient descent never moves the first layer
    off the data's row space, so its end-to-end map keeps the init's null-space component
    (relative difference ~0.5 between two inits)."""
    d, n, h = 20, 8, 16
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    T = torch.randn(n, 1, generator=g, dtype=torch.float64)
    beta_star = (torch.linalg.pinv(X) @ T).reshape(-1)
    dims = [d, h, h, 1]

    def forward(ws):
        out = X
        for w in ws:
            out = out @ w.T
        return out

    maps = {}
    for seed in (1, 2):
        ws = _deep_linear(seed, dims)
        opt = Minnorm(ws, n_constraints=n, constraint="regression", lr=0.05, multiplier_lr=0.05, norm="squared",
                      penalty=1.0)
        for _ in range(1500):
            opt.zero_grad()
            opt.lagrangian(forward(ws), T).backward()
            opt.step()
        maps["minnorm", seed] = _end_to_end(ws)
        ws = _deep_linear(seed, dims)
        gd = torch.optim.SGD(ws, lr=0.05)
        for _ in range(1500):
            gd.zero_grad()
            (0.5 * (forward(ws) - T).square().sum()).backward()
            gd.step()
        assert float((forward(ws) - T).detach().norm()) < 1e-8  # GD interpolates too
        maps["gd", seed] = _end_to_end(ws)
    bn = float(beta_star.norm())
    d_minnorm = float((maps["minnorm", 1] - maps["minnorm", 2]).norm()) / bn
    d_gd = float((maps["gd", 1] - maps["gd", 2]).norm()) / bn
    print(f"relative end-to-end map difference between inits: minnorm {d_minnorm:.2e}, GD {d_gd:.3f}")
    assert d_minnorm < 1e-8
    assert float((maps["minnorm", 1] - beta_star).norm()) / bn < 1e-8
    assert d_gd > 0.1


def test_minnorm_ensemble_members_are_independent():
    """``batch_dims=1``: member j of a stacked pair follows the single-network trajectory."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 5, generator=g, dtype=torch.float64)
    Y = torch.sign(torch.randn(12, 1, generator=g, dtype=torch.float64)) * 2.0
    W = torch.randn(2, 1, 5, generator=g, dtype=torch.float64)
    stacked = W.clone().requires_grad_()
    opt = Minnorm([stacked], n_constraints=12, lr=0.1, multiplier_lr=0.01, batch_dims=1)
    singles = [W[j].clone().requires_grad_() for j in range(2)]
    opts = [Minnorm([s], n_constraints=12, lr=0.1, multiplier_lr=0.01) for s in singles]
    for _ in range(50):
        opt.zero_grad()
        opt.lagrangian(torch.einsum("koi,ni->kno", stacked, X), Y).backward()
        opt.step()
        for s, o in zip(singles, opts):
            o.zero_grad()
            o.lagrangian(X @ s.T, Y).backward()
            o.step()
    for j in range(2):
        torch.testing.assert_close(stacked.detach()[j], singles[j].detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.multipliers[j], opts[j].multipliers, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(multiplier_lr=0.0), "multiplier_lr"),
    (dict(norm="l1"), "norm"), (dict(constraint="hinge"), "constraint"), (dict(norm_weight=0.0), "norm_weight"),
    (dict(penalty=-1.0), "penalty"),
])
def test_minnorm_bad_settings(kwargs, match):
    with pytest.raises(GpmarginError, match=match):
        Minnorm([torch.zeros(2, requires_grad=True)], n_constraints=3, **kwargs)


def test_minnorm_bad_margin_and_sizes():
    w = torch.zeros(2, 1, requires_grad=True)
    opt = Minnorm([w], n_constraints=3)
    x = torch.ones(3, 2)
    with pytest.raises(GpmarginError, match="positive margins"):
        opt.lagrangian(x @ w, torch.zeros(3, 1))
    with pytest.raises(GpmarginError, match="n_constraints"):
        opt.lagrangian(torch.ones(4, 2) @ w, torch.ones(4, 1))


def test_kkt_residuals_tell_a_solution_from_a_start():
    """Residuals are scale-free and per network: large after one step (infeasible, not
    stationary), small once an ensemble member has converged; a member is never judged by
    another's multipliers."""
    x, y = _separable_mixture()
    X = torch.tensor(x)
    Y = torch.tensor(y).reshape(-1, 1)
    w = torch.zeros(2, x.shape[1], 1, dtype=torch.float64, requires_grad=True)  # 2 stacked linear SVMs
    b = torch.zeros(2, 1, 1, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        w[1].copy_(torch.randn(x.shape[1], 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    opt = Minnorm([{"params": [w]}, {"params": [b], "penalize": False}], n_constraints=len(y), lr=0.5,
                  multiplier_lr=2.0 / np.linalg.norm(x, 2) ** 2, norm="squared", batch_dims=1)

    def out():
        return torch.einsum("nd,kdo->kno", X, w) + b

    opt.zero_grad()
    opt.lagrangian(out(), Y).backward()
    opt.step()
    start = opt.kkt_residuals(out(), Y)
    assert start["primal"].shape == (2,) and bool((start["primal"] > 0.5).all())
    for _ in range(3000):
        opt.zero_grad()
        opt.lagrangian(out(), Y).backward()
        opt.step()
    end = opt.kkt_residuals(out(), Y)
    assert float(max(v.max() for v in end.values())) < 1e-3, end  # ~6e-5 measured, as for one SVM above
    assert bool((end["stationarity"] < start["stationarity"]).all())

