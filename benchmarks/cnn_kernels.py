"""Speed and memory of CNN kernels (NNGP+NTK, float64) against jitted neural-tangents: the paper's
CNN on MNIST, Myrtle-5 and WideResNet-16-4 on Fashion-MNIST (real test images, 28x28).

    python benchmarks/cnn_kernels.py                        # the issue's sizes: paper CNN n=400, Myrtle-5 n=512, WRN-16-4 n=256
    python benchmarks/cnn_kernels.py --arch paper-cnn --repeats 3
    python benchmarks/cnn_kernels.py --arch myrtle5 --n 16  # what a 2-core CPU finishes in minutes
    python benchmarks/cnn_kernels.py --nt-batch 4           # neural-tangents through nt.batch (tiles of 4)

The paper CNN (``paper_cnn()``: two 5x5 valid convolutions, ReLU, Flatten, Dense-ReLU-Dense) keeps
only same-position covariances (576 then 400 numbers per pair of images).  Myrtle-5 and WRN-16-4 end
in ``GlobalAvgPool``, so both libraries keep every pair of positions (784^2 numbers per pair of
images at 28x28): the memory failure neural-tangents is known for.  Each
measurement runs in its own subprocess with its address space capped at ``--memory-cap`` GiB (so a
run that would exhaust the machine fails instead); it reports the median of ``--repeats`` calls
(neural-tangents after one warm-up call that compiles ``jax.jit(kernel_fn)``), the peak resident
memory added by the call (``ru_maxrss`` after minus before), and for gpmargin the time per pair of
images against the floor of its dominant work (see ``_floor``).  Timings are wall-clock.
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

ARCHS = {"paper-cnn": 400, "myrtle5": 512, "wrn16-4": 256}  # the sizes


def _inputs(arch: str, n: int):
    """The paper CNN on MNIST test images (the paper's data), the pooled networks on Fashion-MNIST's."""
    from gpmargin.data import load

    x, _ = load("mnist" if arch == "paper-cnn" else "fashion_mnist", split="test")
    return x[:n].double().contiguous()  # (n, 1, 28, 28) in [0, 1]


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _ours(arch: str):
    from gpmargin import kernels as gk

    if arch == "paper-cnn":
        return gk.paper_cnn()
    return gk.myrtle(5) if arch == "myrtle5" else gk.wide_resnet(16, 4)


def _theirs(arch: str):
    """The same networks in neural-tangents' stax (float64)."""
    from neural_tangents import stax

    if arch == "paper-cnn":  # no biases (b_std=None), W_std 1, plain ReLU: gk.paper_cnn()
        conv = [stax.Conv(1, (5, 5), padding="VALID", b_std=None), stax.Relu()] * 2
        return stax.serial(*conv, stax.Flatten(), stax.Dense(1, b_std=None), stax.Relu(), stax.Dense(1, b_std=None))[2]
    if arch == "myrtle5":
        layers = []
        for stage, n in enumerate((2, 1, 1)):
            if stage:
                layers.append(stax.AvgPool((2, 2), (2, 2)))
            layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=math.sqrt(2)), stax.Relu()] * n
        return stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1, math.sqrt(2)))[2]

    def block(c, stride, projection):
        main = stax.serial(stax.Relu(), stax.Conv(c, (3, 3), (stride, stride), padding="SAME"), stax.Relu(),
                           stax.Conv(c, (3, 3), padding="SAME"))
        shortcut = stax.Conv(c, (1, 1), (stride, stride), padding="SAME") if projection else stax.Identity()
        return stax.serial(stax.FanOut(2), stax.parallel(main, shortcut), stax.FanInSum())

    layers = [stax.Conv(16, (3, 3), padding="SAME")]
    for c, stride in ((64, 1), (128, 2), (256, 2)):
        layers += [block(c, stride, True), block(c, 1, False)]
    return stax.serial(*layers, stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))[2]


# entries of one pair's kernel field the layers update: the input layer's same-position field
# (28x28) for the paper CNN, both positions (784^2) for the pooled networks
FIELD = {"paper-cnn": 784, "myrtle5": 784**2, "wrn16-4": 784**2}


def _floor(torch, repeats: int, arch: str) -> float:
    """Seconds per pair of images of one elementwise pass (read and write) over that pair's kernel
    field (``FIELD``), measured on 16 x 784^2 float64 numbers (79 MB: out of cache, as the engine's
    tiles are): the unit of work every layer costs at least once per tensor."""
    t = torch.ones(16, 784, 784, dtype=torch.float64)
    times = []
    for _ in range(max(repeats, 5)):
        t0 = time.perf_counter()
        t.mul_(1.0000001)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / t.numel() * FIELD[arch]


def worker(lib: str, arch: str, n: int, repeats: int, nt_batch: int | None) -> dict:
    x = _inputs(arch, n)
    times = []
    res = {"lib": lib, "arch": arch, "n": n}
    if lib == "gpmargin":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        k = _ours(arch)
        base = _rss_bytes()
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = k(x, get=("nngp", "ntk"))
            times.append(time.perf_counter() - t0)
            del out
        res["pass_s"] = _floor(torch, repeats, arch)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import jax

        jax.config.update("jax_enable_x64", True)
        import neural_tangents as nt

        fn = _theirs(arch)
        fn = nt.batch(fn, batch_size=nt_batch, store_on_device=False) if nt_batch else jax.jit(fn, static_argnames="get")
        xj = jax.numpy.asarray(x.permute(0, 2, 3, 1).numpy())  # NHWC
        del x
        base = _rss_bytes()
        t0 = time.perf_counter()
        jax.block_until_ready(fn(xj, None, get=("nngp", "ntk")))
        res["first_call_with_compile_s"] = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(xj, None, get=("nngp", "ntk")))
            times.append(time.perf_counter() - t0)
        res["nt_batch"] = nt_batch
    res.update(times_s=times, median_s=statistics.median(times), peak_bytes=_rss_bytes() - base)
    return res


def measure(lib, arch, n, repeats, nt_batch, cap_gib, timeout):
    cmd = [sys.executable, __file__, "--worker", lib, "--arch", arch, "--n", str(n), "--repeats", str(repeats)]
    if nt_batch:
        cmd += ["--nt-batch", str(nt_batch)]
    cap = int(cap_gib * 2**30)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, preexec_fn=limit,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        return {"lib": lib, "arch": arch, "n": n, "error": f"did not finish within {timeout} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
    oom = any("memory" in ln.lower() or "alloc" in ln.lower() for ln in err[-5:])
    why = f"out of memory under the {cap_gib:g} GiB cap" if oom else err[-1][:200]
    return {"lib": lib, "arch": arch, "n": n, "error": f"exit status {proc.returncode}: {why}"}


def _line(r) -> str:
    name = "gpmargin" if r["lib"] == "gpmargin" else ("neural-tangents (jit)" if not r.get("nt_batch")
                                                      else f"neural-tangents (nt.batch {r['nt_batch']})")
    if "error" in r:
        return f"  {name:28s} FAILED: {r['error']}"
    times = ", ".join(f"{t:.2f}" for t in r["times_s"])
    extra = f"; first call incl. compile {r['first_call_with_compile_s']:.1f} s" if "first_call_with_compile_s" in r else ""
    return (f"  {name:28s} median {r['median_s']:.2f} s (runs {times}{extra}); "
            f"peak extra memory {r['peak_bytes'] / 2**20:.0f} MiB")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    p.add_argument("--n", type=int, default=None, help="images (default: 400 for the paper CNN, 512 for Myrtle-5, 256 for WRN-16-4)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    p.add_argument("--nt-batch", type=int, default=None, help="run neural-tangents through nt.batch(batch_size=B)")
    p.add_argument("--memory-cap", type=float, default=20.0, help="GiB of address space per measurement")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    p.add_argument("--worker", choices=["gpmargin", "nt"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.arch[0], args.n, args.repeats, args.nt_batch)))
        return 0
    print(f"CNN kernels, NNGP+NTK, float64, 28x28 test images; {os.cpu_count()} CPU cores")
    for arch in args.arch:
        n = args.n or ARCHS[arch]
        pairs = n * (n + 1) // 2
        field = "784^2 position pairs" if FIELD[arch] > 784 else "784 same-position entries at the input"
        print(f"\n{arch}, n = {n} ({pairs} pairs of images; {field} each)")
        ours = measure("gpmargin", arch, n, args.repeats, None, args.memory_cap, args.timeout)
        print(_line(ours))
        if "error" not in ours:
            per = ours["median_s"] / pairs
            print(f"  {'':28s} {1e6 * per:.1f} us per pair = {per / ours['pass_s']:.0f} elementwise passes over one "
                  f"pair's field ({1e6 * ours['pass_s']:.2f} us each out of cache: the floor of one elementwise "
                  "update of one tensor)")
        if args.no_nt:
            continue
        theirs = measure("nt", arch, n, args.repeats, args.nt_batch, args.memory_cap, args.timeout)
        print(_line(theirs))
        if "error" not in ours and "error" not in theirs:
            print(f"  gpmargin vs neural-tangents: {theirs['median_s'] / ours['median_s']:.2f}x faster, "
                  f"{ours['peak_bytes'] / max(theirs['peak_bytes'], 1):.3f}x the memory")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
