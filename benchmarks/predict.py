"""Benchmark: the whole ``gpmargin predict`` process against an independent numpy reference.

Cases (MNIST parity, paper MLP depth 5, NNGP, 41 margins x 5 ensemble sizes):
  A. 1000 train / 9000 test   (target: gpmargin predict <= 10 s on a 2-core machine)
  B. 9000 train / 1000 test

Both sides are separate processes timed by wall clock (median of ``--repeats``):
  gpmargin   ``python -m gpmargin predict ... --out DIR`` (data, kernels, solve, accuracy grid,
             CSV + JSON + PNG written)
  reference  ``python benchmarks/predict.py --reference ...``: the same data (through
             gpmargin.data.make_task), then plain numpy / scipy: the paper's arc-cosine
             recursion, scipy Cholesky solve, scipy.special.ndtr on the grid.  Writes only
             an .npy of the accuracy grid.
The two accuracy grids are compared (max abs difference).  The machine's floors are measured
beside them: the float64 Cholesky of an ``n_train x n_train`` SPD matrix and the product of the
``n_test x 784`` and ``784 x n_train`` inputs (the cross Gram), each alone, with their rates.
The load average is printed before and after each case (timings are comparable only on an idle
machine).

    .venv/bin/python benchmarks/predict.py [--repeats 3] [--cases A,B]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARGINS = "1e-3:1e1:41"
ENSEMBLE = "1,2,4,8,16"
CASES = {"A": (1000, 9000), "B": (9000, 1000)}


# ----------------------------------------------------------------------------- reference
def reference(n_train: int, n_test: int, depth: int, out: str) -> None:
    """Independent numpy computation of the same accuracy grid."""
    import warnings

    import numpy as np
    import scipy.linalg
    from scipy.special import ndtr

    t0 = time.perf_counter()
    from gpmargin.data import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = make_task("mnist", "parity", n_train=n_train, n_test=n_test, seed=0)
    xtr, ytr = task.x_train.numpy(), task.y_train.numpy()
    xte, yte = task.x_test.numpy(), task.y_test.numpy()
    t1 = time.perf_counter()
    d = xtr.shape[1]

    def arccos(K):
        for _ in range(depth - 1):
            K = np.clip(K, -1.0, 1.0)
            K = (np.sqrt(1.0 - K * K) + K * (np.pi - np.arccos(K))) / np.pi
        return K

    Kxx = arccos(xtr @ xtr.T / d)
    Ksx = arccos(xte @ xtr.T / d)
    kss = np.ones(len(xte))  # unit diagonal for inputs of norm sqrt(d)
    t2 = time.perf_counter()
    L = scipy.linalg.cholesky(Kxx, lower=True)
    v = scipy.linalg.solve_triangular(L, ytr, lower=True)
    A = scipy.linalg.solve_triangular(L, Ksx.T, lower=True)
    mu = A.T @ v
    s = np.sqrt(np.clip(kss - np.einsum("ij,ij->j", A, A), 0.0, None))
    t3 = time.perf_counter()
    lo, hi, n = MARGINS.split(":")
    margins = np.logspace(np.log10(float(lo)), np.log10(float(hi)), int(n))
    ens = np.array([int(k) for k in ENSEMBLE.split(",")], dtype=np.float64)
    r = yte * mu / s
    acc = ndtr(np.sqrt(ens)[:, None, None] * margins[None, :, None] * r[None, None, :]).mean(-1)
    limit = float(np.mean(np.sign(mu) == yte))
    t4 = time.perf_counter()
    np.save(out, acc)
    print(json.dumps({"limit": limit, "data": t1 - t0, "kernel": t2 - t1, "solve": t3 - t2, "accuracy": t4 - t3}))


# ----------------------------------------------------------------------------- driver
def _run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:  # pragma: no cover
        return "load average unavailable"


def floors(n_train: int, n_test: int, d: int = 784, repeats: int = 3) -> dict:
    """Median seconds (and GFLOP/s) of the two dense kernels a prediction cannot avoid: the
    Cholesky of an ``n_train``-square SPD float64 matrix (``n^3 / 3`` flop) and the cross Gram
    ``x_test x_train^T`` (``2 n_test n_train d`` flop)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n_train, 256, dtype=torch.float64, generator=g)
    spd = a @ a.T / 256 + torch.eye(n_train, dtype=torch.float64)
    xs = torch.randn(n_test, d, dtype=torch.float64, generator=g)
    xt = torch.randn(n_train, d, dtype=torch.float64, generator=g)
    chol, gram = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.linalg.cholesky(spd)
        chol.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        xs @ xt.T
        gram.append(time.perf_counter() - t0)
    c, m = statistics.median(chol), statistics.median(gram)
    return {"cholesky_s": c, "cholesky_gflops": n_train**3 / 3 / c / 1e9,
            "gram_s": m, "gemm_gflops": 2 * n_test * n_train * d / m / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="A,B")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-train", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n-test", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        reference(args.n_train, args.n_test, args.depth, args.out)
        return

    import numpy as np

    env = dict(os.environ)
    shared = REPO.parent / "shared" / "data"
    if "GPMARGIN_DATA" not in env and shared.is_dir():
        env["GPMARGIN_DATA"] = str(shared)
    print(f"benchmarks/predict.py: {os.cpu_count()} CPUs, {_load()}")
    for case in args.cases.split(","):
        n_train, n_test = CASES[case]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "curve"
            ref_out = str(Path(tmp) / "ref.npy")
            cmd = [sys.executable, "-m", "gpmargin", "predict", "--dataset", "mnist", "--task", "parity",
                   "--n-train", str(n_train), "--n-test", str(n_test), "--depth", str(args.depth),
                   "--margins", MARGINS, "--ensemble", ENSEMBLE, "--device", "cpu", "--no-progress",
                   "--out", str(out)]
            ref_cmd = [sys.executable, str(Path(__file__).resolve()), "--reference", "--n-train", str(n_train),
                       "--n-test", str(n_test), "--depth", str(args.depth), "--out", ref_out]
            print(f"\ncase {case}: MNIST parity {n_train} train / {n_test} test, depth {args.depth}, "
                  f"41 margins x 5 ensemble sizes   [{_load()}]")
            ours, refs = [], []
            for _ in range(args.repeats):  # interleaved so that load changes hit both alike
                ours.append(_run(cmd, env))
                refs.append(_run(ref_cmd, env))
            d = json.loads((out / "curve.json").read_text())
            acc = np.asarray(d["accuracy"])
            ref_acc = np.load(ref_out)
            m_ours, m_ref = statistics.median(ours), statistics.median(refs)
            print(f"  gpmargin predict (whole process): median {m_ours:6.2f} s   runs {', '.join(f'{t:.2f}' for t in ours)}")
            print(f"  numpy reference  (whole process): median {m_ref:6.2f} s   runs {', '.join(f'{t:.2f}' for t in refs)}")
            print(f"  ratio reference / gpmargin: {m_ref / m_ours:.2f}x")
            f = floors(n_train, n_test)
            print(f"  floors: Cholesky of the {n_train}^2 matrix alone {f['cholesky_s']:.2f} s "
                  f"({f['cholesky_gflops']:.0f} GFLOP/s), the {n_test} x {n_train} input Gram alone {f['gram_s']:.2f} s "
                  f"({f['gemm_gflops']:.0f} GFLOP/s): {100 * (f['cholesky_s'] + f['gram_s']) / m_ours:.0f}% of the "
                  "gpmargin process")
            print("  gpmargin stages (last run): " + ", ".join(f"{k} {v:.2f}" for k, v in d["timings"].items()))
            print(f"  max |accuracy(gpmargin) - accuracy(reference)| = {np.abs(acc - ref_acc).max():.2e}; "
                  f"limit accuracy {d['limit_accuracy']:.4f}")
            if case == "A":
                verdict = "meets" if m_ours <= 10.0 else "MISSES"
                print(f"  target <= 10 s for case A: {verdict} (under {_load()})")
    print(f"\ndone [{_load()}]")


if __name__ == "__main__":
    main()
