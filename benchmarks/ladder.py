"""The scale ladder: predicted curves on Fashion-MNIST multiclass from 5,000 to 60,000 training images.

    python benchmarks/ladder.py --n 5000 10000 20000                      # in memory + store, NT kernel at >= 10k
    python benchmarks/ladder.py --n 60000 --paths store --store-root /work/ladder_store \\
        --curve-out paper_figures/results/predict_fashion_mnist_60k               # resumable: rerun to continue
    python benchmarks/ladder.py --plot                                    # table + figure from the records

For each training-set size ``n`` (the first ``n`` of a seed-0 shuffle of Fashion-MNIST's 60,000
training images; 2,000 test images; the depth-5 paper MLP's NNGP; 10 classes) it runs the real
commands in fresh processes and records wall time and peak resident memory (``ru_maxrss`` of
each process, from ``wait4``):

* ``memory``: ``gpmargin predict`` (kernel, Cholesky and solves in RAM), only where its two n x n
  float64 matrices fit in the RAM available;
* ``store``: ``gpmargin kernel --out STORE`` then ``gpmargin predict --kernel-store STORE``
  (tiles on disk, out-of-core Cholesky and solves); a rerun resumes both;
* ``nt``: neural-tangents' NNGP (``nt.batch`` over ``jax.jit(kernel_fn)``, float64, batches of
  1,000) of the same train x train and test x train inputs, at n >= 10,000, with a timeout; its
  time or its failure.

Stage times (kernel, Cholesky, solves) come from each run's ``curve.json``.  Every measurement
is appended to ``docs/ladder/ladder.jsonl`` (figure: ``docs/ladder/ladder.png``) with the 1-minute load average before and
after (the machine may be shared: timings are then inflated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"  # git-ignored: curves and logs of each run
RECORDS = REPO / "docs" / "ladder" / "ladder.jsonl"  # committed: the measurements and the figure
N_TEST = 2000
COMMON = ["--dataset", "fashion_mnist", "--task", "multiclass", "--n-test", str(N_TEST), "--arch", "paper-mlp",
          "--depth", "5", "--seed", "0"]


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run_measured(cmd: list[str], log: Path, timeout: float | None = None) -> dict:
    """Run ``cmd`` (output appended to ``log``); wall seconds, exit status and its peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return {"rc": "timeout", "wall_s": time.perf_counter() - t0, "peak_rss_bytes": usage.ru_maxrss * 1024}
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_bytes": usage.ru_maxrss * 1024}


def _gpmargin(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpmargin", *args]


def _tail(log: Path, lines: int = 1) -> str:
    text = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(text[-lines:])


def run_memory(n: int, work: Path, log: Path) -> dict:
    out = work / f"memory-{n}"
    r = run_measured(_gpmargin("predict", *COMMON, "--n-train", str(n), "--no-progress", "--out", str(out)), log)
    return _with_curve(r, out, log)


def run_store(n: int, store_root: Path, curve_out: Path, log: Path, tile: int, memory_gib: float) -> dict:
    store = store_root / f"fashion-multiclass-n{n}-t{tile}"
    k = run_measured(_gpmargin("kernel", *COMMON, "--n-train", str(n), "--tile", str(tile), "--out", str(store)), log)
    rec = {"kernel_wall_s": k["wall_s"], "kernel_peak_rss_bytes": k["peak_rss_bytes"], "store": str(store)}
    if k["rc"] != 0:
        return {**rec, "rc": k["rc"], "error": _tail(log), "wall_s": k["wall_s"], "peak_rss_bytes": k["peak_rss_bytes"]}
    p = run_measured(_gpmargin("predict", *COMMON, "--n-train", str(n), "--kernel-store", str(store), "--memory",
                               str(memory_gib), "--out", str(curve_out)), log)
    p = _with_curve(p, curve_out, log)
    rec.update(p)
    rec["predict_wall_s"] = p["wall_s"]
    rec["wall_s"] = k["wall_s"] + p["wall_s"]
    rec["peak_rss_bytes"] = max(k["peak_rss_bytes"], p["peak_rss_bytes"])
    return rec


def _with_curve(r: dict, out: Path, log: Path) -> dict:
    if r["rc"] != 0:
        return {**r, "error": _tail(log)}
    d = json.loads((out / "curve.json").read_text())
    t = d["timings"]
    r["timings"] = t
    r["threads"] = d["config"].get("threads")
    r["limit_accuracy"] = d["limit_accuracy"]
    r["accuracy_k1_max_margin"] = d["accuracy"][0][-1]
    r["jitter"] = d["jitter"]
    r["curve"] = str(out)
    return r


NT_WORKER = r"""
import json, os, sys, time, resource
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import jax
jax.config.update("jax_enable_x64", True)
import neural_tangents as nt
from neural_tangents import stax
import numpy as np
from gpmargin.data import make_task
n = int(sys.argv[1])
task = make_task("fashion_mnist", "multiclass", n_train=n, n_test=%d, seed=0)
xtr, xte = task.x_train.numpy(), task.x_test.numpy()
layers = []
for _ in range(4):
    layers += [stax.Dense(1, 1.0), stax.ABRelu(0, 2 ** 0.5)]
_, _, kernel_fn = stax.serial(*layers, stax.Dense(1, 1.0))
fn = nt.batch(jax.jit(kernel_fn, static_argnames="get"), batch_size=1000, store_on_device=False)
t0 = time.perf_counter()
ktt = np.asarray(fn(xtr, None, "nngp"))
kst = np.asarray(fn(xte, xtr, "nngp"))
dt = time.perf_counter() - t0
print(json.dumps({"nt_kernel_s": dt, "shape": [list(ktt.shape), list(kst.shape)],
                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""" % N_TEST


def run_nt(n: int, log: Path, timeout: float) -> dict:
    r = run_measured([sys.executable, "-c", NT_WORKER, str(n)], log, timeout=timeout)
    if r["rc"] == 0:
        for line in log.read_text().splitlines()[::-1]:
            if line.startswith('{"nt_kernel_s"'):
                r.update(json.loads(line))
                break
    else:
        r["error"] = "timeout" if r["rc"] == "timeout" else _tail(log)
    return r


def record(entry: dict) -> None:
    sys.path.insert(0, str(REPO))
    from gpmargin.io import append_jsonl

    append_jsonl(RECORDS, entry)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[5000, 10000, 20000])
    p.add_argument("--paths", default="memory,store,nt", help="comma list of memory, store, nt")
    p.add_argument("--store-root", default="/work/ladder_store", help="folder for the kernel stores (outside the repository)")
    p.add_argument("--work", default=str(RESULTS / "ladder_runs"), help="folder for curves and logs")
    p.add_argument("--curve-out", default=None, help="curve folder of the store path (default under --work)")
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--memory", type=float, default=8.0, help="GiB of working memory for the out-of-core solves")
    p.add_argument("--nt-timeout", type=float, default=1800)
    p.add_argument("--plot", action="store_true", help="only print the table and draw the figure from the records")
    args = p.parse_args(argv)
    if args.plot:
        return plot()
    work = Path(args.work)
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    for n in args.n:
        for path in paths:
            log = work / f"{path}-{n}.log"
            load0 = os.getloadavg()[0]
            entry = {"n": n, "path": path, "load_before": load0, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "available_before_bytes": _available_bytes(), "tile": args.tile, "memory_gib": args.memory}
            if path == "memory":
                need = 2 * n * n * 8 + 2 * N_TEST * n * 8
                if need > 0.9 * _available_bytes():
                    entry.update({"rc": "skipped", "error": f"needs {need / 2**30:.1f} GiB in RAM, "
                                  f"{_available_bytes() / 2**30:.1f} GiB available"})
                    record(entry)
                    print(json.dumps(entry), flush=True)
                    continue
                entry.update(run_memory(n, work, log))
            elif path == "store":
                curve_out = Path(args.curve_out) if args.curve_out else work / f"store-{n}"
                entry.update(run_store(n, Path(args.store_root), curve_out, log, args.tile, args.memory))
            elif path == "nt":
                if n < 10000:
                    continue
                need = n * n * 8
                if need > 0.8 * _available_bytes():
                    entry.update({"rc": "skipped", "error": f"neural-tangents holds the {n}x{n} result in RAM: "
                                  f"{need / 2**30:.1f} GiB, {_available_bytes() / 2**30:.1f} GiB available"})
                else:
                    entry.update(run_nt(n, log, args.nt_timeout))
            else:
                raise SystemExit(f"unknown path {path!r}")
            entry["load_after"] = os.getloadavg()[0]
            record(entry)
            print(json.dumps(entry), flush=True)
    return 0


def _fmt_s(x):
    return "" if x is None else (f"{x:.0f} s" if x >= 100 else f"{x:.1f} s")


def plot() -> int:
    """Markdown table of the latest record per (n, path) and ``docs/ladder/ladder.png``."""
    sys.path.insert(0, str(REPO))
    from gpmargin.io import atomic_savefig, read_jsonl

    latest = {}
    for r in read_jsonl(RECORDS):
        latest[(r["n"], r["path"])] = r
    print("| n_train | path | kernel | Cholesky | solves | whole process | peak RSS | load (1 min) | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (n, path), r in sorted(latest.items()):
        t = r.get("timings", {})
        if path == "memory":
            kern = (t.get("kernel_train", 0) + t.get("kernel_test", 0)) if t else None
        elif path == "store":
            kern = r.get("kernel_wall_s")
        else:
            kern = r.get("nt_kernel_s")
        ok = r.get("rc") == 0
        result = (f"limit acc {r['limit_accuracy']:.4f}" if ok and "limit_accuracy" in r
                  else ("ok" if ok else f"{r.get('rc')}: {str(r.get('error', ''))[:80]}"))
        rss = r.get("peak_rss_bytes")
        print(f"| {n} | {path} | {_fmt_s(kern)} | {_fmt_s(t.get('cholesky'))} | {_fmt_s(t.get('solve'))} | "
              f"{_fmt_s(r.get('wall_s')) if path != 'nt' else ''} | {'' if rss is None else f'{rss / 2**30:.2f} GiB'} | "
              f"{r.get('load_before', 0):.1f}-{r.get('load_after', 0):.1f} | {result} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    names = {"memory": "in memory (gpmargin predict)", "store": "store + out of core (kernel; predict --kernel-store)",
             "nt": "neural-tangents (nt.batch, jit)"}
    colors = {"memory": "C0", "store": "C1", "nt": "C2"}
    for path in ("memory", "store", "nt"):
        rows = sorted((n, r) for (n, p), r in latest.items() if p == path and r.get("rc") == 0)
        if not rows:
            continue
        ns = [n for n, _ in rows]
        if path != "nt":
            a1.plot(ns, [r["wall_s"] for _, r in rows], "o-", color=colors[path], label=f"{names[path]}: whole")
        kern = [(r["timings"]["kernel_train"] + r["timings"]["kernel_test"]) if path == "memory"
                else r["kernel_wall_s"] if path == "store" else r["nt_kernel_s"] for _, r in rows]
        a1.plot(ns, kern, "s--" if path != "nt" else "^--", color=colors[path], alpha=0.8,
                label=f"{names[path]}: kernel only")
        a2.plot(ns, [r["peak_rss_bytes"] / 2**30 for _, r in rows], "o-" if path != "nt" else "^--",
                color=colors[path], label=names[path])
    a1.set(xscale="log", yscale="log", xlabel="training images n (log scale)", ylabel="wall time, s (log scale)",
           title="Fashion-MNIST 10-class, depth-5 MLP NNGP, 2,000 test\n(shared 2-core CPU: see the load column)")
    a2.set(xscale="log", xlabel="training images n (log scale)", ylabel="peak resident memory, GiB",
           title="peak RSS per process (2-core CPU, 24 GiB)")
    a2.axhline(16, color="0.5", ls=":", label="16 GiB target")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize="x-small")
    path = atomic_savefig(fig, RECORDS.parent / "ladder.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
