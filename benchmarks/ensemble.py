"""Batched ensemble vs a Python loop of single networks: Nero training steps, same work.

Reference: 16 ordinary ``MLP`` networks, each with its own Nero optimiser, trained one after
another (a sequential Python loop).  Candidate: one ``EnsembleMLP`` of 16 members with
stacked ``(16, out, in)`` weights (one GEMM for the shared first layer, ``torch.bmm`` after)
and one batched Nero.  Both do the same full-batch steps on the same fig6-like problem
(MNIST-sized inputs, d = 784, 1000 examples, depth 5, width 512 by default); real MNIST is
used when available, otherwise inputs of the same shape and norm.  Prints the median (and
best) time of ``--steps`` training steps over ``--repeats`` repeats and the speed-up ratio.

On a CPU the two do the same floating-point work in GEMMs that are already large, so an idle
machine shows a modest gain; the batched version issues 16x fewer kernels and parallel
regions, which is what matters on a GPU and on a loaded CPU (thread barriers).

    python benchmarks/ensemble.py [--width 512] [--members 16] [--steps 5] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from validation.models import MLP, EnsembleMLP, member_seed  # noqa: E402
from validation.sweep import resolve_device  # noqa: E402
from validation.train import make_optimizer, margin_targets, per_network_loss  # noqa: E402


def data(n: int, device):
    try:
        from gpmargin.data import make_task

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = make_task("mnist", "parity", n_train=n, n_test=1, seed=0)
        return t.x_train.float().to(device), t.y_train.to(device), "MNIST parity"
    except Exception as exc:  # noqa: BLE001 - fall back to synthetic inputs of the same shape
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 784, generator=g)
        x = x / x.norm(dim=1, keepdim=True) * 28.0
        y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        return x.to(device), y.to(device), f"synthetic (MNIST unavailable: {exc})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    x, y, src = data(a.n, dev)
    targets = margin_targets(y, 1.0)
    k = a.members

    ens = EnsembleMLP(k, x.shape[1], a.depth, a.width, 1, seed=0).to(dev)
    ens_opt = make_optimizer(ens, "nero", 0.01)
    singles = [MLP(x.shape[1], a.depth, a.width, 1, seed=member_seed(0, j)).to(dev) for j in range(k)]
    single_opts = [make_optimizer(m, "nero", 0.01) for m in singles]

    def batched():
        for _ in range(a.steps):
            ens_opt.zero_grad(set_to_none=True)
            per_network_loss(ens(x), targets).sum().backward()
            ens_opt.step()

    def sequential():
        for m, o in zip(singles, single_opts):
            for _ in range(a.steps):
                o.zero_grad(set_to_none=True)
                per_network_loss(m(x), targets).backward()
                o.step()

    def timed(fn):
        fn()  # warm-up
        sync(dev)
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fn()
            sync(dev)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), ts

    # interleave so that background load affects both alike
    seq_t, seq_all = timed(sequential)
    bat_t, bat_all = timed(batched)
    seq_t2, seq_all2 = timed(sequential)
    seq_med = statistics.median(seq_all + seq_all2)
    print(f"device {dev} ({torch.get_num_threads()} threads); data: {src}")
    print(f"work: {k} networks x {a.steps} Nero steps, depth {a.depth}, width {a.width}, n={a.n}, float32")
    print(f"sequential loop of {k} single networks (reference): median {seq_med:.3f} s  "
          f"(runs: {', '.join(f'{t:.3f}' for t in seq_all + seq_all2)})")
    print(f"batched ensemble of {k}:                           median {bat_t:.3f} s  "
          f"(runs: {', '.join(f'{t:.3f}' for t in bat_all)})")
    print(f"speed-up (sequential / batched): {seq_med / bat_t:.2f}x median, "
          f"{min(seq_all + seq_all2) / min(bat_all):.2f}x best-of-runs "
          "(medians include background load; best-of-runs approximates an idle machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
