"""Nero: hand-computed updates, constraints, and batched ensembles = independent networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpmargin.errors import GpmarginError
from validation.training.nero import Nero, project_


def _hand_nero(w0, grads, lr, beta=0.999, constrain=False):
    """Independent numpy re-derivation of Nero on one matrix with the given gradient sequence."""
    w = np.array(w0, dtype=np.float64)

    def proj(a):
        a = a - a.mean(axis=1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    if constrain:
        w = proj(w)
    scale = np.linalg.norm(w, axis=1).mean()
    v = np.zeros((w.shape[0], 1))
    for t, g in enumerate(grads, start=1):
        v = beta * v + (1 - beta) * (np.linalg.norm(g, axis=1, keepdims=True) ** 2)
        vhat = v / (1 - beta**t)
        w = w - lr * scale * g / np.sqrt(vhat)
        if constrain:
            w = proj(w)
    return w


@pytest.mark.parametrize("constrain", [False, True])
def test_matches_hand_computed_update(constrain):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(3)]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = Nero([p], lr=0.1, constraints=constrain)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    expected = _hand_nero(w0, grads, 0.1, constrain=constrain)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    # the first step moves every neuron by exactly lr * scale (gradient normalised by its own norm)
    if not constrain:
        p2 = torch.nn.Parameter(torch.tensor(w0))
        opt2 = Nero([p2], lr=0.1, constraints=False)
        p2.grad = torch.tensor(grads[0])
        opt2.step()
        moved = np.linalg.norm(p2.detach().numpy() - w0, axis=1)
        np.testing.assert_allclose(moved, 0.1 * np.linalg.norm(w0, axis=1).mean(), rtol=1e-12)


def test_rows_centred_and_unit_norm_after_steps():
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(7, 5) * 3 + 1)
    w2 = torch.nn.Parameter(torch.randn(1, 7))
    bias = torch.nn.Parameter(torch.tensor([0.5, -2.0, 1.0]))
    opt = Nero([w1, w2, bias], lr=0.05, constraints=True)
    x = torch.randn(20, 5)
    y = torch.randn(20, 1)
    for _ in range(5):
        opt.zero_grad()
        loss = ((torch.relu(x @ w1.T) @ w2.T - y) ** 2).mean() + (bias**2).sum()
        loss.backward()
        opt.step()
        for w in (w1, w2):
            torch.testing.assert_close(w.sum(dim=1), torch.zeros(w.shape[0]), atol=1e-6, rtol=0)
            torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-6, rtol=0)
    # the bias is one neuron: moved, not centred, and its step size is lr * its initial norm
    assert abs(float(bias.detach().sum())) > 1e-3


def test_bias_is_a_single_neuron():
    b0 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    b = torch.nn.Parameter(b0.clone())
    opt = Nero([b], lr=0.1, constraints=True)
    torch.testing.assert_close(b.detach(), b0)  # not projected
    b.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.step()
    # single neuron: g / ||g|| = (1, 0), scale = ||b0|| = 5
    torch.testing.assert_close(b.detach(), torch.tensor([3.0 - 0.5, 4.0], dtype=torch.float64))


def test_batched_equals_independent():
    torch.manual_seed(1)
    k = 4
    W = torch.randn(k, 6, 5, dtype=torch.float64) * torch.arange(1, k + 1).reshape(k, 1, 1)
    V = torch.randn(k, 2, 6, dtype=torch.float64)
    x = torch.randn(10, 5, dtype=torch.float64)
    pw, pv = torch.nn.Parameter(W.clone()), torch.nn.Parameter(V.clone())
    opt = Nero([pw, pv], lr=0.02, batch_dims=1, constraints=True)
    singles = [(torch.nn.Parameter(W[j].clone()), torch.nn.Parameter(V[j].clone())) for j in range(k)]
    opts = [Nero(list(s), lr=0.02, constraints=True) for s in singles]
    for _ in range(4):
        opt.zero_grad()
        out = torch.einsum("kow,knw->kno", pv, torch.relu(torch.einsum("kwi,ni->knw", pw, x)))
        # members' losses differ in scale by a factor j+1: per-network statistics must not mix
        (out.square().sum(dim=(1, 2)) * torch.arange(1, k + 1)).sum().backward()
        opt.step()
        for j, ((a, b), o) in enumerate(zip(singles, opts)):
            o.zero_grad()
            ((b @ torch.relu(a @ x.T)).square().sum() * (j + 1)).backward()
            o.step()
    for j, (a, b) in enumerate(singles):
        torch.testing.assert_close(pw.detach()[j], a.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(pv.detach()[j], b.detach(), rtol=1e-10, atol=1e-12)


def test_project_is_idempotent_and_bad_args():
    w = torch.randn(3, 2, 8)
    project_(w, batch_dims=1)
    w2 = w.clone()
    project_(w2, batch_dims=1)
    torch.testing.assert_close(w, w2)
    with pytest.raises(GpmarginError):
        Nero([torch.nn.Parameter(torch.ones(2, 2))], lr=0.0)
    with pytest.raises(GpmarginError):
        Nero([torch.nn.Parameter(torch.ones(2, 2))], batch_dims=2)
