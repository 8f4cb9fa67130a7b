"""Batched ensemble vs a Python loop of single networks: Nero training steps, same work.

Reference: 16 ordinary ``MLP`` networks, each with its own Nero optimiser, trained one after
another (a sequential Python loop).  Candidate: one ``EnsembleMLP`` of 16 members with
stacked ``(16, out, in)`` weights (one GEMM for the shared first layer, ``torch.bmm`` after)
and one batched Nero.  Both do the same full-batch steps on the same fig6-like problem
(MNIST-sized inputs, d = 784, 1000 examples, depth 5); real MNIST is used when available,
otherwise inputs of the same shape and norm.  For each width it prints the median time of
``--steps`` training steps over ``--repeats`` repeats and the speed-up ratio.

It also prints a **ceiling** for the ratio: the matrix products of a training step (forward,
weight gradients, input gradients of layers 2..L) are counted exactly, and the device's
float32 GEMM rate is measured on one large square product.  No batching of the same
arithmetic can beat ``loop time / (GEMM flops / peak GEMM rate)``.  On a 2-core CPU the
loop at width >= 256 already runs its GEMMs near that rate, so the ceiling is close to 1;
batching pays where per-call overhead dominates (small widths) and on GPUs.

    python benchmarks/ensemble.py [--widths 64,128,256,512] [--members 16] [--steps 5]
                                  [--repeats 5] [--device cpu]
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

from validation.training.models import MLP, EnsembleMLP, member_seed, mlp_shapes  # noqa: E402
from gpmargin.io import resolve_device  # noqa: E402
from validation.training.fullbatch import make_optimizer  # noqa: E402
from validation.training.losses import margin_targets, per_network_loss  # noqa: E402


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


def gemm_flops_per_step(d: int, depth: int, width: int, n: int) -> float:
    """Floating-point operations in the matrix products of one full-batch training step of
    one network: forward ``2 n sum_l out_l in_l``, weight gradients the same again, input
    gradients for layers 2..L (the input itself needs none)."""
    shapes = mlp_shapes(d, depth, width, 1)
    per_layer = [2.0 * n * o * i for o, i in shapes]
    return 2.0 * sum(per_layer) + sum(per_layer[1:])


def timings(fn, device, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call (device synchronised)."""
    fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return ts


def peak_gemm_rate(device, size: int = 2048, repeats: int = 10) -> float:
    """Measured float32 GEMM rate (flop/s) of one ``size^3`` product on ``device``, written
    into a preallocated output (so no allocation or page faults are timed)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    c = torch.empty(size, size, device=device)
    return 2.0 * size**3 / min(timings(lambda: torch.mm(a, b, out=c), device, repeats))


def compare(width: int, a, x, targets, dev) -> dict:
    """Median seconds of ``a.steps`` Nero steps: loop of single networks vs one ensemble."""
    k = a.members
    ens = EnsembleMLP(k, x.shape[1], a.depth, width, 1, seed=0).to(dev)
    ens_opt = make_optimizer(ens, "nero", 0.01)
    singles = [MLP(x.shape[1], a.depth, width, 1, seed=member_seed(0, j)).to(dev) for j in range(k)]
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

    # interleave so that background load affects both alike
    seq = timings(sequential, dev, a.repeats)
    bat = timings(batched, dev, a.repeats)
    seq += timings(sequential, dev, a.repeats)
    return dict(seq=statistics.median(seq), bat=statistics.median(bat), seq_best=min(seq), bat_best=min(bat))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="64,128,256,512",
                    help="comma-separated hidden widths to compare (default 64,128,256,512)")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        widths = [int(w) for w in a.widths.split(",")]
    except ValueError:
        ap.error(f"--widths must be comma-separated integers, got {a.widths!r}")
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    x, y, src = data(a.n, dev)
    targets = margin_targets(y, 1.0)
    k = a.members
    peak = peak_gemm_rate(dev)
    rows = [(width, compare(width, a, x, targets, dev)) for width in widths]
    peak = max(peak, peak_gemm_rate(dev))  # best of before and after, against clock changes
    print(f"device {dev} ({torch.get_num_threads()} threads); data: {src}")
    print(f"work: {k} networks x {a.steps} Nero steps, depth {a.depth}, n={a.n}, float32; "
          f"measured peak GEMM rate {peak / 1e9:.0f} GFLOP/s (2048^3 sgemm)")
    print("reference: sequential Python loop of single networks; candidate: one batched ensemble")
    print(f"{'width':>6} {'loop (s)':>9} {'batched (s)':>12} {'speed-up':>9} {'best-of':>8} "
          f"{'loop GEMM rate':>15} {'ceiling':>8}")
    for width, r in rows:
        flops = k * a.steps * gemm_flops_per_step(x.shape[1], a.depth, width, a.n)
        at_peak = flops / peak
        print(f"{width:>6} {r['seq']:>9.3f} {r['bat']:>12.3f} {r['seq'] / r['bat']:>8.2f}x "
              f"{r['seq_best'] / r['bat_best']:>7.2f}x {flops / r['seq'] / 1e9:>9.0f} GFLOP/s "
              f"{r['seq'] / at_peak:>7.2f}x")
    print("speed-up = loop median / batched median; best-of = ratio of the fastest runs; "
          "ceiling = loop time / (GEMM flops at the peak rate): the most any batching of this "
          "arithmetic could gain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
