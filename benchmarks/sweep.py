"""Benchmark: a quick fig6 sweep on a local Dask cluster against the in-process loop.

Each case is a whole ``python -m gpmargin validate fig6 --scale quick --no-compare`` process into a
fresh folder, timed by wall clock (median of ``--repeats``, cases interleaved so that a change of
load hits all of them alike):

  reference   ``--workers 0``               the in-process loop (one unit after another, 1 torch thread)
  threads2    ``--workers 0 --threads 2``   the in-process loop with 2 torch threads per unit
                                            (the loop as it was before Dask; other last bits)
  dask2       ``--workers 2``               a local cluster of 2 worker processes, 1 thread each

The units are the quick sweep's (width 256, 8 networks per unit, 500 Nero steps, 1000 MNIST
images) at ``--margins`` (default 4 of its 7 margins, so 2 workers get 2 units each; the whole
sweep is ``--margins 1e-3:1e1:7``).  U equal units of t seconds take U*t in the loop and
ceil(U/N)*t on N workers with N free cores: at most U/ceil(U/N) times faster, 2x for 4 units on
2 workers (1.75x for the whole sweep's 7), less the cluster's start-up (spawning the workers,
importing torch, loading the data once per worker) and less whatever other processes take of
the 2 cores: the 1-minute load average is printed before and after every run.

    .venv/bin/python benchmarks/sweep.py [--repeats 3] [--margins 1e-3,1e-1,1,1e1] [--cases reference,dask2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {"reference": ["--workers", "0"], "threads2": ["--workers", "0", "--threads", "2"],
         "dask2": ["--workers", "2"]}


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_case(args: list[str], margins: str) -> tuple[float, float, float]:
    """Wall time of one sweep process, and the load average before and after it."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "gpmargin", "validate", "fig6", "--scale", "quick", "--out", f"{tmp}/out",
               "--device", "cpu", "--no-compare", "--no-progress", "--set", f"margins={margins}", *args]
        env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
        before = load()
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0, before, load()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--margins", default="1e-3,1e-1,1,1e1", help="the sweep's margins (one unit each)")
    p.add_argument("--cases", default="reference,threads2,dask2", help=f"comma list of {', '.join(CASES)}")
    a = p.parse_args(argv)
    cases = [c.strip() for c in a.cases.split(",")]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}: use {', '.join(CASES)}")
    print(f"quick fig6 sweep, margins {a.margins}, {os.cpu_count()} CPU(s), {a.repeats} repeat(s)", flush=True)
    times: dict[str, list[float]] = {c: [] for c in cases}
    for r in range(a.repeats):
        for c in cases:
            wall, l0, l1 = run_case(CASES[c], a.margins)
            times[c].append(wall)
            print(f"  repeat {r + 1} {c:9s} {wall:7.1f} s   load {l0:.2f} -> {l1:.2f}", flush=True)
    ref = statistics.median(times["reference"]) if "reference" in times else None
    print(f"{'case':10s} {'median s':>9s} {'ratio vs in-process loop (reference)':>38s}")
    for c in cases:
        med = statistics.median(times[c])
        ratio = f"{ref / med:.2f}x" if ref else "-"
        print(f"{c:10s} {med:9.1f} {ratio:>38s}   ({' '.join(CASES[c])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
