"""Speed and memory of the NNGP+NTK of ``paper_mlp(depth=5)`` against jitted neural-tangents.

    python benchmarks/kernels.py                 # n = 4000 and 10000, CPU, float64
    python benchmarks/kernels.py --n 2000 --no-nt
    python benchmarks/kernels.py --device cuda   # gpmargin on a GPU (neural-tangents stays on CPU)

Inputs are the first n real MNIST test images, standardised (mean/std 0.1307/0.3081), flattened
and rescaled to norm sqrt(784), the same float64 arrays for both libraries.  Each measurement
runs in its own subprocess: the median of ``--repeats`` timed calls (neural-tangents after one
warm-up call that compiles ``jax.jit(kernel_fn, static_argnames='get')``), and the peak
resident memory added by the computation (``ru_maxrss`` after the call minus before it; on CUDA,
``torch.cuda.max_memory_allocated``), reported relative to the two n x n float64 outputs.
Timings are wall-clock and noisy when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if "GPMARGIN_DATA" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["GPMARGIN_DATA"] = str(REPO.parent / "shared" / "data")


def _inputs(n: int):

    from gpmargin.data import load

    x, _ = load("mnist", split="test")
    if n > x.shape[0]:
        raise SystemExit(f"error: n={n} exceeds the {x.shape[0]} MNIST test images")
    z = ((x[:n].double() - 0.1307) / 0.3081).reshape(n, -1)
    return (z * math.sqrt(z.shape[1]) / z.norm(dim=1, keepdim=True)).contiguous()


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(lib: str, n: int, repeats: int, device: str) -> dict:
    """One measurement (runs in a fresh process)."""
    x = _inputs(n)
    times = []
    if lib == "gpmargin":
        import torch

        from gpmargin.kernels import paper_mlp

        torch.set_num_threads(os.cpu_count() or 1)
        k = paper_mlp(5)
        x = x.to(device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        base = _rss_bytes()
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = k(x, get=("nngp", "ntk"))
            sync()
            times.append(time.perf_counter() - t0)
            del out
        peak = (torch.cuda.max_memory_allocated() - x.numel() * 8) if device.startswith("cuda") else _rss_bytes() - base
        floors = _floors(torch, x, repeats, sync)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import jax

        jax.config.update("jax_enable_x64", True)
        from neural_tangents import stax

        layers = []
        for _ in range(4):
            layers += [stax.Dense(1, 1.0), stax.ABRelu(0, math.sqrt(2.0))]
        _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, 1.0))
        fn = jax.jit(kernel_fn, static_argnames="get")
        xj = jax.numpy.asarray(x.numpy())
        del x
        base = _rss_bytes()
        t0 = time.perf_counter()
        out = fn(xj, None, get=("nngp", "ntk"))
        jax.block_until_ready(out)
        compile_s = time.perf_counter() - t0
        del out
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn(xj, None, get=("nngp", "ntk"))
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
            del out
        peak = _rss_bytes() - base
    res = {"lib": lib, "n": n, "device": device, "times_s": times, "median_s": statistics.median(times),
           "peak_bytes": peak, "output_bytes": 2 * n * n * 8}
    if lib == "nt":
        res["first_call_with_compile_s"] = compile_s
    else:
        res.update(floors)
    return res


def _floors(torch, x, repeats: int, sync) -> dict:
    """What this machine needs at the least for the kernel's two kinds of work, measured: the
    input Gram ``x x^T`` (one float64 matrix product, ``2 n^2 d`` flop; its rate is the GEMM rate)
    and one elementwise pass over an ``n x n`` float64 matrix (read and write: the memory floor
    of each of the elementwise updates the layers make)."""
    n, d = x.shape
    gram, passes = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = x @ x.T
        sync()
        gram.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        g.mul_(1.0001)
        sync()
        passes.append(time.perf_counter() - t0)
        del g
    t_gram = statistics.median(gram)
    return {"gram_s": t_gram, "gemm_gflops": 2 * n * n * d / t_gram / 1e9, "pass_s": statistics.median(passes)}


def measure(lib, n, repeats, device, timeout):
    cmd = [sys.executable, __file__, "--worker", lib, "--n", str(n), "--repeats", str(repeats), "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        return {"lib": lib, "n": n, "error": f"did not finish within {timeout} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"lib": lib, "n": n, "error": f"exit status {proc.returncode}: {tail}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[4000, 10000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    p.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    p.add_argument("--worker", choices=["gpmargin", "nt"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n[0], args.repeats, args.device)))
        return 0

    print(f"paper_mlp(depth=5), NNGP+NTK, float64, MNIST test inputs (784-d), median of {args.repeats}; "
          f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at start)")
    for n in args.n:
        ours = measure("gpmargin", n, args.repeats, args.device, args.timeout)
        theirs = None
        if not args.no_nt:
            theirs = measure("nt", n, args.repeats, "cpu", args.timeout)
        out_mb = 2 * n * n * 8 / 2**20
        print(f"\nn = {n}   (outputs: 2 x {n}x{n} float64 = {out_mb:.0f} MiB)")
        for r in (ours, theirs):
            if r is None:
                continue
            name = "gpmargin" if r["lib"] == "gpmargin" else "neural-tangents (jit)"
            if "error" in r:
                print(f"  {name:24s} FAILED: {r['error']}")
                continue
            extra = f", first call incl. compile {r['first_call_with_compile_s']:.2f} s" if "first_call_with_compile_s" in r else ""
            times = ", ".join(f"{t:.2f}" for t in r["times_s"])
            print(f"  {name:24s} median {r['median_s']:.3f} s  (runs {times}{extra})  device {r.get('device')}")
            print(f"  {'':24s} peak extra memory {r['peak_bytes'] / 2**20:.0f} MiB = "
                  f"{r['peak_bytes'] / r['output_bytes']:.2f} x the outputs")
            if "gram_s" in r:
                half = r["gram_s"] / 2  # the kernel forms only the upper triangle of the Gram: half the product
                print(f"  {'':24s} floor: the full input Gram x x^T {r['gram_s']:.3f} s ({r['gemm_gflops']:.0f} GFLOP/s); "
                      f"its upper triangle, what the kernel needs, ~{half:.3f} s = {100 * half / r['median_s']:.0f}% of "
                      f"the kernel time; one elementwise pass over an n x n matrix {1000 * r['pass_s']:.1f} ms, so "
                      f"the rest is ~{(r['median_s'] - half) / r['pass_s']:.0f} such passes")
        if theirs is not None and "error" not in ours and "error" not in theirs:
            print(f"  speed-up gpmargin vs neural-tangents: {theirs['median_s'] / ours['median_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
